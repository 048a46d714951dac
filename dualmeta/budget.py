"""Training for a wall-clock budget, and the evaluations a results table needs (numpy only, either backend).

The Omniglot examples train "for 30 minutes" rather than for a number of steps, so that the two backends
(and a plain reference) are compared at equal cost. :func:`train_for` runs meta-training steps until the
budget is spent (the step in flight finishes), keeps a learning curve (the mean training loss/accuracy of
every ``log_every`` steps, with the training seconds spent so far) and, if asked, measures an accuracy
curve every ``curve_every_s`` seconds of training; the time spent measuring it is *not* charged to the
budget. :func:`evaluate_settings` runs the fixed test episodes of several N-way K-shot settings.

    >>> from dualmeta import budget
    >>> report = budget.train_for(learner, tasks, meta_batch_size=32, minutes=30)   # doctest: +SKIP
    >>> report["steps"], report["seconds_per_step"], report["curve"][-1]             # doctest: +SKIP
"""
from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import shlex
import sys
import time
from typing import Callable, Iterable, Mapping

__all__ = ["train_for", "evaluate_settings", "accuracy_line", "provenance", "machine"]


def train_for(learner, tasks, meta_batch_size: int, minutes: float, *, max_steps: int | None = None,
              log_every: int = 100, curve: Callable[[], Mapping] | None = None, curve_every_s: float = 0.0,
              print_fn: Callable[[str], None] | None = print) -> dict:
    """Meta-trains ``learner`` on ``tasks.batch(step, meta_batch_size)`` for ``minutes`` of training time.

    Args:
      max_steps: stop earlier after this many steps.
      log_every: steps per point of the training curve (and per progress line).
      curve: returns evaluation metrics (e.g. ``learner.evaluate(...)``); called at the start, every
        ``curve_every_s`` seconds of training and at the end; its own time is excluded from the budget.
      print_fn: progress lines (``None``: silent).

    Returns a dict: ``steps``, ``seconds`` (training only), ``first_step_seconds`` (includes tracing),
    ``seconds_per_step`` (the steps after the first), ``train_curve`` (``[step, seconds, loss, accuracy]``
    rows), ``eval_curve`` (``[step, seconds, {metrics}]`` rows), ``final_loss``, ``final_accuracy``.

    Raises:
      FloatingPointError: the training loss became NaN or infinite (names the fix).
    """
    if not minutes > 0:
        raise ValueError(f"Expected a positive training budget; received minutes={minutes}")
    budget = 60.0 * minutes
    trained = 0.0  # training seconds so far
    step, window, first_step_s = 0, [], None
    train_curve, eval_curve = [], []
    next_curve = 0.0

    def measure() -> None:
        metrics = curve()
        eval_curve.append([step, round(trained, 2), metrics])
        if print_fn is not None:
            print_fn(f"  eval at step {step} ({trained:.0f} s): {accuracy_line(metrics)}")

    while step == 0 or (trained < budget and (max_steps is None or step < max_steps)):
        if curve is not None and curve_every_s > 0 and trained >= next_curve:
            measure()
            next_curve += curve_every_s
        t0 = time.perf_counter()
        metrics = learner.meta_train_step(tasks.batch(step, meta_batch_size))
        elapsed = time.perf_counter() - t0
        trained += elapsed
        if step == 0:
            first_step_s = elapsed
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"Training loss is {loss} at step {step + 1}; lower the learning rates")
        window.append(metrics)
        step += 1
        if step % log_every == 0:
            mean_loss = sum(float(m["loss"]) for m in window) / len(window)
            mean_acc = sum(float(m.get("accuracy", math.nan)) for m in window) / len(window)
            train_curve.append([step, round(trained, 2), mean_loss, mean_acc])
            if print_fn is not None:
                print_fn(f"step {step:6d}  loss {mean_loss:.4f}  accuracy {mean_acc:.4f}  {trained:7.1f} s")
            window = []
    if curve is not None:
        measure()
    last = window[-1] if window else metrics
    return {"steps": step, "seconds": round(trained, 2), "first_step_seconds": round(first_step_s, 3),
            "seconds_per_step": round((trained - first_step_s) / max(step - 1, 1), 4),
            "final_loss": float(last["loss"]), "final_accuracy": float(last.get("accuracy", math.nan)),
            "train_curve": train_curve, "eval_curve": eval_curve}


def evaluate_settings(learner, dataset, settings: Iterable[tuple[int, int]], queries: int, episodes: int,
                      seed: int, print_fn: Callable[[str], None] | None = print, wrap: Callable | None = None,
                      **evaluate_kwargs) -> dict:
    """``{"5w1s": {"accuracy": {...}, "loss": {...}, "seconds": s}, ...}`` over ``episodes`` fixed episodes.

    Episode ``i`` of a setting is the same in every run and backend (``ClassificationTasks(dataset, ways,
    shots, queries, seed).episode(i)``, passed through ``wrap`` if given, e.g.
    ``dualmeta.sequences.ShuffledSupport`` for the model-based learners).
    """
    from dualmeta.episodes import ClassificationTasks

    results = {}
    for ways, shots in settings:
        tasks = ClassificationTasks(dataset, ways, shots, queries, seed=seed)
        if wrap is not None:
            tasks = wrap(tasks)
        start = time.perf_counter()
        result = learner.evaluate((tasks.episode(i) for i in range(episodes)), **evaluate_kwargs)
        name = f"{ways}w{shots}s"
        results[name] = {**result, "seconds": round(time.perf_counter() - start, 2)}
        if print_fn is not None:
            print_fn(f"{name:>6}: {accuracy_line(result)}")
    return results


def accuracy_line(metrics: Mapping) -> str:
    """``accuracy 97.87 ± 0.29 % over 600 episodes`` from ``evaluate``'s result."""
    acc = metrics["accuracy"]
    return f"accuracy {100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f} % over {acc['n']} episodes"


def provenance(script: str, argv: list[str] | None = None) -> dict:
    """``{"date": <now, ISO 8601 UTC>, "command": "python <script> <arguments>"}`` for a results file."""
    argv = sys.argv[1:] if argv is None else argv
    date = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    return {"date": date, "command": " ".join(["python", script] + [shlex.quote(a) for a in argv])}


def machine() -> dict:
    """The machine a figure was measured on: CPUs, Python, the installed torch and tensorflow, the OS
    (versions read from the installed packages, without importing the frameworks)."""
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": version("torch"),
            "tensorflow": version("tensorflow") or version("tensorflow-cpu"), "platform": platform.platform()}
