"""The pretraining learners (baseline, baseline_pp, simclr, mae): neutral batches, views and masks, the few-shot
heads, bad input, the settings, and one tiny train-in-torch / evaluate-in-tf run through the CLI on a fabricated
Omniglot folder (Lake's split: the Vinyals split needs all 1623 characters)."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch  # noqa: F401  (torch before tensorflow)

from dualmeta import experiment, pretrain
from dualmeta.episodes import ClassDataset, ClassificationTasks, Episode
from tests.test_cli import assert_one_line_error, run_cli

BACKENDS = ("tf", "torch")


def dataset(classes: int = 5, per_class: int = 4, size: int = 16) -> ClassDataset:
    return ClassDataset.from_grouped(np.random.default_rng(0).random((classes, per_class, size, size), dtype=np.float32))


def make(backend: str, name: str, module: str, running_stats: bool = True, **kwargs):
    models = importlib.import_module(f"{backend}_meta.models")
    model = models.conv4(hidden=4, downsample="maxpool", image_size=16, blocks=2, track_running_stats=running_stats,
                         dtype="float64", seed=1)
    return getattr(importlib.import_module(f"{backend}_meta.{module}"), name)(model, **kwargs)


# --- neutral batches ----------------------------------------------------------------------------------------

def test_class_batches_are_addressed_and_cover_rotations():
    data = ClassDataset.from_grouped(np.random.default_rng(1).random((3, 4, 8, 8), dtype=np.float32), rotate=True)
    batches = pretrain.ClassBatches(data, seed=5)
    a, b = batches.batch(7, 32), pretrain.ClassBatches(data, seed=5).batch(7, 32)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)  # a resumed run draws the same batch
    assert not np.array_equal(a.x, batches.batch(8, 32).x)
    assert a.x.shape == (32, 8, 8, 1) and a.y.dtype == np.int64 and batches.num_classes == 12
    for image, label in zip(a.x, a.y):  # each image is an example of its (rotated) class
        source = data.images[data.sources[label]]
        turned = np.rot90(source, k=int(data.rotations[label]), axes=(-3, -2))
        assert any(np.array_equal(image, example) for example in turned)


def test_views_are_bitwise_reproducible_and_differ():
    views = pretrain.ViewBatches(dataset(), seed=2)
    first, again = views.batch(3, 6), pretrain.ViewBatches(dataset(), seed=2).batch(3, 6)
    assert list(first._fields) == ["view_a", "view_b"]  # no label field: nothing to leak
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert first.view_a.shape == (6, 16, 16, 1) and first.view_a.dtype == np.float32
    assert not np.array_equal(first.view_a, first.view_b)
    assert first.view_a.min() >= 0 and first.view_a.max() <= 1


def test_augment_at_full_scale_without_rotation_is_the_identity():
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    out = pretrain.augment(x, np.random.default_rng(0), min_scale=1.0, max_degrees=0.0)
    np.testing.assert_allclose(out, x, atol=1e-6)


def test_masks_hide_the_ratio_of_patches():
    masks = pretrain.MaskedBatches(dataset(), seed=0, mask_ratio=0.75, patch=4).batch(0, 5)
    assert masks.mask.shape == (5, 16, 16, 1)
    assert np.all(masks.mask.reshape(5, -1).mean(axis=1) == 0.75)  # 12 of 16 cells
    cells = masks.mask[:, ::4, ::4, 0]
    assert np.array_equal(np.kron(cells, np.ones((1, 4, 4)))[..., None], masks.mask)  # whole patches


@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2, True])
def test_mask_ratio_outside_the_open_interval_is_refused(ratio):
    with pytest.raises(ValueError, match=r"strictly between 0 and 1"):
        pretrain.MaskedBatches(dataset(), mask_ratio=ratio)


@pytest.mark.parametrize("min_scale, max_degrees, match", [(0, 10, "0 < min_scale <= 1"), (1.5, 10, "min_scale"),
                                                           (0.5, -1, "max_degrees >= 0"),
                                                           (0.5, float("inf"), "max_degrees")])
def test_view_augmentations_outside_their_range_are_refused(min_scale, max_degrees, match):
    with pytest.raises(ValueError, match=match):
        pretrain.ViewBatches(dataset(), min_scale=min_scale, max_degrees=max_degrees)
    views = pretrain.ViewBatches(dataset(), min_scale=0.3, max_degrees=30).batch(0, 4)  # stronger views: drawn
    assert views.view_a.shape == views.view_b.shape and not np.array_equal(views.view_a, views.view_b)


# --- the learners ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_simclr_never_sees_labels_and_refuses_a_batch_of_one(backend):
    learner = make(backend, "SimCLR", "simclr", projection_hidden=4, projection_dim=3)
    labelled = pretrain.ClassBatches(dataset(), seed=0).batch(0, 4)
    with pytest.raises(ValueError, match="without labels"):
        learner.meta_train_step(labelled)
    one = pretrain.ViewPair(labelled.x[:1], labelled.x[:1])
    with pytest.raises(ValueError, match="batch size of at least 2"):
        learner.meta_train_step(one)
    with pytest.raises(ValueError, match="batch size of at least 2"):
        pretrain.ViewBatches(dataset()).batch(0, 1)
    before = learner.get_weights()
    assert set(learner.meta_train_step(pretrain.ViewBatches(dataset()).batch(0, 4))) == {"loss", "accuracy"}
    assert any(not np.array_equal(before[n], w) for n, w in learner.get_weights().items())


def _nt_xent(z: np.ndarray, tau: float) -> float:
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z) // 2
    s = z @ z.T / tau
    np.fill_diagonal(s, -np.inf)
    target = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    log_softmax = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    return float(-log_softmax[np.arange(2 * n), target].mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_simclr_loss_is_nt_xent(backend):
    learner = make(backend, "SimCLR", "simclr", running_stats=False, projection_hidden=4, projection_dim=3,
                   temperature=0.3)
    views = pretrain.ViewBatches(dataset(), seed=1).batch(0, 4)
    _, metrics = learner.meta_gradients(views)
    h = learner.embed(pretrain.stack_views(views))  # batch statistics of the 2N views, as in training
    w = learner.get_weights()
    z = np.maximum(h @ w["projection.0.weight"].T + w["projection.0.bias"], 0) @ w["projection.1.weight"].T \
        + w["projection.1.bias"]
    assert metrics["loss"] == pytest.approx(_nt_xent(z, 0.3), rel=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mae_loss_is_the_error_on_the_hidden_part(backend):
    learner = make(backend, "MAE", "mae", running_stats=False, decoder_hidden=6)
    batch = pretrain.MaskedBatches(dataset(), seed=3).batch(0, 4)
    _, metrics = learner.meta_gradients(batch)
    reconstruction = learner.reconstruct(batch.x, batch.mask)
    hidden = batch.mask.astype(bool)[..., 0]
    expected = np.mean((reconstruction[..., 0][hidden] - batch.x[..., 0][hidden]) ** 2)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="without labels"):
        learner.meta_train_step(pretrain.ClassBatches(dataset()).batch(0, 4))


@pytest.mark.parametrize("head", pretrain.HEADS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_head_needs_every_class_in_the_support_set(backend, head):
    learner = make(backend, "Baseline", "baseline", num_classes=5, head=head)
    episode = ClassificationTasks(dataset(), ways=3, shots=2, queries=1, seed=0).episode(0)
    broken = Episode(episode.support_x[:4], episode.support_y[:4].copy(), episode.query_x, episode.query_y)
    broken.support_y[broken.support_y == 1] = 0
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[1\].*give every class"):
        learner.evaluate([broken])


@pytest.mark.parametrize("backend", BACKENDS)
def test_prototype_head_is_the_nearest_normalised_centroid(backend):
    learner = make(backend, "Baseline", "baseline", num_classes=5)
    episode = ClassificationTasks(dataset(), ways=3, shots=2, queries=2, seed=1).episode(0)
    def unit(z):
        return z / np.sqrt((z ** 2).sum(axis=1, keepdims=True) + 1e-12)
    support, query = unit(learner.embed(episode.support_x)), unit(learner.embed(episode.query_x))
    centroids = np.stack([support[episode.support_y == k].mean(axis=0) for k in range(3)])
    expected = -((query[:, None] - centroids[None]) ** 2).sum(axis=-1)
    np.testing.assert_allclose(learner.predict(episode.query_x, learner.adapt(episode)), expected, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_head_learns_the_support_set(backend):
    learner = make(backend, "Baseline", "baseline", num_classes=5, head="linear", head_lr=0.5)
    episode = ClassificationTasks(dataset(), ways=3, shots=3, queries=1, seed=2).episode(0)
    state = learner.adapt(episode)
    assert sorted(state) == ["head.bias", "head.weight"]
    logits = learner.predict(episode.support_x, state)
    assert (logits.argmax(axis=1) == episode.support_y).mean() == 1.0


def test_head_minibatches_are_seeded_epochs():
    order = pretrain.head_batches(10, steps=5, batch=4)
    assert order.shape == (5, 4) and np.array_equal(order, pretrain.head_batches(10, steps=5, batch=4))
    assert sorted(order.ravel()[:10].tolist()) == list(range(10))  # the first epoch covers every example
    assert pretrain.head_batches(3, steps=2, batch=4).shape == (2, 3)


# --- settings and the command line -----------------------------------------------------------------------------

def test_pretrain_settings():
    e = experiment.resolve("torch", learner="baseline", tasks="omniglot")
    name, config = e.model()
    assert name == "conv4" and config["num_classes"] is None and config["track_running_stats"]
    assert (e.ways, e.shots, e.meta_batch_size, e.mask_ratio) == (5, 1, 64, None)
    assert experiment.resolve("torch", learner="mae", tasks="omniglot").mask_ratio == 0.75
    for given, message in [(dict(tasks="sinusoid"), "--tasks=omniglot only"),
                           (dict(tasks="omniglot", inner_lr=0.1), "--inner_lr does not apply"),
                           (dict(tasks="omniglot", mask_ratio=0.5), "--mask_ratio applies to --learner=mae")]:
        with pytest.raises(ValueError, match=message):
            experiment.resolve("torch", learner="baseline", **given)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        experiment.resolve("torch", learner="mae", tasks="omniglot", mask_ratio=1.0)
    with pytest.raises(ValueError, match="--meta_batch_size=2 or more"):
        experiment.resolve("torch", learner="simclr", tasks="omniglot", meta_batch_size=1)


def fake_omniglot(folder):
    """Lake's split in the on-disk format: 3 background characters for training, 2 of a Vinyals validation
    alphabet (Hebrew), 3 evaluation characters; 20 drawings each."""
    from dualmeta.datasets import omniglot as data
    from tests.test_data import write_images_zip, write_runs_zip
    folder.mkdir()
    write_images_zip(folder / data.BACKGROUND_ZIP, "images_background",
                     {("Alpha", 1): 1, ("Alpha", 2): 2, ("Beta", 1): 3, ("Hebrew", 1): 4, ("Hebrew", 2): 5})
    write_images_zip(folder / data.EVALUATION_ZIP, "images_evaluation",
                     {("Gamma", 1): 6, ("Gamma", 2): 7, ("Gamma", 3): 8})
    write_runs_zip(folder / data.RUNS_ZIP)
    return folder


@pytest.mark.parametrize("args, fragments", [
    (["--learner=simclr", "--tasks=omniglot", "--meta_batch_size=1"], ["no negatives", "--meta_batch_size=2"]),
    (["--learner=mae", "--tasks=omniglot", "--mask_ratio=1.5"], ["strictly between 0 and 1"]),
    (["--learner=baseline", "--tasks=sinusoid"], ["--tasks=omniglot only"]),
    (["--learner=maml", "--tasks=omniglot", "--head=linear"], ["--head", "drop it"]),
], ids=["simclr-batch-of-one", "mask-ratio", "sinusoid", "head-for-maml"])
def test_cli_bad_input_is_one_line(args, fragments, tmp_path):
    result = run_cli("train", "--backend=torch", *args, "--logdir=run", cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.slow  # ~15-25 s: three subprocesses importing the frameworks
def test_train_baseline_in_torch_evaluate_in_tf(tmp_path, monkeypatch):
    data_dir = fake_omniglot(tmp_path / "omniglot")
    common = ["--tasks=omniglot", f"--data_dir={data_dir}", "--split=lake", "--ways=2", "--queries=2", "--hidden=4"]
    env_cache = {"DUALMETA_CACHE_DIR": str(tmp_path / "cache")}
    monkeypatch.setenv("DUALMETA_CACHE_DIR", env_cache["DUALMETA_CACHE_DIR"])
    run_cli("train", "--backend=torch", "--learner=baseline", "--steps=3", "--meta_batch_size=4", "--val_episodes=2",
            "--val_every=0", "--logdir=run", *common, cwd=tmp_path, check=0)
    reports = {}
    for b in BACKENDS:
        run_cli("evaluate", f"--backend={b}", "--logdir=run", "--episodes=4", "--head=linear", f"--report={b}.json",
                *common, cwd=tmp_path, check=0)
        reports[b] = json.loads((tmp_path / f"{b}.json").read_text())
    assert reports["tf"]["accuracy"] == reports["torch"]["accuracy"]
    assert reports["tf"]["head"] == "linear" and reports["tf"]["trained_backend"] == "torch"


def test_results_rows_of_the_pretrain_example(tmp_path):
    """docs/collect_results.py reads a results file of examples/omniglot_pretrain.py as one Omniglot row."""
    from tests.test_collect_results import collect as collect_results  # loaded from docs/ by file path
    accuracy = {"accuracy": {"mean": 0.95, "ci95": 0.01, "n": 600}, "loss": {"mean": 0.2, "ci95": 0.01, "n": 600}}
    report = {"measured": {"date": "2026-12-02T13:34:00+00:00", "command": "python examples/omniglot_pretrain.py"},
              "config": {"backend": "torch", "learner": "baseline_pp", "minutes": 30.0, "batch_size": 64,
                         "head": "linear", "test_norm": "running", "split": "vinyals", "train_on": "train"},
              "train": {"steps": 100, "seconds": 1800.0, "seconds_per_step": 18.0, "train_curve": [],
                        "eval_curve": []},
              "test": {"5w1s": accuracy}}
    path = tmp_path / "omniglot" / "baseline_pp_torch.json"
    path.parent.mkdir()
    path.write_text(json.dumps(report))
    (run,) = collect_results.read_runs(str(path), str(tmp_path))
    assert run.learner == "baseline_pp" and run.group == "baseline_pp_batch64_linear"
    assert run.trained_on == "batches of 64 images, linear head at test"
    assert collect_results.learner_name("baseline_pp") == "Baseline++ (transfer)"
    report["config"]["scale"] = 20.0  # another cosine scale than Chen et al.'s 10: its own rows and plots
    path.write_text(json.dumps(report))
    (run,) = collect_results.read_runs(str(path), str(tmp_path))
    assert run.group == "baseline_pp_batch64_linear_scale20"
    assert run.trained_on == "batches of 64 images, linear head at test, cosine scale 20"
