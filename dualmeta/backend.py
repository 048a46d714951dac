"""Backend selection: the only dualmeta module that imports ``tf_meta`` or ``torch_meta``, on request.

    >>> from dualmeta import backend
    >>> MAML = backend.learner_class("torch", "maml")          # imports torch_meta.maml
    >>> model = backend.build_model("torch", "mlp", dict(in_features=1, hidden=(40, 40), out_features=1))

Bad names raise ``ValueError`` with the accepted values; a backend whose framework is not installed
raises :class:`BackendUnavailable` (an ``ImportError``) naming the extra to install.

Devices are for the torch backend (``device='cuda'`` moves the model there before the learner is built, and
the learner follows it); TensorFlow places operations on a visible GPU by itself.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
from types import ModuleType

__all__ = ["BACKENDS", "LEARNERS", "METRIC_LEARNERS", "SEQUENCE_LEARNERS", "MODELS", "BackendUnavailable",
           "LearnerUnavailable",
           "DeviceUnavailable", "DEVICES", "default_backend", "check_backend", "check_learner", "check_device",
           "load_backend", "distributed", "learner_class", "build_model", "make_learner", "set_threads"]

# backend name -> (package, framework module, pip extra)
BACKENDS: dict[str, tuple[str, str, str]] = {
    "tf": ("tf_meta", "tensorflow", "tf"),
    "torch": ("torch_meta", "torch", "torch"),
}

# learner name -> (module, class), the same in both backend packages
LEARNERS: dict[str, tuple[str, str]] = {
    "maml": ("maml", "MAML"),
    "fomaml": ("fomaml", "FirstOrderMAML"),
    "reptile": ("reptile", "Reptile"),
    "metasgd": ("metasgd", "MetaSGD"),
    "anil": ("anil", "ANIL"),
    "finetune": ("finetune", "FineTune"),
    "protonet": ("protonet", "ProtoNet"),
    "matchingnet": ("matchingnet", "MatchingNet"),
    "lstm": ("lstm", "LSTMLearner"),
    "snail": ("snail", "SNAIL"),
    "baseline": ("baseline", "Baseline"),
    "baseline_pp": ("baseline_pp", "BaselinePP"),
    "simclr": ("simclr", "SimCLR"),
    "mae": ("mae", "MAE"),
}
METRIC_LEARNERS = ("protonet", "matchingnet")  # embed with a head-less conv4; no inner loop
SEQUENCE_LEARNERS = ("lstm", "snail")  # model-based: read the episode as a sequence (models in <backend>.sequence)
MODELS = ("mlp", "conv4", "lstm", "snail", "resnet12", "description")  # builders: <backend>.models (mlp, conv4), <backend>.sequence (the rest)
DEVICES = ("cpu", "cuda", "cuda:N", "mps")  # torch device names the learners accept (N: a GPU index)
_DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?|mps")


class BackendUnavailable(ImportError):
    """The framework of a backend is not installed."""


class DeviceUnavailable(RuntimeError):
    """A device this machine's PyTorch cannot use (no CUDA build or GPU, no MPS)."""


class LearnerUnavailable(ValueError):
    """A registered learner whose module is not part of this version."""


def _expected(name: str, value: str, accepted) -> ValueError:
    return ValueError(f"Expected one of {{{', '.join(repr(a) for a in sorted(accepted))}}}; "
                      f"received {name}={value!r}")


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise _expected("backend", name, BACKENDS)
    return name


def check_learner(name: str) -> str:
    if name not in LEARNERS:
        raise _expected("learner", name, LEARNERS)
    return name


def check_device(backend: str, device: str, name: str = "device") -> str:
    """``device`` if ``backend`` can run there on this machine; ``name`` is how messages spell the setting.

    Raises ``ValueError`` for a name outside :data:`DEVICES` or a device other than ``'cpu'`` for ``'tf'``
    (TensorFlow places operations on a visible GPU by itself), and :class:`DeviceUnavailable` naming the fix
    when PyTorch cannot use the device. Imports torch only for a device other than ``'cpu'``.
    """
    def spelled(value: str) -> str:
        return f"{name}={value}" if name.startswith("--") else f"{name}={value!r}"

    check_backend(backend)
    if not isinstance(device, str) or not _DEVICE_PATTERN.fullmatch(device):
        raise ValueError(f"Expected one of {{{', '.join(repr(d) for d in DEVICES)}}}; received {spelled(device)}")
    if device == "cpu":
        return device
    if backend == "tf":
        raise ValueError(f"{spelled(device)} is for the torch backend only: TensorFlow places operations on a "
                         f"visible GPU by itself (hide GPUs with CUDA_VISIBLE_DEVICES=-1); keep "
                         f"{spelled('cpu')} (the default) with the tf backend")
    load_backend(backend)
    import torch
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise DeviceUnavailable(
                f"{spelled(device)} needs CUDA, but torch.cuda.is_available() is False (PyTorch "
                f"{torch.__version__}, {build}); install a CUDA build of PyTorch "
                f"(https://pytorch.org/get-started/locally/) on a machine with an NVIDIA GPU and driver, check "
                f"CUDA_VISIBLE_DEVICES, or run on the CPU with {spelled('cpu')}")
        index, count = int(device.partition(":")[2] or 0), torch.cuda.device_count()
        if index >= count:
            raise DeviceUnavailable(f"{spelled(device)} does not exist: {count} CUDA device(s) are visible, "
                                    f"cuda:0 to cuda:{count - 1}")
    elif not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"{spelled(device)} needs Apple's MPS, but torch.backends.mps.is_available() is "
                                f"False (it needs Apple silicon, macOS 12.3+ and a PyTorch build with MPS); run on "
                                f"the CPU with {spelled('cpu')}")
    return device


def _install_hint(name: str) -> str:
    return f"pip install 'dualmeta[{BACKENDS[name][2]}]'"


def default_backend() -> str:
    """``'torch'`` if PyTorch is installed, else ``'tf'`` if TensorFlow is; checked without importing."""
    for name in ("torch", "tf"):
        if importlib.util.find_spec(BACKENDS[name][1]) is not None:
            return name
    raise BackendUnavailable("Neither PyTorch nor TensorFlow is installed; install one backend: "
                             f"{_install_hint('torch')} or {_install_hint('tf')}")


def load_backend(name: str) -> ModuleType:
    """The backend package (``tf_meta`` or ``torch_meta``), imported now."""
    package, framework, _ = BACKENDS[check_backend(name)]
    if name == "tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # hide TensorFlow's C++ start-up chatter
    try:
        return importlib.import_module(package)
    except ImportError as error:
        missing = getattr(error, "name", None) or ""
        if missing.split(".")[0] in (framework, "keras") or importlib.util.find_spec(framework) is None:
            raise BackendUnavailable(f"The {name!r} backend needs {framework}, which cannot be imported "
                                     f"({error}); install it with {_install_hint(name)}") from error
        raise


def set_threads(backend: str, threads: int) -> None:
    """Sets the backend's CPU threads (call before its first operation; 0 keeps the default): torch's
    intra-op threads; TensorFlow's intra-op and inter-op pools both, since TensorFlow runs independent
    operations (the tasks of a meta-batch) side by side on its inter-op pool, so intra-op alone does not hold
    it to ``threads`` cores (measured: two ``--workers`` on two cores took 1.45 s/step with only intra-op
    set, 1.19 s with both; one process "on one thread" used both cores).

    Tiny models gain nothing from more threads, and on a busy machine the threads of one operation
    wait on each other: a sinusoid MAML step in torch took 0.24 s with 2 threads and 0.022 s with 1.
    """
    if threads < 0:
        raise ValueError(f"Expected threads >= 0; received threads={threads}")
    if not threads:
        return
    load_backend(backend)
    if backend == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        import tensorflow as tf
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError:  # TensorFlow already initialised: the setting is fixed for this process
            pass


def distributed(backend: str) -> ModuleType:
    """The engine of ``--workers`` for ``backend``: ``torch_meta.distributed`` or ``tf_meta.distributed``."""
    return importlib.import_module(load_backend(backend).__name__ + ".distributed")


def learner_class(backend: str, name: str) -> type:
    """The learner class ``name`` (e.g. ``'maml'``) of ``backend``."""
    module_name, class_name = LEARNERS[check_learner(name)]
    package = load_backend(backend).__name__
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ModuleNotFoundError as error:
        if error.name == f"{package}.{module_name}":
            raise LearnerUnavailable(f"The learner {name!r} is not available in this version of dualmeta "
                                     f"({package}/{module_name}.py is missing); choose one of "
                                     f"{available_learners(backend)}") from None
        raise
    return getattr(module, class_name)


def available_learners(backend: str) -> list[str]:
    package = load_backend(backend).__name__
    return [name for name, (module, _) in LEARNERS.items()
            if importlib.util.find_spec(f"{package}.{module}") is not None]


def build_model(backend: str, name: str, config: dict, dtype: str = "float32", seed: int = 0,
                device: str = "cpu"):
    """A twin model (``'mlp'``, ``'conv4'``, or the sequence models ``'lstm'``, ``'snail'``) with neutral initial
    weights from ``seed``, on ``device`` (torch only; see :func:`check_device`)."""
    if name not in MODELS:
        raise _expected("model", name, MODELS)
    check_device(backend, device)
    module = "models" if name in ("mlp", "conv4", "resnet12", "description") else "sequence"
    models = importlib.import_module(f"{load_backend(backend).__name__}.{module}")
    config = dict(config)
    if name == "mlp":
        config["hidden"] = tuple(config["hidden"])
    if name == "resnet12":
        config["channels"] = tuple(config["channels"])
    if name == "snail":  # JSON (a checkpoint's metadata) turns tuples into lists
        config["keys"], config["values"] = tuple(config["keys"]), tuple(config["values"])
    model = getattr(models, name)(**config, dtype=dtype, init="neutral", seed=seed)
    return model if device == "cpu" else model.to(device)


def make_learner(backend: str, learner: str, model_name: str, model_config: dict, *, dtype: str = "float32",
                 seed: int = 0, learner_args: dict | None = None, device: str = "cpu"):
    """Builds the model on ``device`` (torch only) and the learner around it, which follows the model's device;
    ``learner_args`` go to the learner's constructor."""
    cls = learner_class(backend, learner)
    model = build_model(backend, model_name, model_config, dtype=dtype, seed=seed, device=device)
    learner = cls(model, **(learner_args or {}))
    if getattr(learner, "draws_drop_masks", False):
        learner.drop_seed = int(seed)  # DropBlock masks by address: (seed, step, task)
    return learner
