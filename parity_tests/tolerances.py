"""The parity tolerances, read from the one table in ``docs/tolerances.md``.

The published table *is* what the tests use: this module parses the markdown table whose header starts
with ``quantity | kind | float32 | float64`` and fails loudly (at import) if it is missing, ambiguous, or
lacks a required row. Tests ask for a tolerance by quantity and dtype::

    from parity_tests.tolerances import tolerance
    tol = tolerance("grads", "float32")  # Tolerance(quantity='grads', dtype='float32', kind='rel', value=0.0001)

``kind='abs'`` bounds ``max|tf - torch|``; ``kind='rel'`` bounds ``max|tf - torch| / max(max|torch|, tiny)``,
where for a tensor of a named set (gradients by parameter) ``max|torch|`` is floored at ``REL_FLOOR`` times
the largest entry of the set (the ``rel_floor = ...`` line of the page).
"""
from __future__ import annotations

import math
import os
import re
from typing import NamedTuple

__all__ = ["Tolerance", "tolerance", "load_table", "load_rel_floor", "REL_FLOOR", "TABLE_PATH",
           "REQUIRED_QUANTITIES", "KINDS", "DTYPES"]

TABLE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "tolerances.md")
KINDS = ("abs", "rel")
DTYPES = ("float32", "float64")
REQUIRED_QUANTITIES = ("forward", "loss", "grads", "second_order_grads", "running_stats", "adapted_weights",
                       "meta_grads", "meta_step", "trajectory_loss", "embeddings", "prototypes", "distances")
_HEADER = ("quantity", "kind", "float32", "float64")


class Tolerance(NamedTuple):
    """One cell of the table: how closely ``quantity`` must agree between the backends in ``dtype``."""
    quantity: str
    dtype: str
    kind: str  # 'abs' or 'rel'
    value: float


def _cells(line: str) -> list[str]:
    return [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]


def load_table(path: str = TABLE_PATH) -> dict[tuple[str, str], Tolerance]:
    """Parses the tolerance table of ``path``: ``{(quantity, dtype): Tolerance}``. Raises ``ValueError``."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.lstrip().startswith("|") and tuple(c.lower() for c in _cells(line)[:4]) == _HEADER]
    if len(starts) != 1:
        raise ValueError(f"{path}: expected exactly one table whose header starts with "
                         f"'| {' | '.join(_HEADER)} |'; found {len(starts)}")
    start = starts[0]
    if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[start + 1].strip()):
        raise ValueError(f"{path}:{start + 2}: expected the markdown separator row under the tolerance header")
    table = {}
    for number, line in enumerate(lines[start + 2:], start=start + 3):
        if not line.lstrip().startswith("|"):
            break
        cells = _cells(line)
        if len(cells) < 4:
            raise ValueError(f"{path}:{number}: expected at least 4 cells (quantity, kind, float32, float64); "
                             f"received {line!r}")
        quantity, kind = cells[0], cells[1].lower()
        if kind not in KINDS:
            raise ValueError(f"{path}:{number}: expected kind in {list(KINDS)}; received kind={cells[1]!r}")
        for dtype, text in zip(DTYPES, cells[2:4]):
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"{path}:{number}: {quantity}/{dtype}: expected a number; "
                                 f"received {text!r}") from None
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{path}:{number}: {quantity}/{dtype}: expected a positive tolerance; "
                                 f"received {value}")
            if (quantity, dtype) in table:
                raise ValueError(f"{path}:{number}: quantity {quantity!r} appears twice")
            table[(quantity, dtype)] = Tolerance(quantity, dtype, kind, value)
    missing = [q for q in REQUIRED_QUANTITIES if (q, "float32") not in table]
    if missing:
        raise ValueError(f"{path}: the tolerance table lacks rows for {missing}; "
                         f"it has {sorted({q for q, _ in table})}")
    return table


def load_rel_floor(path: str = TABLE_PATH) -> float:
    """The ``rel_floor = <number>`` line of ``path``: the floor of a tensor's relative scale within a set."""
    with open(path, encoding="utf-8") as handle:
        found = re.findall(r"^\s*`?rel_floor\s*=\s*([0-9.eE+-]+)`?", handle.read(), flags=re.MULTILINE)
    if len(found) != 1:
        raise ValueError(f"{path}: expected exactly one line 'rel_floor = <number>'; found {len(found)}")
    return float(found[0])


TABLE = load_table()
REL_FLOOR = load_rel_floor()


def tolerance(quantity: str, dtype: str) -> Tolerance:
    """The tolerance of ``quantity`` in ``dtype`` (``'float32'`` or ``'float64'``) from ``docs/tolerances.md``."""
    dtype = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if dtype not in DTYPES:
        raise ValueError(f"Expected one of {list(DTYPES)}; received dtype={dtype!r}")
    try:
        return TABLE[(quantity, dtype)]
    except KeyError:
        raise KeyError(f"docs/tolerances.md has no row {quantity!r}; add it to the table (with a line on what "
                       f"it compares) rather than hard-coding a tolerance. Rows: "
                       f"{sorted({q for q, _ in TABLE})}") from None
