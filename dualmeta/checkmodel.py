"""``python -m dualmeta check-model --model=package.module:description``: are the two twins one function?

Builds the description (``dualmeta.twins``) in both backends with the same neutral weights and compares,
on seeded random inputs, every layer's output (in order: the first one out of tolerance is named), the
gradients of a random linear loss, and the second-order gradient through one inner step (what MAML
differentiates), against the tolerance table of ``dualmeta.tolerances`` ('forward', 'grads', 'meta_grads').
The backends are imported only when the check runs.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np

from dualmeta import tolerances, twins, weights as neutral

__all__ = ["Finding", "check", "report"]


class Finding(NamedTuple):
    """The first quantity out of tolerance (``None`` fields when the twins agree)."""
    ok: bool
    where: str | None  # 'forward/<layer>', 'grads/<tensor>' or 'second_order/<tensor>'
    difference: float
    tolerance: float
    kind: str


_QUANTITY = {"forward": "forward", "grads": "grads", "second_order": "meta_grads"}


def _inputs(description, batch: int, dtype: str, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + tuple(description.input_shape)).astype(dtype)
    return x


def check(description, dtype: str = "float64", batch: int = 4, seed: int = 0) -> Finding:
    """Compares the torch and tf twins of ``description``; the first difference out of tolerance, in order."""
    neutral.check_dtype(dtype)
    description.spec()
    weights = neutral.initialize(description.spec(), seed=seed, dtype=dtype)
    x = _inputs(description, batch, dtype, seed)
    results = {}
    for backend in ("torch_meta", "tf_meta"):
        models = importlib.import_module(f"{backend}.models")
        if backend == "torch_meta":
            probe_out = models.build(description, dtype=dtype)(importlib.import_module("torch").as_tensor(x))
            direction = np.random.default_rng(seed + 1).standard_normal(tuple(probe_out.shape)).astype(dtype)
        results[backend] = models.probe(description, weights, x, direction)
    ref, other = results["torch_meta"], results["tf_meta"]
    for group in ("forward", "grads", "second_order"):
        tol, kind = tolerances.tolerance(_QUANTITY[group], dtype)
        names = [n for n in ref if n.startswith(group + "/")]
        scale = max((float(np.max(np.abs(ref[n]))) for n in names if ref[n].size), default=0.0)
        for name in names:
            a, b = ref[name], other.get(name)
            if b is None or np.shape(a) != np.shape(b):
                return Finding(False, name, float("inf"), tol, kind)
            diff = float(np.max(np.abs(a - b))) if a.size else 0.0
            if kind == "rel":
                diff /= max(float(np.max(np.abs(a))) if a.size else 0.0, tolerances.REL_FLOOR * scale, 1e-300)
            if not diff <= tol:
                return Finding(False, name, diff, tol, kind)
    return Finding(True, None, 0.0, 0.0, "")


def report(path: str, dtypes=("float32", "float64")) -> tuple[bool, str]:
    """Runs :func:`check` for ``path`` (``'package.module:name'`` or a built-in name) in each dtype: ``(ok, text)``."""
    description = getattr(twins, path)() if path in ("mlp", "conv4", "resnet12") else twins.load(path)
    lines, ok = [], True
    for dtype in dtypes:
        finding = check(description, dtype=dtype)
        if finding.ok:
            lines.append(f"{description.name} {dtype}: forward, gradients and second-order gradients agree")
        else:
            ok = False
            layer = finding.where.split("/", 1)[1]
            what = {"forward": "the output of layer", "grads": "the gradient of",
                    "second_order": "the second-order gradient of"}[finding.where.split("/")[0]]
            lines.append(f"{description.name} {dtype}: FAIL at {what} {layer!r}: {finding.kind} difference "
                         f"{finding.difference:.3g} > {finding.tolerance:g}")
    return ok, "\n".join(lines)
