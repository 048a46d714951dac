"""Parity of the metric learners: Prototypical Networks and Matching Networks (with and without FCE).

Both backends start from the same neutral weights and see the same episodes (a small learnable synthetic
Omniglot stand-in, see ``WAYS, SHOTS, ...`` below; a max-pool conv encoder with 8 channels). Compared,
per learner and dtype: embeddings, prototypes and distances (ProtoNet) or attention weights and
log-probabilities (MatchingNet) in both batch-norm modes, the loss and the gradient of every parameter
(neutral names and layout), and the losses of a 50-episode training trajectory that crosses two
learning-rate decays. Then checkpoints: weights trained in one backend evaluate identically in the other,
and a run resumed in the other backend (weights and optimiser state) continues the same trajectory.

Tolerances come from ``dualmeta.tolerances``; no test overrides them.
"""
from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
import torch  # noqa: F401  (torch before tensorflow, as in conftest)

from dualmeta import weights as neutral
from dualmeta.episodes import ClassDataset, ClassificationTasks
from dualmeta.tolerances import tolerance
from parity_tests.conftest import assert_quantity_close, record

BACKENDS = ("tf", "torch")
DTYPES = ("float32", "float64")
LEARNERS = {  # name -> (module, class, constructor arguments)
    "protonet": ("protonet", "ProtoNet", dict(meta_lr=1e-3)),
    "protonet_cosine": ("protonet", "ProtoNet", dict(meta_lr=1e-3, distance="cosine", cosine_scale=5.0)),
    "matchingnet": ("matchingnet", "MatchingNet", dict(meta_lr=1e-3, cosine_scale=5.0)),
    "matchingnet_fce": ("matchingnet", "MatchingNet", dict(meta_lr=1e-3, cosine_scale=5.0, fce=True, fce_steps=3)),
}
CASES = [pytest.param(learner, dtype, id=f"{learner}-{dtype}") for learner in LEARNERS for dtype in DTYPES]
# 16x16 images, 3 max-pool blocks (a 2x2 final map, so the (C, H, W) flatten order counts), 8 channels,
# 3-way 2-shot 2-query episodes: small enough that float32 round-off rarely flips a ReLU or a max-pool
# (see test_trajectory_50_episodes).
WAYS, SHOTS, QUERIES, IMAGE, BLOCKS, NOISE = 3, 2, 2, 16, 3, 1.0
TRAJECTORY_SEED = 12
TRAJECTORY_ACTIVATION = {"float32": "softplus", "float64": "relu"}  # see test_trajectory_50_episodes


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch on one thread for these tiny models: with two OpenMP threads on a busy 2-core machine every op
    ends in a barrier that waits for a descheduled thread (50 steps took 0.1 s on one thread, 0.1-25 s on
    two). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make(backend: str, learner: str, dtype: str, running_stats: bool = True, activation: str = "relu",
         **overrides):
    """A learner around a small conv4 encoder with the neutral initial weights of seed 3."""
    models = importlib.import_module(f"{backend}_meta.models")
    module, cls, kwargs = LEARNERS[learner]
    model = models.conv4(hidden=8, downsample="maxpool", image_size=IMAGE, blocks=BLOCKS,
                         track_running_stats=running_stats, dtype=dtype, seed=3, activation=activation)
    return getattr(importlib.import_module(f"{backend}_meta.{module}"), cls)(model, **{**kwargs, **overrides})


def twins(learner: str, dtype: str, running_stats: bool = True, activation: str = "relu", **overrides) -> dict:
    return {b: make(b, learner, dtype, running_stats, activation, **overrides) for b in BACKENDS}


@functools.lru_cache(maxsize=None)
def dataset() -> ClassDataset:
    """16 classes of 8 noisy copies of a blocky random template each: learnable in a few dozen episodes.

    Pixel values are continuous (a sigmoid, not a clip to [0, 1]): exactly equal pixels would give exactly
    equal activations, and a max-pool window with a tie routes its gradient to whichever entry the
    framework's round-off makes largest, a different entry in each backend.
    """
    rng = np.random.default_rng(0)
    coarse = rng.random((16, 1, IMAGE // 4, IMAGE // 4))
    templates = np.kron(coarse, np.ones((4, 4)))  # (16, 1, IMAGE, IMAGE)
    noisy = templates + NOISE * rng.standard_normal((16, 8, IMAGE, IMAGE))
    images = (1 / (1 + np.exp(-4 * (noisy - 0.5)))).astype(np.float32)  # smooth: no ties for max-pool to break
    return ClassDataset.from_grouped(images)


def tasks(seed: int = TRAJECTORY_SEED) -> ClassificationTasks:
    return ClassificationTasks(dataset(), WAYS, SHOTS, QUERIES, seed=seed)


def _neutral(learner, tensors: dict) -> dict[str, np.ndarray]:
    """Adapted state / gradients as numpy (the states are not layout-dependent)."""
    return {n: (t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)) for n, t in tensors.items()}


def perturbed(weights: dict, seed: int = 5) -> dict:
    """The weights with norm scales, shifts and running statistics moved away from (1, 0, 0, 1).

    (Rather than a training step: Euclidean ProtoNet's loss is invariant to a shift of all embeddings, so
    the last norm shift of a channel whose pooled maxima are all positive has a gradient that is zero up to
    round-off, which Adam turns into learning-rate-sized steps that differ between the backends. Losses and
    distances do not see it; raw embeddings and prototypes do.)
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in weights.items():
        kind = name.rsplit(".", 1)[-1]
        if kind in ("running_var",) or name.endswith("norm.weight"):
            value = value * rng.uniform(0.5, 1.5, size=value.shape)
        elif kind == "running_mean" or name.endswith("norm.bias"):
            value = value + rng.normal(0, 0.1, size=value.shape)
        out[name] = value.astype(weights[name].dtype)
    return out


# --- what the support set determines ----------------------------------------------------------------------

@pytest.mark.parametrize("running_stats", [True, False], ids=["running_stats", "batch_stats"])
@pytest.mark.parametrize("learner, dtype", CASES)
def test_embeddings_and_support_state(learner, dtype, running_stats):
    pair, episode = twins(learner, dtype, running_stats), tasks().episode(0)
    weights = perturbed(pair["torch"].get_weights())
    for b in BACKENDS:
        pair[b].set_weights(weights)
    images = np.concatenate([episode.support_x, episode.query_x])
    assert_quantity_close("embeddings", dtype, {"embeddings": pair["tf"].embed(images)},
                          {"embeddings": pair["torch"].embed(images)})
    states = {b: _neutral(pair[b], pair[b].adapt(episode)) for b in BACKENDS}
    if learner.startswith("protonet"):
        assert_quantity_close("prototypes", dtype, states["tf"], states["torch"])
        assert_quantity_close("prototypes", dtype, {"prototypes": pair["tf"].prototypes(episode)},
                              {"prototypes": pair["torch"].prototypes(episode)})
        assert_quantity_close("distances", dtype, {"distances": pair["tf"].distances(episode)},
                              {"distances": pair["torch"].distances(episode)})
    else:
        assert_quantity_close("embeddings", dtype, states["tf"], states["torch"])
        assert_quantity_close("forward", dtype, {"attention": pair["tf"].attention(episode)},
                              {"attention": pair["torch"].attention(episode)})
    outputs = {b: pair[b].predict(episode.query_x, pair[b].adapt(episode)) for b in BACKENDS}
    quantity = "distances" if learner.startswith("protonet") else "forward"  # ProtoNet logits are -distances
    assert_quantity_close(quantity, dtype, {"predict": outputs["tf"]}, {"predict": outputs["torch"]})


# --- loss and gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("learner, dtype", CASES)
def test_loss_and_gradients(learner, dtype):
    pair, batch = twins(learner, dtype), tasks().batch(0, 2)
    results = {b: pair[b].meta_gradients(batch) for b in BACKENDS}
    grads = {b: results[b][0] for b in BACKENDS}
    trainable = [n for n, t in pair["torch"].model.spec.tensors.items() if t.trainable]
    assert list(grads["torch"]) == trainable + list(pair["torch"].extra), "gradients miss a parameter"
    assert_quantity_close("loss", dtype, {"loss": results["tf"][1]["loss"]}, {"loss": results["torch"][1]["loss"]})
    assert results["tf"][1]["accuracy"] == results["torch"][1]["accuracy"]
    assert_quantity_close("grads", dtype, grads["tf"], grads["torch"])
    assert all(np.any(g != 0) for g in grads["torch"].values()), "a gradient is identically zero"
    # meta_gradients is pure: the running statistics did not move.
    assert all(np.array_equal(pair[b].model.get_weights()[n], w) for b in BACKENDS
               for n, w in neutral.initialize(pair["torch"].model.spec, seed=3, dtype=dtype).items())


# --- a training trajectory --------------------------------------------------------------------------------

@pytest.mark.parametrize("learner, dtype", CASES)
def test_trajectory_50_episodes(learner, dtype):
    """50 meta-training steps (Adam), one episode each, with the learning rate halved every 20 steps.

    float32 runs the encoder with Softplus, float64 with ReLU (``TRAJECTORY_ACTIVATION``, as the MAML
    family's trajectories). With ReLU, float32 round-off sometimes puts a pre-activation on the other side
    of the kink in one backend, which changes that step's gradient by a finite amount; and for Euclidean
    ProtoNet the distances are invariant to a common shift of all embeddings, so the last norm shift of a
    channel whose pooled maxima are all positive has a gradient that is zero up to round-off, which Adam
    (eps 1e-8) turns into learning-rate-sized steps of arbitrary sign, different in each backend, from the
    first step. Measured on this fixture over task seeds 11-16 (max relative loss difference in 50 steps):
    ReLU float32 1.4e-5 to 1.1e-3 (Euclidean ProtoNet), Softplus float32 <= 2e-4 for all four learners,
    ReLU float64 <= 1e-10.
    """
    activation = TRAJECTORY_ACTIVATION[dtype]
    pair, train = twins(learner, dtype, activation=activation, lr_decay_every=20), tasks()
    losses = {b: [] for b in BACKENDS}
    for step in range(50):
        batch = train.batch(step, 1)
        for b in BACKENDS:
            losses[b].append(pair[b].meta_train_step(batch)["loss"])
    assert pair["tf"].learning_rate() == pair["torch"].learning_rate() == LEARNERS[learner][2]["meta_lr"] / 4
    tf_losses, torch_losses = np.array(losses["tf"]), np.array(losses["torch"])
    tol, _ = tolerance("trajectory_loss", dtype)
    rel = np.abs(tf_losses - torch_losses) / np.maximum(np.abs(torch_losses), 1e-12)
    record("trajectory_loss", dtype, rel.max())
    worst = int(np.argmax(rel))
    assert rel.max() <= tol, (f"trajectory_loss step {worst}: tf {tf_losses[worst]:.10g} torch "
                              f"{torch_losses[worst]:.10g}: rel {rel[worst]:.3g} > {tol:g}")
    assert torch_losses[-10:].mean() < torch_losses[:10].mean(), "the trajectory did not learn"
    evaluation = {b: pair[b].evaluate(tasks(seed=99).take(4)) for b in BACKENDS}
    assert_quantity_close("loss", dtype, {"loss": evaluation["tf"]["loss"]["mean"]},
                          {"loss": evaluation["torch"]["loss"]["mean"]})


# --- checkpoints across backends --------------------------------------------------------------------------

@pytest.mark.parametrize("learner", ["protonet", "matchingnet_fce"])
@pytest.mark.parametrize("source, target", [("torch", "tf"), ("tf", "torch")])
def test_checkpoint_evaluates_alike_in_the_other_backend(learner, source, target, tmp_path):
    trained = make(source, learner, "float32")
    for step in range(8):
        trained.meta_train_step(tasks().batch(step, 1))
    path = tmp_path / "weights.safetensors"
    neutral.save_weights(path, trained.get_weights())
    loaded = make(target, learner, "float32")
    loaded.set_weights(neutral.load_weights(path)[0])
    episodes = tasks(seed=99).take(6)
    results = {source: trained.evaluate(episodes), target: loaded.evaluate(episodes)}
    assert results["tf"]["accuracy"] == results["torch"]["accuracy"]
    assert_quantity_close("loss", "float32", {"loss": results["tf"]["loss"]["mean"]}, {"loss": results["torch"]["loss"]["mean"]})


@pytest.mark.parametrize("learner", ["protonet", "matchingnet_fce"])
def test_resume_in_the_other_backend(learner):
    """Weights and optimiser state move torch -> tf mid-run (after a decay); the losses continue alike."""
    dtype = "float64"
    reference, first = make("torch", learner, dtype, lr_decay_every=3), make("torch", learner, dtype, lr_decay_every=3)
    losses = []
    for step in range(8):
        losses.append(reference.meta_train_step(tasks().batch(step, 1))["loss"])
        if step < 4:
            first.meta_train_step(tasks().batch(step, 1))
    resumed = make("tf", learner, dtype, lr_decay_every=3)
    resumed.set_weights(first.get_weights())
    resumed.set_optimizer_state(first.get_optimizer_state())
    assert resumed.learning_rate() == reference.meta_lr / 2
    resumed_losses = [resumed.meta_train_step(tasks().batch(step, 1))["loss"] for step in range(4, 8)]
    assert_quantity_close("trajectory_loss", dtype, {"losses": np.array(resumed_losses)}, {"losses": np.array(losses[4:])})
