"""torch_meta follows the model's device: move the model (``model.to(device)``), then build the learner.

* On the CPU, a model on ``torch.device("cpu")`` runs every method of every learner, and the learner's
  device (``_device``) is the parameters' device.
* ``meta``, torch's shape-only device, stands in for a GPU on a CPU-only machine: a tensor that a learner
  created on the CPU and mixed with the model's meta tensors raises ``Tensor on device meta is not on the
  expected device cpu``, as it would on CUDA. Meta tensors hold no values, so ``float()`` of one is patched
  to 0.0 in that test; it checks where tensors live, never what they hold.
* With a CUDA GPU (``torch.cuda.is_available()``), one meta-step of each learner on ``cuda`` is compared with
  the same step on the CPU in float64, at the parity tolerances. Skipped elsewhere: it can only run where
  a GPU exists.
* The examples' ``--device`` flag (the CLI's is tested in ``tests/test_cli.py``): a device for the tf backend
  is a usage error; ``--device=cuda`` without CUDA stops with one line naming the fix.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dualmeta import backend  # noqa: E402
from dualmeta.episodes import ClassDataset, ClassificationTasks, RegressionTasks  # noqa: E402
from dualmeta.tolerances import compare, within  # noqa: E402
from torch_meta import models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = 16  # 16 -> 8 -> 4 -> 2 -> 1 with stride 2 or max-pooling
WAYS = 3
# learner -> (model kind, constructor arguments); every registered learner, MatchingNet with its FCE tensors
CASES = {
    "maml": ("classifier", {}),
    "maml-mlp": ("mlp", {"inner_lr": 0.01}),
    "fomaml": ("classifier", {}),
    "reptile": ("classifier", {"inner_steps": 2}),
    "metasgd": ("classifier", {}),
    "anil": ("classifier", {}),
    "finetune": ("classifier", {"test_inner_steps": 2}),
    "protonet": ("encoder", {}),
    "matchingnet": ("encoder", {"fce": True, "fce_steps": 2}),
    "lstm": ("lstm", {}),
    "snail": ("snail", {}),
}


def _model(kind: str, dtype: str = "float32"):
    if kind in ("lstm", "snail"):  # the model-based learners: a sequence model around a conv4 encoder
        from torch_meta import sequence
        encoder = dict(hidden=4, downsample="maxpool", image_size=IMAGE, track_running_stats=True)
        sizes = dict(hidden=4) if kind == "lstm" else dict(support_size=WAYS, filters=4, keys=(4,), values=(4,))
        return getattr(sequence, kind)(ways=WAYS, encoder=encoder, dtype=dtype, **sizes)
    if kind == "mlp":
        return models.mlp(hidden=(8, 8), dtype=dtype)
    if kind == "classifier":
        return models.conv4(hidden=4, num_classes=WAYS, image_size=IMAGE, dtype=dtype)
    return models.conv4(hidden=4, downsample="maxpool", image_size=IMAGE, dtype=dtype)


def _learner(case: str, model):
    return backend.learner_class("torch", case.split("-")[0])(model, **CASES[case][1])


def _tasks(case: str):
    if CASES[case][0] == "mlp":
        return RegressionTasks(shots=5, queries=5, seed=0)
    images = np.random.default_rng(0).random((6, 3, IMAGE, IMAGE), dtype=np.float32)
    return ClassificationTasks(ClassDataset.from_grouped(images), ways=WAYS, shots=1, queries=2, seed=0)


def _devices(tensors) -> set[str]:
    return {t.device.type for t in tensors}


def _created_tensors(learner, adapted) -> dict[str, set[str]]:
    """The devices of what the learner made: learner tensors, optimiser state, adapted weights."""
    optimizer = learner.optimizer
    return {"parameters": _devices(learner.parameters().values()), "extra": _devices(learner.extra.values()),
            "optimizer": _devices([*optimizer.m.values(), *optimizer.v.values()]),
            "adapted": _devices(adapted.values())}


# The pretraining learners train on image batches (dualmeta.pretrain), not on episodes, and are scored
# on episodes with a few-shot head: learner -> (constructor arguments, batch kind)
PRETRAIN_CASES = {
    "baseline": (dict(num_classes=4), "class"),
    "baseline_pp": (dict(num_classes=4), "class"),
    "simclr": (dict(projection_hidden=4, projection_dim=4), "views"),
    "mae": (dict(decoder_hidden=4), "masked"),
}


def test_every_learner_has_a_case():
    assert {case.split("-")[0] for case in CASES} | set(PRETRAIN_CASES) == set(backend.LEARNERS)


def _pretrain_setup(name: str, device: str):
    from dualmeta import pretrain
    images = np.random.default_rng(1).random((4, 4, IMAGE, IMAGE), dtype=np.float32)
    data = ClassDataset.from_grouped(images)
    kwargs, kind = PRETRAIN_CASES[name]
    batches = {"class": pretrain.ClassBatches, "views": pretrain.ViewBatches,
               "masked": lambda d, seed: pretrain.MaskedBatches(d, seed=seed, mask_ratio=0.5, patch=4)}[kind](data, seed=0)
    model = models.conv4(hidden=4, downsample="maxpool", image_size=IMAGE, track_running_stats=True).to(device)
    learner = backend.learner_class("torch", name)(model, **kwargs)
    return learner, batches, ClassificationTasks(data, ways=2, shots=1, queries=1, seed=0)


@pytest.mark.parametrize("name", sorted(PRETRAIN_CASES))
def test_pretraining_learner_on_the_cpu_and_on_another_device(name, float_of_meta_is_zero):
    """Pretraining, then a few-shot head: on the CPU every result is finite; on meta no CPU tensor mixes in."""
    learner, batches, tasks = _pretrain_setup(name, "cpu")
    assert np.isfinite(learner.meta_train_step(batches.batch(0, 4))["loss"])
    assert np.isfinite(learner.evaluate(tasks.take(2, start=3))["loss"]["mean"])
    learner, batches, tasks = _pretrain_setup(name, "meta")
    assert learner._device == torch.device("meta")
    learner.meta_train_step(batches.batch(0, 4))
    adapted = learner.adapt(tasks.episode(5))
    created = _created_tensors(learner, adapted)
    assert all(devices <= {"meta"} for devices in created.values()), created


@pytest.mark.parametrize("case", sorted(CASES))
def test_learner_on_the_cpu_device_runs_every_method(case):
    model = _model(CASES[case][0]).to(torch.device("cpu"))
    learner = _learner(case, model)
    assert learner._device == next(model.parameters()).device == torch.device("cpu")
    tasks = _tasks(case)
    episode = tasks.episode(5)
    metrics = learner.meta_train_step(tasks.batch(0, 2))
    assert np.isfinite(metrics["loss"])
    result = learner.evaluate(tasks.take(2, start=10))
    assert result["loss"]["n"] == 2 and np.isfinite(result["loss"]["mean"])
    adapted = learner.adapt(episode)
    outputs = learner.predict(episode.query_x, adapted)
    assert isinstance(outputs, np.ndarray) and outputs.shape[0] == len(episode.query_x)
    assert np.isfinite(outputs).all()
    created = _created_tensors(learner, adapted)
    assert all(devices <= {"cpu"} for devices in created.values()), created

    weights, state = learner.get_weights(), learner.get_optimizer_state()
    assert all(isinstance(w, np.ndarray) for w in [*weights.values(), *state.values()])
    other = _learner(case, _model(CASES[case][0]).to(torch.device("cpu")))
    other.set_weights(weights)
    other.set_optimizer_state(state)
    for name, value in other.get_weights().items():
        np.testing.assert_array_equal(value, weights[name], err_msg=name)
    for name, value in other.get_optimizer_state().items():
        np.testing.assert_array_equal(value, state[name], err_msg=name)
    np.testing.assert_array_equal(other.predict(episode.query_x, other.adapt(episode)), outputs)


@pytest.fixture
def float_of_meta_is_zero(monkeypatch):
    """``float()`` of a meta tensor (which holds no value) is 0.0; every other tensor as usual."""
    real = torch.Tensor.__float__

    def fake(tensor):
        return 0.0 if tensor.device.type == "meta" else real(tensor)

    monkeypatch.setattr(torch.Tensor, "__float__", fake)


@pytest.mark.parametrize("case", sorted(CASES))
def test_learner_creates_every_tensor_on_the_model_device(case, float_of_meta_is_zero):
    """A model on another device (meta): meta-training, evaluation and adaptation never mix in a CPU tensor."""
    model = _model(CASES[case][0]).to("meta")
    learner = _learner(case, model)  # MatchingNet runs its encoder here to size the FCE tensors
    assert learner._device == next(model.parameters()).device == torch.device("meta")
    tasks = _tasks(case)
    learner.meta_train_step(tasks.batch(0, 2))
    learner.evaluate(tasks.take(2, start=10))
    adapted = learner.adapt(tasks.episode(5))
    created = _created_tensors(learner, adapted)
    assert all(devices <= {"meta"} for devices in created.values()), created
    assert _devices(learner._tensors(tasks.episode(5))) == {"meta"}
    cpu_learner = _learner(case, _model(CASES[case][0]))
    cpu_learner.meta_train_step(tasks.batch(0, 2))
    learner.set_weights(cpu_learner.get_weights())  # numpy in, copied onto the model's device
    learner.set_optimizer_state(cpu_learner.get_optimizer_state())
    assert all(devices <= {"meta"} for devices in _created_tensors(learner, adapted).values())


def test_a_model_moved_after_the_learner_was_built_is_refused():
    model = _model("classifier")
    learner = _learner("maml", model)
    model.to("meta")
    with pytest.raises(ValueError, match=r"model is on meta, but this learner was built for cpu.*before building"):
        learner.adapt(_tasks("maml").episode(0))


def test_a_model_split_over_devices_is_refused():
    model = _model("classifier")
    model.head.to("meta")
    with pytest.raises(ValueError, match=r"on one device; received \['cpu', 'meta'\].*model.to\(device\)"):
        _learner("maml", model)


def test_check_device_names_the_accepted_values_and_the_fix():
    assert backend.check_device("torch", "cpu") == "cpu"
    assert backend.check_device("tf", "cpu") == "cpu"
    with pytest.raises(ValueError, match=r"^Expected one of \{'cpu', 'cuda', 'cuda:N', 'mps'\}; received "
                                         r"device='gpu'$"):
        backend.check_device("torch", "gpu")
    with pytest.raises(ValueError, match="TensorFlow places operations on a visible GPU by itself"):
        backend.check_device("tf", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(backend.DeviceUnavailable, match=r"torch.cuda.is_available\(\) is False.*"
                                                            r"install a CUDA build of PyTorch"):
            backend.check_device("torch", "cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_meta_step_on_cuda_equals_the_cpu_step(case):
    tasks = _tasks(case)
    batch, episode = tasks.batch(0, 2), tasks.episode(5)
    learners = {device: _learner(case, _model(CASES[case][0], dtype="float64").to(device))
                for device in ("cpu", "cuda")}
    assert learners["cuda"]._device.type == "cuda"
    grads = {device: learner.meta_gradients(batch)[0] for device, learner in learners.items()}
    failures = compare("meta_grads", "float64", grads["cuda"], grads["cpu"])
    metrics = {device: learner.meta_train_step(batch) for device, learner in learners.items()}
    ok, diff = within("loss", "float64", metrics["cuda"]["loss"], metrics["cpu"]["loss"])
    if not ok:
        failures.append(f"loss: {diff:.3g}")
    failures += compare("meta_step", "float64", learners["cuda"].get_weights(), learners["cpu"].get_weights())
    outputs = {d: learner.predict(episode.query_x, learner.adapt(episode)) for d, learner in learners.items()}
    ok, diff = within("forward", "float64", outputs["cuda"], outputs["cpu"])
    if not ok:
        failures.append(f"predict: {diff:.3g}")
    assert not failures, "cuda vs cpu (cuda in the 'tf' slot of the messages): " + "; ".join(failures)
    state = learners["cuda"].get_optimizer_state()
    learners["cuda"].set_optimizer_state(state)
    assert _devices([*learners["cuda"].optimizer.m.values(), *learners["cuda"].extra.values()]) <= {"cuda"}


# -- the examples' --device flag (checked before any data is read) -----------------------------------------------

def _example(script: str, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)


@pytest.mark.parametrize("script", ["omniglot_maml.py", "omniglot_metric.py"])
def test_example_device_for_tf_is_a_usage_error(script):
    run = _example(script, "--backend=tf", "--device=cuda")
    assert run.returncode == 1, run.stderr
    assert "--device=cuda is for the torch backend only: TensorFlow places operations on a visible GPU by " \
           "itself" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("script", ["omniglot_maml.py", "omniglot_metric.py"])
def test_example_device_cuda_without_cuda_names_the_fix(script):
    run = _example(script, "--backend=torch", "--device=cuda")
    assert run.returncode == 1, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device=cuda needs CUDA"), run.stderr
    assert "install a CUDA build of PyTorch" in lines[0] and "--device=cpu" in lines[0]
