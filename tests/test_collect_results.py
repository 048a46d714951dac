"""docs/collect_results.py: results pages built from small synthetic metrics files, and its --check."""
import importlib.util
import json
import re
import os
import pathlib
import shutil
import subprocess

import pytest

pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NEW_COMMAND = "python examples/omniglot_maml.py --backend=torch --minutes=2 --out=results/omniglot/maml_torch.json"
OLD_COMMAND = ("python examples/omniglot_metric.py --backend=torch --learner=protonet --minutes=30 "
               "--out=results/omniglot/protonet_torch_30min.json")


def load_collector():
    spec = importlib.util.spec_from_file_location("collect_results", ROOT / "docs" / "collect_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


collect = load_collector()


def stat(mean, ci95, n):
    return {"mean": mean, "ci95": ci95, "n": n}


def maml_file(backend, accuracy):
    """A file as examples/omniglot_maml.py writes it (with "measured" and curves)."""
    return {
        "measured": {"date": "2026-11-20T10:11:12+00:00", "command": NEW_COMMAND.replace("torch", backend)},
        "config": {"backend": backend, "learner": "maml", "ways": 5, "shots": 1, "train_queries": 1,
                   "meta_batch_size": 32, "minutes": 2.0, "episodes": 600},
        "train": {"steps": 321, "seconds": 120.4, "seconds_per_step": 0.375, "first_step_seconds": 1.2,
                  "train_curve": [[10, 4.0, 1.6, 0.2], [20, 8.1, 1.1, 0.5], [30, 12.0, 0.7, 0.8]],
                  "eval_curve": [[0, 0.0, {"accuracy": stat(0.2, 0.02, 100), "loss": stat(1.6, 0.1, 100)}],
                                 [30, 12.0, {"accuracy": stat(0.9, 0.02, 100), "loss": stat(0.3, 0.1, 100)}]]},
        "test": {"5w1s": {"accuracy": stat(accuracy, 0.004, 600), "loss": stat(0.1, 0.01, 600), "seconds": 3.0}},
        "protocol": {"split": "vinyals", "train_on": "train", "train": {"subset": "train"},
                     "val": {"subset": "val"}, "test": {"subset": "test"}, "final_evaluation": "test",
                     "curve": {"subset": "val", "episodes": 100, "characters_drawn": ["Hebrew/character01"]}},
    }


def old_protonet_file():
    """A file as the first examples/omniglot_metric.py wrote it: no "measured", no curves."""
    return {
        "config": {"backend": "torch", "learner": "protonet", "minutes": 30.0, "max_steps": None,
                   "test_queries": 15, "episodes": 600, "hidden": 64, "meta_lr": 0.001, "distance": "euclidean",
                   "cosine_scale": 1.0, "fce": False, "running_stats": True, "dtype": "float32", "seed": 0,
                   "eval_seed": 2000000011, "threads": None, "train_ways": 60, "train_shots": 5,
                   "train_queries": 5, "lr_decay_every": 2000, "batch_norm_at_test": "running statistics"},
        "train": {"steps": 5298, "seconds": 1800.2, "first_step_seconds": 0.37, "seconds_per_step": 0.3398},
        "test": {name: {"accuracy": stat(acc, 0.003, 600), "loss": stat(0.1, 0.01, 600), "seconds": 5.0}
                 for name, acc in (("5w1s", 0.9787), ("5w5s", 0.996), ("20w1s", 0.94), ("20w5s", 0.9863))},
        "lake_one_shot": {"error_rate_percent": 8.5, "ci95_percent": 2.41, "runs": 20},
    }


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    write(folder / "omniglot" / "maml_torch.json", maml_file("torch", 0.9512))
    write(folder / "omniglot" / "maml_tf.json", maml_file("tf", 0.9488))
    write(folder / "omniglot" / "protonet_torch_30min.json", old_protonet_file())
    write(folder / "sinusoid" / "results.json", {
        "measured": {"date": "2026-11-21T08:00:00Z", "command": "python examples/sinusoid.py --out results/sinusoid"},
        "command": "python examples/sinusoid.py --out results/sinusoid",
        "results": [{"backend": b, "learner": "maml", "steps": 4000, "train_seconds": 7.61,
                     "mse": {"1": stat(0.7457, 0.068, 600), "5": stat(0.336, 0.041, 600),
                             "10": stat(0.2803, 0.0377, 600)}} for b in ("torch", "tf")]})
    write(folder / "bench" / "maml.json", {
        "measured": {"date": "2026-11-22T09:30:00Z", "command": "python benchmarks/bench_maml.py --out=x.json"},
        "machine": {"cpus": 2, "torch": "2.5.1"},
        "rows": [{"learner": "maml", "setting": "5w1s", "reference_s": 0.5, "torch_s": 0.45, "tf_s": 0.61,
                  "torch_ratio": 0.9, "tf_ratio": 1.22},
                 {"learner": "protonet", "setting": "60w5s", "reference_s": None, "torch_s": 0.3, "tf_s": 0.28,
                  "torch_ratio": None, "tf_ratio": None}]})
    return folder


def build(results, tmp_path):
    out = tmp_path / "site"
    assert collect.main(["--results", str(results), "--out", str(out)]) == 0
    return out


def test_omniglot_table_holds_the_figures_the_paper_and_the_commands(results, tmp_path):
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert "| MAML | PyTorch | 95.12 ± 0.40 | 600 | 98.7 (Finn et al. 2017, transductive) |" in page
    assert "| MAML | TensorFlow | 94.88 ± 0.40 | 600 | 98.7 (Finn et al. 2017, transductive) |" in page
    assert ("| ProtoNet | PyTorch | 97.87 ± 0.30 | 600 | 98.8 (Snell et al. 2017, running statistics) | "
            "60-way 5-shot") in page
    assert "| 96.0 (Snell et al. 2017, running statistics) |" in page  # the published precision, not 96
    assert f"`{NEW_COMMAND}`" in page and "2026-11-20 10:11 UTC" in page
    assert "| 2 min | 321 | 0.375 |" in page and "| 30 min | 5298 | 0.34 |" in page
    # each row: its split and its batch norm at test
    assert ("| vinyals train → test, curve on val | query-set batch statistics (transductive) | 2 min |" in page)
    assert (f"| {collect.LEGACY_SPLIT} | running statistics (not transductive) | 30 min |" in page)
    # the old file scored Lake's 20 runs after training on characters of runs 1-8: withdrawn, not shown
    assert "8.50 ± 2.41" not in page and "Withdrawn: the Lake figures of `results/omniglot/protonet_torch_30min" in page
    # every table row names when and with which command it was measured
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| Learner")]
    assert rows and all("UTC" in row or "date unknown" in row for row in rows)
    assert all("`python examples/omniglot_" in row for row in rows)


def test_training_shots_and_minibatches_are_shown(results, tmp_path):
    reptile = maml_file("torch", 0.9)
    reptile["config"].update(learner="reptile", train_shots=10, inner_batch_size=10, meta_batch_size=5)
    write(results / "omniglot" / "reptile_torch.json", reptile)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert "| Reptile | PyTorch | 90.00 ± 0.40 | 600 | 97.68 (Nichol et al. 2018, transductive) | 5-way 10-shot, " \
           "1 query/class, 5 tasks/step, inner minibatches of 10 |" in page
    reptile["config"]["inner_reduction"] = "mean"
    write(results / "omniglot" / "reptile_torch.json", reptile)
    page = (build(results, tmp_path / "again") / "omniglot.md").read_text()
    assert "inner minibatches of 10, mean support loss |" in page
    assert "## 5-way 1-shot" in page and "## 5-way 10-shot" not in page  # tested on the test shots


def test_matching_nets_runs_with_another_cosine_scale_are_told_apart(results, tmp_path):
    for scale in (1.0, 10.0):
        run = old_protonet_file()
        run["config"].update(learner="matchingnet", cosine_scale=scale, train_ways=5, train_shots=1, train_queries=15)
        write(results / "omniglot" / f"matchingnet_{scale:g}.json", run)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert f"| 5-way 1-shot, 15 queries/class | {collect.LEGACY_SPLIT} | running statistics (not transductive) | 30 min |" in page
    assert (f"| 5-way 1-shot, 15 queries/class, cosine scale 10 | {collect.LEGACY_SPLIT} | running statistics "
            "(not transductive) | 30 min |") in page


def test_old_file_without_provenance_gets_a_rebuilt_command_and_a_note(results, tmp_path):
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert f"`{OLD_COMMAND}` {collect.REBUILT}" in page
    assert "date unknown" in page  # tmp_path is not a git repository
    assert "protonet_torch_30min.json` predates the training curves" in page


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_old_file_is_dated_by_the_commit_that_added_its_bytes(results, tmp_path):
    env = {**os.environ, "GIT_COMMITTER_DATE": "2020-01-02T03:04:05+00:00",
           "GIT_AUTHOR_DATE": "2020-01-02T03:04:05+00:00"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run(git + ["add", "results"], cwd=tmp_path, check=True, env=env)
    subprocess.run(git + ["commit", "-q", "-m", "results"], cwd=tmp_path, check=True, env=env)
    moved = results / "omniglot" / "renamed.json"  # a move not yet committed keeps its date
    (results / "omniglot" / "protonet_torch_30min.json").rename(moved)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert "2020-01-02 03:04 UTC (date of the git commit that added the file)" in page
    assert "--out=results/omniglot/renamed.json` (command rebuilt" in page


def test_figures_are_drawn_per_learner_and_setting(results, tmp_path):
    out = build(results, tmp_path)
    page = (out / "omniglot.md").read_text()
    for name in ("maml_train5w1s1q_loss.png", "maml_train5w1s1q_accuracy.png"):
        assert (out / "img" / name).stat().st_size > 1000
        assert f"](img/{name})" in page
    again = tmp_path / "again"
    assert collect.main(["--results", str(results), "--out", str(again)]) == 0
    assert (again / "img" / "maml_train5w1s1q_loss.png").read_bytes() == \
        (out / "img" / "maml_train5w1s1q_loss.png").read_bytes()


def test_sinusoid_speed_and_missing_parity_pages(results, tmp_path):
    out = build(results, tmp_path)
    sinusoid = (out / "sinusoid.md").read_text()
    assert "| PyTorch | MAML | 4000 | 7.61 | 0.746 ± 0.068 | 0.336 ± 0.041 | 0.280 ± 0.038 |" in sinusoid
    speed = (out / "speed.md").read_text()
    assert "| MAML | 5w1s | 0.5 | 0.45 | 0.90 | 0.61 | 1.22 | 2026-11-22 09:30 UTC |" in speed
    assert "| ProtoNet | 60w5s | — | 0.3 | — | 0.28 | — |" in speed
    parity = (out / "parity.md").read_text()
    assert "Not measured yet" in parity and collect.PARITY_COMMAND in parity


def test_speed_page_shows_the_workers_benchmark_with_its_best_ratio_and_efficiency(results, tmp_path):
    run = {"learner": "maml", "backend": "torch", "tasks": "omniglot"}
    write(results / "distributed" / "bench.json", {
        "date": "2026-12-02 16:00 UTC", "command": "benchmarks/bench_distributed.py --steps=20",
        "load_before": "0.10 0.20 0.30", "load_after": "1.90 1.00 0.50",
        "runs": [dict(run, workers=1, threads="default", median_s_per_step=2.0),
                 dict(run, workers=1, threads=1, median_s_per_step=3.2),
                 dict(run, workers=2, threads=1, median_s_per_step=1.8)]})
    speed = (build(results, tmp_path) / "speed.md").read_text()
    # best ratio: 3.2 / 2 workers / 2.0 = 0.80; efficiency: 1.6 / 1.8 = 89%
    assert "| MAML | PyTorch | 2 | 3.2 | 1.8 | 0.90 | 0.80 | 89% |" in speed
    assert "`python benchmarks/bench_distributed.py --steps=20`" in speed and "before 0.10 0.20 0.30" in speed


def test_speed_rows_with_a_floor_show_it_in_floors(results, tmp_path):
    write(results / "bench" / "floor.json", {
        "measured": {"date": "2026-12-04T21:30:00Z", "command": "python benchmarks/bench_maml.py --out=y.json"},
        "peak_gflops": {"sgemm_2048": 200.0, "conv3x3_512x64x14x14": 400.0},
        "rows": [{"learner": "maml", "setting": "5w1s", "reference_s": 0.8, "torch_s": 0.6, "tf_s": 1.0,
                  "torch_ratio": 0.75, "tf_ratio": 1.25, "gflop": 40.0, "floor_s": 0.1}]})
    speed = (build(results, tmp_path) / "speed.md").read_text()
    section = speed[speed.index("## `results/bench/floor.json`"):]
    assert "sgemm_2048 200 GFLOP/s, conv3x3_512x64x14x14 400 GFLOP/s" in section
    assert "| MAML | 5w1s | 0.8 | 0.6 | 0.75 | 1 | 1.25 | 40 | 0.1 | 8.0 | 6.0 | 10.0 | 2026-12-04 21:30 UTC |" in section
    assert "Floor s/step" in section and "Floor s/step" not in speed[:speed.index("## `results/bench/floor.json`")]


def test_speed_rows_show_the_convolutions_alone_and_the_page_faults(results, tmp_path):
    write(results / "bench" / "kernels.json", {
        "measured": {"date": "2026-12-07T14:30:00Z", "command": "python benchmarks/bench_maml.py --out=k.json"},
        "convolutions": {"reference_s": 0.5, "torch_s": 0.45, "tf_s": 0.55},
        "rows": [{"learner": "maml", "setting": "5w1s", "reference_s": 1.0, "torch_s": 0.7, "tf_s": 0.8,
                  "torch_ratio": 0.7, "tf_ratio": 0.8, "torch_convolutions_ratio": 0.45, "tf_convolutions_ratio": 0.55,
                  "reference_faults": 0, "torch_faults": 1, "tf_faults": 12345}]})
    speed = (build(results, tmp_path) / "speed.md").read_text()
    section = speed[speed.index("## `results/bench/kernels.json`"):]
    assert "timed in the same rounds: reference 0.5 s, PyTorch 0.45 s, TensorFlow 0.55 s." in section
    assert "| MAML | 5w1s | 1 | 0.7 | 0.70 | 0.8 | 0.80 | 0.45 | 0.55 | 0 / 1 / 12,345 | 2026-12-07 14:30 UTC |" in section


def test_a_memory_benchmark_gets_a_memory_table(results, tmp_path):
    write(results / "bench" / "memory.json", {
        "measured": {"date": "2026-12-02T14:08:47+00:00", "command": "python benchmarks/bench_memory.py"},
        "config": {"setting": "5-way 1-shot 15-query, 32 tasks, 10 inner steps"},
        "rows": [{"learner": "maml", "runner": "reference", "step_peak_mb": 400.0, "step_growth_mb": 80.0},
                 {"learner": "maml", "runner": "torch", "step_peak_mb": 440.0, "step_growth_mb": 190.0},
                 {"learner": "maml_recompute", "runner": "tf", "step_peak_mb": 1200.0, "step_growth_mb": 400.0}]})
    speed = (build(results, tmp_path) / "speed.md").read_text()
    assert "## `results/bench/memory.json` (memory)" in speed
    assert "| MAML | 5-way 1-shot 15-query, 32 tasks, 10 inner steps | 400 | 440 | 190 | 1.10 | — | — | — |" in speed
    assert "| MAML, inner steps recomputed (--recompute_inner_steps) | 5-way 1-shot 15-query, 32 tasks, 10 inner " \
           "steps | — | — | — | — | 1200 | 400 | — |" in speed
    write(results / "bench" / "memory.json", {"rows": [{"learner": "maml", "runner": "jax", "step_peak_mb": 1.0}]})
    with pytest.raises(collect.ResultsError, match=r"memory\.json: expected rows\[0\] .* 'runner'"):
        collect.build(str(results), str(tmp_path / "other"))


def pretrain_file(accuracy: float, **config):
    """A run of examples/omniglot_pretrain.py (PyTorch, 30 minutes, 600 episodes) with ``config``."""
    data = maml_file("torch", accuracy)
    data["config"] = {"backend": "torch", "minutes": 30.0, "episodes": 600, "threads": 1, **config}
    return data


def test_a_pretraining_run_shows_a_row_per_head(results, tmp_path):
    data = pretrain_file(0.9044, learner="baseline", batch_size=64, head="linear")
    data["test_other_heads"] = {"prototype": {"5w1s": {"accuracy": stat(0.9753, 0.003, 600)}}}
    write(results / "omniglot" / "baseline_torch.json", data)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert re.search(r"\| Baseline \(transfer\) \| PyTorch \| 90\.44 ± 0\.40 \| 600 \| .* \| batches of 64 images, "
                     r"linear head at test \|", page)
    assert re.search(r"\| Baseline \(transfer\) \| PyTorch \| 97\.53 ± 0\.30 \| 600 \| .* \| batches of 64 images, "
                     r"prototype head at test \|", page)


def test_simclr_runs_at_another_temperature_are_told_apart(results, tmp_path):
    for temperature, accuracy in ((0.5, 0.8715), (0.2, 0.9101)):
        data = pretrain_file(accuracy, learner="simclr", batch_size=128, head="prototype", temperature=temperature)
        write(results / "omniglot" / f"simclr_{temperature:g}_torch.json", data)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert re.search(r"\| SimCLR \(no labels\) \| PyTorch \| 87\.15 ± .* \| batches of 128 images, prototype head at "
                     r"test \|", page)
    assert re.search(r"\| SimCLR \(no labels\) \| PyTorch \| 91\.01 ± .* \| batches of 128 images, prototype head at "
                     r"test, temperature 0\.2 \|", page)


def test_a_comparison_over_seeds_gets_a_row(results, tmp_path):
    found = {"measured": {"date": "2026-12-03T15:00:00+00:00",
                          "command": "python -m dualmeta compare --tasks=omniglot --learner=protonet --seeds=3 "
                                     "--report=results/seeds/protonet.json"},
             "config": {"tasks": "omniglot", "learner": "protonet", "ways": 5, "shots": 1, "steps": 500,
                        "dtype": "float32"},
             "seeds": [0, 1, 2], "metric": "accuracy", "agree": True, "parity": "fail",
             "backends": {"torch": {"mean": 0.9512, "std": 0.004}, "tf": {"mean": 0.9498, "std": 0.006}},
             "welch_tf_minus_torch": {"difference": -0.0014, "ci95": [-0.0151, 0.0123], "p": 0.78}}
    write(results / "seeds" / "protonet.json", found)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert ("| ProtoNet | 5-way 1-shot | 500 | 3 | float32 | 95.12 ± 0.4 % | 94.98 ± 0.6 % | "
            "-0.14 [-1.51, 1.23] | 0.78 | agree | fail | 2026-12-03 15:00 UTC |") in page
    assert "## The backends across seeds" not in (tmp_path / "site" / "sinusoid.md").read_text()
    del found["welch_tf_minus_torch"]
    write(results / "seeds" / "protonet.json", found)
    with pytest.raises(collect.ResultsError, match=r"protonet\.json: .*welch_tf_minus_torch"):
        collect.build(str(results), str(tmp_path / "other"))


def test_parity_page_from_a_report(results, tmp_path):
    write(results / "parity.json", {
        "measured": {"date": "2026-11-23T00:00:00+00:00", "command": collect.PARITY_COMMAND},
        "torch": "2.5.1", "tensorflow": "2.18.0", "pytest_exit_status": 0,
        "rows": [{"quantity": "grads", "dtype": "float32", "kind": "rel", "largest": 3.2e-6, "tolerance": 1e-4}]})
    parity = (build(results, tmp_path) / "parity.md").read_text()
    assert "| grads | float32 | rel | 3.20e-06 | 1e-04 | 3.2% | 2026-11-23 00:00 UTC |" in parity
    assert "torch 2.5.1, TensorFlow 2.18.0" in parity


def test_malformed_json_gives_an_error_naming_the_file(results, tmp_path, capsys):
    bad = results / "omniglot" / "broken.json"
    write(bad, '{"config": {"backend": "torch",')
    assert collect.main(["--results", str(results), "--out", str(tmp_path / "site")]) == 2
    error = capsys.readouterr().err
    assert str(bad) in error and "not valid JSON" in error
    assert not (tmp_path / "site" / "omniglot.md").exists()  # nothing half-written

    data = maml_file("torch", 0.9)
    del data["train"]["steps"]
    write(bad, data)
    with pytest.raises(collect.ResultsError, match=r"broken\.json: missing 'train\.steps'"):
        collect.build(str(results), str(tmp_path / "other"))


def test_check_fails_when_a_page_was_edited_by_hand(results, tmp_path, capsys):
    out = build(results, tmp_path)
    args = ["--results", str(results), "--out", str(out), "--check"]
    assert collect.main(args) == 0
    page = out / "omniglot.md"
    page.write_text(page.read_text().replace("95.12 ± 0.40", "99.12 ± 0.40"))
    (out / "notes.md").write_text("hand-made\n")
    capsys.readouterr()
    assert collect.main(args) == 1
    printed = capsys.readouterr().out
    assert f"{page}: differs" in printed and "notes.md: not generated" in printed
    assert "sinusoid.md" not in printed
    assert collect.main(args[:-1]) == 0  # regenerating repairs the page and removes the stray one
    assert collect.main(args) == 0 and not (out / "notes.md").exists()


def test_check_fails_when_the_results_changed(results, tmp_path, capsys):
    out = build(results, tmp_path)
    write(results / "omniglot" / "maml_tf.json", maml_file("tf", 0.9601))
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    assert "omniglot.md: differs" in capsys.readouterr().out


def test_lake_rows_say_which_runs_were_scored(results, tmp_path):
    lake = old_protonet_file()
    lake["measured"] = {"date": "2026-12-01T10:00:00Z", "command": "python examples/omniglot_metric.py --split=lake"}
    lake["config"].update(max_steps=3000)
    lake["train"]["seconds"] = 700.0
    lake["protocol"] = {"split": "lake", "train_on": "train", "train": {"subset": "train"}, "val": {"subset": "val"},
                        "test": {"subset": "evaluation"}, "final_evaluation": "test"}
    lake["lake_one_shot"] = {"error_rate_percent": 6.25, "ci95_percent": 2.0, "runs": 20, "kept": list(range(1, 21)),
                             "excluded": []}
    lake["train"]["steps"] = 3000
    write(results / "omniglot" / "protonet_lake.json", lake)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert "| ProtoNet | PyTorch | 6.25 ± 2.00 | 1-20 (20) | lake train → evaluation |" in page
    assert "| 3000 steps (12 min) |" in page  # stopped by --max_steps before the time budget


def test_an_extra_test_norm_is_a_row_of_its_own(results, tmp_path):
    run = maml_file("torch", 0.95)
    run["config"]["test_norm"] = "query"
    run["test_other_norms"] = {"support": {"5w1s": {"accuracy": stat(0.93, 0.005, 600), "loss": stat(0.2, 0.01, 600)}}}
    write(results / "omniglot" / "maml_torch.json", run)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    assert "| MAML | PyTorch | 95.00 ± 0.40 | 600 |" in page and "| MAML | PyTorch | 93.00 ± 0.50 | 600 |" in page
    assert "| support-set statistics (not transductive) | 2 min |" in page


def test_pilots_are_listed_with_their_validation_scores(results, tmp_path):
    pilot = maml_file("torch", 0.5)
    pilot["val"] = pilot.pop("test")
    pilot["val"]["5w1s"]["accuracy"] = stat(0.861, 0.01, 300)
    pilot["protocol"]["final_evaluation"] = "val"
    write(results / "pilots" / "maml_pilot.json", pilot)
    page = (build(results, tmp_path) / "omniglot.md").read_text()
    pilots = page[page.index("## Pilot runs"):page.index("## Training curves")]
    assert "| 86.10 ± 1.00 | 300 |" in pilots and "vinyals" not in pilots.split("| Command |")[0]
    assert "86.10" not in page[:page.index("## Pilot runs")]  # not a test figure


def test_check_fails_when_the_parity_report_predates_the_suite(results, tmp_path, capsys):
    out = build(results, tmp_path)
    report = {"measured": {"date": "2026-11-22T09:30:00Z", "command": collect.PARITY_COMMAND},
              "parity_tests_sha256": collect.parity_suite_digest(str(ROOT / "parity_tests")), "rows": []}
    write(results / "parity.json", report)
    build(results, tmp_path)
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    write(results / "parity.json", {**report, "parity_tests_sha256": "0" * 64})
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    assert "measured by another version of parity_tests/" in capsys.readouterr().out
    write(results / "parity.json", {**report, "measured": {**report["measured"], "command": "pytest parity_tests -k maml"}})
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 1
    assert "not by the whole suite" in capsys.readouterr().out
    # options that select no test leave it the whole suite
    write(results / "parity.json", {**report, "measured": {
        **report["measured"], "command": collect.PARITY_COMMAND + " -p no:cacheprovider --durations=25"}})
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 0
    write(results / "parity.json", {**report, "measured": {**report["measured"],
                                                           "command": collect.PARITY_COMMAND + " -x -m 'not slow'"}})
    assert collect.main(["--results", str(results), "--out", str(out), "--check"]) == 1


def test_the_published_pages_are_current():
    """docs/results/ is what results/ gives, and results/parity.json was measured by today's parity suite."""
    assert collect.main(["--check"]) == 0, "run `python docs/collect_results.py` (and the parity command it names)"


def test_results_files_name_no_machine_path():
    """Commands and paths recorded under results/ are relative to the repository (no home or scratch folder)."""
    machine = re.compile(r"(?<![\w.])/(?:work|home|root|tmp|Users|mnt|scratch)/")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*.json") if machine.search(p.read_text())]
    assert not offenders, f"machine paths in {offenders}"
