"""Parity of the optimisation-based learners: MAML, first-order MAML, Reptile, Meta-SGD, ANIL.

Both backends start from the same neutral weights and see the same episodes. Compared, per learner and
dtype: adapted weights after k inner steps, the meta-gradient, the weights after one meta-step, and the
query losses of a 100-step training trajectory. Tolerances come from ``dualmeta.tolerances``.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch  # noqa: F401  (torch before tensorflow, as in conftest)

from dualmeta.episodes import ClassDataset, ClassificationTasks, RegressionTasks
from dualmeta.tolerances import tolerance
from parity_tests.conftest import assert_quantity_close, record

LEARNERS = {  # name -> (module, class, constructor arguments)
    "maml": ("maml", "MAML", dict(inner_lr=0.1, inner_steps=2)),
    "fomaml": ("fomaml", "FirstOrderMAML", dict(inner_lr=0.1, inner_steps=2)),
    "reptile": ("reptile", "Reptile", dict(inner_lr=0.1, inner_steps=3, meta_lr=0.5)),
    # inner minibatches (dualmeta.episodes.inner_batches): 3 of the 5 sinusoid points, 3 of the 9 images (one
    # per class) per step
    "reptile_minibatch": ("reptile", "Reptile", dict(inner_lr=0.1, inner_steps=3, meta_lr=0.5,
                                                     inner_batch_size=3)),
    "metasgd": ("metasgd", "MetaSGD", dict(inner_lr=0.1, inner_steps=2)),
    "anil": ("anil", "ANIL", dict(inner_lr=0.1, inner_steps=2)),
    "finetune": ("finetune", "FineTune", dict(inner_lr=0.1, test_inner_steps=2)),
}
DTYPES = ("float32", "float64")
# ReLU's derivative jumps at 0. Over a float32 trajectory some pre-activation eventually lies within
# round-off of 0, one framework's round-off puts it on the other side than the other's, one entry of the
# meta-gradient changes by ~10%, and the trajectories part (measured: conv fixture, steps 50-100). In
# float64 that never happens in 100 steps. So the float32 trajectories use the smooth Softplus, whose
# derivative has no jump; float64 ones keep ReLU. (docs/tolerances.md has the measurements.)
TRAJECTORY_ACTIVATION = {"float32": "softplus", "float64": "relu"}


def _backend(name):
    return importlib.import_module(f"{name}_meta.models"), {
        key: getattr(importlib.import_module(f"{name}_meta.{module}"), cls)
        for key, (module, cls, _) in LEARNERS.items()}


def _twins(learner: str, fixture: str, dtype: str, activation: str = "relu", **overrides):
    """The learner in both backends, built on identical neutral weights: {'tf': ..., 'torch': ...}."""
    out = {}
    for backend in ("tf", "torch"):
        models, classes = _backend(backend)
        if fixture == "sinusoid":
            model = models.mlp(1, (16, 16), 1, dtype=dtype, seed=3, activation=activation)
        else:
            model = models.conv4(num_classes=3, hidden=8, image_size=28, dtype=dtype, seed=3, activation=activation)
        kwargs = {**LEARNERS[learner][2], **overrides}
        out[backend] = classes[learner](model, **kwargs)
    return out


def _tasks(fixture: str):
    if fixture == "sinusoid":
        return RegressionTasks("sinusoid", shots=5, queries=5, seed=11)
    rng = np.random.default_rng(0)  # learnable classes: a random pattern per class plus noise per example
    images = (0.4 * rng.random((12, 1, 28, 28, 1)) + 0.6 * rng.random((12, 6, 28, 28, 1))).astype(np.float32)
    return ClassificationTasks(ClassDataset(images, np.arange(12), np.zeros(12, np.int64)), 3, 3, 3, seed=11)


def _neutral(learner, tensors) -> dict[str, np.ndarray]:
    if hasattr(learner, "to_neutral"):  # TF: Keras layouts -> neutral
        return {n: learner.to_neutral(n, np.asarray(t)) for n, t in tensors.items()}
    return {n: t.detach().numpy() for n, t in tensors.items()}


CASES = [(learner, fixture) for learner in LEARNERS for fixture in ("sinusoid", "omniglot")
         if not (learner == "anil" and fixture == "sinusoid")]  # ANIL needs a classifier head


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learner,fixture", CASES)
def test_adapted_weights(learner, fixture, dtype):
    twins, episode = _twins(learner, fixture, dtype), _tasks(fixture).episode(0)
    adapted = {b: _neutral(twins[b], twins[b].adapt(episode, steps=2)) for b in twins}
    assert_quantity_close("adapted_weights", dtype, adapted["tf"], adapted["torch"])
    start = twins["torch"].model.get_weights()
    moved = [n for n in adapted["torch"] if not np.array_equal(adapted["torch"][n], start[n])]
    assert moved, "the inner loop changed no weight"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learner,fixture", CASES)
def test_meta_gradients_and_one_step(learner, fixture, dtype):
    twins, batch = _twins(learner, fixture, dtype), _tasks(fixture).batch(0, 3)
    grads = {b: twins[b].meta_gradients(batch)[0] for b in twins}
    assert_quantity_close("meta_grads", dtype, grads["tf"], grads["torch"])
    assert all(np.any(g != 0) for g in grads["torch"].values()), "a meta-gradient is identically zero"
    metrics = {b: twins[b].meta_train_step(batch) for b in twins}
    assert_quantity_close("loss", dtype, {"loss": metrics["tf"]["loss"]}, {"loss": metrics["torch"]["loss"]})
    assert_quantity_close("meta_step", dtype, twins["tf"].get_weights(), twins["torch"].get_weights())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learner,fixture", CASES)
def test_trajectory_100_steps(learner, fixture, dtype):
    meta_lr = 0.5 if learner.startswith("reptile") else 1e-3
    twins = _twins(learner, fixture, dtype, activation=TRAJECTORY_ACTIVATION[dtype], meta_lr=meta_lr)
    tasks = _tasks(fixture)
    losses = {b: [] for b in twins}
    for step in range(100):
        batch = tasks.batch(step, 2)
        for b in twins:
            losses[b].append(twins[b].meta_train_step(batch)["loss"])
    tf_losses, torch_losses = np.array(losses["tf"]), np.array(losses["torch"])
    if not (learner == "finetune" and fixture == "omniglot"):  # labels are shuffled per episode: without
        # an inner loop there is nothing to learn on the query set, so only parity is checked there
        assert torch_losses[-10:].mean() < torch_losses[:10].mean(), "the trajectory did not learn"
    tol, _ = tolerance("trajectory_loss", dtype)
    rel = np.abs(tf_losses - torch_losses) / np.maximum(np.abs(torch_losses), 1e-12)
    record("trajectory_loss", dtype, rel.max())
    worst = int(np.argmax(rel))
    assert rel.max() <= tol, (f"trajectory_loss step {worst}: tf {tf_losses[worst]:.10g} torch "
                              f"{torch_losses[worst]:.10g}: rel {rel[worst]:.3g} > {tol:g}")


@pytest.mark.parametrize("backend", ("tf", "torch"))
def test_reptile_minibatches_change_the_meta_gradient(backend):
    """The minibatch case above is not the full-batch case in disguise."""
    batch = _tasks("omniglot").batch(0, 3)
    grads = [_twins(name, "omniglot", "float64")[backend].meta_gradients(batch)[0]
             for name in ("reptile", "reptile_minibatch")]
    assert max(np.abs(grads[0][n] - grads[1][n]).max() for n in grads[0]) > 1e-6


def test_twins_round_trip_learner_tensors():
    """Meta-SGD's rates go through the neutral format both ways, exactly."""
    twins = _twins("metasgd", "omniglot", "float64")
    tasks = _tasks("omniglot")
    twins["torch"].meta_train_step(tasks.batch(0, 2))
    weights = twins["torch"].get_weights()
    assert any(n.startswith("inner_lrs.") for n in weights)
    twins["tf"].set_weights(weights)
    back = twins["tf"].get_weights()
    assert all(np.array_equal(back[n], weights[n]) for n in weights)
    state = twins["torch"].get_optimizer_state()
    twins["tf"].set_optimizer_state(state)
    assert all(np.array_equal(twins["tf"].get_optimizer_state()[n], state[n]) for n in state)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learner", ["maml", "anil"])
def test_support_statistics_evaluation(learner, dtype):
    """``test_norm='support'`` (batch norm from the support rows): the same query losses and accuracies in
    both backends, different from the transductive default, and each query's output independent of the
    other queries."""
    twins, tasks = _twins(learner, "omniglot", dtype), _tasks("omniglot")
    for b in twins:
        twins[b].meta_train_step(tasks.batch(0, 2))
    episodes = tasks.take(3, start=50)
    results = {}
    for norm in ("query", "support"):
        for b in twins:
            twins[b].test_norm = norm
        results[norm] = {b: twins[b].evaluate(episodes) for b in twins}
        assert_quantity_close("loss", dtype, {"loss": results[norm]["tf"]["loss"]["mean"]},
                              {"loss": results[norm]["torch"]["loss"]["mean"]})
        assert results[norm]["tf"]["accuracy"]["mean"] == results[norm]["torch"]["accuracy"]["mean"]
    assert abs(results["query"]["torch"]["loss"]["mean"] - results["support"]["torch"]["loss"]["mean"]) > 1e-6
    # Not transductive: the loss of the whole query set is the mean of the queries' losses scored one by
    # one (each query alone with the support set); with query-set statistics it is not.
    episode = episodes[0]
    alone = [episode._replace(query_x=episode.query_x[k:k + 1], query_y=episode.query_y[k:k + 1])
             for k in range(len(episode.query_y))]
    for b in twins:
        for norm in ("support", "query"):
            twins[b].test_norm = norm
            together = twins[b].evaluate([episode])["loss"]["mean"]
            one_by_one = twins[b].evaluate(alone)["loss"]["mean"]
            if norm == "support":
                assert together == pytest.approx(one_by_one, rel=1e-5 if dtype == "float32" else 1e-12)
            else:
                assert abs(together - one_by_one) > 1e-4 * abs(together)
        with pytest.raises(ValueError, match=r"Expected one of \['query', 'support'\]; received test_norm='running'"):
            twins[b].test_norm = "running"


@pytest.mark.parametrize("learner,fixture", [("maml", "sinusoid"), ("metasgd", "omniglot"),
                                             ("anil", "omniglot")])
def test_recomputed_inner_steps_give_the_same_numbers(learner, fixture):
    """``recompute_steps=True`` (each inner step's graph rebuilt in the backward pass instead of kept) gives
    the stored-graph meta-gradient: bit for bit in torch; in TF up to the order in which the tape adds the
    gradient contributions (measured <= 7.3e-16 relative in float64); and the twins still agree."""
    batch = _tasks(fixture).batch(0, 2)
    grads = {}
    for recompute in (False, True):
        twins = _twins(learner, fixture, "float64", inner_steps=3, recompute_steps=recompute)
        grads[recompute] = {b: twins[b].meta_gradients(batch)[0] for b in twins}
    for n, g in grads[False]["torch"].items():
        assert np.array_equal(grads[True]["torch"][n], g), f"torch {n}: recomputation changed the meta-gradient"
    for n, g in grads[False]["tf"].items():
        rel = np.abs(grads[True]["tf"][n] - g).max() / np.abs(g).max()
        assert rel <= 1e-14, f"tf {n}: recomputation changed the meta-gradient by {rel:.3g} (relative)"
    assert_quantity_close("meta_grads", "float64", grads[True]["tf"], grads[True]["torch"])
    assert all(np.any(g != 0) for g in grads[True]["torch"].values())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("learner", ["maml", "fomaml", "anil"])
def test_many_queries_run_channels_last(learner, dtype):
    """A meta-batch with at least ``_CHANNELS_LAST_FROM`` query images per task runs torch's grouped
    convolutions on channels-last feature maps, centred before each batch norm (fewer images go as
    (N, B*C, H, W) rows): the meta-gradient and one step agree with TensorFlow, and with torch's rows layout.
    Without the centring the float32 ANIL meta-gradient of this fixture is 4% off."""
    from torch_meta import models as torch_models
    ways, shots, queries = 3, 1, 11
    assert ways * queries >= torch_models._CHANNELS_LAST_FROM > ways * shots, "the fixture misses the switch"
    rng = np.random.default_rng(1)
    images = (0.4 * rng.random((6, 1, 28, 28, 1)) + 0.6 * rng.random((6, 12, 28, 28, 1))).astype(np.float32)
    batch = ClassificationTasks(ClassDataset(images, np.arange(6), np.zeros(6, np.int64)), ways, shots, queries,
                                seed=5).batch(0, 3)
    twins = _twins(learner, "omniglot", dtype)
    grads = {b: twins[b].meta_gradients(batch)[0] for b in twins}
    assert_quantity_close("meta_grads", dtype, grads["tf"], grads["torch"])
    threshold = torch_models._CHANNELS_LAST_FROM
    try:
        torch_models._CHANNELS_LAST_FROM = 10 ** 9  # every call in rows
        rows = twins["torch"].meta_gradients(batch)[0]
    finally:
        torch_models._CHANNELS_LAST_FROM = threshold
    assert_quantity_close("meta_grads", dtype, rows, grads["torch"])
    metrics = {b: twins[b].meta_train_step(batch) for b in twins}
    assert_quantity_close("loss", dtype, {"loss": metrics["tf"]["loss"]}, {"loss": metrics["torch"]["loss"]})
    assert_quantity_close("meta_step", dtype, twins["tf"].get_weights(), twins["torch"].get_weights())
