"""Shared set-up of the parity tests: both frameworks in one process, twin models, ``assert_close``.

Import order matters: torch is imported before tensorflow (as Keras' own test suite does), and the
environment is set before either. oneDNN stays on (TensorFlow's CPU default, the project default): with it,
float32 parity still meets the table in ``docs/tolerances.md`` (measurements in ``docs/tf_vs_torch.md``).
TF32 is turned off by importing ``tf_meta`` and ``torch_meta``.

Helpers for other parity tests (importable as ``from parity_tests.conftest import ...``):

* ``assert_close(name, tf_value, torch_value, tol)`` -- fails naming the tensor, e.g.
  ``grads/blocks.0.conv.weight: max|tf-torch| 3e-05 > 1e-05``;
* ``keras_to_neutral(spec, name, array)`` -- a Keras-layout array (HWIO conv kernel, (in, out) dense
  kernel) in the neutral layout, written here independently of ``tf_meta`` so a wrong conversion there
  cannot hide;
* the ``make_twins`` fixture -- the same neutral weights (``dualmeta.weights.initialize``) loaded into a
  ``tf_meta`` and a ``torch_meta`` model.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import torch  # noqa: E402  (before tensorflow, on purpose)
import tensorflow as tf  # noqa: E402,F401

# The parity models are tiny: one intra-op thread is faster for them, and it keeps torch's thread pool from
# spinning against TensorFlow's on a 2-core machine (measured: 50 small steps in 0.1 s vs up to 25 s).
torch.set_num_threads(1)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tf_meta  # noqa: E402,F401  (pins TF32 off)
import torch_meta  # noqa: E402,F401  (pins TF32 off)
from dualmeta import tolerances as neutral_tolerances  # noqa: E402
from dualmeta import weights as neutral  # noqa: E402
from parity_tests.tolerances import REL_FLOOR, Tolerance, tolerance  # noqa: E402

__all__ = ["assert_close", "assert_all_close", "max_difference", "keras_to_neutral", "tf_to_numpy",
           "torch_to_numpy", "Twins", "build_twins", "tolerance", "MEASURED", "assert_quantity_close", "record"]


MEASURED: dict[tuple[str, str, str], float] = {}  # (quantity, dtype, kind) -> largest difference seen


def tf_to_numpy(value) -> np.ndarray:
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def torch_to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def max_difference(a, b, kind: str = "abs", set_scale: float | None = None) -> float:
    """``max|a - b|``; for ``kind='rel'`` divided by ``max|b|`` (floored at ``REL_FLOOR * set_scale``)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    error = float(np.max(np.abs(a - b)))
    if kind == "rel":
        floor = REL_FLOOR * set_scale if set_scale is not None else 0.0
        error /= max(float(np.max(np.abs(b))), floor, np.finfo(np.float64).tiny)
    return error


def assert_close(name: str, tf_value, torch_value, tol: Tolerance, set_scale: float | None = None) -> float:
    """Asserts ``tf_value`` and ``torch_value`` agree within ``tol``; returns the measured difference.

    The failure message names the tensor: ``grads/blocks.0.conv.weight: max|tf-torch| 3e-05 > 1e-05``
    (``max|tf-torch|/max|torch|`` for relative tolerances). A relative tolerance divides by ``max|torch|``
    of this tensor, floored at ``REL_FLOOR * set_scale`` when the tensor is one of a set (see
    :func:`assert_all_close`). Shapes must match exactly; NaN fails.
    """
    a, b = tf_to_numpy(tf_value), torch_to_numpy(torch_value)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape tf {a.shape} != torch {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise AssertionError(f"{name}: non-finite values (tf: {int(np.sum(~np.isfinite(a)))}, "
                             f"torch: {int(np.sum(~np.isfinite(b)))})")
    error = max_difference(a, b, tol.kind, set_scale)
    key = (tol.quantity, tol.dtype, tol.kind)
    MEASURED[key] = max(MEASURED.get(key, 0.0), error)
    label = "max|tf-torch|" if tol.kind == "abs" else "max|tf-torch|/max|torch|"
    if not error <= tol.value:
        raise AssertionError(f"{name}: {label} {error:.3g} > {tol.value:.3g} "
                             f"({tol.kind} tolerance of {tol.quantity!r}, {tol.dtype}, docs/tolerances.md)")
    return error


def record(quantity: str, dtype: str, difference: float) -> None:
    """Notes a measured tf-torch difference of ``quantity`` for the parity report (largest kept)."""
    from dualmeta.tolerances import tolerance as run_tolerance

    key = (quantity, dtype, run_tolerance(quantity, dtype)[1])
    MEASURED[key] = max(MEASURED.get(key, 0.0), float(difference))


def assert_quantity_close(quantity: str, dtype: str, tf_values: dict, torch_values: dict) -> None:
    """Learner-level comparison of named arrays with ``dualmeta.tolerances`` (what ``compare`` checks);
    the largest difference is recorded for the parity report. Fails with one line per tensor that is off."""
    from dualmeta.tolerances import compare, differences

    failures = compare(quantity, dtype, tf_values, torch_values)
    try:
        record(quantity, dtype, max(differences(quantity, dtype, tf_values, torch_values).values(), default=0.0))
    except ValueError:  # names or shapes differ: the failure lines say so
        pass
    assert not failures, "\n".join(failures)


def assert_all_close(prefix: str, tf_values, torch_values, tol: Tolerance) -> dict[str, float]:
    """Compares dicts of named tensors (e.g. gradients by neutral name); returns ``{name: difference}``.

    Every tensor is checked and the failure lists each one that is off, as ``prefix/name: ...``. For a
    relative tolerance a tensor's scale is floored at ``REL_FLOOR`` times the largest torch entry of the
    whole set: a tensor whose exact value is zero (the gradient of a conv bias that batch norm cancels)
    holds only round-off in both backends, which a ratio to its own size would blow up.
    """
    if list(tf_values) != list(torch_values):
        raise AssertionError(f"{prefix}: tensor names differ: tf {list(tf_values)} != torch {list(torch_values)}")
    set_scale = max((float(np.max(np.abs(torch_to_numpy(v)))) for v in torch_values.values() if np.size(v)),
                    default=0.0)
    failures, errors = [], {}
    for name in torch_values:
        try:
            errors[name] = assert_close(f"{prefix}/{name}", tf_values[name], torch_values[name], tol, set_scale)
        except AssertionError as error:
            failures.append(str(error))
    if failures:
        raise AssertionError("\n".join(failures))
    return errors


def keras_to_neutral(spec: neutral.ModelSpec, name: str, array) -> np.ndarray:
    """A Keras-layout array of tensor ``name`` in the neutral layout (OIHW conv kernels, (out, in) dense)."""
    array = tf_to_numpy(array)
    kind = spec.tensors[name].kind
    if kind == "conv":  # (H, W, I, O) -> (O, I, H, W)
        return np.transpose(array, (3, 2, 0, 1))
    if kind == "dense":  # (in, out) -> (out, in)
        return np.transpose(array, (1, 0))
    return array


class Twins:
    """A ``tf_meta`` and a ``torch_meta`` model built with the same arguments from the same neutral weights."""

    def __init__(self, builder: str, dtype: str, seed: int = 0, **config):
        import tf_meta.models as tf_models
        import torch_meta.models as torch_models

        self.builder, self.dtype, self.config = builder, dtype, dict(config)
        self.tf = getattr(tf_models, builder)(dtype=dtype, init="native", **config)
        self.torch = getattr(torch_models, builder)(dtype=dtype, init="native", **config)
        self.spec = self.torch.spec
        if self.tf.spec != self.spec:
            raise AssertionError(f"{builder}({config}): the backends build different specs: "
                                 f"tf {self.tf.spec} != torch {self.spec}")
        self.weights = neutral.initialize(self.spec, seed=seed, dtype=dtype)
        self.tf.set_weights(self.weights)
        self.torch.set_weights(self.weights)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The shape of one input example (NHWC images for conv4, both backends)."""
        cfg = self.spec.config
        if self.spec.name == "mlp":
            return (cfg["in_features"],)
        return (cfg["image_size"], cfg["image_size"], cfg["in_channels"])

    def inputs(self, batch: int, seed: int = 1) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch,) + self.example_shape).astype(self.dtype)


def build_twins(builder: str, dtype: str, seed: int = 0, **config) -> Twins:
    return Twins(builder, dtype, seed, **config)


@pytest.fixture
def make_twins():
    """Factory fixture: ``make_twins('conv4', 'float32', hidden=8, num_classes=5)`` -> :class:`Twins`."""
    return build_twins


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The largest tf-torch difference per quantity and dtype, printed and/or written as JSON.

    Printed with ``-v`` or ``DUALMETA_PARITY_REPORT=1``. With ``DUALMETA_PARITY_REPORT=<path>.json`` the same
    table is written to that file (atomically), with the date, the command and the framework versions, for
    ``docs/collect_results.py`` to publish::

        DUALMETA_PARITY_REPORT=results/parity.json python -m pytest parity_tests -q
    """
    report = os.environ.get("DUALMETA_PARITY_REPORT", "")
    if report not in ("", "1") and not report.endswith(".json"):
        terminalreporter.write_line(f"DUALMETA_PARITY_REPORT: expected '1' or a path ending in .json; "
                                    f"received {report!r} (nothing written)", red=True)
    if not MEASURED:
        return
    if config.option.verbose > 0 or report == "1":
        terminalreporter.section("largest tf-torch differences (vs docs/tolerances.md)")
        for (quantity, dtype, kind), error in sorted(MEASURED.items()):
            tol = tolerance(quantity, dtype)
            terminalreporter.write_line(f"{quantity:20s} {dtype:8s} {kind}  {error:.2e}  (tolerance {tol.value:.0e})")
    if report.endswith(".json"):
        _write_parity_report(report, exitstatus, config.invocation_params.args)
        terminalreporter.write_line(f"parity report written to {report}")


def _write_parity_report(path: str, exitstatus: int, args) -> None:
    """Writes :data:`MEASURED` with each tolerance, the date, the command and the versions to ``path``."""
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    command = " ".join([f"DUALMETA_PARITY_REPORT={shlex.quote(path)}", "python -m pytest"]
                       + [shlex.quote(str(arg)) for arg in args])
    rows = [{"quantity": quantity, "dtype": dtype, "kind": kind, "largest": error,
             "tolerance": tolerance(quantity, dtype).value}
            for (quantity, dtype, kind), error in sorted(MEASURED.items())]
    suite = neutral_tolerances.parity_suite_digest(os.path.dirname(os.path.abspath(__file__)))
    report = {"measured": {"date": date, "command": command}, "parity_tests_sha256": suite,
              "torch": torch.__version__,
              "tensorflow": tf.__version__, "pytest_exit_status": int(exitstatus), "rows": rows}
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    neutral.atomic_write(path, json.dumps(report, indent=2) + "\n")
