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


_SCHEME = "dualmeta-file"  # tensorboardX opens paths "<scheme>:<path>" through the factory registered for it


def _tensorboardx():
    """The ``tensorboardX`` module, imported without torch unless torch is already loaded."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    import tensorboardX
    from tensorboardX import record_writer
    record_writer.register_writer_factory(_SCHEME, _LocalFiles())
    return tensorboardX


class _EventFile:
    """An event file that its writer thread flushes to the OS without ``fsync`` (tensorboardX's local files
    fsync at every flush, once a second); a failed write (a full disk) drops the events with one warning
    instead of killing the thread, so a run reports its real error (e.g. the checkpoint it could not save)."""

    def __init__(self, path: str):
        self._file, self._failed = open(path, "wb"), False

    def _guard(self, operation, *args) -> None:
        if self._failed:
            return
        try:
            operation(*args)
        except OSError as error:
            self._failed = True
            print(f"dualmeta: warning: TensorBoard events no longer written to {self._file.name}: {error}",
                  file=sys.stderr, flush=True)

    def write(self, data: bytes) -> None:
        self._guard(self._file.write, data)

    def flush(self) -> None:
        self._guard(self._file.flush)

    def close(self) -> None:
        self.flush()
        try:
            self._file.close()
        except OSError:
            pass


class _LocalFiles:
    """The tensorboardX writer factory of ``_SCHEME`` paths: local :class:`_EventFile` s."""

    @staticmethod
    def _local(path: str) -> str:
        return path.split(":", 1)[1]

    def open(self, path: str) -> _EventFile:
        return _EventFile(self._local(path))

    def directory_check(self, path: str) -> None:
        os.makedirs(self._local(path), exist_ok=True)


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
        self._writer = tbx.SummaryWriter(f"{_SCHEME}:{os.path.abspath(logdir)}", max_queue=MAX_QUEUE,
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
