"""dualmeta.train.MetricsLog: resuming drops the lines after the checkpoint without ever losing the log."""
from __future__ import annotations

import json
import os

import pytest

from dualmeta.train import MetricsLog


def _log(path, steps):
    path.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in steps)
                    + '{"step": 9, "spl')  # a line cut by a kill


def test_truncate_after_keeps_the_lines_up_to_the_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(path, [1, 2, 3, 4, 5])
    MetricsLog.truncate_after(str(path), 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_a_kill_during_the_rewrite_leaves_the_old_log(tmp_path, monkeypatch):
    """The rewrite goes through a temporary file and a rename: interrupted before the rename, the log is
    as it was and no temporary file is left."""
    path = tmp_path / "metrics.jsonl"
    _log(path, [1, 2, 3, 4, 5])
    before = path.read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsLog.truncate_after(str(path), 3)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
