"""Seed-to-seed error bars for backend comparisons (``python -m dualmeta compare --seeds=N``).

A comparison with one seed shows that both backends follow the same trajectory from the same weights (the
per-step parity check). A framework-comparison study also needs the other question answered: is the gap
between the backends' final metrics small *compared with what another seed would change*? For each of
``N`` seeds both backends train from that seed's neutral weights on that seed's episodes; the final metrics
(accuracy, or MSE for regression) of one backend across seeds give the seed-to-seed spread, and Welch's
two-sample t-test compares the two backends' means against it.

Pure Python (``math``): the Student t distribution is computed here, from the regularised incomplete beta
function, so that the comparison needs no SciPy.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

__all__ = ["welch", "student_t_sf", "student_t_quantile", "seeds_summary", "seeds_markdown", "STATISTIC"]

STATISTIC = ("Welch's two-sample t-test across seeds: p is the probability, if both backends' final metrics "
             "came from one seed-to-seed distribution, of a gap between their means at least as large as the "
             "measured one; p >= 0.05, with a 95% interval of the gap that contains 0, reads as 'the backends "
             "agree within the spread between seeds'.")


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom (any real ``df > 0``)."""
    if not df > 0:
        raise ValueError(f"Expected df > 0; received df={df}")
    tail = 0.5 * _incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


def student_t_quantile(p: float, df: float) -> float:
    """The ``t`` with P(T <= t) = p (bisection on :func:`student_t_sf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"Expected 0 < p < 1; received p={p}")
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 1.0 - student_t_sf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1)


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's test of ``mean(a) - mean(b)``: ``{"difference", "t", "df", "p", "ci95": [lo, hi]}``.

    Two values or more per sample. Both samples without spread: p = 1 if the means are equal, else 0 (the
    interval is the point difference)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Expected at least 2 values per backend (--seeds >= 2); received {len(a)} and {len(b)}")
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    diff = ma - mb
    se2 = va / len(a) + vb / len(b)
    if se2 <= 0.0 or not math.isfinite(se2):
        return {"difference": diff, "t": math.copysign(math.inf, diff) if diff else 0.0, "df": None,
                "p": 1.0 if diff == 0 else 0.0, "ci95": [diff, diff]}
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    t = diff / math.sqrt(se2)
    half = student_t_quantile(0.975, df) * math.sqrt(se2)
    return {"difference": diff, "t": t, "df": df, "p": min(1.0, 2.0 * student_t_sf(abs(t), df)),
            "ci95": [diff - half, diff + half]}


def seeds_summary(reports: Mapping[int, Mapping], metric: str) -> dict:
    """The across-seed part of ``compare --seeds``: per seed the parity verdict and each backend's final
    ``metric`` (``"accuracy"`` or ``"mse"``), each backend's mean and standard deviation over seeds, and
    :func:`welch` of tf against torch."""
    seeds = sorted(reports)
    values = {name: [float(reports[s]["backends"][name]["evaluation"][metric]["mean"]) for s in seeds]
              for name in ("torch", "tf")}
    spread = {name: {"mean": _mean_var(v)[0], "std": math.sqrt(_mean_var(v)[1])} for name, v in values.items()}
    test = welch(values["tf"], values["torch"])
    return {"seeds": seeds, "metric": metric, "per_seed": {str(s): {
                "verdict": reports[s]["verdict"], "max_rel_loss_diff": reports[s]["max_rel_loss_diff"],
                "torch": values["torch"][i], "tf": values["tf"][i]} for i, s in enumerate(seeds)},
            "backends": spread, "welch_tf_minus_torch": test,
            "agree": bool(test["p"] >= 0.05 and test["ci95"][0] <= 0.0 <= test["ci95"][1]),
            "parity": "pass" if all(reports[s]["verdict"] == "pass" for s in seeds) else "fail",
            "statistic": STATISTIC}


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value == 0 or abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"


def seeds_markdown(summary: Mapping, config: Mapping) -> str:
    """The Markdown report of ``compare --seeds``."""
    test, metric = summary["welch_tf_minus_torch"], summary["metric"]
    lines = [f"# dualmeta compare over {len(summary['seeds'])} seeds: {config['learner']} on {config['tasks']}, "
             f"{config['dtype']}", "",
             f"**Backends {'agree' if summary['agree'] else 'differ'}** within the seed-to-seed spread: final "
             f"{metric} tf - torch = {_num(test['difference'])} (95% interval {_num(test['ci95'][0])} to "
             f"{_num(test['ci95'][1])}), p = {_num(test['p'])}. Per-step parity: {summary['parity'].upper()} "
             f"for every seed." if summary["parity"] == "pass" else
             f"**Backends {'agree' if summary['agree'] else 'differ'}** within the seed-to-seed spread (p = "
             f"{_num(test['p'])}); per-step parity FAILED for at least one seed.", "",
             summary["statistic"], "",
             f"| seed | parity | max rel. loss diff | torch {metric} | tf {metric} |", "|---|---|---|---|---|"]
    for seed, row in summary["per_seed"].items():
        lines.append(f"| {seed} | {row['verdict']} | {row['max_rel_loss_diff']:.3g} | {_num(row['torch'])} | "
                     f"{_num(row['tf'])} |")
    for name in ("torch", "tf"):
        b = summary["backends"][name]
        lines.append(f"| {name}: mean ± std over seeds | | | " + (
            f"{_num(b['mean'])} ± {_num(b['std'])} | |" if name == "torch" else f"| {_num(b['mean'])} ± {_num(b['std'])} |"))
    lines += ["", "Each seed's own report (loss curves, parity) is in its `seed-<n>/` folder.", ""]
    return "\n".join(lines)
