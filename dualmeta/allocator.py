"""The process's memory allocator: keep freed memory for the next step instead of faulting it in again.

glibc's ``malloc`` serves every block above its *mmap threshold* with a fresh ``mmap`` and hands it back to
the kernel on ``free``, and it trims the top of its heap as soon as more than the *trim threshold* is free.
Both thresholds adapt upwards only when the program frees such a block in the main heap, so a meta-step that
allocates many feature maps of a few to a few tens of MB (tasks side by side, worker threads' arenas) gets
fresh pages for most of them, every step: the kernel zeroes each 4 KiB page on its first touch. Measured here
(2 cores, KVM): 25,000-78,000 page faults per second-order MAML step in ``torch_meta`` and ``tf_meta``, where a
plain per-task loop had none, and writing a new 120 MB tensor took 63 ms against 10 ms for a copy into memory
already held. ``keep_freed_memory()`` fixes both thresholds (``mallopt``): blocks up to 32 MiB, the most glibc
allows, come from the heap, and up to 1 GiB of free heap stays with the process. After the first step there
are no faults left (``benchmarks/bench_maml.py`` prints them, ``docs/performance.md``).

The cost: memory a step freed stays resident until the process ends (its resident size stays at the step's
peak, which the next step needs again anyway). Both backends' learners call it when they are built.
``DUALMETA_MALLOC=system`` in the environment leaves the allocator alone, and so do glibc's own settings
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, a ``malloc`` entry in ``GLIBC_TUNABLES``): they win.
Elsewhere than glibc (macOS, musl, Windows) it does nothing. Neutral: no framework import.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "status", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ENV"]

ENV = "DUALMETA_MALLOC"
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 ** 3  # mallopt takes a C int
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
_state = {"done": None}


def _reason_to_leave() -> str | None:
    value = os.environ.get(ENV, "")
    if value not in ("", "keep", "system"):
        raise ValueError(f"Expected {ENV}=keep or {ENV}=system (leave the allocator alone); received {ENV}={value!r}")
    if value == "system":
        return f"{ENV}=system"
    mine = [name for name in _USER_SETTINGS if name in os.environ]
    if "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        mine.append("GLIBC_TUNABLES")
    if mine:
        return "glibc settings in the environment: " + ", ".join(mine)
    if not sys.platform.startswith("linux"):
        return f"not glibc ({sys.platform})"
    return None


def keep_freed_memory() -> str:
    """Sets glibc's mmap and trim thresholds once per process; returns what it did, in words.

    ``'kept'``: the thresholds are set; otherwise the reason they were left alone (the opt-out, the user's
    own settings, another C library). Later calls return the first call's answer.
    """
    if _state["done"] is not None:
        return _state["done"]
    reason = _reason_to_leave()
    if reason is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has mallopt but no such function)
            ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                      TRIM_THRESHOLD) == 1
            reason = "kept" if ok else "mallopt refused the thresholds"
        except (OSError, AttributeError):
            reason = "not glibc"
    _state["done"] = reason
    return reason


def status() -> str:
    """What ``keep_freed_memory`` did in this process (``'kept'``, or why not); ``'not called'`` before it."""
    return _state["done"] or "not called"
