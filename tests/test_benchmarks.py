"""Smoke runs of the benchmarks that print figures (seconds each, tiny sizes): they run and write their JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_memory_measures_each_runner_in_a_fresh_process(tmp_path):
    out = tmp_path / "memory.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_memory.py"), "--learners=maml",
                          "--backends=reference,torch", "--tasks=2", "--hidden=8", "--queries=1", "--inner_steps=3",
                          f"--out={out}"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [(r["learner"], r["runner"]) for r in report["rows"]] == [("maml", "reference"), ("maml", "torch")]
    for row in report["rows"]:
        assert 0 < row["before_mb"] <= row["step_peak_mb"] <= row["process_peak_mb"] + 1
        assert abs(row["step_growth_mb"] - (row["step_peak_mb"] - row["before_mb"])) <= 0.11
    assert report["measured"]["command"].startswith("python benchmarks/bench_memory.py --learners=maml")
    assert "step growth MB" in run.stdout


def test_bench_maml_counts_the_floor_of_a_step(tmp_path):
    """The FLOPs of a reference step and the machine's peak rate give each row a floor; a second-order
    step does more work than a first-order one, so it has the higher floor."""
    out = tmp_path / "maml.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_maml.py"), "--learners=maml,fomaml",
                          "--backends=reference,torch", "--steps=1", "--warmup=0", "--tasks=2", "--hidden=8",
                          "--queries=1", "--threads=1", f"--out={out}"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["peak_gflops"]) == {"sgemm_2048", "conv3x3_512x64x14x14"}
    assert all(v > 0 for v in report["peak_gflops"].values())
    rows = {r["learner"]: r for r in report["rows"]}
    assert rows["maml"]["gflop"] > rows["fomaml"]["gflop"] > 0
    for row in rows.values():
        # floor_s keeps 3 significant figures and gflop 4, so they agree to rounding: 0.5% + 0.05% at most
        assert abs(row["floor_s"] - row["gflop"] / max(report["peak_gflops"].values())) <= 6e-3 * row["floor_s"]
        assert row["torch_floor"] > 1 and row["reference_floor"] > 1  # nothing beats the floor
        assert isinstance(row["torch_faults"], int) and isinstance(row["reference_faults"], int)
        # the convolutions alone are a part of every step
        assert 0 < row["torch_convolutions_ratio"] < row["torch_ratio"]
        assert 0 < row["reference_convolutions_ratio"] < 1
    assert set(report["convolutions"]) == {"reference_s", "torch_s"}
    if sys.platform.startswith("linux"):  # building the torch learner fixed glibc's thresholds (dualmeta.allocator)
        assert report["config"]["allocator"] == "kept"


@pytest.mark.slow
def test_bench_compile_compares_the_compiled_step_with_eager():
    """torch.compile of a tiny grouped MAML step (compiling takes about a minute): same meta-gradient, timed."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_compile.py"), "--steps=1",
                          "--tasks=2", "--hidden=8", "--queries=1"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-2000:]
    worst = float(run.stdout.split("compiled vs eager: ")[1].split()[0])
    assert worst < 1e-3, run.stdout
    assert all(f"{name}: " in run.stdout for name in ("reference", "eager", "compiled"))
