"""TensorBoard event files for both backends, written by tensorboardX (no tensorflow or torch import).

Both backends log through :class:`EventWriter`, so their runs carry the same tags and TensorBoard overlays
them (``tensorboard --logdir=runs/compare-sinusoid-maml-float64`` shows the ``torch`` and ``tf`` runs).

tensorboardX imports torch when torch is installed (only to accept torch tensors in its ``add_*`` calls).
dualmeta logs Python floats, so when torch is not loaded yet it is hidden from that import: a TensorFlow
run, or any neutral code, stays free of torch.

Example:
    >>> import tempfile
    >>> with EventWriter(tempfile.mkdtemp()) as writer:
    ...     writer.scalars(1, {"train/loss": 0.5})
"""
from __future__ import annotations

import glob
import os
import sys
import time
from typing import Mapping

__all__ = ["EventWriter"]

FLUSH_SECS = 1  # a killed run loses at most the last second of events
MAX_QUEUE = 1000  # events waiting for the writer thread (at 10, its default, every step waits for it)


def _tensorboardx():
    """The ``tensorboardX`` module, imported without torch unless torch is already loaded."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        import tensorboardX
        return tensorboardX
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        import tensorboardX
    finally:
        del sys.modules["torch"]
    return tensorboardX


class EventWriter:
    """Appends scalar summaries to a new event file in ``logdir`` (created if needed).

    ``scalars(step, {"tag": value})`` writes one event; ``start(step)`` records a restart
    (``SessionLog.START``) so that TensorBoard discards the events an interrupted run wrote after the step it
    resumes from. Events reach the file within ``FLUSH_SECS`` (tensorboardX writes from a thread) and all of
    them on ``close()``.
    """

    def __init__(self, logdir: str | os.PathLike):
        os.makedirs(logdir, exist_ok=True)
        # tensorboardX names files by the second: a unique, sortable suffix keeps two writers of the same
        # second apart, and a resumed run's file (with its restart event) after the interrupted run's.
        suffix = f".{time.time_ns() // 1000:016d}.{os.getpid()}.dualmeta"
        tbx = _tensorboardx()
        self._writer = tbx.SummaryWriter(os.fspath(logdir), max_queue=MAX_QUEUE,
                                          flush_secs=FLUSH_SECS, filename_suffix=suffix)
        (self.path,) = glob.glob(os.path.join(glob.escape(os.fspath(logdir)), f"events.out.tfevents.*{suffix}"))
        self._event_pb2 = sys.modules["tensorboardX.proto.event_pb2"]

    def scalars(self, step: int, values: Mapping[str, float], wall_time: float | None = None) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step), walltime=wall_time)

    def start(self, step: int) -> None:
        """A ``SessionLog.START`` event at ``step`` (a resumed run)."""
        pb = self._event_pb2
        self._writer.file_writer.add_event(pb.Event(session_log=pb.SessionLog(status=pb.SessionLog.START)),
                                           step=int(step))

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
