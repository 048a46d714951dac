"""Machinery every TensorFlow learner shares: tensors, losses, the meta-optimiser, the learner interface.

Mirror of ``torch_meta/core.py``. The optimisers are written out here (not ``keras.optimizers``) so that
both backends run the same formula: Adam as in PyTorch (eps added to the bias-corrected sqrt(v)),
eps=1e-8. Keras' Adam differs twice: its default eps is 1e-7, and it adds eps to the uncorrected sqrt(v).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import tensorflow as tf

from dualmeta.allocator import keep_freed_memory
from dualmeta.episodes import Episode
from dualmeta.twins import check_drops
from dualmeta.metrics import summarize
from dualmeta.protocol import TEST_NORMS, check_test_norm
from dualmeta.weights import check_weights
from tf_meta.models import _FROM_NEUTRAL, _TO_NEUTRAL

__all__ = ["OPTIMIZERS", "INNER_REDUCTIONS", "TEST_NORMS", "Optimizer", "Learner", "as_tensor", "task_loss",
           "task_accuracy", "is_classification"]

OPTIMIZERS = ("adam", "sgd")
INNER_REDUCTIONS = ("mean", "sum_per_shot")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8  # PyTorch's default; Keras' is 1e-7. Passed explicitly in both backends.


def as_tensor(array: np.ndarray, dtype: tf.DType) -> tf.Tensor:
    """A numpy array as a tensor: floating arrays in the learner's dtype, integer labels as int64."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return tf.convert_to_tensor(array, dtype=tf.int64)
    return tf.convert_to_tensor(array, dtype=dtype)


def is_classification(targets) -> bool:
    """Integer targets mean classification (cross-entropy), floating targets regression (MSE)."""
    return not targets.dtype.is_floating


def task_loss(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy for integer targets, mean squared error for floating ones."""
    if is_classification(targets):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=outputs))
    return tf.reduce_mean(tf.square(outputs - targets))


def task_accuracy(outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(outputs, axis=-1), targets), outputs.dtype))


class Optimizer:
    """The meta-optimiser: ``'adam'`` (PyTorch's formula, eps=1e-8) or plain ``'sgd'``, on named tensors.

    Adam, step ``t``: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.
    """

    def __init__(self, params: Mapping[str, tf.Variable], name: str = "adam", lr: float = 1e-3,
                 kinds: Mapping[str, str] | None = None):
        if name not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={name!r}")
        self.params, self.name, self.eps = dict(params), name, ADAM_EPS
        self._lr = tf.Variable(float(lr), dtype=tf.float64, trainable=False)  # a variable: changes reach the graph
        self.kinds = dict(kinds or {})
        self.t = tf.Variable(0, dtype=tf.int64, trainable=False)
        slots = name == "adam"
        self.m = {n: tf.Variable(tf.zeros_like(p), trainable=False) for n, p in self.params.items()} if slots else {}
        self.v = {n: tf.Variable(tf.zeros_like(p), trainable=False) for n, p in self.params.items()} if slots else {}
        self._apply = tf.function(self._apply_eager)

    @property
    def lr(self) -> float:
        return float(self._lr.numpy())

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr.assign(float(value))

    def apply(self, grads: Mapping[str, tf.Tensor]) -> None:
        self._apply([grads[n] for n in self.params])

    def _apply_eager(self, grads: list) -> None:
        self.t.assign_add(1)
        if self.name == "sgd":
            for p, g in zip(self.params.values(), grads):
                p.assign(p - tf.cast(self._lr, p.dtype) * g)
            return
        b1, b2 = ADAM_BETAS
        for (n, p), g in zip(self.params.items(), grads):
            t = tf.cast(self.t, p.dtype)
            c1, c2 = 1 - tf.pow(tf.constant(b1, p.dtype), t), 1 - tf.pow(tf.constant(b2, p.dtype), t)
            m = self.m[n].assign(b1 * self.m[n] + (1 - b1) * g)
            v = self.v[n].assign(b2 * self.v[n] + (1 - b2) * g * g)
            p.assign(p - tf.cast(self._lr, p.dtype) * (m / c1) / (tf.sqrt(v / c2) + self.eps))

    def get_state(self) -> dict[str, np.ndarray]:
        """Neutral state: ``step`` and, for Adam, ``m.<name>``/``v.<name>`` in the neutral layout."""
        state = {"step": np.asarray(int(self.t.numpy()), dtype=np.int64)}
        for prefix, slots in (("m.", self.m), ("v.", self.v)):
            for n, s in slots.items():
                state[prefix + n] = np.ascontiguousarray(_TO_NEUTRAL.get(self.kinds.get(n), np.copy)(s.numpy()))
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        expected = {"step": ()}
        for prefix, slots in (("m.", self.m), ("v.", self.v)):
            for n, s in slots.items():
                expected[prefix + n] = tuple(np.shape(_TO_NEUTRAL.get(self.kinds.get(n), np.copy)(np.zeros(s.shape))))
        check_weights(expected, state, what="optimizer state")
        self.t.assign(int(state["step"]))
        for prefix, slots in (("m.", self.m), ("v.", self.v)):
            for n, s in slots.items():
                s.assign(_FROM_NEUTRAL.get(self.kinds.get(n), np.asarray)(np.asarray(state[prefix + n])))


class Learner:
    """The interface every learner shares, identical in both backends.

    * ``adapt(episode, steps=None)`` -> adapted weights (a dict of tensors) for ``predict``;
    * ``predict(x, weights=None)`` -> numpy outputs (logits or regression values);
    * ``meta_train_step(batch)`` -> ``{"loss": float, "accuracy": float}`` (accuracy for classification);
    * ``evaluate(episodes, steps=None)`` -> ``{"loss": {"mean", "ci95", "n"}, "accuracy": {...}}``;
    * ``get_weights()`` / ``set_weights(d)`` in the neutral format (model tensors plus learner tensors);
    * ``get_optimizer_state()`` / ``set_optimizer_state(d)`` for checkpoints.

    ``test_norm`` says where batch norm takes its statistics when a model without running statistics
    scores a query set (``evaluate``): ``'query'`` (default) from the query set itself, as Finn et al.'s
    code does - transductive, a query's prediction depends on the other queries; ``'support'`` from the
    support set (the adapted weights run on support and queries together, the statistics come from the
    support rows) - each query is classified from the support set and itself alone. Models that track
    running statistics use those at test whatever ``test_norm`` says.

    A learner whose ``draws_drop_masks`` is true hands a twin's DropBlock layers their masks in training
    (``dualmeta.twins.drop_masks``, by address); the others refuse a twin that drops.
    """

    draws_drop_masks = False

    def __init__(self, model, meta_lr: float = 1e-3, meta_optimizer: str = "adam"):
        keep_freed_memory()  # no page faults for the step's feature maps (dualmeta.allocator)
        if not self.draws_drop_masks:
            check_drops(model, type(self).__name__)
        self.model = model
        self.dtype = tf.as_dtype(model.trainable_variables[0].dtype)
        self.extra: dict[str, tf.Variable] = {}  # learner tensors (e.g. Meta-SGD's rates), neutral names
        self.extra_kinds: dict[str, str] = {}  # their layout kind ('conv', 'dense', ...)
        self.meta_lr, self.meta_optimizer = meta_lr, meta_optimizer
        self._optimizer = None
        self.test_norm = "query"
        self._compiled = {}

    @property
    def test_norm(self) -> str:
        return self._test_norm

    @test_norm.setter
    def test_norm(self, value: str) -> None:
        self._test_norm = check_test_norm(value)

    # -- parameters ---------------------------------------------------------------------------------
    def model_parameters(self) -> dict[str, tf.Variable]:
        """The model's trainable variables by neutral name (Keras layout)."""
        return {n: v for n, v in self.model.neutral_variables().items() if v.trainable}

    def parameters(self) -> dict[str, tf.Variable]:
        """Every tensor the meta-optimiser updates, by neutral name."""
        return {**self.model_parameters(), **self.extra}

    def kinds(self) -> dict[str, str]:
        """The layout kind (``'conv'``, ``'dense'``, ...) of every tensor, by neutral name."""
        return {**{n: t.kind for n, t in self.model.spec.tensors.items()}, **self.extra_kinds}

    @property
    def optimizer(self) -> Optimizer:
        if self._optimizer is None:
            self._optimizer = Optimizer(self.parameters(), self.meta_optimizer, self.meta_lr, self.kinds())
        return self._optimizer

    def to_neutral(self, name: str, value) -> np.ndarray:
        """A tensor of this learner (Keras layout) in the neutral layout."""
        return np.ascontiguousarray(_TO_NEUTRAL.get(self.kinds().get(name), np.copy)(np.asarray(value)))

    def get_weights(self) -> dict[str, np.ndarray]:
        weights = self.model.get_weights()
        weights.update({n: self.to_neutral(n, t.numpy()) for n, t in self.extra.items()})
        return weights

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        extra_shapes = {n: self.to_neutral(n, t.numpy()).shape for n, t in self.extra.items()}
        model_shapes = {n: t.shape for n, t in self.model.spec.tensors.items()}
        check_weights({**model_shapes, **extra_shapes}, weights)
        self.model.set_weights({n: weights[n] for n in model_shapes})
        for n, t in self.extra.items():
            t.assign(_FROM_NEUTRAL.get(self.extra_kinds[n], np.asarray)(np.asarray(weights[n])))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    # -- episodes -----------------------------------------------------------------------------------
    def _tensors(self, episode: Episode) -> tuple[tf.Tensor, ...]:
        return tuple(as_tensor(a, self.dtype) for a in episode)

    def _compile(self, key, fn):
        """One ``tf.function`` per key (e.g. a step count), traced once per input shape."""
        if key not in self._compiled:
            self._compiled[key] = tf.function(fn)
        return self._compiled[key]

    def predict(self, x: np.ndarray, weights: Mapping[str, tf.Tensor] | None = None) -> np.ndarray:
        """Outputs of the model (with ``weights`` from ``adapt`` if given) on numpy inputs.

        Inference mode: batch norm uses running statistics if the model tracks them, else batch statistics.
        """
        from tf_meta.models import functional_call
        weights = self.model_parameters() if weights is None else weights
        return functional_call(self.model, weights, as_tensor(x, self.dtype), training=False).numpy()

    def _episode_metrics(self, episode: Episode, steps: int | None) -> dict[str, float]:
        """Loss (and accuracy) on the query set after adapting on the support set."""
        from tf_meta.models import functional_call

        norm = self.test_norm

        def metrics(sx, sy, qx, qy):
            weights = self._adapted(sx, sy, steps)
            if norm == "support":  # statistics of the support rows, applied to the queries
                n = sx.shape[0]
                out = functional_call(self.model, weights, tf.concat([sx, qx], 0), training=False,
                                      stats_rows=n)[n:]
            else:
                out = functional_call(self.model, weights, qx, training=False)
            return task_loss(out, qy), (task_accuracy(out, qy) if is_classification(qy) else tf.zeros((), out.dtype))

        _, _, _, qy = tensors = self._tensors(episode)
        loss, acc = self._compile(("metrics", steps, norm), metrics)(*tensors)
        return {"loss": float(loss), "accuracy": float(acc)} if is_classification(qy) else {"loss": float(loss)}

    def _adapted(self, support_x: tf.Tensor, support_y: tf.Tensor, steps: int | None) -> dict[str, tf.Tensor]:
        """Adapted weights as a traceable function of the support set (see ``adapt``)."""
        raise NotImplementedError

    def adapt(self, episode: Episode, steps: int | None = None) -> dict[str, tf.Tensor]:
        """Adapted weights after ``steps`` (default: the learner's test steps) on the support set."""
        sx, sy, _, _ = self._tensors(episode)
        return self._compile(("adapt", steps), lambda x, y: self._adapted(x, y, steps))(sx, sy)

    def evaluate(self, episodes: Iterable[Episode], steps: int | None = None) -> dict[str, dict[str, float]]:
        """Mean query loss (and accuracy) with 95% confidence intervals over ``episodes``."""
        per_episode: dict[str, list[float]] = {}
        for episode in episodes:
            for name, value in self._episode_metrics(episode, steps).items():
                per_episode.setdefault(name, []).append(value)
        if not per_episode:
            raise ValueError("evaluate needs at least one episode; received none")
        return summarize(per_episode)

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        raise NotImplementedError

    # -- the two halves of a meta-training step (``distributed`` sums the first over workers) ----------
    def _step_gradients(self, batch: Episode):
        """``(gradients by name, metrics)`` of ``meta_train_step`` on ``batch`` (mean over its tasks), with its
        side effects (e.g. running statistics) but without the update."""
        raise NotImplementedError

    def _apply_gradients(self, grads) -> None:
        """The update of ``meta_train_step`` from the gradients of ``_step_gradients``."""
        self.optimizer.apply(grads)
