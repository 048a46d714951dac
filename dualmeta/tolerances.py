"""The parity tolerance table: how close the two backends must be, per quantity and dtype.

This dict is the single source of truth: ``parity_tests`` and ``dualmeta compare`` read it, and
``docs/tolerances.md`` publishes it (a test checks the page and this table agree).

Each entry is ``(tolerance, kind)``; ``kind`` is ``'abs'`` (max |tf - torch|) or ``'rel'``
(max |tf - torch| / max |torch|).
"""
from __future__ import annotations

__all__ = ["TOLERANCES", "tolerance", "within"]

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
