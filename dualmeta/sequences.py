"""Model-based meta-learning, the neutral half: episodes as sequences, and the sequence models' specs (numpy).

A model-based learner (``lstm``, ``snail``) reads an episode as a sequence and predicts the query labels in
its forward pass. Both backends frame an episode the same way, from the arrays made here:

* each support example is one step ``(x_i, slot_i)``: the image (embedded by the model's encoder in the
  backend) or the raw regression input, and its **label slot**: ``onehot(y_i)`` over the model's ``ways``
  outputs (classification) or the target ``y_i`` itself (regression);
* each query is one step ``(x_q, 0)``: the same input with a zero label slot, read **after the whole support
  set, alone**. No query sees another: every query's prediction is that of the sequence ``support, x_q``
  (the backends run the support once and append every query to it separately, which gives the same numbers
  as B x Q separate sequences; ``parity_tests/test_sequence_learners.py`` checks both the equality and that a
  query's prediction does not move when the other queries change).

Support order. :class:`ClassificationTasks` lists the support set class by class; a sequence model must not
learn that order. :class:`ShuffledSupport` wraps any task set and permutes the support set of episode ``i``
by address, with ``numpy.random.SeedSequence([seed, i, SHUFFLE_KEY])``, so every backend, process and resume
sees the same order. ``dualmeta.experiment`` wraps the task sets of the sequence learners in it.

Specs (names and layouts are PyTorch's, like every neutral tensor):

    lstm:   encoder.*                  a head-less conv4 (classification only; see dualmeta.weights)
            lstm.weight_ih (4H, in)    lstm.weight_hh (4H, H)    gates stacked i, f, g, o (PyTorch's order)
            lstm.bias_ih (4H,)         lstm.bias_hh (4H,)        two biases, added (PyTorch's nn.LSTM)
            head.weight (out, H)       head.bias (out,)
    snail:  encoder.*
            blocks.{b}.layers.{l}.filter.weight (R, C, 2)  .filter.bias (R,)   TC block b, dense layer l:
            blocks.{b}.layers.{l}.gate.weight (R, C, 2)    .gate.bias (R,)     causal conv, kernel 2, Conv1d layout
            blocks.{b}.query.weight (K, C) .key.weight (K, C) .value.weight (V, C), .query.bias .value.bias:
                                       attention block b (the key has no bias: see below)
            head.weight (out, C)       head.bias (out,)

``in`` is the encoder's feature size plus ``ways`` (classification) or ``in_features + out_features``
(regression); ``C`` grows block by block (dense concatenation). Initial values: U(-1/sqrt(fan_in),
1/sqrt(fan_in)) by ``dualmeta.weights.initialize`` (for the LSTM ``fan_in = H``: PyTorch's ``nn.LSTM``
initialiser), plus ``forget_bias`` on the forget-gate rows ``H:2H`` of ``lstm.bias_hh`` (default 0).

No key bias: a bias ``b`` on the attention keys adds ``q . b`` to every logit of a query's row, which the
softmax cancels, so its true gradient is zero and what a framework computes is round-off. Adam turns that
round-off into learning-rate-sized steps of arbitrary sign, different in each backend (measured: the key
biases 2e-3 apart after one float32 step, every other tensor within 1e-6), as with a convolution bias before
batch norm (``dualmeta.weights.conv4_spec``). Without it nothing is lost and nothing diverges.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from dualmeta.episodes import Episode, _TaskSet, check_positive
from dualmeta.weights import ModelSpec, TensorSpec, conv4_feature_size, conv4_spec

__all__ = ["SHUFFLE_KEY", "SEQUENCE_MODELS", "SequenceEpisode", "support_permutation", "shuffle_support",
           "ShuffledSupport", "is_batch", "frame", "encoder_features", "lstm_spec", "snail_spec",
           "dilations", "check_sequence_episode"]

SHUFFLE_KEY = 0x5E0  # third word of the shuffle's SeedSequence: never the words of an episode's own draw
SEQUENCE_MODELS = ("lstm", "snail")


class SequenceEpisode(NamedTuple):
    """An episode (or a stacked meta-batch) framed for a sequence model; every array has a leading task axis.

    ``support_x``/``query_x``: images or regression inputs; ``support_slots``: the label slots of the support
    steps (one-hot or targets), ``query_slots``: zeros of the same width; ``query_y``: the query targets.
    """
    support_x: np.ndarray
    support_slots: np.ndarray
    query_x: np.ndarray
    query_slots: np.ndarray
    query_y: np.ndarray


def support_permutation(seed: int, index: int, size: int) -> np.ndarray:
    """The order in which episode ``index`` of the task set seeded ``seed`` presents its ``size`` support examples."""
    if seed < 0 or index < 0:
        raise ValueError(f"Expected a non-negative seed and index; received seed={seed}, index={index}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index), SHUFFLE_KEY])))
    return rng.permutation(size)


def shuffle_support(episode: Episode, seed: int, index: int) -> Episode:
    """``episode`` with its support set in the order of :func:`support_permutation` (queries untouched)."""
    order = support_permutation(seed, index, len(episode.support_y))
    return Episode(episode.support_x[order], episode.support_y[order], episode.query_x, episode.query_y)


class ShuffledSupport(_TaskSet):
    """A task set whose episodes present their support set in a per-episode random order, by address."""

    def __init__(self, tasks):
        self.tasks, self.seed = tasks, tasks.seed

    def episode(self, index: int) -> Episode:
        return shuffle_support(self.tasks.episode(index), self.seed, index)

    def __getattr__(self, name):  # ways, shots, queries, dataset, ... of the wrapped task set
        if name == "tasks":
            raise AttributeError(name)
        return getattr(self.tasks, name)


def is_batch(episode: Episode) -> bool:
    """Whether ``episode`` is a stacked meta-batch: labels ``(tasks, n)``, regression targets ``(tasks, n, d)``."""
    y = np.asarray(episode.support_y)
    return y.ndim == (2 if np.issubdtype(y.dtype, np.integer) else 3)


def frame(episode: Episode, ways: int | None) -> SequenceEpisode:
    """The sequence framing of an episode or meta-batch (a task axis is added to a single episode).

    ``ways``: the model's label-slot width (classification: one-hot of the support labels over ``ways``);
    ``None`` for regression (the slot is the target ``y``). Raises ``ValueError`` when the episode's kind
    (integer labels or floating targets) does not fit ``ways``, or a label is ``>= ways``.
    """
    if not is_batch(episode):
        episode = Episode(*(np.asarray(a)[None] for a in episode))
    sx, sy, qx, qy = (np.ascontiguousarray(a) for a in episode)
    classification = np.issubdtype(sy.dtype, np.integer)
    if classification != (ways is not None):
        built = f"classification with ways={ways}" if ways is not None else "regression (ways=None)"
        given = "integer labels (classification)" if classification else "floating targets (regression)"
        fix = ("build it with ways=<the episode's ways> (--tasks=omniglot)" if classification
               else "build it with ways=None (--tasks=sinusoid)")
        raise ValueError(f"This sequence model was built for {built} but received an episode with {given}; {fix}")
    if classification:
        highest = int(max(sy.max(), qy.max() if qy.size else 0))
        if sy.min() < 0 or highest >= ways:
            raise ValueError(f"The episode has labels up to {highest} ({highest + 1} ways) but the model's output "
                             f"head has {ways}; build the learner with ways >= {highest + 1} (--ways={highest + 1})")
        slots = np.eye(ways, dtype=np.float64)[sy]
        query_slots = np.zeros(qy.shape + (ways,))
    else:
        slots, query_slots = sy, np.zeros_like(qy)
    return SequenceEpisode(sx, slots, qx, query_slots, qy)


def check_sequence_episode(spec: ModelSpec, episode: SequenceEpisode) -> None:
    """Raises ``ValueError`` (naming the fix) if ``spec`` cannot read ``episode`` (support too long for SNAIL)."""
    longest = spec.config.get("support_size")
    support = episode.support_slots.shape[1]
    if longest is not None and support > longest:
        raise ValueError(f"The support set has {support} examples but this {spec.name} model was built for at "
                         f"most support_size={longest} (its causal convolutions see {longest + 1} steps); "
                         f"build it with support_size >= {support} (from --ways x --shots)")


def encoder_features(encoder: dict) -> int:
    """The embedding size of a head-less conv4 with arguments ``encoder`` (of :func:`dualmeta.weights.conv4_spec`)."""
    spec = conv4_spec(**encoder)
    cfg = spec.config
    size = conv4_feature_size(cfg["image_size"], cfg["blocks"], cfg["downsample"])
    return cfg["hidden"] * (size * size if cfg["head"] == "flatten" else 1)


def _framing(ways, encoder, in_features, out_features) -> tuple[dict, dict, int, int]:
    """Encoder tensors, the config shared by the sequence specs, the step width and the output width."""
    if ways is None:
        if encoder is not None:
            raise ValueError("An encoder embeds images for classification; regression (ways=None) reads the raw "
                             "(x, y): pass encoder=None, or ways=<classes> for classification")
        check_positive(in_features=in_features, out_features=out_features)
        config = dict(ways=None, encoder=None, in_features=int(in_features), out_features=int(out_features))
        return {}, config, in_features + out_features, out_features
    check_positive(ways=ways)
    if encoder is None:
        raise ValueError("Classification (ways given) needs an image encoder: pass encoder=dict(...) with the "
                         "arguments of a head-less conv4, e.g. encoder=dict(hidden=64, downsample='maxpool')")
    encoder = dict(encoder)
    if encoder.get("num_classes") is not None:
        raise ValueError(f"The encoder must be head-less (num_classes=None); received "
                         f"num_classes={encoder['num_classes']}: the sequence model's own head classifies")
    encoder["num_classes"] = None
    spec = conv4_spec(**encoder)
    tensors = {f"encoder.{name}": t for name, t in spec.tensors.items()}
    config = dict(ways=int(ways), encoder=dict(spec.config), in_features=None, out_features=int(ways))
    return tensors, config, encoder_features(encoder) + ways, ways


def lstm_spec(ways: int | None = None, hidden: int = 128, encoder: dict | None = None, in_features: int = 1,
              out_features: int = 1, forget_bias: float = 0.0) -> ModelSpec:
    """The LSTM black-box learner: an optional conv4 encoder, one LSTM layer of ``hidden`` units, a linear head.

    Classification: ``ways`` (label-slot width and head size) and ``encoder`` (head-less conv4 arguments).
    Regression: ``ways=None``, ``encoder=None``; steps are ``(x, y)`` of widths ``in_features + out_features``.
    ``forget_bias`` is added to the forget-gate part of ``lstm.bias_hh`` at initialisation (1.0 is Keras'
    ``unit_forget_bias=True``; 0.0 is PyTorch's ``nn.LSTM``): :func:`dualmeta.weights.initialize`.
    """
    check_positive(hidden=hidden)
    forget_bias = float(forget_bias)
    if not math.isfinite(forget_bias):
        raise ValueError(f"Expected a finite forget_bias (0.0: PyTorch's start, 1.0: Keras'); received {forget_bias}")
    tensors, config, steps, outputs = _framing(ways, encoder, in_features, out_features)
    h = int(hidden)
    tensors.update({"lstm.weight_ih": TensorSpec((4 * h, steps), "dense", h),
                    "lstm.weight_hh": TensorSpec((4 * h, h), "dense", h),
                    "lstm.bias_ih": TensorSpec((4 * h,), "bias", h),
                    "lstm.bias_hh": TensorSpec((4 * h,), "bias", h),
                    "head.weight": TensorSpec((outputs, h), "dense", h),
                    "head.bias": TensorSpec((outputs,), "bias", h)})
    return ModelSpec("lstm", {**config, "hidden": h, "forget_bias": forget_bias}, tensors)


def dilations(support_size: int) -> list[int]:
    """Dilations of a SNAIL TC block over sequences of ``T = support_size + 1`` steps: 1, 2, 4, ...
    (``ceil(log2 T)`` layers, at least one)."""
    check_positive(support_size=support_size)
    return [2 ** i for i in range(max(1, math.ceil(math.log2(support_size + 1))))]


def snail_spec(ways: int | None = None, support_size: int = 5, filters: int = 128,
               keys: tuple[int, ...] = (64, 256), values: tuple[int, ...] = (32, 128),
               encoder: dict | None = None, in_features: int = 1, out_features: int = 1) -> ModelSpec:
    """SNAIL (Mishra et al. 2018): ``len(keys)`` x (TC block of ``filters``, attention block ``(key, value)``), a head.

    The defaults are the paper's Omniglot network (TC 128, attention 64/32, TC 128, attention 256/128).
    ``support_size``: the longest support set the model reads (N x K); its TC blocks have ``ceil(log2(N K + 1))``
    dense layers with dilations 1, 2, 4, ...; a longer support set is refused. Framing as :func:`lstm_spec`.
    """
    check_positive(support_size=support_size, filters=filters)
    keys, values = tuple(int(k) for k in keys), tuple(int(v) for v in values)
    if not keys or len(keys) != len(values):
        raise ValueError(f"Expected as many attention key sizes as value sizes (at least one); received keys={keys}, "
                         f"values={values}")
    check_positive(**{f"keys[{i}]": k for i, k in enumerate(keys)}, **{f"values[{i}]": v for i, v in enumerate(values)})
    tensors, config, channels, outputs = _framing(ways, encoder, in_features, out_features)
    block = 0
    for key, value in zip(keys, values):
        for layer, _ in enumerate(dilations(support_size)):
            for part in ("filter", "gate"):
                tensors[f"blocks.{block}.layers.{layer}.{part}.weight"] = TensorSpec((filters, channels, 2), "conv1d",
                                                                                     2 * channels)
                tensors[f"blocks.{block}.layers.{layer}.{part}.bias"] = TensorSpec((filters,), "bias", 2 * channels)
            channels += filters
        block += 1
        for part, size in (("query", key), ("key", key), ("value", value)):
            tensors[f"blocks.{block}.{part}.weight"] = TensorSpec((size, channels), "dense", channels)
            if part != "key":  # q.(k + b) - q.k is the same for every step: softmax cancels it (see below)
                tensors[f"blocks.{block}.{part}.bias"] = TensorSpec((size,), "bias", channels)
        channels += value
        block += 1
    tensors["head.weight"] = TensorSpec((outputs, channels), "dense", channels)
    tensors["head.bias"] = TensorSpec((outputs,), "bias", channels)
    return ModelSpec("snail", {**config, "support_size": int(support_size), "filters": int(filters), "keys": keys,
                               "values": values}, tensors)
