"""Reports: evaluation JSON (``--report``) and the side-by-side ``compare`` report (JSON, Markdown, PNG).

Pure Python and numpy; matplotlib (Agg) is imported only to draw the PNG.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from dualmeta.checkpoint import atomic_write_text

__all__ = ["evaluation_report", "write_json", "relative_differences", "compare_markdown", "plot_compare",
           "summary_table", "text_table"]


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as indented JSON, atomically; creates the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def evaluation_report(result: Mapping[str, Mapping[str, float]], *, classification: bool, episodes: int,
                      backend: str, learner: str, **extra: Any) -> dict[str, Any]:
    """The stable report layout: ``accuracy`` (``mse`` for regression) and ``loss`` as ``{"mean", "ci95"}``,
    then ``episodes``, ``backend``, ``learner`` and any ``extra`` settings."""
    def stat(name):
        return {"mean": result[name]["mean"], "ci95": result[name]["ci95"]}

    report: dict[str, Any] = {"accuracy": stat("accuracy")} if classification else {"mse": stat("loss")}
    report.update(loss=stat("loss"), episodes=int(episodes), backend=backend, learner=learner)
    report.update(extra)
    return report


def relative_differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Per-step ``|a - b| / |b|`` (``b`` is the reference, torch)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-30)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"


def summary_table(report: Mapping[str, Any]) -> list[list[str]]:
    """Rows of the compare summary: metric, torch, tf."""
    metric = "accuracy" if "accuracy" in report["backends"]["torch"]["evaluation"] else "mse"
    rows = [["", "torch", "tf"]]
    b = report["backends"]
    rows.append(["final train loss", _fmt(b["torch"]["losses"][-1]), _fmt(b["tf"]["losses"][-1])])
    for name in (metric, "loss") if metric == "accuracy" else (metric,):
        rows.append([f"eval {name} ({report['episodes']} episodes)"] + [
            f"{_fmt(b[k]['evaluation'][name]['mean'])} ± {_fmt(b[k]['evaluation'][name]['ci95'])}"
            for k in ("torch", "tf")])
    rows.append(["median time per step (ms)", f"{1e3 * b['torch']['s_per_step']:.2f}", f"{1e3 * b['tf']['s_per_step']:.2f}"])
    return rows


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def compare_markdown(report: Mapping[str, Any]) -> str:
    cfg, tol = report["config"], report["tolerance"]
    rows = summary_table(report)
    lines = [f"# dualmeta compare: {cfg['learner']} on {cfg['tasks']}, {cfg['dtype']}", "",
             f"**Verdict: {report['verdict'].upper()}** — max per-step relative difference of the training loss "
             f"{report['max_rel_loss_diff']:.3g} (step {report['max_rel_loss_diff_step']}) vs tolerance "
             f"{tol['value']:g} ('{tol['quantity']}', {tol['dtype']}, from dualmeta.tolerances).", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", f"Final weights: max |tf - torch| = {report['final_weights_max_abs_diff']:.3g}. "
              f"Both backends started from the same neutral weights (dualmeta.weights.initialize, seed "
              f"{cfg['seed']}) and trained on the same {report['steps']} meta-batches.", "",
              "Settings: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None), "",
              "![loss curves](compare.png)", ""]
    return "\n".join(lines)


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at every step (fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    ends = np.arange(1, len(values) + 1)
    return (sums[ends] - sums[ends - counts]) / counts


def plot_compare(path: str, report: Mapping[str, Any]) -> bool:
    """Loss curves overlaid and the per-step relative difference; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    torch_loss = np.asarray(report["backends"]["torch"]["losses"])
    tf_loss = np.asarray(report["backends"]["tf"]["losses"])
    steps = np.arange(1, len(torch_loss) + 1)
    window = max(1, len(steps) // 50)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    top.plot(steps, torch_loss, color="C0", lw=0.5, alpha=0.25, label="torch, every step")
    top.plot(steps, _running_mean(torch_loss, window), color="C0", lw=3, alpha=0.6,
             label=f"torch, mean of {window} steps")
    top.plot(steps, _running_mean(tf_loss, window), color="C1", lw=1.2, ls="--", label=f"tf, mean of {window} steps")
    top.set_yscale("log")
    top.set_ylabel("training loss (query set)")
    top.legend()
    cfg = report["config"]
    top.set_title(f"{cfg['learner']} on {cfg['tasks']} ({cfg['dtype']}): verdict {report['verdict']}")
    diff = np.maximum(np.asarray(report["rel_loss_diff"]), 1e-18)
    bottom.plot(steps, diff, lw=0.8, color="C2", label="|tf - torch| / |torch| (0 drawn at 1e-18)")
    bottom.axhline(report["tolerance"]["value"], color="C3", ls=":", label="tolerance")
    bottom.set_yscale("log")
    bottom.set_xlabel("step")
    bottom.set_ylabel("relative difference")
    bottom.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True
