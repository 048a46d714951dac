"""A watchdog for training steps: a memory ceiling, and signals that stop a run within seconds.

Two failures that a Python-level handler cannot prevent, because both happen *inside* one meta-step (a
second-order graph over thousands of inner steps is one step):

* **Memory.** The step grows until the machine swaps or the kernel kills something. The watchdog thread
  reads the process's resident memory every 50 ms; above the limit it prints one line naming the settings
  to change and ends the process at once (``os._exit``), which frees the memory and leaves the machine
  usable. Checkpoints are written atomically (a temporary file, then a rename) between steps, so the last
  one is intact and ``--resume`` continues from it bit for bit.
* **Signals.** Python runs a signal handler only between bytecodes of the main thread, so SIGINT/SIGTERM
  wait for the step to end, which may take minutes. The C-level handler writes the signal number to a
  wakeup file descriptor at once (``signal.set_wakeup_fd``); the watchdog reads it and, if the step has
  not ended within ``grace_s`` (8 s), prints one line and ends the process with the signal's exit code
  (130 or 143), keeping the last checkpoint. A step that ends in time stops the run as before, with a
  checkpoint of that step.

The limit: ``configure(memory_limit_gb=...)`` (the command line's ``--memory_limit``), by default 90% of
the memory this process could use when training starts (its own resident memory plus the system's
``MemAvailable``). Linux only for the memory part (``/proc``); the signal part works wherever
``set_wakeup_fd`` does. Neutral: no framework import.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sys
import threading
import time

__all__ = ["configure", "watching", "resident_bytes", "available_bytes", "DEFAULT_FRACTION", "GRACE_S"]

DEFAULT_FRACTION = 0.9
GRACE_S = 8.0
POLL_S = 0.05
EXIT_MEMORY = 1
_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
_settings = {"limit_bytes": None, "grace_s": GRACE_S}
GB = 1024 ** 3


def configure(memory_limit_gb: float | None = None, grace_s: float | None = None) -> None:
    """Sets the memory ceiling (GB of resident memory; None: the default fraction) and the grace period."""
    if memory_limit_gb is not None and not memory_limit_gb > 0:
        raise ValueError(f"Expected a positive --memory_limit (GB); received --memory_limit={memory_limit_gb}")
    _settings["limit_bytes"] = None if memory_limit_gb is None else int(memory_limit_gb * GB)
    if grace_s is not None:
        _settings["grace_s"] = float(grace_s)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``); None where unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo``; None where unavailable."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _default_limit() -> int | None:
    rss, free = resident_bytes(), available_bytes()
    if rss is None or free is None:
        return None
    return int(DEFAULT_FRACTION * (rss + free))


def _kept(state: dict) -> str:
    saved = state.get("saved_step")
    return f"the last checkpoint (step {saved}) is kept" if saved is not None else "no checkpoint was written yet"


def _die(message: str, code: int) -> None:
    try:
        sys.stderr.write(f"dualmeta: error: {message}\n")
        sys.stderr.flush()
    finally:
        os._exit(code)


class _Watchdog(threading.Thread):
    def __init__(self, state: dict, limit: int | None, grace_s: float, wakeup: socket.socket | None):
        super().__init__(name="dualmeta-guard", daemon=True)
        self.state, self.limit, self.grace_s, self.wakeup = state, limit, grace_s, wakeup
        self.done = threading.Event()
        self.signal_at: tuple[float, int] | None = None

    def run(self) -> None:
        while not self.done.is_set():
            if self.wakeup is not None:
                ready, _, _ = select.select([self.wakeup], [], [], POLL_S)
                if ready:
                    try:
                        data = self.wakeup.recv(64)
                    except (BlockingIOError, OSError):
                        data = b""
                    if data and self.signal_at is None:
                        self.signal_at = (time.monotonic(), data[-1])
            else:
                time.sleep(POLL_S)
            if self.done.is_set() or self.state.get("settled"):
                return
            if self.limit is not None:
                rss = resident_bytes()
                if rss is not None and rss > self.limit:
                    _die(f"memory use reached {rss / GB:.2f} GB, above the limit of {self.limit / GB:.2f} GB "
                         f"(--memory_limit), during step {self.state.get('step', 0) + 1}; stopped before it took "
                         f"the machine down, {_kept(self.state)}. Lower --inner_steps or --meta_batch_size, train "
                         f"first order (--learner=fomaml), or raise --memory_limit", EXIT_MEMORY)
            if self.signal_at is not None and time.monotonic() - self.signal_at[0] > self.grace_s:
                number = self.signal_at[1]
                name = signal.Signals(number).name if number in {s.value for s in signal.Signals} else str(number)
                resume = ": continue with --resume" if self.state.get("saved_step") is not None else ""
                _die(f"stopped by {name} during step {self.state.get('step', 0) + 1}, which did not end within "
                     f"{self.grace_s:g} s; {_kept(self.state)}{resume}",
                     _EXIT_CODES.get(number, 128 + number))


@contextlib.contextmanager
def watching(state: dict):
    """Watches the steps run inside the block. ``state``: a dict the training loop keeps current, with
    ``step`` (the last completed step), ``saved_step`` (the last checkpoint) and ``settled`` (True once
    the loop has stopped stepping: from then on a signal is handled by the loop, not the watchdog)."""
    limit = _settings["limit_bytes"] if _settings["limit_bytes"] is not None else _default_limit()
    wakeup = previous = None
    if threading.current_thread() is threading.main_thread():
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            wakeup = reader
        except (ValueError, OSError):
            reader.close()
            writer.close()
            reader = writer = None
    else:
        reader = writer = None
    dog = _Watchdog(state, limit, _settings["grace_s"], wakeup)
    dog.start()
    try:
        yield dog
    finally:
        dog.done.set()
        dog.join(timeout=1.0)
        if writer is not None:
            signal.set_wakeup_fd(previous if previous is not None else -1)
            reader.close()
            writer.close()
