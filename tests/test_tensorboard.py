"""dualmeta.tensorboard: event files written by tensorboardX, read back by TensorBoard's own readers."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from dualmeta import tensorboard

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _events(path):
    """The events of one file, as TensorBoard's loader gives them (scalars migrated to tensors)."""
    event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    return list(event_file_loader.EventFileLoader(str(path)).Load())


def _accumulator(logdir):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = event_accumulator.EventAccumulator(str(logdir))
    acc.Reload()
    return acc


def test_writer_file_starts_with_file_version(tmp_path):
    with tensorboard.EventWriter(tmp_path) as writer:
        writer.scalars(3, {"train/loss": 0.25})
    assert os.path.dirname(writer.path) == str(tmp_path)
    assert os.path.basename(writer.path).startswith("events.out.tfevents.")
    events = _events(writer.path)
    assert events[0].file_version == "brain.Event:2"
    (value,) = [v for e in events for v in e.summary.value]
    tensor_util = pytest.importorskip("tensorboard.util.tensor_util")
    assert value.tag == "train/loss" and value.metadata.plugin_data.plugin_name == "scalars"
    assert tensor_util.make_ndarray(value.tensor) == np.float32(0.25)  # the loader's form of a simple_value
    assert [e.step for e in events if e.summary.value] == [3]


def test_tensorboard_reads_back_the_scalars(tmp_path):
    losses = np.linspace(2.0, 0.5, 7)
    with tensorboard.EventWriter(tmp_path) as writer:
        for step, loss in enumerate(losses, start=1):
            writer.scalars(step, {"train/loss": loss, "train/accuracy": step / 10})
        writer.scalars(7, {"val/loss": 0.125})
    acc = _accumulator(tmp_path)
    assert sorted(acc.Tags()["scalars"]) == ["train/accuracy", "train/loss", "val/loss"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 8))
    np.testing.assert_allclose([e.value for e in events], losses.astype(np.float32))
    assert [e.value for e in acc.Scalars("val/loss")] == [0.125]


def test_restart_drops_the_events_after_the_resumed_step(tmp_path):
    with tensorboard.EventWriter(tmp_path) as first:
        for step in range(1, 8):
            first.scalars(step, {"train/loss": 1.0})
    with tensorboard.EventWriter(tmp_path) as second:  # resumed from the checkpoint of step 4, same second
        second.start(5)
        for step in range(5, 10):
            second.scalars(step, {"train/loss": 2.0})
    assert first.path != second.path and sorted([first.path, second.path]) == [first.path, second.path]
    events = _accumulator(tmp_path).Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 10))
    assert [e.value for e in events] == [1.0] * 4 + [2.0] * 5


def test_events_reach_the_file_before_close(tmp_path):
    writer = tensorboard.EventWriter(tmp_path)
    try:
        writer.scalars(1, {"train/loss": 0.5})
        import time
        deadline = time.monotonic() + 10 * tensorboard.FLUSH_SECS
        while time.monotonic() < deadline and not any(e.summary.value for e in _events(writer.path)):
            time.sleep(0.1)
        assert any(e.summary.value for e in _events(writer.path)), "the event was not flushed while open"
    finally:
        writer.close()


def test_writing_events_imports_neither_framework(tmp_path):
    """tensorboardX imports torch when it can; dualmeta keeps it out (a TensorFlow run stays torch-free)."""
    code = ("import sys\n"
            "from dualmeta.tensorboard import EventWriter\n"
            f"with EventWriter({str(tmp_path)!r}) as w:\n"
            "    w.scalars(1, {'train/loss': 0.5}); w.start(2)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow')))\n"
            "import torch\n")  # and torch still imports afterwards
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=120)
    if result.returncode and "No module named 'torch'" in result.stderr:
        pytest.skip("torch is not installed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_failed_event_write_warns_once_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    """A full disk: the events are dropped with one warning; writing and closing raise nothing."""
    writer = tensorboard.EventWriter(tmp_path)
    writer.scalars(1, {"train/loss": 0.5})
    event_file = writer._writer.file_writer.event_writer._ev_writer._py_recordio_writer._writer
    assert isinstance(event_file, tensorboard._EventFile)

    class FullDisk:
        name = event_file._file.name

        def write(self, data):
            raise OSError(28, "No space left on device")

        flush = close = lambda self: None

    real = event_file._file
    monkeypatch.setattr(event_file, "_file", FullDisk())
    for step in range(2, 5):
        writer.scalars(step, {"train/loss": 0.5})
    writer.close()
    real.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
