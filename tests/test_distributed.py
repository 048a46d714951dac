"""Distributed meta-batches (``--workers``): sharding, exactness, resume, faults and bad input.

The runs start two local worker processes on loopback through the real CLI (``python -m dualmeta train
--workers=2``), on tiny float64 settings (sinusoid MAML: meta-batch 4, hidden 8; Omniglot ProtoNet:
meta-batch 3, hidden 4, 5-way 1-shot 2-query, softplus), for both engines. A run with workers must give the
one-process weights to 1e-12 of the weights' scale (docs/distributed.md says why not bit for bit).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualmeta import checkpoint, launch
from dualmeta.episodes import RegressionTasks
from dualmeta.weights import load_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
MAML = ["--meta_batch_size=4", "--hidden=8", "--shots=5", "--queries=5", "--val_episodes=3", "--dtype=float64",
        "--log_every=1000", "--val_every=5", "--checkpoint_every=5"]
PROTONET = ["--tasks=omniglot", "--learner=protonet", "--hidden=4", "--train_ways=5", "--shots=1",
            "--train_queries=2", "--meta_batch_size=3", "--dtype=float64", "--val_episodes=0",
            "--checkpoint_every=2", "--log_every=1000", "--activation=softplus"]
# softplus: with ReLU, ProtoNet's last norm shift has a gradient that is zero up to round-off, which Adam turns
# into ~1e-12 steps that depend on the order of any sum (threads too); see docs/distributed.md.
STEPS = {"maml": 10, "protonet": 4}
SETTINGS = {"maml": MAML, "protonet": PROTONET}
BACKENDS = ["torch", "tf"]


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    for key in ("DUALMETA_VERBOSE", "TF_CONFIG", "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def run_cli(*args, cwd, timeout=300, code=None, check=None):
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "dualmeta"]
    result = subprocess.run(command + [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True,
                            text=True, timeout=timeout)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def one_line_error(result, *fragments, code=1):
    assert result.returncode == code, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("dualmeta: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def weights(logdir):
    return load_weights(Path(logdir) / checkpoint.WEIGHTS_FILE)


def assert_same_weights(got, expected, rtol=1e-12):
    """``|w_workers - w_one| / |w_one| <= rtol`` over the whole model (Euclidean norms of all tensors).

    Tensor by tensor the differences are round-off, ~1e-15 of a tensor's scale (MAML: ~4e-17)."""
    assert sorted(got) == sorted(expected)
    diff = {name: float(np.sum((got[name] - value) ** 2)) for name, value in expected.items()}
    norm = np.sqrt(sum(float(np.sum(value ** 2)) for value in expected.values()))
    relative = np.sqrt(sum(diff.values())) / norm
    worst = max(diff, key=diff.get)
    assert relative <= rtol, f"|workers - one process| / |one process| = {relative:.3g} > {rtol:g} (most in {worst})"


def index_step(logdir) -> int:
    try:
        return json.loads((Path(logdir) / checkpoint.INDEX_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def workers_of(pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes the launcher ``pid`` started (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        for item in environ:
            if item.startswith(b"DUALMETA_LOCAL_RANK="):
                found[int(item.split(b"=")[1])] = int(entry)
    return found


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One-process runs (the weights every distributed run must reproduce), built on first use."""
    root, made = tmp_path_factory.mktemp("one-process"), {}

    def get(backend: str, learner: str) -> dict:
        if (backend, learner) not in made:
            logdir = root / f"{backend}-{learner}"
            run_cli("train", f"--backend={backend}", f"--logdir={logdir}", *SETTINGS[learner],
                    f"--steps={STEPS[learner]}", cwd=root, check=0)
            made[backend, learner] = weights(logdir)[0]
        return made[backend, learner]

    return get


# ----------------------------------------------------------------------------------------------------
# Sharding by address (no processes)
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, workers", [(4, 1), (4, 2), (5, 3), (32, 2), (32, 5), (7, 7)])
def test_shards_cover_the_meta_batch_in_order(size, workers):
    shares = [launch.shard(r, workers, size) for r in range(workers)]
    assert shares[0][0] == 0 and shares[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
    counts = [hi - lo for lo, hi in shares]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1


def test_sharded_tasks_build_only_their_share():
    tasks = RegressionTasks(shots=3, queries=2, seed=5)
    full = tasks.batch(7, 5)
    parts = [launch.ShardedTasks(tasks, r, 3).batch(7, 5) for r in range(3)]
    for a, *pieces in zip(full, *parts):
        assert np.array_equal(a, np.concatenate(pieces))


def test_running_statistics_merge_like_one_process():
    rng = np.random.default_rng(0)
    keep, start, stats = 0.9, rng.normal(size=3), rng.normal(size=(5, 3))
    sequential = start.copy()
    for s in stats:
        sequential = keep * sequential + (1 - keep) * s
    shares = [launch.shard(r, 2, 5) for r in range(2)]
    after = []
    for lo, hi in shares:
        r = start.copy()
        for s in stats[lo:hi]:
            r = keep * r + (1 - keep) * s
        after.append(r)
    merged = launch.combine_running(start, after, shares, keep, add=np.add, scale=np.multiply)
    np.testing.assert_allclose(merged, sequential, rtol=1e-14)


def test_worker_counts_and_environments_are_checked():
    with pytest.raises(ValueError, match="--workers=5 exceeds --meta_batch_size=4"):
        launch.check_workers(5, 4)
    with pytest.raises(ValueError, match="positive integer"):
        launch.check_workers(0, 4)
    for learner in ("lstm", "snail"):  # their encoder's running statistics are not sharded: one process
        with pytest.raises(ValueError, match=f"--learner={learner} runs in one process: drop --workers"):
            launch.check_workers(2, 4, learner)
    launch.check_workers(2, 4, "maml")
    assert launch.world_from_env("torch", {}) is None and launch.world_from_env("tf", {}) is None
    world = launch.world_from_env("torch", {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "LOCAL_RANK": "1"})
    assert (world.rank, world.size, world.local_rank) == (1, 2, 1)
    config = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    world = launch.world_from_env("tf", {"TF_CONFIG": json.dumps(config)})
    assert (world.engine, world.rank, world.size) == ("tf", 2, 3)
    with pytest.raises(ValueError, match="Expected TF_CONFIG like"):
        launch.world_from_env("tf", {"TF_CONFIG": "{not json"})


# ----------------------------------------------------------------------------------------------------
# Two workers on loopback give the one-process weights; resume with another worker count
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_two_workers_give_the_one_process_weights(backend, learner, reference, tmp_path):
    logdir = tmp_path / "run"
    result = run_cli("train", f"--backend={backend}", f"--logdir={logdir}", *SETTINGS[learner],
                     f"--steps={STEPS[learner]}", "--workers=2", cwd=tmp_path, check=0)
    assert "on 2 workers" in result.stdout and "Traceback" not in result.stderr
    got, meta = weights(logdir)
    assert meta["step"] == STEPS[learner]
    assert_same_weights(got, reference(backend, learner))
    lines = (logdir / "metrics.jsonl").read_text().splitlines()  # rank 0 alone logs: one line a step
    assert [json.loads(line)["step"] for line in lines if '"train"' in line] == list(range(1, STEPS[learner] + 1))
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow  # the killed-worker test below resumes with another worker count too
@pytest.mark.parametrize("backend, first, then", [("torch", 2, 1), ("tf", 1, 2)])
def test_resume_with_another_worker_count(backend, first, then, reference, tmp_path):
    logdir = tmp_path / "run"
    half = STEPS["maml"] // 2
    args = ["train", f"--backend={backend}", f"--logdir={logdir}", *MAML]
    run_cli(*args, f"--steps={half}", f"--workers={first}", cwd=tmp_path, check=0)
    result = run_cli(*args, f"--steps={STEPS['maml']}", f"--workers={then}", "--resume", cwd=tmp_path, check=0)
    assert f"Resuming {logdir} from step {half}" in result.stderr
    assert_same_weights(weights(logdir)[0], reference(backend, "maml"))


# ----------------------------------------------------------------------------------------------------
# Faults: a killed worker stops the others with one line; the checkpoint is whole and resumes exactly
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, resume_workers", [("torch", 3), ("tf", 1)])
def test_a_killed_worker_stops_the_run_and_resume_reaches_the_same_weights(backend, resume_workers, reference,
                                                                           tmp_path):
    """Two workers, one killed (SIGKILL) once step 2 is saved; resumed with another worker count."""
    logdir = tmp_path / "run"
    args = ["train", f"--backend={backend}", f"--logdir={logdir}", *MAML]
    process = subprocess.Popen([sys.executable, "-m", "dualmeta", *args, "--steps=1000000", "--checkpoint_every=1",
                                "--val_every=0", "--workers=2"], cwd=tmp_path, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while index_step(logdir) < 2:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the run did not reach step 2"
            time.sleep(0.005)
        pids = workers_of(process.pid)
        assert sorted(pids) == [0, 1]
        os.kill(pids[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = process.communicate(timeout=60)
        assert time.monotonic() - killed < 60
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    for pid in pids.values():  # no worker left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    step = int(weights(logdir)[1]["step"])
    result = subprocess.CompletedProcess(process.args, process.returncode, "", err)
    line = one_line_error(result, f"worker 1 of 2 (pid {pids[1]}) died (SIGKILL)",
                          f"{logdir / checkpoint.WEIGHTS_FILE} (step {step})", "--resume")
    assert 2 <= step < STEPS["maml"], f"killed at step {step}; too late for this test ({line})"
    assert (logdir / checkpoint.state_file(step)).is_file()
    assert not [p.name for p in logdir.iterdir() if p.name.startswith(".")]  # no half-written file
    run_cli(*args, f"--steps={STEPS['maml']}", f"--workers={resume_workers}", "--resume", cwd=tmp_path, check=0)
    assert_same_weights(weights(logdir)[0], reference(backend, "maml"))


def test_ctrl_c_stops_every_worker_after_the_same_step_with_a_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "dualmeta", "train", "--backend=torch", f"--logdir={logdir}",
                                *MAML, "--steps=1000000", "--checkpoint_every=0", "--val_every=0", "--workers=2"],
                               cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = logdir / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 60
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    step = int(weights(logdir)[1]["step"])
    assert f"Stopped by SIGINT after step {step};" in err and "Traceback" not in err


def test_workers_exit_when_the_launcher_dies(tmp_path):
    logdir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "dualmeta", "train", "--backend=torch", f"--logdir={logdir}",
                                *MAML, "--steps=1000000", "--checkpoint_every=1", "--val_every=0", "--workers=2"],
                               cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while index_step(logdir) < 1:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        pids = workers_of(process.pid)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30

    def running(pid):
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False

    while any(running(pid) for pid in pids.values()):
        if time.monotonic() > deadline:
            for pid in pids.values():
                os.kill(pid, signal.SIGKILL)
            pytest.fail("workers outlived their launcher by 30 s")
        time.sleep(0.1)


# ----------------------------------------------------------------------------------------------------
# Bad input fails before anything starts
# ----------------------------------------------------------------------------------------------------

def test_port_in_use(tmp_path):
    with socket.socket() as busy:
        busy.bind((launch.HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("train", "--backend=torch", f"--logdir={tmp_path / 'run'}", *MAML, "--steps=2",
                         "--workers=2", f"--port={port}", cwd=tmp_path)
    one_line_error(result, f"Port {port} on 127.0.0.1 is in use", "--port")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_more_workers_than_tasks(backend, tmp_path):
    result = run_cli("train", f"--backend={backend}", *MAML, "--workers=5", cwd=tmp_path)
    one_line_error(result, "--workers=5 exceeds --meta_batch_size=4", "--workers <= 4")


def test_workers_with_a_missing_engine(tmp_path):
    code = ("import sys\n"
            "sys.modules['tensorflow'] = None\n"  # find_spec('tensorflow') is then None: as if not installed
            "from dualmeta.cli import run\n"
            "sys.argv[0] = 'dualmeta'\n"
            "run()\n")
    result = run_cli("train", "--backend=tf", *MAML, "--workers=2", cwd=tmp_path, code=code)
    one_line_error(result, "--workers=2", "tf.distribute", "pip install 'dualmeta[tf]'")


def test_evaluate_refuses_workers(tmp_path):
    result = run_cli("evaluate", "--logdir=none", "--workers=2", cwd=tmp_path)
    one_line_error(result, "--workers applies to train, bench and compare", code=2)


@pytest.mark.slow  # benchmarks/bench_distributed.py runs the same path at full size
def test_bench_with_two_workers_prints_one_line(tmp_path):
    result = run_cli("bench", "--backend=torch", *MAML[:4], "--steps=3", "--warmup=1", "--workers=2",
                     cwd=tmp_path, check=0)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["workers"] == 2 and record["threads"] == 1 and record["steps"] == 3


def test_torchrun_standalone_gives_the_one_process_weights(reference, tmp_path):
    """The workers read the environment torchrun sets, so torchrun works without --workers."""
    logdir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "dualmeta", "train", "--backend=torch", f"--logdir={logdir}", *MAML,
                             f"--steps={STEPS['maml']}"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "on 2 workers" in result.stdout
    assert_same_weights(weights(logdir)[0], reference("torch", "maml"))


@pytest.mark.slow
def test_compare_with_two_workers_passes(tmp_path):
    logdir = tmp_path / "cmp"
    result = run_cli("compare", "--steps=6", "--hidden=8", "--meta_batch_size=2", "--episodes=5",
                     f"--logdir={logdir}", "--workers=2", cwd=tmp_path, check=0, timeout=300)
    assert "verdict: PASS" in result.stdout
    report = json.loads((logdir / "compare.json").read_text())
    assert report["workers"] == 2 and report["max_rel_loss_diff"] <= 1e-8


def test_a_slow_rank_0_is_not_cut_short_when_the_others_stop_on_ctrl_c(tmp_path, monkeypatch):
    """After one Ctrl-C, a worker that exits 130 at once is not a failure: rank 0, still saving its
    checkpoint after the grace period, is waited for (it used to be killed, and the checkpoint lost)."""
    import threading

    monkeypatch.setattr(launch, "GRACE_SECONDS", 0.3)
    saved = tmp_path / "saved"
    worker = ("import os, signal, sys, time\n"
              "def stop(*_):\n"
              "    if os.environ['DUALMETA_LOCAL_RANK'] == '0':\n"
              "        time.sleep(1.5)\n"
              f"        open({str(saved)!r}, 'w').write('checkpoint')\n"
              "    sys.exit(130)\n"
              "signal.signal(signal.SIGINT, stop)\n"
              "time.sleep(60)\n")
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    code = launch.launch([sys.executable, "-c", worker], 2, ["torch"], say=lambda line: None)
    assert code == 130 and saved.read_text() == "checkpoint"
