"""Checkpoints: a weights file any backend loads, the optimizer state beside it, and an index.

Layout of a run's folder::

    <logdir>/checkpoint.safetensors    the learner's weights (neutral names, incl. learner tensors such as
                                       Meta-SGD's inner_lrs.*); metadata: format, learner, backend, model
                                       name and config, dtype, step, experiment settings
    <logdir>/state-<step>.safetensors  the meta-optimizer's state (neutral names: step, m.*, v.*)
    <logdir>/checkpoint.json           index: step, file names, settings (for people and tools)

Every file is written atomically (a temporary file, then a rename) in this order: state, weights, index,
then older state files are deleted. ``checkpoint.safetensors`` is the source of truth: its ``step``
names the state file to pair it with, which is written before it and deleted only after a newer pair is
complete. A kill at any moment, or a full disk, therefore leaves the previous pair intact.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from typing import Any, Mapping, NamedTuple

import numpy as np

from dualmeta.weights import atomic_write, load_weights, save_weights

__all__ = ["FORMAT", "WEIGHTS_FILE", "INDEX_FILE", "CheckpointError", "Checkpoint", "state_file", "save",
           "read_weights", "load_latest", "check_writable", "atomic_write_text"]

FORMAT = "dualmeta-checkpoint"
VERSION = 1
WEIGHTS_FILE = "checkpoint.safetensors"
INDEX_FILE = "checkpoint.json"
_STATE = re.compile(r"state-(\d+)\.safetensors")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (missing, foreign, corrupt, incomplete) or saved."""


class Checkpoint(NamedTuple):
    path: str
    weights: dict
    metadata: dict
    state: dict | None  # the optimizer state, when loaded for resuming


def state_file(step: int) -> str:
    return f"state-{int(step):08d}.safetensors"


def atomic_write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` via a temporary file and a rename; the old file survives a failure."""
    atomic_write(path, text)


def check_writable(logdir: str) -> None:
    """Creates ``logdir`` if needed and checks a file can be written there; raises ``CheckpointError``."""
    try:
        os.makedirs(logdir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=logdir)
        os.close(fd)
        os.unlink(tmp)
    except OSError as error:
        raise CheckpointError(f"Cannot write to --logdir={logdir} ({error.strerror or error}); "
                              "pass a writable folder with --logdir") from None


def save(logdir: str, step: int, weights: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray],
         metadata: Mapping[str, Any], index: Mapping[str, Any] | None = None) -> str:
    """Writes the checkpoint of ``step`` (see the module docstring for the order); returns the weights path.

    Raises ``CheckpointError`` if a write fails (e.g. a full disk); the previous checkpoint is then intact.
    """
    step = int(step)
    meta = {"format": FORMAT, "version": VERSION, **metadata, "step": step}
    state_path = os.path.join(logdir, state_file(step))
    weights_path = os.path.join(logdir, WEIGHTS_FILE)
    existed = os.path.exists(state_path)
    try:
        save_weights(state_path, state, {"format": FORMAT + "-state", "step": step})
        try:
            save_weights(weights_path, weights, meta)
        except BaseException:
            if not existed:
                _remove(state_path)  # never paired: the weights file still names the previous step
            raise
        atomic_write_text(os.path.join(logdir, INDEX_FILE), json.dumps(
            {"step": step, "weights": WEIGHTS_FILE, "state": state_file(step), **(index or {})}, indent=2) + "\n")
    except OSError as error:
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise CheckpointError(f"Could not save the checkpoint of step {step} in {logdir}: {reason}. "
                              "The previous checkpoint is intact; free some space (or fix the folder) "
                              "and continue with --resume") from None
    for name in os.listdir(logdir):
        match = _STATE.fullmatch(name)
        if match and int(match.group(1)) != step:
            _remove(os.path.join(logdir, name))
    return weights_path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_weights(path: str) -> Checkpoint:
    """A dualmeta weights checkpoint (any backend); raises ``CheckpointError`` for anything else."""
    if os.path.isdir(path):
        path = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"No checkpoint at {path}; pass --checkpoint=<file.safetensors> or the --logdir "
                              "of a `dualmeta train` run")
    try:
        weights, metadata = load_weights(path)
    except (ValueError, OSError) as error:
        cause = error.__cause__ or error
        raise CheckpointError(f"Cannot read the checkpoint {path}: it is not a readable safetensors file "
                              f"({str(cause).splitlines()[0][:200]}); pass a checkpoint.safetensors written by "
                              "`dualmeta train`") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file without dualmeta checkpoint metadata "
                              f"(format={metadata.get('format')!r}, expected {FORMAT!r}); pass a "
                              "checkpoint.safetensors written by `dualmeta train`")
    missing = [key for key in ("learner", "model", "dtype", "step", "experiment") if key not in metadata]
    if missing:
        raise CheckpointError(f"{path} lacks the checkpoint metadata {missing}; pass a checkpoint written by "
                              "`dualmeta train`")
    return Checkpoint(path, weights, metadata, None)


def load_latest(logdir: str) -> Checkpoint:
    """The latest complete checkpoint of a run, with its optimizer state (for ``--resume``)."""
    path = os.path.join(logdir, WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume found no checkpoint in --logdir={logdir} ({WEIGHTS_FILE} is missing); "
                              "drop --resume to start a new run, or pass the --logdir of the run to continue")
    checkpoint = read_weights(path)
    step = int(checkpoint.metadata["step"])
    state_path = os.path.join(logdir, state_file(step))
    if not os.path.isfile(state_path):
        raise CheckpointError(f"{path} is at step {step} but its optimizer state {state_path} is missing; "
                              "it cannot be resumed exactly. Evaluate it with `dualmeta evaluate`, or start a "
                              "new run in another --logdir")
    try:
        state, state_meta = load_weights(state_path)
    except (ValueError, OSError) as error:
        raise CheckpointError(f"Cannot read the optimizer state {state_path} ({error})") from None
    if state_meta.get("step") != step:
        raise CheckpointError(f"{state_path} holds step {state_meta.get('step')}, expected {step}")
    if np.shape(state.get("step", 0)) == (1,):  # written before save_weights kept 0-d arrays 0-d
        state["step"] = state["step"].reshape(())
    return checkpoint._replace(state=state)
