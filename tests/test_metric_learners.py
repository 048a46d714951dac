"""Unit tests of the metric learners (ProtoNet, MatchingNet), run once per backend with the same names.

Every expectation is computed in numpy from the learner's own embeddings (``embed`` of the episode's
support and query images as one batch, which is how episodes are embedded): prototypes are class means,
distances are squared Euclidean (or one minus the cosine), the loss is a softmax cross-entropy of the
negative distances, matching-network attention is a softmax of scaled cosines that sums to 1.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from dualmeta.episodes import ClassDataset, ClassificationTasks, Episode, stack_episodes

BACKENDS = ("tf", "torch")
RTOL, ATOL = 1e-9, 1e-11  # float64 models


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """torch on one thread for these tiny models (two OpenMP threads on a busy 2-core machine stall)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _module(backend: str, name: str):
    return importlib.import_module(f"{backend}_meta.{name}")


def model(backend: str, running_stats: bool = False, dtype: str = "float64", seed: int = 0, activation: str = "relu"):
    return _module(backend, "models").conv4(hidden=8, downsample="maxpool", image_size=16, blocks=3,
                                             track_running_stats=running_stats, dtype=dtype, seed=seed,
                                             activation=activation)


def protonet(backend: str, running_stats: bool = False, **kwargs):
    return _module(backend, "protonet").ProtoNet(model(backend, running_stats), **kwargs)


def matchingnet(backend: str, running_stats: bool = False, **kwargs):
    return _module(backend, "matchingnet").MatchingNet(model(backend, running_stats), **kwargs)


def tasks(ways: int = 4, shots: int = 2, queries: int = 3, seed: int = 0) -> ClassificationTasks:
    images = np.random.default_rng(1).random((10, 6, 16, 16), dtype=np.float32)
    return ClassificationTasks(ClassDataset.from_grouped(images), ways, shots, queries, seed=seed)


def joint_embeddings(learner, episode: Episode) -> tuple[np.ndarray, np.ndarray]:
    """Support and query embeddings, embedded as one batch (as the learners embed an episode)."""
    z = learner.embed(np.concatenate([episode.support_x, episode.query_x]))
    return z[:len(episode.support_x)], z[len(episode.support_x):]


def class_means(z: np.ndarray, labels: np.ndarray, ways: int) -> np.ndarray:
    return np.stack([z[labels == k].mean(axis=0) for k in range(ways)])


def normalize(z: np.ndarray) -> np.ndarray:
    return z / np.sqrt((z ** 2).sum(axis=-1, keepdims=True) + 1e-12)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    top = logits.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float(np.mean(log_z - logits[np.arange(len(labels)), labels]))


# --- Prototypical Networks --------------------------------------------------------------------------------

@pytest.mark.parametrize("running_stats", [False, True], ids=["batch_stats", "running_stats"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_prototypes_are_class_means(backend, running_stats):
    learner, episode = protonet(backend, running_stats), tasks().episode(0)
    support_z, _ = joint_embeddings(learner, episode)
    expected = class_means(support_z, episode.support_y, 4)
    np.testing.assert_allclose(learner.prototypes(episode), expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.asarray(learner.adapt(episode)["prototypes"]), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_squared_euclidean_distances(backend):
    learner, episode = protonet(backend), tasks().episode(1)
    support_z, query_z = joint_embeddings(learner, episode)
    prototypes = class_means(support_z, episode.support_y, 4)
    expected = ((query_z[:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=-1)
    np.testing.assert_allclose(learner.distances(episode), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cosine_distances(backend):
    learner, episode = protonet(backend, distance="cosine", cosine_scale=3.0), tasks().episode(1)
    support_z, query_z = joint_embeddings(learner, episode)
    prototypes = class_means(support_z, episode.support_y, 4)
    expected = 1 - normalize(query_z) @ normalize(prototypes).T
    np.testing.assert_allclose(learner.distances(episode), expected, rtol=RTOL, atol=ATOL)
    assert cross_entropy(-3.0 * expected, episode.query_y) == pytest.approx(
        learner.evaluate([episode])["loss"]["mean"], rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_loss_is_softmax_cross_entropy_of_negative_distances(backend):
    learner, batch = protonet(backend), tasks().batch(0, 2)
    episodes = [Episode(*(part[t] for part in batch)) for t in range(2)]
    losses, accuracies = [], []
    for episode in episodes:
        support_z, query_z = joint_embeddings(learner, episode)
        prototypes = class_means(support_z, episode.support_y, 4)
        logits = -((query_z[:, None, :] - prototypes[None, :, :]) ** 2).sum(axis=-1)
        losses.append(cross_entropy(logits, episode.query_y))
        accuracies.append(np.mean(logits.argmax(axis=1) == episode.query_y))
    evaluated = learner.evaluate(episodes)
    assert evaluated["loss"]["mean"] == pytest.approx(np.mean(losses), rel=1e-9)
    assert evaluated["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    _, metrics = learner.meta_gradients(batch)  # training mode: batch statistics, like this model's evaluation
    assert metrics["loss"] == pytest.approx(np.mean(losses), rel=1e-9)
    assert metrics["accuracy"] == pytest.approx(np.mean(accuracies))


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_gives_negative_distances(backend):
    learner, episode = protonet(backend, running_stats=True), tasks().episode(2)
    logits = learner.predict(episode.query_x, learner.adapt(episode))
    np.testing.assert_allclose(logits, -learner.distances(episode), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_embed_matches_the_model(backend):
    """The learner's encoder (a fused batch norm in torch) computes the model's own function."""
    for running_stats, activation in ((False, "relu"), (True, "relu"), (True, "softplus")):
        learner = _module(backend, "protonet").ProtoNet(model(backend, running_stats, activation=activation))
        learner.meta_train_step(tasks().batch(0, 1))  # running statistics away from (0, 1)
        x = tasks().episode(0).support_x.astype(np.float64)
        if backend == "torch":
            learner.model.eval()
            with torch.no_grad():
                expected = learner.model(torch.from_numpy(x)).numpy()
        else:
            expected = learner.model(x, training=False).numpy()
        np.testing.assert_allclose(learner.embed(x), expected, rtol=RTOL, atol=ATOL)


# --- Matching Networks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fce", [False, True], ids=["plain", "fce"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matching_attention_sums_to_one(backend, fce):
    learner, episode = matchingnet(backend, fce=fce, cosine_scale=2.0), tasks().episode(0)
    attention = learner.attention(episode)
    assert attention.shape == (len(episode.query_y), len(episode.support_y))
    assert np.all(attention > 0)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, rtol=1e-12)
    if not fce:
        support_z, query_z = joint_embeddings(learner, episode)
        scores = 2.0 * normalize(query_z) @ normalize(support_z).T
        expected = np.exp(scores - scores.max(axis=1, keepdims=True))
        np.testing.assert_allclose(attention, expected / expected.sum(axis=1, keepdims=True), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_matching_log_probabilities_and_loss(backend):
    learner, episode = matchingnet(backend, running_stats=True, cosine_scale=2.0), tasks().episode(3)
    attention = learner.attention(episode)
    onehot = np.eye(4)[episode.support_y]
    log_p = np.log(attention @ onehot)
    np.testing.assert_allclose(learner.predict(episode.query_x, learner.adapt(episode)), log_p, rtol=RTOL, atol=ATOL)
    nll = -np.mean(log_p[np.arange(len(episode.query_y)), episode.query_y])
    assert learner.evaluate([episode])["loss"]["mean"] == pytest.approx(nll, rel=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fce_weights_in_the_neutral_format(backend):
    learner = matchingnet(backend, fce=True, seed=4)
    weights = learner.get_weights()
    d = 8 * 2 * 2  # 8 channels on a 2x2 map
    assert {n: weights[n].shape for n in weights if n.startswith("fce.")} == {
        "fce.support_forward.weight": (4 * d, 2 * d), "fce.support_forward.bias": (4 * d,),
        "fce.support_backward.weight": (4 * d, 2 * d), "fce.support_backward.bias": (4 * d,),
        "fce.query.weight": (4 * d, 3 * d), "fce.query.bias": (4 * d,)}
    assert np.abs(weights["fce.query.weight"]).max() <= 1 / np.sqrt(d)
    other = matchingnet(backend, fce=True, seed=5)
    assert not np.array_equal(other.get_weights()["fce.query.weight"], weights["fce.query.weight"])
    other.set_weights(weights)
    assert all(np.array_equal(other.get_weights()[n], weights[n]) for n in weights)
    grads, _ = learner.meta_gradients(tasks().batch(0, 1))
    assert all(np.any(grads[n] != 0) for n in weights if n.startswith("fce."))


# --- training ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_learning_rate_decay_schedule(backend):
    learner = protonet(backend, meta_lr=0.1, lr_decay_every=2, lr_decay=0.5, meta_optimizer="sgd")
    rates = []
    for step in range(5):
        rates.append(learner.learning_rate())
        before = learner.get_weights()
        grads, _ = learner.meta_gradients(tasks().batch(step, 1))
        learner.meta_train_step(tasks().batch(step, 1))
        after = learner.get_weights()
        for name, grad in grads.items():  # the step used the decayed rate
            np.testing.assert_allclose(after[name], before[name] - rates[-1] * grad, rtol=1e-9, atol=1e-12)
    assert rates == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert protonet(backend, meta_lr=0.1).learning_rate() == 0.1  # no decay by default


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_statistics_move_only_in_training_steps(backend):
    learner, batch = protonet(backend, running_stats=True), tasks().batch(0, 1)
    start = learner.get_weights()
    learner.meta_gradients(batch)
    learner.evaluate([tasks().episode(5)])
    learner.prototypes(tasks().episode(5))
    assert all(np.array_equal(learner.get_weights()[n], start[n]) for n in start)
    learner.meta_train_step(batch)
    moved = learner.get_weights()
    assert not np.array_equal(moved["blocks.0.norm.running_mean"], start["blocks.0.norm.running_mean"])


@pytest.mark.parametrize("learner_name", ["protonet", "matchingnet"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_lowers_the_loss(backend, learner_name):
    learner = (protonet if learner_name == "protonet" else matchingnet)(backend, meta_lr=3e-3)
    episodes = tasks(seed=7).take(4)
    before = learner.evaluate(episodes)["loss"]["mean"]
    for step in range(15):
        metrics = learner.meta_train_step(tasks(seed=3).batch(step, 2))
        assert set(metrics) == {"loss", "accuracy"} and np.isfinite(metrics["loss"])
    assert learner.evaluate(episodes)["loss"]["mean"] < before


@pytest.mark.parametrize("backend", BACKENDS)
def test_optimizer_state_round_trip(backend):
    learner = protonet(backend, lr_decay_every=2)
    for step in range(3):
        learner.meta_train_step(tasks().batch(step, 1))
    state = learner.get_optimizer_state()
    other = protonet(backend, lr_decay_every=2)
    other.set_optimizer_state(state)
    assert int(other.get_optimizer_state()["step"]) == 3 and other.learning_rate() == learner.learning_rate()
    assert all(np.array_equal(other.get_optimizer_state()[n], state[n]) for n in state)


def test_evaluate_reports_mean_and_ci():
    learner = protonet("torch")
    result = learner.evaluate(tasks().take(3))
    assert set(result) == {"loss", "accuracy"} and result["accuracy"]["n"] == 3
    assert 0 <= result["accuracy"]["mean"] <= 1 and result["accuracy"]["ci95"] >= 0


# --- errors -----------------------------------------------------------------------------------------------

BAD_ARGUMENTS = [
    ("protonet", dict(distance="manhattan"), ["'euclidean'", "'cosine'", "distance='manhattan'"]),
    ("protonet", dict(meta_optimizer="rmsprop"), ["'adam'", "'sgd'", "meta_optimizer='rmsprop'"]),
    ("protonet", dict(lr_decay=0.0), ["0 < lr_decay <= 1", "lr_decay=0.0"]),
    ("protonet", dict(lr_decay=1.5), ["0 < lr_decay <= 1", "lr_decay=1.5"]),
    ("protonet", dict(lr_decay_every=0), ["None", "positive integer", "lr_decay_every=0"]),
    ("protonet", dict(lr_decay_every=2.5), ["None", "positive integer", "lr_decay_every=2.5"]),
    ("protonet", dict(meta_lr=-1.0), ["positive meta_lr", "meta_lr=-1.0"]),
    ("protonet", dict(cosine_scale=0), ["positive cosine_scale", "cosine_scale=0"]),
    ("matchingnet", dict(fce="yes"), ["True or False", "fce='yes'"]),
    ("matchingnet", dict(fce_steps=0), ["positive integer", "fce_steps=0"]),
    ("matchingnet", dict(meta_optimizer="adamw"), ["'adam'", "'sgd'", "meta_optimizer='adamw'"]),
]


@pytest.mark.parametrize("learner_name, kwargs, expected", BAD_ARGUMENTS,
                         ids=[f"{n}-{next(iter(k))}={next(iter(k.values()))}" for n, k, _ in BAD_ARGUMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments_raise(backend, learner_name, kwargs, expected):
    with pytest.raises(ValueError) as error:
        (protonet if learner_name == "protonet" else matchingnet)(backend, **kwargs)
    for text in expected:
        assert text in str(error.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_support_labels_must_cover_every_class(backend):
    learner, episode = protonet(backend), tasks().episode(0)
    broken = episode._replace(support_y=np.where(episode.support_y == 1, 0, episode.support_y))
    with pytest.raises(ValueError, match=r"covering 0\.\.3"):
        learner.prototypes(broken)
    with pytest.raises(ValueError, match="covering"):
        learner.meta_train_step(stack_episodes([episode, broken]))
    stray = episode._replace(query_y=np.where(episode.query_y == 1, 7, episode.query_y))
    with pytest.raises(ValueError, match="query labels"):
        learner.evaluate([stray])


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_needs_the_support_state(backend):
    learner = matchingnet(backend)
    with pytest.raises(ValueError, match=r"adapt\(episode\)"):
        learner.predict(tasks().episode(0).query_x)
