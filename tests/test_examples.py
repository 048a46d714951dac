"""Every script in ``examples/`` runs: each is started in a subprocess with tiny settings (seconds) and its
outputs are checked. A new example without an entry in ``SMOKE`` fails ``test_every_example_has_a_smoke_test``.

The Omniglot examples need the Omniglot files (``DUALMETA_DATA_DIR`` or ``../shared/data/omniglot``) and are
skipped without them.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest

from dualmeta.datasets import omniglot as data
from dualmeta.weights import load_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
BACKENDS = ("tf", "torch")
TINY = ["--minutes=1", "--hidden=8", "--threads=1"]  # every run also caps --max_steps: the budget is a bound
# example file -> the tiny settings of its smoke run(s), one per backend
# Modules imported by path rather than run: my_twins.py (twin descriptions for `dualmeta check-model`), tested
# in parity_tests/test_twins.py and tests/test_cli.py.
IMPORTED_MODULES = ("my_twins.py",)
SMOKE = {
    "sinusoid.py": lambda b, out: [f"--backends={b}", "--steps=5", "--episodes=3", "--meta_batch_size=2",
                                   "--learners=maml,fomaml,finetune,lstm,snail", "--threads=1", f"--out={out}"],
    "omniglot_maml.py": lambda b, out: [f"--backend={b}", *TINY, "--learner=metasgd", "--max_steps=3", "--episodes=2",
                                        "--curve_every=0.0001", "--curve_episodes=1", "--log_every=1",
                                        f"--out={out}/metrics.json", f"--checkpoint={out}/weights.safetensors"],
    "omniglot_metric.py": lambda b, out: [f"--backend={b}", *TINY, "--max_steps=3", "--episodes=2",
                                          "--curve_every=0.0001", "--curve_episodes=2", f"--out={out}/metrics.json",
                                          f"--checkpoint={out}/weights.safetensors"],
    "omniglot_pretrain.py": lambda b, out: [f"--backend={b}", *TINY, "--learner=baseline_pp", "--max_steps=3",
                                            "--batch_size=8", "--episodes=2", "--head_steps=10", "--curve_every=0", "--scale=5",
                                            "--other_heads=prototype", f"--out={out}/metrics.json",
                                            f"--checkpoint={out}/weights.safetensors"],
}


def _omniglot_or_skip():
    folder = data.default_data_dir()
    if not all((folder / name).is_file() for name in ("images_background.zip", "images_evaluation.zip",
                                                      "all_runs.zip")):
        pytest.skip(f"Omniglot is not in {folder}")


def _run(example: str, backend: str, out) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, example), *SMOKE[example](backend, out)],
                         capture_output=True, text=True, timeout=600, cwd=out,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, f"{example} --backend={backend} failed:\n{run.stderr[-3000:]}"
    return run


def _evaluate_in_the_other_backend(example: str, backend: str, out, *flags: str) -> None:
    """``--minutes=0 --init_weights``: the other backend evaluates the checkpoint on the same test episodes
    and gets the same accuracies (and losses, to float32 round-off)."""
    other = "tf" if backend == "torch" else "torch"
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, example), f"--backend={other}", "--minutes=0",
                          "--init_weights=weights.safetensors", "--hidden=8", "--threads=1", "--episodes=2",
                          "--curve_every=0", "--out=other.json", *flags], capture_output=True, text=True,
                         timeout=600, cwd=out, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, f"{example} --backend={other} --minutes=0 failed:\n{run.stderr[-3000:]}"
    trained = json.loads((out / "metrics.json").read_text())
    evaluated = json.loads((out / "other.json").read_text())
    assert evaluated["train"]["steps"] == 0 and evaluated["init_weights"]["config"]["backend"] == backend
    assert list(evaluated["test"]) == list(trained["test"])
    for setting, result in trained["test"].items():
        again = evaluated["test"][setting]
        assert again["accuracy"]["mean"] == result["accuracy"]["mean"], setting
        assert abs(again["loss"]["mean"] - result["loss"]["mean"]) <= 1e-4 * max(1.0, result["loss"]["mean"])


def _test_characters() -> set[str]:
    from dualmeta import protocol
    return protocol.characters(data.omniglot_split("vinyals", "test"))


def _assert_curve_on_val(report) -> None:
    """The accuracy curve drew validation characters only: none of the test characters."""
    curve = report["protocol"]["curve"]
    assert curve["subset"] == "val" and curve["characters_drawn"]
    assert not set(curve["characters_drawn"]) & _test_characters()
    assert {name.split("/")[0] for name in curve["characters_drawn"]} <= {
        "Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali"}


def _conv4(backend: str, **kwargs):
    return importlib.import_module(f"{backend}_meta.models").conv4(hidden=8, **kwargs)


def test_every_example_has_a_smoke_test():
    scripts = sorted(name for name in os.listdir(EXAMPLES) if name.endswith(".py") and not name.startswith("_")
                     and name not in IMPORTED_MODULES)
    assert scripts == sorted(SMOKE), f"examples without a smoke run in tests/test_examples.py: " \
                                     f"{sorted(set(scripts) - set(SMOKE))}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sinusoid_example(backend, tmp_path):
    _run("sinusoid.py", backend, tmp_path)
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["measured"]["command"].startswith("python examples/sinusoid.py --backends=")
    assert [(r["backend"], r["learner"]) for r in report["results"]] == [
        (backend, name) for name in ("maml", "fomaml", "finetune", "lstm", "snail")]
    assert all(r["mse"][k]["n"] == 3 for r in report["results"][:3] for k in ("1", "5", "10"))
    # the model-based learners take no step at test: one forward-pass MSE, plotted as such
    assert all(list(r["mse"]) == ["forward"] and r["mse"]["forward"]["n"] == 3 for r in report["results"][3:])
    assert all("forward" in curve for r in report["results"][3:] for curve in r["curves"])
    assert (tmp_path / "adaptation.png").stat().st_size > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_omniglot_maml_example(backend, tmp_path):
    """Trains Meta-SGD 3 steps with an accuracy curve, evaluates 5-way 1-shot, writes a checkpoint that the
    other backend's learner loads (learned inner rates included)."""
    _omniglot_or_skip()
    _run("omniglot_maml.py", backend, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["measured"]["command"].startswith(f"python examples/omniglot_maml.py --backend={backend}")
    train = report["train"]
    assert train["steps"] == 3 and [row[0] for row in train["train_curve"]] == [1, 2, 3]
    assert train["eval_curve"][0][0] == 0 and train["eval_curve"][-1][0] == 3
    assert list(report["test"]) == ["5w1s"] and report["test"]["5w1s"]["accuracy"]["n"] == 2
    _assert_curve_on_val(report)
    assert report["config"]["test_norm"] == "query" and "transductive" in report["config"]["batch_norm_at_test"]
    weights, _ = load_weights(tmp_path / "weights.safetensors")
    other = "tf" if backend == "torch" else "torch"
    metasgd = importlib.import_module(f"{other}_meta.metasgd")
    learner = metasgd.MetaSGD(_conv4(other, num_classes=5, downsample="stride", head="mean"))
    learner.set_weights(weights)
    assert {n for n in weights if n.startswith("inner_lrs.")}
    _evaluate_in_the_other_backend("omniglot_maml.py", backend, tmp_path, "--learner=metasgd")


@pytest.mark.parametrize("backend", BACKENDS)
def test_omniglot_maml_example_runs_snail(backend, tmp_path):
    """The model-based learners through the meta-batch example: SNAIL trains 2 steps on shuffled supports,
    evaluates with running batch-norm statistics, and the other backend scores its checkpoint the same."""
    _omniglot_or_skip()
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "omniglot_maml.py"), f"--backend={backend}", *TINY,
                          "--learner=snail", "--max_steps=2", "--meta_batch_size=2", "--train_queries=2", "--episodes=2",
                          "--curve_every=0", "--out=metrics.json", "--checkpoint=weights.safetensors"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["train"]["steps"] == 2 and report["config"]["test_norm"] == "running"
    assert report["config"]["train_queries"] == 2  # the learner defaults of experiment.py do not override it
    assert report["config"]["inner_lr"] is None and report["test"]["5w1s"]["accuracy"]["n"] == 2
    _evaluate_in_the_other_backend("omniglot_maml.py", backend, tmp_path, "--learner=snail")
    if backend == "torch":
        refused = subprocess.run([sys.executable, os.path.join(EXAMPLES, "omniglot_maml.py"), *TINY,
                                  "--learner=lstm", "--test_norm=support"], capture_output=True, text=True,
                                 timeout=600, cwd=tmp_path)
        assert refused.returncode == 1 and "--test_norm does not apply" in refused.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_omniglot_metric_example(backend, tmp_path):
    """ProtoNet: trains 3 episodes, evaluates the four settings and Lake's runs, writes the metrics JSON
    and a checkpoint that loads into the other backend's model."""
    _omniglot_or_skip()
    _run("omniglot_metric.py", backend, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["train"]["steps"] == 3 and report["config"]["train_ways"] == 60
    assert report["measured"]["command"].startswith("python examples/omniglot_metric.py")
    assert sorted(report["test"]) == ["20w1s", "20w5s", "5w1s", "5w5s"]
    assert all(result["accuracy"]["n"] == 2 for result in report["test"].values())
    # trained on the Vinyals training characters: Lake's runs 1-8 share characters with them, 9-20 do not
    lake = report["lake_one_shot"]
    assert lake["runs"] == 12 and lake["kept"] == list(range(9, 21)) and lake["excluded"] == list(range(1, 9))
    assert 0 <= lake["error_rate_percent"] <= 100
    _assert_curve_on_val(report)
    weights, _ = load_weights(tmp_path / "weights.safetensors")
    other = "tf" if backend == "torch" else "torch"
    _conv4(other, downsample="maxpool", track_running_stats=True).set_weights(weights)
    _evaluate_in_the_other_backend("omniglot_metric.py", backend, tmp_path)
    if backend == "torch":  # bad --init_weights: one line naming the file, no traceback
        run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "omniglot_metric.py"), "--minutes=0",
                              "--init_weights=metrics.json", "--hidden=8"], capture_output=True, text=True,
                             timeout=600, cwd=tmp_path)
        assert run.returncode == 1 and "--init_weights=metrics.json" in run.stderr
        assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, "omniglot_metric.py"), "--minutes=0"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 1 and "0 only with --init_weights" in run.stderr


@pytest.mark.parametrize("example", ["omniglot_maml.py", "omniglot_metric.py"])
def test_a_pilot_draws_no_test_episode(example, tmp_path):
    """``--evaluate_on=val``: the final score is on the validation classes; no test and no Lake episode is
    drawn (the report has neither), the curve is on val too. ``--train_on=trainval`` has no val: refused."""
    _omniglot_or_skip()
    run = subprocess.run([sys.executable, os.path.join(EXAMPLES, example), "--backend=torch", *TINY, "--max_steps=2",
                          "--episodes=2", "--curve_every=0.0001", "--curve_episodes=1", "--evaluate_on=val",
                          "--test_norm=query,support" if example == "omniglot_maml.py" else "--running_stats",
                          "--out=pilot.json"], capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "pilot.json").read_text())
    assert "val" in report and "test" not in report and "lake_one_shot" not in report
    assert report["protocol"]["final_evaluation"] == "val"
    _assert_curve_on_val(report)
    if example == "omniglot_maml.py":
        assert list(report["val_other_norms"]) == ["support"]
    refused = subprocess.run([sys.executable, os.path.join(EXAMPLES, example), *TINY, "--train_on=trainval",
                              "--evaluate_on=val", "--curve_every=0"], capture_output=True, text=True, timeout=600,
                             cwd=tmp_path)
    assert refused.returncode == 1 and "no held-out set" in refused.stderr and "Traceback" not in refused.stderr


def test_gpu_paper_runs_script_names_real_flags(tmp_path):
    """``examples/gpu_paper_runs.sh`` (run only on a lent GPU machine): its dry run prints one command per
    paper-length run and backend, and every command's flags are flags of its example (absl refuses others)."""
    script = os.path.join(EXAMPLES, "gpu_paper_runs.sh")
    dry = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, DRY="1", BACKENDS="torch tf", PYTHON=sys.executable))
    assert dry.returncode == 0, dry.stderr
    commands = [line[2:].split() for line in dry.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2 * 13
    for command in commands:
        out = next(a for a in command if a.startswith("--out="))
        assert out.startswith("--out=results/omniglot/") and "_gpu_" in out  # relative: no machine path
        assert any(a.startswith("--max_steps=") for a in command)
        parse = ("import os, runpy, sys; from absl import flags; sys.path.insert(0, os.path.dirname(sys.argv[1])); "
                 "runpy.run_path(sys.argv[1], run_name='flags_only'); "
                 "flags.FLAGS(sys.argv[1:])")  # defines the example's flags, parses the command's, runs nothing
        check = subprocess.run([sys.executable, "-c", parse, os.path.join(ROOT, command[1]), *command[2:]],
                               capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert check.returncode == 0, f"{' '.join(command)}:\n{check.stderr[-2000:]}"


@pytest.mark.slow  # ~20 s: two runs, one in each backend
@pytest.mark.parametrize("backend", ["torch"])
def test_omniglot_pretrain_example(backend, tmp_path):
    """Baseline++: trains 3 steps, scores the four settings with the linear head and the prototype head, and the
    other backend scores its checkpoint (--minutes=0 --init_weights) to the same accuracies."""
    _omniglot_or_skip()
    _run("omniglot_pretrain.py", backend, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["train"]["steps"] == 3 and report["config"]["head"] == "linear"
    assert report["measured"]["command"].startswith("python examples/omniglot_pretrain.py")
    assert sorted(report["test"]) == sorted(report["test_other_heads"]["prototype"]) == ["20w1s", "20w5s", "5w1s", "5w5s"]
    _evaluate_in_the_other_backend("omniglot_pretrain.py", backend, tmp_path, "--learner=baseline_pp",
                                   "--head_steps=10")
    # without --scale, the cosine head at test takes the scale the checkpoint was trained with
    assert json.loads((tmp_path / "other.json").read_text())["config"]["scale"] == report["config"]["scale"] == 5
