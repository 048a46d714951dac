"""The watchdog of training steps (dualmeta.guard): a memory ceiling and signals that stop a long step.

Second-order sinusoid MAML with many inner steps makes one step long and large (about 0.4 MB per inner step
in torch): the two runs here would otherwise grow for minutes.
"""
from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time

import pytest

from dualmeta import guard
from tests.test_cli import assert_one_line_error, run_cli

QUIET = ["--backend=torch", "--noprogress", "--val_every=0", "--val_episodes=1"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_step_that_outgrows_the_memory_limit_stops_and_keeps_the_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    run_cli("train", *QUIET, "--inner_steps=1000", "--steps=1", f"--logdir={logdir}", cwd=tmp_path, check=0)
    before = {name: _digest(logdir / name) for name in ("checkpoint.safetensors", "checkpoint.json")}
    # the resumed run starts near 0.25 GB and its second step would reach about 0.65 GB
    result = run_cli("train", *QUIET, "--inner_steps=1000", "--steps=2", "--resume", f"--logdir={logdir}",
                     "--memory_limit=0.45", cwd=tmp_path)
    assert_one_line_error(result, "above the limit of 0.45 GB (--memory_limit), during step 2",
                          "the last checkpoint (step 1) is kept", "--inner_steps", "--meta_batch_size",
                          "--learner=fomaml", code=1)
    assert {name: _digest(logdir / name) for name in before} == before
    run_cli("evaluate", "--backend=torch", f"--logdir={logdir}", "--episodes=2", cwd=tmp_path, check=0)


def test_a_signal_stops_a_long_step_within_ten_seconds(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "dualmeta", "train", *QUIET, "--inner_steps=100000",
                                "--steps=1", f"--logdir={tmp_path / 'run'}"], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "run").glob("events.out.tfevents.*")):  # written just before the first step
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.2)
    time.sleep(3)  # the step is under way (100000 inner steps: minutes)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - sent
    assert process.returncode == 143 and took < 10 + 2, (process.returncode, took, stderr[-2000:])
    lines = [line for line in stderr.splitlines() if line.startswith("dualmeta: error:")]
    assert lines == ["dualmeta: error: stopped by SIGTERM during step 1, which did not end within 8 s; no "
                     "checkpoint was written yet"]


def test_bad_memory_limit():
    with pytest.raises(ValueError, match="positive --memory_limit"):
        guard.configure(memory_limit_gb=0)
    assert guard.resident_bytes() > 0 and guard.available_bytes() > 0
