"""The meta-training loop, written once for both backends (it only calls the ``Learner`` interface).

Step ``s`` (1-based) trains on meta-batch ``s - 1`` of the task set, so the step alone fixes the next
batch and a resumed run repeats an uninterrupted one exactly. Each step's metrics go to a tqdm progress bar
(or line) on stderr, ``metrics.jsonl`` and TensorBoard (tags ``train/loss``, ``train/accuracy``,
``train/steps_per_s``, ``val/loss``, ``val/accuracy``). SIGINT and SIGTERM end the loop after the
current step, which is then checkpointed; a second signal aborts at once (the last checkpoint survives).
A step still running 8 s after the signal, or one that outgrows the memory limit, ends the process with
one line and the last checkpoint kept (:mod:`dualmeta.guard`). A non-finite loss stops the loop before
anything is saved.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time

from dualmeta import guard
from typing import Callable, Mapping, NamedTuple, TextIO

from tqdm import tqdm

__all__ = ["Progress", "MetricsLog", "Outcome", "NonFiniteLoss", "train"]


class Progress:
    """Training progress on ``stream`` (stderr), drawn by tqdm.

    On a terminal: a tqdm bar, updated in place at most 10 times a second
    (``torch  12%|█▏        | 120/1000 [00:03<00:25, 35.20step/s, loss=0.4123, acc=0.8120]``). Otherwise (a log
    file, CI): a plain line every ``every`` steps and at the last step, formatted by tqdm
    (``torch step 500/5000  loss 1.7019  428.40 steps/s  ETA 00:11``). ``enabled=False`` (``--noprogress``):
    nothing.
    """

    PLAIN_FORMAT = "{desc}step {n_fmt}/{total_fmt}{metrics}  {rate_noinv_fmt}  ETA {remaining}"

    def __init__(self, total: int, start: int = 0, stream: TextIO | None = None, every: int = 100,
                 label: str = "", enabled: bool = True):
        self.total, self.start, self.every, self.label = total, start, max(1, every), label
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._bar = None
        if self.tty:
            self._bar = tqdm(total=total, initial=start, desc=label.strip() or None, unit="step",
                             file=self.stream, mininterval=0.1, dynamic_ncols=True, leave=True)

    def line(self, step: int, metrics: Mapping[str, float]) -> str:
        """The plain line of ``step`` (tqdm's rate and remaining time since the first step of this run)."""
        text = "".join(f"  {'acc' if name == 'accuracy' else name} {value:.4f}" for name, value in metrics.items())
        return tqdm.format_meter(step, self.total, time.perf_counter() - self.t0, prefix=self.label,
                                 unit=" steps", initial=self.start, bar_format=self.PLAIN_FORMAT, metrics=text)

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        if self._bar is not None:
            self._bar.set_postfix({("acc" if name == "accuracy" else name): f"{value:.4f}"
                                   for name, value in metrics.items()}, refresh=False)
            self._bar.update(step - self._bar.n)
        elif self.enabled and (step >= self.total or step % self.every == 0):
            self.stream.write(self.line(step, metrics) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class MetricsLog:
    """``<logdir>/metrics.jsonl``: one JSON object a line, ``{"step", "split", "loss", ...}``.

    ``truncate_after(step)`` drops the lines an interrupted run wrote after the checkpoint it resumes from,
    rewriting the file atomically.
    """

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "a")

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        self._file.write(json.dumps({"step": step, "split": split, **metrics, "time": round(time.time(), 3)}) + "\n")
        self._file.flush()

    @staticmethod
    def truncate_after(path: str, step: int) -> None:
        if not os.path.isfile(path):
            return
        kept = []
        with open(path) as handle:
            for line in handle:
                try:
                    if json.loads(line)["step"] <= step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill
        # Atomically (a temporary file and a rename): a kill during the rewrite leaves the old log whole.
        from dualmeta.weights import atomic_write
        atomic_write(path, "".join(kept))

    def close(self) -> None:
        self._file.close()


class NonFiniteLoss(ArithmeticError):
    def __init__(self, step: int, loss: float, saved_step: int | None):
        kept = (f"the last good checkpoint (step {saved_step}) is kept" if saved_step is not None
                else "no checkpoint was written")
        super().__init__(f"The training loss became {loss} at step {step}; stopped, {kept}. Lower --meta_lr "
                         "or --inner_lr (or use --dtype=float64)")
        self.step, self.loss, self.saved_step = step, loss, saved_step


class Outcome(NamedTuple):
    step: int  # the last completed step
    status: str  # 'done' or the name of the signal that stopped the run ('SIGINT', 'SIGTERM')
    saved_step: int | None  # the step of the last checkpoint written (None: none)
    losses: list  # training loss of every step this call ran
    seconds: float  # wall time of the training steps (validation and saving excluded)
    times: list  # wall time of every step this call ran


@contextlib.contextmanager
def _stop_on_signals(flag: dict):
    """SIGINT/SIGTERM set ``flag['signal']``; a second one raises ``KeyboardInterrupt`` at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("signal"):
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(learner, tasks, meta_batch_size: int, steps: int, *, start_step: int = 0,
          save: Callable[[int], None] | None = None, checkpoint_every: int = 0,
          validate: Callable[[], Mapping[str, float]] | None = None, val_every: int = 0,
          writer=None, metrics_log: MetricsLog | None = None, progress: Progress | None = None,
          saved_step: int | None = None, agree: Callable[[int], int] | None = None) -> Outcome:
    """Runs meta-training steps ``start_step + 1 ... steps``.

    Args:
      learner: any dualmeta learner (either backend).
      tasks: a task set; step ``s`` trains on ``tasks.batch(s - 1, meta_batch_size)``.
      save: ``save(step)`` writes a checkpoint; called every ``checkpoint_every`` steps, at the last step
        and when a signal stops the run.
      validate: returns validation metrics; called every ``val_every`` steps and at the last step.
      writer: a :class:`dualmeta.tensorboard.EventWriter` (tensorboardX; or None); metrics_log: a :class:`MetricsLog`.
      saved_step: the step of the checkpoint the run starts from (named if the loss becomes non-finite).
      agree: for distributed runs, ``agree(signal_number or 0)`` returns the largest value over the workers;
        called before every step, so that a signal any worker receives stops them all after the same step.

    Raises:
      NonFiniteLoss: a step gave a NaN or infinite loss (nothing is saved for that step).
    """
    flag: dict = {}
    losses, times, step = [], [], start_step
    state = {"step": step, "saved_step": saved_step}  # what the watchdog (dualmeta.guard) reports

    def checkpoint(at: int) -> None:
        nonlocal saved_step
        if save is not None and saved_step != at:
            save(at)
            saved_step = state["saved_step"] = at

    with _stop_on_signals(flag), guard.watching(state):
        while step < steps:
            if agree is not None:
                received = agree(int(signal.Signals[flag["signal"]]) if flag.get("signal") else 0)
                if received:
                    flag.setdefault("signal", signal.Signals(received).name)
            if flag.get("signal"):
                break
            batch = tasks.batch(step, meta_batch_size)
            t0 = time.perf_counter()
            metrics = learner.meta_train_step(batch)
            elapsed = time.perf_counter() - t0
            step += 1
            state["step"] = step
            times.append(elapsed)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                if progress is not None:
                    progress.close()
                raise NonFiniteLoss(step, loss, saved_step)
            losses.append(loss)
            metrics = {name: float(value) for name, value in metrics.items()}
            if progress is not None:
                progress.update(step, metrics)
            if metrics_log is not None:
                metrics_log.write(step, "train", metrics)
            if writer is not None:
                writer.scalars(step, {**{f"train/{k}": v for k, v in metrics.items()},
                                      "train/steps_per_s": 1.0 / max(elapsed, 1e-9)})
            if validate is not None and (step == steps or (val_every and step % val_every == 0)):
                val = {name: float(value) for name, value in validate().items()}
                if metrics_log is not None:
                    metrics_log.write(step, "val", val)
                if writer is not None:
                    writer.scalars(step, {f"val/{k}": v for k, v in val.items()})
            if step == steps or (checkpoint_every and step % checkpoint_every == 0):
                checkpoint(step)
        state["settled"] = True  # no step runs any more: a signal now waits for the checkpoint below
        if progress is not None:
            progress.close()
        if flag.get("signal"):
            checkpoint(step)
    return Outcome(step, flag.get("signal") or "done", saved_step, losses, sum(times), times)
