"""The parity tolerance table: how close the two backends must be, per quantity and dtype.

This dict is the single source of truth: ``parity_tests`` and ``dualmeta compare`` read it, and
``docs/tolerances.md`` publishes it (a test checks the page and this table agree).

Each entry is ``(tolerance, kind)``; ``kind`` is ``'abs'`` (max |tf - torch|) or ``'rel'``
(max |tf - torch| / max |torch|). When a quantity is a set of named tensors (gradients, weights), the
relative scale of a tensor is floored at ``REL_FLOOR`` times the largest tensor of the set: a tensor whose
true value is zero (the gradient of a convolution bias followed by batch norm) holds only round-off, which
is compared against the scale of the whole set instead of against itself.
"""
from __future__ import annotations

import hashlib
import os

__all__ = ["TOLERANCES", "REL_FLOOR", "tolerance", "within", "differences", "compare", "parity_suite_digest"]

REL_FLOOR = 1e-2

TOLERANCES: dict[str, dict[str, tuple[float, str]]] = {
    "forward":         {"float32": (1e-5, "abs"), "float64": (1e-10, "abs")},
    "loss":            {"float32": (1e-5, "rel"), "float64": (1e-10, "rel")},
    "grads":           {"float32": (1e-4, "rel"), "float64": (1e-10, "rel")},
    "adapted_weights": {"float32": (1e-4, "rel"), "float64": (1e-10, "rel")},
    "meta_grads":      {"float32": (1e-3, "rel"), "float64": (1e-10, "rel")},
    "meta_step":       {"float32": (1e-4, "rel"), "float64": (1e-10, "rel")},
    "trajectory_loss": {"float32": (1e-3, "rel"), "float64": (1e-8, "rel")},
    "embeddings":      {"float32": (1e-5, "abs"), "float64": (1e-10, "abs")},
    "prototypes":      {"float32": (1e-5, "abs"), "float64": (1e-10, "abs")},
    "distances":       {"float32": (1e-4, "rel"), "float64": (1e-10, "rel")},
}


def tolerance(quantity: str, dtype: str) -> tuple[float, str]:
    """``(tolerance, kind)`` for a quantity and dtype; raises naming the accepted values."""
    if quantity not in TOLERANCES:
        raise ValueError(f"Expected one of {sorted(TOLERANCES)}; received quantity={quantity!r}")
    if dtype not in TOLERANCES[quantity]:
        raise ValueError(f"Expected one of {sorted(TOLERANCES[quantity])}; received dtype={dtype!r}")
    return TOLERANCES[quantity][dtype]


def within(quantity: str, dtype: str, a, b) -> tuple[bool, float]:
    """Whether arrays ``a`` (tf) and ``b`` (torch) agree within the table; returns ``(ok, difference)``."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    tol, kind = tolerance(quantity, dtype)
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    if kind == "rel":
        diff /= max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    return diff <= tol, diff


def differences(quantity: str, dtype: str, tf_values, torch_values) -> dict[str, float]:
    """The measured difference of each named tensor, as the tolerance of ``quantity`` counts it.

    ``abs``: ``max|tf - torch|``; ``rel``: that divided by ``max|torch|`` of the tensor, floored at
    ``REL_FLOOR`` times the largest torch entry of the whole set. Raises ``ValueError`` if the names or
    shapes differ.
    """
    import numpy as np

    _, kind = tolerance(quantity, dtype)
    if sorted(tf_values) != sorted(torch_values):
        only_tf = sorted(set(tf_values) - set(torch_values))
        only_torch = sorted(set(torch_values) - set(tf_values))
        raise ValueError(f"{quantity}: names differ: only in tf {only_tf}, only in torch {only_torch}")
    arrays = {n: (np.asarray(tf_values[n], np.float64), np.asarray(torch_values[n], np.float64))
              for n in torch_values}
    scale = max([float(np.max(np.abs(b))) for _, b in arrays.values() if b.size] + [0.0])
    result = {}
    for name, (a, b) in arrays.items():
        if a.shape != b.shape:
            raise ValueError(f"{quantity}/{name}: shape {a.shape} (tf) != {b.shape} (torch)")
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        if kind == "rel":
            own = float(np.max(np.abs(b))) if b.size else 0.0
            diff /= max(own, REL_FLOOR * scale, 1e-30)
        result[name] = diff
    return result


def compare(quantity: str, dtype: str, tf_values, torch_values) -> list[str]:
    """Compares two dicts of named arrays; returns one failure line per tensor out of tolerance.

    A line names the tensor: ``meta_grads/blocks.0.conv.weight: max|tf-torch| (rel) 3e-05 > 1e-05``.
    """
    tol, kind = tolerance(quantity, dtype)
    try:
        measured = differences(quantity, dtype, tf_values, torch_values)
    except ValueError as error:
        return [str(error)]
    label = " (rel)" if kind == "rel" else ""
    return [f"{quantity}/{name}: max|tf-torch|{label} {diff:.3g} > {tol:g}"
            for name, diff in measured.items() if not diff <= tol]


def parity_suite_digest(folder: str | os.PathLike) -> str:
    """sha256 of the parity suite's sources (every ``*.py`` of ``folder``, by name and content).

    ``results/parity.json`` records it when the suite writes its report, so that ``docs/collect_results.py
    --check`` can tell a report measured by an older suite (one without today's cases) from a current one.
    """
    digest = hashlib.sha256()
    for name in sorted(n for n in os.listdir(folder) if n.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as handle:
            digest.update(name.encode() + b"\0" + handle.read() + b"\0")
    return digest.hexdigest()
