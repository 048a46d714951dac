"""Metrics shared by both backends (numpy): accuracy and the 95% confidence interval papers report."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np

__all__ = ["mean_ci95", "accuracy", "summarize"]


def mean_ci95(values: Iterable[float]) -> dict[str, float]:
    """Mean and half-width of the 95% confidence interval, ``1.96 * std / sqrt(n)``.

    ``std`` is the population standard deviation (``ddof=0``), as in the few-shot papers' code.

      >>> mean_ci95([1.0, 0.0, 1.0, 0.0])
      {'mean': 0.5, 'ci95': 0.49, 'n': 4}
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value; received none")
    ci = 1.96 * values.std() / math.sqrt(values.size)
    return {"mean": float(values.mean()), "ci95": float(ci), "n": int(values.size)}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels)))


def summarize(per_episode: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """``{"loss": [...], "accuracy": [...]}`` per episode -> ``{"loss": {"mean", "ci95", "n"}, ...}``."""
    return {name: mean_ci95(values) for name, values in per_episode.items()}
