"""The command line (``python -m dualmeta``): train, resume, evaluate, compare, bench and bad input.

Runs the real CLI in subprocesses on tiny sinusoid settings (meta-batch 2, hidden 8, 5 shots), so the
whole file takes one to two minutes on two busy cores. Runs that compare backends use float64.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dualmeta import backend, checkpoint, cli, experiment, seeds
from dualmeta.tolerances import tolerance
from dualmeta.train import Progress
from dualmeta.weights import load_weights, save_weights

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = ["--meta_batch_size=2", "--hidden=8", "--shots=5", "--queries=5", "--val_episodes=3", "--log_every=1000"]
STEPS = 40
PARITY = TINY + ["--dtype=float64", f"--steps={STEPS}", "--val_every=20", "--checkpoint_every=10"]


def run_cli(*args, cwd, timeout=180, code=None, check=None):
    """``python -m dualmeta *args`` (or ``python -c code *args``) in ``cwd``; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("DUALMETA_VERBOSE", None)
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "dualmeta"]
    result = subprocess.run(command + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check is not None:
        assert result.returncode == check, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def start_cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "dualmeta", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_one_line_error(result, *fragments, code=1):
    """A clean failure: the exit code, one 'dualmeta: error:' line on stderr naming the fix, no traceback."""
    assert result.returncode == code, f"exit {result.returncode}; stderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dualmeta: error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def checkpoint_step(logdir) -> int:
    return int(load_weights(Path(logdir) / checkpoint.WEIGHTS_FILE)[1]["step"])


def wait_for(predicate, process, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the run ended (exit {process.returncode}) before the test could act:\n{err}")
        time.sleep(0.005)
    process.kill()
    pytest.fail("timed out waiting for the run")


def index_step(logdir) -> int:
    try:
        return json.loads((Path(logdir) / checkpoint.INDEX_FILE).read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same float64 run trained to step STEPS in each backend, with a final evaluation report."""
    root = tmp_path_factory.mktemp("trained")
    runs = {}
    for name in ("torch", "tf"):
        logdir = root / name
        run_cli("train", f"--backend={name}", f"--logdir={logdir}", f"--report={logdir}/report.json",
                "--episodes=10", *PARITY, cwd=root, check=0)
        runs[name] = logdir
    return runs


# ----------------------------------------------------------------------------------------------------
# train: files, parity, resume, evaluate across backends
# ----------------------------------------------------------------------------------------------------

def test_train_writes_checkpoint_tensorboard_metrics_and_report(trained):
    logdir = trained["torch"]
    weights, meta = load_weights(logdir / "checkpoint.safetensors")
    assert meta["format"] == "dualmeta-checkpoint" and meta["step"] == STEPS
    assert (meta["learner"], meta["backend"], meta["dtype"]) == ("maml", "torch", "float64")
    assert meta["model"] == {"name": "mlp", "config": {"in_features": 1, "hidden": [8, 8], "out_features": 1,
                                                       "activation": "relu"}}
    assert sorted(weights) == sorted(f"layers.{i}.{k}" for i in range(3) for k in ("weight", "bias"))
    assert all(w.dtype == np.float64 for w in weights.values())
    states = sorted(p.name for p in logdir.glob("state-*.safetensors"))
    assert states == [checkpoint.state_file(STEPS)]  # older states deleted
    index = json.loads((logdir / "checkpoint.json").read_text())
    assert index["step"] == STEPS and index["state"] == states[0] and index["flags"]["hidden"] == 8
    state, state_meta = load_weights(logdir / states[0])
    assert state_meta["step"] == STEPS and int(state["step"]) == STEPS and "m.layers.0.weight" in state
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["split"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in lines if r["split"] == "val"] == [20, 40]
    events = list(logdir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
    records = list(event_file_loader.EventFileLoader(str(events[0])).Load())
    assert records[0].file_version == "brain.Event:2"
    assert (records[1].step, records[1].session_log.status) == (1, records[1].session_log.START)
    tags = [(e.step, v.tag) for e in records for v in e.summary.value]
    assert tags[0] == (1, "train/loss") and (20, "val/loss") in tags and (STEPS, "val/loss") in tags
    report = json.loads((logdir / "report.json").read_text())
    assert set(report) >= {"mse", "loss", "episodes", "backend", "learner"} and "accuracy" not in report
    assert set(report["mse"]) == {"mean", "ci95"} and report["episodes"] == 10 and report["backend"] == "torch"


def test_tf_and_torch_train_to_the_same_weights_in_float64(trained):
    tf_weights, tf_meta = load_weights(trained["tf"] / "checkpoint.safetensors")
    torch_weights, _ = load_weights(trained["torch"] / "checkpoint.safetensors")
    assert tf_meta["backend"] == "tf" and sorted(tf_weights) == sorted(torch_weights)
    tol, kind = tolerance("trajectory_loss", "float64")
    assert kind == "rel"
    for name, expected in torch_weights.items():
        diff = np.max(np.abs(tf_weights[name] - expected)) / np.max(np.abs(expected))
        assert diff <= tol, f"{name}: max|tf-torch|/max|torch| {diff:.3g} > {tol:g}"


def test_both_backends_write_the_same_tensorboard_tags(trained):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tags = {}
    for name, logdir in trained.items():
        acc = event_accumulator.EventAccumulator(str(logdir))
        acc.Reload()
        tags[name] = sorted(acc.Tags()["scalars"])
        assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert tags["tf"] == tags["torch"] == ["train/loss", "train/steps_per_s", "val/loss"]


@pytest.mark.parametrize("trained_in, evaluated_in", [("torch", "tf"), ("tf", "torch")])
def test_evaluate_loads_a_checkpoint_from_the_other_backend(trained, trained_in, evaluated_in, tmp_path):
    report_path = tmp_path / "report.json"
    result = run_cli("evaluate", f"--backend={evaluated_in}", f"--checkpoint={trained[trained_in]}",
                     "--episodes=10", f"--report={report_path}", cwd=tmp_path, check=0)
    assert "mse" in result.stdout
    report = json.loads(report_path.read_text())
    same = json.loads((trained[trained_in] / "report.json").read_text())  # evaluated in the training backend
    assert report["backend"] == evaluated_in and report["trained_backend"] == trained_in
    assert report["episodes"] == same["episodes"] == 10 and report["step"] == STEPS
    np.testing.assert_allclose(report["mse"]["mean"], same["mse"]["mean"], rtol=1e-10)
    np.testing.assert_allclose(report["mse"]["ci95"], same["mse"]["ci95"], rtol=1e-8)


@pytest.mark.parametrize("name", ["torch", "tf"])
def test_resume_after_sigkill_equals_an_uninterrupted_run(trained, name, tmp_path):
    logdir = tmp_path / "run"
    # A long run with a checkpoint every step, killed without warning once step 3 is saved.
    process = start_cli("train", f"--backend={name}", f"--logdir={logdir}", *PARITY, "--steps=1000000",
                        "--checkpoint_every=1", cwd=tmp_path)
    wait_for(lambda: index_step(logdir) >= 3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = checkpoint_step(logdir)
    assert 3 <= killed_at < STEPS, f"killed at step {killed_at}; too late for this test"
    assert (logdir / checkpoint.state_file(killed_at)).is_file()  # the pair is complete
    result = run_cli("train", f"--backend={name}", f"--logdir={logdir}", *PARITY, "--resume", cwd=tmp_path, check=0)
    assert f"Resuming {logdir} from step {killed_at}" in result.stderr
    resumed, _ = load_weights(logdir / "checkpoint.safetensors")
    reference, _ = load_weights(trained[name] / "checkpoint.safetensors")
    for tensor, expected in reference.items():
        assert np.array_equal(resumed[tensor], expected), tensor
    steps = [json.loads(line)["step"] for line in (logdir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == list(range(1, STEPS + 1))  # the killed run's extra lines were dropped


def test_kill_between_the_state_and_the_weights_file_resumes_from_the_previous_pair(trained, tmp_path):
    logdir = tmp_path / "run"
    # Die (SIGKILL) just before the weights of step 4 are written: state-4 exists, the weights are step 3.
    code = ("import os, signal, sys\n"
            "from dualmeta import checkpoint\n"
            "real = checkpoint.save_weights\n"
            "def save_weights(path, weights, metadata=None):\n"
            "    if path.endswith('checkpoint.safetensors') and metadata['step'] == 4:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(path, weights, metadata)\n"
            "checkpoint.save_weights = save_weights\n"
            "from dualmeta.cli import run\n"
            "sys.argv[0] = 'dualmeta'\n"
            "run()\n")
    result = run_cli("train", "--backend=torch", f"--logdir={logdir}", *PARITY, "--checkpoint_every=1",
                     cwd=tmp_path, code=code)
    assert result.returncode == -signal.SIGKILL
    assert checkpoint_step(logdir) == 3 and (logdir / checkpoint.state_file(3)).is_file()
    run_cli("train", "--backend=torch", f"--logdir={logdir}", *PARITY, "--resume", cwd=tmp_path, check=0)
    resumed, _ = load_weights(logdir / "checkpoint.safetensors")
    reference, _ = load_weights(trained["torch"] / "checkpoint.safetensors")
    assert all(np.array_equal(resumed[n], reference[n]) for n in reference)
    assert sorted(p.name for p in logdir.glob("state-*")) == [checkpoint.state_file(STEPS)]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_exits(sig, code, tmp_path):
    logdir = tmp_path / "run"
    process = start_cli("train", "--backend=torch", f"--logdir={logdir}", *TINY, "--steps=1000000",
                        "--checkpoint_every=0", "--val_every=0", cwd=tmp_path)
    metrics = logdir / "metrics.jsonl"
    wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 3, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err and f"Stopped by {sig.name} after step" in err and "--resume" in err
    step = checkpoint_step(logdir)
    assert f"after step {step};" in err and step >= 3
    assert (logdir / checkpoint.state_file(step)).is_file()


# ----------------------------------------------------------------------------------------------------
# compare and bench
# ----------------------------------------------------------------------------------------------------

def test_compare_writes_the_report_files_and_passes(tmp_path):
    logdir = tmp_path / "cmp"
    result = run_cli("compare", "--steps=6", "--hidden=8", "--meta_batch_size=2", "--episodes=5",
                     f"--logdir={logdir}", "--noprogress", cwd=tmp_path, check=0)
    assert "verdict: PASS" in result.stdout
    assert "step " not in result.stderr and "evaluated 5 episodes" in result.stderr  # --noprogress
    for ext in ("json", "md", "png"):
        assert f"wrote {logdir / f'compare.{ext}'}" in result.stdout
    report = json.loads((logdir / "compare.json").read_text())
    assert report["verdict"] == "pass" and report["tolerance"]["value"] == tolerance("trajectory_loss", "float64")[0]
    assert report["config"]["dtype"] == "float64" and report["steps"] == 6
    assert len(report["rel_loss_diff"]) == 6 and report["max_rel_loss_diff"] <= 1e-8
    for name in ("torch", "tf"):
        run = report["backends"][name]
        assert len(run["losses"]) == 6 and run["s_per_step"] > 0 and set(run["evaluation"]["mse"]) == {"mean", "ci95"}
        assert list((logdir / name).glob("events.out.tfevents.*"))
    np.testing.assert_allclose(report["backends"]["tf"]["losses"], report["backends"]["torch"]["losses"], rtol=1e-8)
    assert "**Verdict: PASS**" in (logdir / "compare.md").read_text()
    assert (logdir / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    event_multiplexer = pytest.importorskip("tensorboard.backend.event_processing.plugin_event_multiplexer")
    from tensorboard.util import tensor_util
    overlay = event_multiplexer.EventMultiplexer()  # what `tensorboard --logdir=<compare folder>` loads
    overlay.AddRunsFromDirectory(str(logdir))
    overlay.Reload()
    assert sorted(overlay.Runs()) == ["tf", "torch"]
    curves = {}
    for run in ("tf", "torch"):
        tensors = overlay.Tensors(run, "train/loss")  # the data provider's view: scalars as tensors
        assert [e.step for e in tensors] == list(range(1, 7))
        curves[run] = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in tensors]
    np.testing.assert_allclose(curves["tf"], report["backends"]["torch"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(curves["torch"], report["backends"]["torch"]["losses"], rtol=1e-6)


def test_compare_default_is_what_the_docs_claim():
    """With no flags, compare runs sinusoid MAML in float64 for COMPARE_STEPS steps (docs/cli.md says so)."""
    from absl.testing import flagsaver
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["dualmeta", "compare"])
        e = cli._experiment("compare", backend_name="torch")
    assert (e.tasks, e.learner, e.dtype, e.steps, e.seed) == ("sinusoid", "maml", "float64", cli.COMPARE_STEPS, 0)
    assert (e.shots, e.queries, e.meta_batch_size, e.inner_steps, e.inner_lr, e.meta_lr, e.hidden) == \
        (10, 10, 25, 1, 0.01, 1e-3, 40)
    docs = (REPO_ROOT / "docs" / "cli.md").read_text()
    claim = (f"sinusoid regression with MAML (an MLP 1-40-40-1, 10 shots, 10 queries, meta-batch 25, one inner "
             f"step of 0.01, Adam 1e-3), float64, {cli.COMPARE_STEPS} steps")
    assert claim in " ".join(docs.split())


def test_compare_seeds_reports_seed_to_seed_error_bars(tmp_path):
    """--seeds=3: one comparison per seed (its own folder), then Welch's test of the backends' final MSEs
    against the spread between seeds, explained in one sentence; the float64 twins agree."""
    logdir = tmp_path / "cmp"
    result = run_cli("compare", "--seeds=3", "--seed=4", "--steps=4", "--hidden=8", "--meta_batch_size=2",
                     "--episodes=5", f"--logdir={logdir}", "--noprogress", "--report=seeds/sinusoid.json",
                     cwd=tmp_path, check=0)
    assert "seeds 4-6: backends AGREE" in result.stdout and seeds.STATISTIC in result.stdout
    summary = json.loads((logdir / "compare-seeds.json").read_text())
    assert json.loads((tmp_path / "seeds" / "sinusoid.json").read_text()) == summary  # for results/seeds/
    assert summary["measured"]["command"].startswith("python -m dualmeta compare --seeds=3 --seed=4 ")
    assert summary["seeds"] == [4, 5, 6] and summary["metric"] == "mse" and summary["parity"] == "pass"
    for seed in (4, 5, 6):
        one = json.loads((logdir / f"seed-{seed}" / "compare.json").read_text())
        assert one["config"]["seed"] == seed and one["verdict"] == "pass"
        assert summary["per_seed"][str(seed)]["torch"] == one["backends"]["torch"]["evaluation"]["mse"]["mean"]
    torch_values = [summary["per_seed"][str(s)]["torch"] for s in (4, 5, 6)]
    assert len(set(torch_values)) == 3  # the seeds trained different models
    assert summary["agree"] and summary["welch_tf_minus_torch"]["p"] > 0.5
    assert summary["statistic"] in (logdir / "compare-seeds.md").read_text()


@pytest.mark.parametrize("args", [
    ["--backend=torch"] + TINY + ["--steps=3"],
    ["--backend=torch", "--tasks=omniglot", "--learner=protonet", "--hidden=4", "--train_ways=5", "--shots=1",
     "--train_queries=2", "--steps=2"],
], ids=["sinusoid-maml", "omniglot-protonet"])
def test_bench_prints_one_json_line(args, tmp_path):
    result = run_cli("bench", "--warmup=1", *args, cwd=tmp_path, check=0)
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert {"backend", "learner", "steps", "median_s_per_step", "min_s_per_step", "max_s_per_step",
            "episodes_per_s", "meta_batch_size", "dtype"} <= set(record)
    assert record["min_s_per_step"] <= record["median_s_per_step"] <= record["max_s_per_step"]
    assert record["backend"] == "torch" and record["steps"] == int(args[-1].split("=")[1])


# ----------------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the fix, a non-zero exit, no traceback, no broken checkpoint
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragments, code", [
    (["train", "--shotz=3"], ["Unknown command line flag 'shotz'", "shots"], 2),
    (["train", "--backend=tensorflw"], ["--backend=tensorflw", "tf|torch"], 2),
    (["train", "--learner=mamll"], ["--learner=mamll", "maml"], 2),
    (["train", "--dtype=float16"], ["float32|float64"], 2),
    (["train", "--steps=ten"], ["--steps"], 2),
    (["trian"], ["expected one command", "received trian"], 2),
    ([], ["expected one command", "compare"], 2),
    (["train", "--shots=0"], ["shots=0", "positive integer"], 1),
    (["train", "--ways=5"], ["--ways", "--tasks=omniglot"], 1),
    (["train", "--tasks=omniglot", "--shots=15", "--queries=10"], ["20 drawings", "--shots + --queries <= 20"], 1),
    (["train", "--tasks=omniglot", "--train_ways=20"], ["--train_ways"], 1),
    (["train", "--learner=protonet"], ["--tasks=omniglot"], 1),
    (["evaluate"], ["--checkpoint="], 1),
    (["compare", "--seeds=0"], ["--seeds=0", "--seeds >= 1"], 1),
], ids=["unknown-flag", "bad-backend", "bad-learner", "bad-dtype", "non-integer", "bad-command", "no-command",
        "zero-shots", "ways-for-sinusoid", "too-many-shots", "train-ways-for-maml", "protonet-on-sinusoid",
        "evaluate-without-checkpoint", "zero-seeds"])
def test_bad_flags_fail_with_one_line(args, fragments, code, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert_one_line_error(result, *fragments, code=code)
    assert not (tmp_path / "runs").exists()


def test_missing_omniglot_data_dir(tmp_path):
    result = run_cli("train", "--backend=torch", "--tasks=omniglot", "--hidden=4", f"--data_dir={tmp_path / 'none'}",
                     f"--logdir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "--data_dir", "images_background.zip")
    assert not (tmp_path / "run").exists()  # the folder it created is removed again


def test_unwritable_logdir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli("train", "--backend=torch", *TINY, f"--logdir={blocker}/run", cwd=tmp_path)
    assert_one_line_error(result, "Cannot write to --logdir", "writable")


@pytest.mark.parametrize("kind", ["random", "foreign", "missing"])
def test_unreadable_or_foreign_checkpoint(kind, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "foreign":
        save_weights(path, {"layers.0.weight": np.zeros((8, 1))}, {"creator": "someone else"})
    result = run_cli("evaluate", "--backend=torch", f"--checkpoint={path}", cwd=tmp_path)
    fragment = {"random": "not a readable safetensors file", "foreign": "without dualmeta checkpoint metadata",
                "missing": "No checkpoint at"}[kind]
    assert_one_line_error(result, fragment, "dualmeta train")


def test_checkpoint_for_another_model_shape_names_tensor_and_flags(trained, tmp_path):
    result = run_cli("evaluate", "--backend=torch", f"--checkpoint={trained['torch']}", "--hidden=16",
                     "--episodes=2", cwd=tmp_path)
    assert_one_line_error(result, "'layers.0.weight'", "(8, 1)", "(16, 1)", "--hidden=8")


def test_resume_refuses_changed_settings_and_a_missing_checkpoint(trained, tmp_path):
    result = run_cli("train", "--backend=torch", f"--logdir={trained['torch']}", *PARITY, "--resume",
                     "--meta_lr=0.01", "--seed=3", cwd=tmp_path)
    assert_one_line_error(result, "--meta_lr=0.01", "--seed=3", "refuses")
    result = run_cli("train", "--backend=torch", f"--logdir={tmp_path / 'empty'}", *TINY, "--resume", cwd=tmp_path)
    assert_one_line_error(result, "no checkpoint", "drop --resume")
    result = run_cli("train", "--backend=torch", f"--logdir={trained['torch']}", *PARITY, cwd=tmp_path)
    assert_one_line_error(result, "already holds a checkpoint", "--resume")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    result = run_cli("train", "--backend=torch", f"--logdir={logdir}", *TINY, "--steps=50", "--meta_lr=1e10",
                     "--checkpoint_every=1", cwd=tmp_path)
    line = assert_one_line_error(result, "loss became", "at step", "--meta_lr")
    bad_step = int(line.split("at step ")[1].split(";")[0])
    assert checkpoint_step(logdir) == bad_step - 1
    weights, _ = load_weights(logdir / "checkpoint.safetensors")
    assert all(np.isfinite(w).all() for w in weights.values())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path):
    logdir = tmp_path / "run"
    # fsync succeeds for the first checkpoint (3 files) and then fails as on a full disk.
    code = ("import errno, os, sys\n"
            "calls = [0]\n"
            "real = os.fsync\n"
            "def fsync(fd):\n"
            "    calls[0] += 1\n"
            "    if calls[0] > 3:\n"
            "        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "    real(fd)\n"
            "os.fsync = fsync\n"
            "from dualmeta.cli import run\n"
            "sys.argv[0] = 'dualmeta'\n"
            "run()\n")
    result = run_cli("train", "--backend=torch", f"--logdir={logdir}", *TINY, "--steps=20", "--checkpoint_every=5",
                     cwd=tmp_path, code=code)
    assert_one_line_error(result, "step 10", "disk is full", "--resume")
    assert checkpoint_step(logdir) == 5
    assert sorted(p.name for p in logdir.iterdir() if "state" in p.name or p.name.startswith(".")) == \
        [checkpoint.state_file(5)]  # no temporary or unpaired file left
    run_cli("train", "--backend=torch", f"--logdir={logdir}", *TINY, "--steps=20", "--checkpoint_every=5",
            "--resume", cwd=tmp_path, check=0)
    assert checkpoint_step(logdir) == 20


def test_missing_backend_names_the_extra(tmp_path):
    code = ("import sys\n"
            "sys.modules['torch'] = None\n"  # makes `import torch` fail as if it were not installed
            "from dualmeta.cli import run\n"
            "sys.argv[0] = 'dualmeta'\n"
            "run()\n")
    result = run_cli("bench", "--backend=torch", cwd=tmp_path, code=code)
    assert_one_line_error(result, "pip install 'dualmeta[torch]'")


# --device: torch only; the model moves there and the learner follows it (tests/test_device.py)

@pytest.mark.parametrize("args, fragments", [
    (["train", "--backend=tf", "--device=cuda"], ["--device=cuda", "torch backend only",
                                                  "TensorFlow places operations on a visible GPU by itself"]),
    (["bench", "--backend=tf", "--device=cuda:1"], ["--device=cuda:1", "TensorFlow places operations"]),
    (["train", "--backend=torch", "--device=gpu"], ["'cpu', 'cuda', 'cuda:N', 'mps'", "received --device=gpu"]),
], ids=["tf-cuda", "tf-cuda-index", "bad-name"])
def test_device_usage_errors(args, fragments, tmp_path):
    result = run_cli(*args, *TINY, cwd=tmp_path)
    assert_one_line_error(result, *fragments, code=2)
    assert not (tmp_path / "runs").exists()


def test_device_cuda_without_cuda_names_the_fix(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_cli("train", "--backend=torch", "--device=cuda", *TINY, f"--logdir={tmp_path / 'run'}", cwd=tmp_path)
    assert_one_line_error(result, "--device=cuda needs CUDA", "torch.cuda.is_available() is False",
                          "install a CUDA build of PyTorch", "--device=cpu")
    assert not (tmp_path / "run").exists()


def test_device_cpu_runs_and_is_reported(tmp_path):
    result = run_cli("bench", "--backend=torch", "--device=cpu", *TINY, "--steps=2", "--warmup=0", cwd=tmp_path,
                     check=0)
    assert json.loads(result.stdout.strip().splitlines()[-1])["device"] == "cpu"


# ----------------------------------------------------------------------------------------------------
# In-process units: backend registry, settings, flagfiles, progress, checkpoint files
# ----------------------------------------------------------------------------------------------------

def test_backend_names_are_checked():
    with pytest.raises(ValueError, match=r"^Expected one of \{'tf', 'torch'\}; received backend='tensorflw'$"):
        backend.load_backend("tensorflw")
    with pytest.raises(ValueError, match="received learner='mamll'"):
        backend.learner_class("torch", "mamll")
    assert set(backend.LEARNERS) == set(cli.LEARNER_NAMES)


def test_a_registered_learner_missing_from_this_version(monkeypatch):
    monkeypatch.setitem(backend.LEARNERS, "ghost", ("ghost", "Ghost"))
    with pytest.raises(backend.LearnerUnavailable, match="'ghost' is not available in this version"):
        backend.learner_class("torch", "ghost")


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "dualmeta" / "configs").glob("*.flags")), ids=lambda p: p.stem)
def test_recipe_flagfiles_resolve(path):
    from absl.testing import flagsaver
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        assert cli.FLAGS(["dualmeta", f"--flagfile={path}", "train"]) == ["dualmeta", "train"]
        e = cli._experiment("train", backend_name="torch")
    assert e.tasks in path.stem and e.learner in path.stem
    if path.stem == "omniglot_maml_5w1s":
        assert (e.ways, e.shots, e.inner_lr, e.inner_steps, e.test_inner_steps, e.meta_batch_size) == (5, 1, 0.4, 1, 3, 32)
    if path.stem == "omniglot_protonet_60w5s":
        assert (e.train_ways, e.train_shots, e.ways, e.shots) == (60, 5, 5, 5)
        assert e.model() == ("conv4", dict(in_channels=1, hidden=64, num_classes=None, downsample="maxpool",
                                           head="flatten", image_size=28, activation="relu",
                                           track_running_stats=True))


def test_settings_and_seeds():
    e = experiment.resolve("torch", tasks="omniglot")
    assert e.model()[1] == dict(in_channels=1, hidden=64, num_classes=5, downsample="stride", head="mean",
                                image_size=28, activation="relu")
    assert (e.train_ways, e.inner_reduction, e.split) == (5, "sum_per_shot", "vinyals")
    p = experiment.resolve("torch", learner="protonet", tasks="omniglot")
    assert (p.train_ways, p.train_queries, p.meta_batch_size, p.inner_lr) == (60, 5, 1, None)
    f = experiment.resolve("torch", learner="finetune")
    assert f.inner_steps == 0 and f.learner_args() == dict(inner_lr=0.01, test_inner_steps=10, meta_lr=1e-3)
    with pytest.raises(ValueError, match="--inner_steps does not apply"):
        experiment.resolve("torch", learner="finetune", inner_steps=1)
    r = experiment.resolve("torch", learner="reptile", tasks="omniglot", train_shots=10, queries=1,
                           inner_batch_size=10)
    assert (r.train_shots, r.shots, r.learner_args()["inner_batch_size"]) == (10, 1, 10)
    assert "inner_batch_size" not in experiment.resolve("torch", tasks="omniglot").learner_args()
    with pytest.raises(ValueError, match="--inner_batch_size applies to --learner=reptile"):
        experiment.resolve("torch", learner="maml", inner_batch_size=4)
    with pytest.raises(ValueError, match="inner_batch_size to be a positive integer"):
        experiment.resolve("torch", learner="reptile", inner_batch_size=0)
    s = experiment.resolve("torch", seed=7)
    assert len({s.seed, s.val_seed, experiment.EVAL_SEED}) == 3
    a, b = s.eval_tasks().episode(3), experiment.resolve("tf", seed=9).eval_tasks().episode(3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # evaluation episodes never depend on the run
    with pytest.raises(ValueError, match="--seed"):
        experiment.resolve("torch", seed=experiment.EVAL_SEED)


class _Terminal:
    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_progress_draws_a_tqdm_bar_on_a_terminal_and_prints_lines_otherwise():
    import io
    plain = io.StringIO()
    progress = Progress(10, stream=plain, every=5)
    for step in range(1, 11):
        progress.update(step, {"loss": 0.5, "accuracy": 0.25})
    progress.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 5/10  loss 0.5000  acc 0.2500") and "steps/s" in lines[1]
    assert "ETA" in lines[0] and "\r" not in plain.getvalue()
    terminal = _Terminal()
    progress = Progress(10, start=2, stream=terminal, every=5, label="tf    ")
    assert progress._bar is not None and progress._bar.n == 2  # a tqdm bar, resumed at step 2
    for step in range(3, 11):
        progress.update(step, {"loss": 0.5})
    progress.close()
    assert terminal.text.startswith("\r") and "10/10" in terminal.text and "loss=0.5000" in terminal.text
    assert terminal.text.startswith("\rtf:") and terminal.text.endswith("\n")
    silent = _Terminal()
    progress = Progress(10, stream=silent, enabled=False)  # --noprogress
    for step in range(1, 11):
        progress.update(step, {"loss": 0.5})
    progress.close()
    assert silent.text == "" and cli.FLAGS["progress"].default is True


def test_checkpoint_save_is_atomic_under_enospc(tmp_path, monkeypatch):
    weights, state = {"w": np.ones(3)}, {"step": np.asarray(1), "m.w": np.zeros(3)}
    meta = {"learner": "maml", "model": {}, "dtype": "float64", "experiment": {}}
    checkpoint.save(str(tmp_path), 1, weights, state, meta)
    checkpoint.save(str(tmp_path), 2, {"w": 2 * np.ones(3)}, state, meta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors",
                                                          checkpoint.state_file(2)]

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(checkpoint.CheckpointError, match="step 3 .*disk is full"):
        checkpoint.save(str(tmp_path), 3, {"w": 3 * np.ones(3)}, state, meta)
    monkeypatch.undo()
    latest = checkpoint.load_latest(str(tmp_path))
    assert latest.metadata["step"] == 2 and np.array_equal(latest.weights["w"], 2 * np.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors",
                                                          checkpoint.state_file(2)]


def test_evaluate_with_support_statistics(tmp_path):
    """`evaluate --test_norm=support` scores the MAML family without transduction; the report says which batch
    norm each evaluation used, and other learners refuse the flag with the fix."""
    run_cli("train", "--backend=torch", "--tasks=omniglot", "--hidden=4", "--steps=2", "--meta_batch_size=2",
            "--val_every=0", "--logdir=run", cwd=tmp_path, check=0)
    reports = {}
    for norm in ("query", "support"):
        run_cli("evaluate", "--logdir=run", "--episodes=3", f"--test_norm={norm}", f"--report={norm}.json",
                cwd=tmp_path, check=0)
        reports[norm] = json.loads((tmp_path / f"{norm}.json").read_text())
        assert reports[norm]["test_norm"] == norm
    assert "not transductive" in reports["support"]["batch_norm_at_test"]
    assert reports["query"]["batch_norm_at_test"].endswith("(transductive)")
    assert reports["query"]["loss"]["mean"] != reports["support"]["loss"]["mean"]
    result = run_cli("train", "--steps=1", "--test_norm=support", "--logdir=sine", cwd=tmp_path)
    assert_one_line_error(result, "--test_norm", "drop it for --learner=maml --tasks=sinusoid")


# ----------------------------------------------------------------------------------------------------
# Issue 17: check-model and --model=resnet12
# ----------------------------------------------------------------------------------------------------

def test_check_model_names_the_mismatched_layer(tmp_path):
    result = run_cli("check-model", "--model=examples.my_twins:mismatched", "--dtype=float64", cwd=REPO_ROOT, check=1)
    assert "FAIL at the output of layer 'gelu'" in result.stdout, result.stdout


@pytest.mark.slow
def test_resnet12_protonet_trains_in_torch_and_evaluates_the_same_in_tf(tmp_path):
    args = ["--tasks=omniglot", "--learner=protonet", "--model=resnet12", "--hidden=2", "--train_ways=3", "--ways=3",
            "--shots=1", "--queries=2", "--train_queries=2", "--episodes=4"]
    run_cli("train", "--backend=torch", *args, "--steps=2", f"--logdir={tmp_path / 'run'}", cwd=tmp_path, check=0)
    lines = [run_cli("evaluate", f"--backend={b}", f"--checkpoint={tmp_path / 'run'}", "--episodes=4", cwd=tmp_path,
                     check=0).stdout.strip().splitlines()[-1] for b in ("tf", "torch")]
    assert lines[0].split("accuracy")[1] == lines[1].split("accuracy")[1], lines


# Issue 17: --model=package.module:name, a user's twin for every learner
def test_a_user_description_is_built_with_the_tasks_shape_in_both_backends():
    import sys as _sys
    _sys.path.insert(0, str(REPO_ROOT))
    try:
        maml = experiment.resolve("torch", learner="maml", tasks="omniglot", ways=3, backbone="examples.my_twins:small")
        proto = experiment.resolve("torch", learner="protonet", tasks="omniglot", ways=3,
                                   backbone="examples.my_twins:small")
        assert maml.model() == ("description", dict(path="examples.my_twins:small", num_classes=3, in_channels=1,
                                                    image_size=28))
        assert proto.model()[1]["num_classes"] is None
        outputs = {}
        for name in ("torch", "tf"):
            model = backend.build_model(name, *maml.model(), dtype="float64", seed=3)
            outputs[name] = {n: np.asarray(w) for n, w in model.get_weights().items()}
        assert sorted(outputs["torch"]) == ["conv.weight", "head.bias", "head.weight", "norm.bias", "norm.weight"]
        for n in outputs["torch"]:
            np.testing.assert_array_equal(outputs["torch"][n], outputs["tf"][n])
        assert outputs["torch"]["head.weight"].shape == (3, 8 * 7 * 7)
    finally:
        _sys.path.remove(str(REPO_ROOT))


@pytest.mark.parametrize("model, fragments", [
    ("nosuchpackage.twins:small", ["Cannot import 'nosuchpackage.twins'", "PYTHONPATH"]),
    ("examples.my_twins:nothing", ["has no 'nothing'"]),
    ("resnet18", ["--model among", "package.module:name"]),
])
def test_a_bad_model_is_refused_in_one_line(tmp_path, model, fragments):
    result = run_cli("train", "--tasks=omniglot", "--learner=protonet", f"--model={model}", "--steps=1",
                     f"--logdir={tmp_path / 'run'}", cwd=REPO_ROOT)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~40 s of CPU (three CLI runs)
def test_a_user_description_trains_in_torch_and_evaluates_the_same_in_tf(tmp_path):
    args = ["--tasks=omniglot", "--learner=protonet", "--model=examples.my_twins:small", "--train_ways=3", "--ways=3",
            "--shots=1", "--queries=2", "--train_queries=2", "--episodes=4"]
    run_cli("train", "--backend=torch", *args, "--steps=2", f"--logdir={tmp_path / 'run'}", cwd=REPO_ROOT, check=0)
    lines = [run_cli("evaluate", f"--backend={b}", f"--checkpoint={tmp_path / 'run'}", "--episodes=4", cwd=REPO_ROOT,
                     check=0).stdout.strip().splitlines()[-1] for b in ("tf", "torch")]
    accuracy = [line.split("accuracy")[1].split(";")[0] for line in lines]  # the float32 loss may differ in its last digit
    assert accuracy[0] == accuracy[1], lines
