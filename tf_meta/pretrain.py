"""Pretraining machinery, TensorFlow side: an encoder trained on image batches, scored with few-shot heads.

Mirror of ``torch_meta/pretrain.py``. A :class:`Pretrainer` holds a head-less conv4 (``model``, usually
``conv4(downsample='maxpool', track_running_stats=True)``) and learner tensors (a classifier, a projection,
a decoder) under neutral names in ``extra``. Training (``meta_train_step(batch)``) runs the encoder on a
batch of ``dualmeta.pretrain`` (batch statistics, running statistics updated), takes the subclass's loss
``_batch_loss`` and one Adam step (PyTorch's formula, ``core.Optimizer``). ``meta_gradients(batch)`` is the
same without the update or the running-statistics change.

Few-shot evaluation, the same for every pretrained encoder (``head``; features in evaluation mode, i.e.
running batch-norm statistics, so every image is embedded on its own):

* ``'prototype'``: ``logits_k(q) = -|n(f(q)) - c_k|^2``, ``c_k`` the mean of ``n(f(x))`` over the support
  examples of class ``k``, ``n(z) = z / sqrt(|z|^2 + 1e-12)``;
* ``'linear'``: a new head on the frozen features, ``head_steps`` (100) steps of SGD with momentum 0.9,
  rate ``head_lr`` (0.01), minibatches of 4 support examples (Chen et al. 2019) in the order of
  ``dualmeta.pretrain.head_batches``; the head starts at zero (Baseline++: a cosine head starting at the
  normalised class means, see ``_head_init``);
* ``'finetune'``: the same, with the encoder's parameters updated too (its running statistics stay).

Momentum SGD, both backends: ``buf = 0.9 buf + g``, ``p -= lr buf`` (PyTorch's ``torch.optim.SGD``; Keras'
``SGD(momentum=)`` keeps ``-lr``-scaled velocities, the same numbers only for a constant rate).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from dualmeta import pretrain as neutral
from tf_meta.core import OPTIMIZERS, Learner, as_tensor, task_accuracy, task_loss
from tf_meta.models import functional_call

__all__ = ["Pretrainer", "normalize", "momentum_sgd"]

NORM_EPS = 1e-12


def normalize(z: tf.Tensor) -> tf.Tensor:
    return z * tf.math.rsqrt(tf.reduce_sum(tf.square(z), axis=-1, keepdims=True) + NORM_EPS)


def momentum_sgd(params: dict, buffers: dict, grads: dict, lr: float, momentum: float) -> tuple[dict, dict]:
    """One step of PyTorch's momentum SGD on dicts of tensors: ``buf = m buf + g``, ``p - lr buf``."""
    buffers = {n: momentum * buffers[n] + grads[n] for n in params}
    return {n: params[n] - lr * buffers[n] for n in params}, buffers


class Pretrainer(Learner):
    """The shared part of ``Baseline``, ``BaselinePP``, ``SimCLR`` and ``MAE`` (see the module docstring)."""

    def __init__(self, model, meta_lr: float = 1e-3, meta_optimizer: str = "adam", head: str = "prototype",
                 head_steps: int = neutral.HEAD_STEPS, head_lr: float = neutral.HEAD_LR):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer)
        if meta_optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={meta_optimizer!r}")
        if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not meta_lr > 0:
            raise ValueError(f"Expected a positive meta_lr; received meta_lr={meta_lr!r}")
        if isinstance(head_steps, bool) or not isinstance(head_steps, (int, np.integer)) or head_steps < 1:
            raise ValueError(f"Expected a positive number of head steps; received head_steps={head_steps!r}")
        self.head, self.head_steps, self.head_lr = head, int(head_steps), float(head_lr)
        self.features = neutral.feature_size(model.spec.config)

    @property
    def head(self) -> str:
        return self._head

    @head.setter
    def head(self, value: str) -> None:
        if value not in neutral.HEADS:
            raise ValueError(f"Expected one of {list(neutral.HEADS)}; received head={value!r}")
        self._head = value

    def _add(self, name: str, value: np.ndarray) -> None:
        """A learner tensor, kept in the neutral layout (no conversion: kind ``'neutral'``)."""
        self.extra[name] = tf.Variable(np.asarray(value), dtype=self.dtype, name=name.replace(".", "_"))
        self.extra_kinds[name] = "neutral"

    # -- the encoder ------------------------------------------------------------------------------------
    def _encode(self, x: tf.Tensor, training: bool, update_stats: bool = False,
                params: Mapping[str, tf.Tensor] | None = None) -> tf.Tensor:
        if params is None and (update_stats or not training):
            return self.model(x, training=training)
        if params is None:
            params = {n: tf.convert_to_tensor(v) for n, v in self.model_parameters().items()}
        return functional_call(self.model, params, x, training=training)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Features of numpy images in evaluation mode."""
        encode = self._compile("embed", lambda x: self._encode(x, training=False))
        return encode(as_tensor(x, self.dtype)).numpy()

    # -- training ---------------------------------------------------------------------------------------
    def _inputs(self, batch) -> tuple:
        """The batch's arrays as tensors (after the subclass's checks)."""
        return tuple(as_tensor(a, self.dtype) for a in batch)

    def _batch_loss(self, inputs: tuple, update_stats: bool) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        raise NotImplementedError

    def _gradients(self, batch, update_stats: bool):
        def step(*inputs):
            variables = list(self.parameters().values())
            with tf.GradientTape() as tape:
                loss, metrics = self._batch_loss(inputs, update_stats)
            grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads, loss, metrics

        grads, loss, metrics = self._compile(("gradients", update_stats), step)(*self._inputs(batch))
        return dict(zip(self.parameters(), grads)), {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}}

    def meta_gradients(self, batch) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Gradients of the batch loss (neutral layout) and the metrics; no update, running statistics kept."""
        grads, metrics = self._gradients(batch, update_stats=False)
        return {n: self.to_neutral(n, g.numpy()) for n, g in grads.items()}, metrics

    def meta_train_step(self, batch) -> dict[str, float]:
        """One optimiser step on a batch of ``dualmeta.pretrain``; returns the loss (and accuracy)."""
        grads, metrics = self._step_gradients(batch)
        self._apply_gradients(grads)
        return metrics

    def _step_gradients(self, batch):
        return self._gradients(batch, update_stats=True)

    # -- few-shot heads ---------------------------------------------------------------------------------
    def _head_init(self, z: tf.Tensor, onehot: tf.Tensor) -> dict[str, tf.Tensor]:
        ways = onehot.shape[1]
        return {"weight": tf.zeros((ways, z.shape[1]), z.dtype), "bias": tf.zeros((ways,), z.dtype)}

    def _head_logits(self, z: tf.Tensor, head: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.matmul(z, head["weight"], transpose_b=True) + head["bias"]

    def _fit_head_graph(self, sx, sy, order, ways: int, finetune: bool) -> dict:
        onehot = tf.one_hot(sy, ways, dtype=self.dtype)
        z = self._encode(sx, training=False)
        head = self._head_init(z, onehot)
        encoder = {n: tf.convert_to_tensor(v) for n, v in self.model_parameters().items()}
        params = {**({f"encoder.{n}": p for n, p in encoder.items()} if finetune else {}),
                  **{f"head.{n}": p for n, p in head.items()}}
        names = list(params)
        buffers = [tf.zeros_like(params[n]) for n in names]

        def body(i, values, buffers):
            rows = order[i]
            current = dict(zip(names, values))
            with tf.GradientTape() as tape:
                tape.watch(values)
                if finetune:
                    weights = {n[len("encoder."):]: p for n, p in current.items() if n.startswith("encoder.")}
                    features = self._encode(tf.gather(sx, rows), training=False, params=weights)
                else:
                    features = tf.gather(z, rows)
                logits = self._head_logits(features, {n[5:]: p for n, p in current.items() if n.startswith("head.")})
                loss = task_loss(logits, tf.gather(sy, rows))
            grads = tape.gradient(loss, values)
            new, new_buffers = momentum_sgd(current, dict(zip(names, buffers)), dict(zip(names, grads)),
                                            self.head_lr, neutral.HEAD_MOMENTUM)
            return i + 1, [new[n] for n in names], [new_buffers[n] for n in names]

        _, values, _ = tf.while_loop(lambda i, *_: i < tf.shape(order)[0], body,
                                     (tf.constant(0), [params[n] for n in names], buffers))
        return dict(zip(names, values))

    def adapt(self, episode, steps: int | None = None) -> dict[str, tf.Tensor]:
        """The state ``head`` fits on the support set: ``prototypes``, or ``head.*`` (and ``encoder.*``)."""
        ways = neutral.check_support_classes(episode.support_y)
        sx, sy = as_tensor(episode.support_x, self.dtype), as_tensor(episode.support_y, self.dtype)
        if self.head == "prototype":
            def prototypes(sx, sy):
                z = normalize(self._encode(sx, training=False))
                onehot = tf.one_hot(sy, ways, dtype=z.dtype)
                return {"prototypes": tf.matmul(onehot, z, transpose_a=True) / tf.reduce_sum(onehot, axis=0)[:, None]}
            return self._compile(("prototypes", ways), prototypes)(sx, sy)
        finetune = self.head == "finetune"
        order = tf.convert_to_tensor(neutral.head_batches(len(episode.support_y), self.head_steps))
        fit = self._compile(("head", ways, finetune),
                            lambda sx, sy, order: self._fit_head_graph(sx, sy, order, ways, finetune))
        return fit(sx, sy, order)

    def predict(self, x: np.ndarray, weights: Mapping[str, tf.Tensor] | None = None) -> np.ndarray:
        """Logits of numpy images against ``weights = adapt(episode)``."""
        if weights is None:
            raise ValueError(f"{type(self).__name__}.predict needs the support state: "
                             "predict(x, learner.adapt(episode))")
        scores = self._compile(("predict", tuple(sorted(weights))), self._scores)
        return scores(as_tensor(x, self.dtype), {k: tf.convert_to_tensor(v) for k, v in weights.items()}).numpy()

    # --8<-- [start:scores]
    def _scores(self, x: tf.Tensor, state: Mapping[str, tf.Tensor]) -> tf.Tensor:
        if "prototypes" in state:
            z = normalize(self._encode(x, training=False))
            return -tf.reduce_sum(tf.square(z[:, None, :] - state["prototypes"][None]), axis=-1)
        encoder = {n[len("encoder."):]: p for n, p in state.items() if n.startswith("encoder.")}
        z = self._encode(x, training=False, params=encoder or None)
        return self._head_logits(z, {n[5:]: p for n, p in state.items() if n.startswith("head.")})

    # --8<-- [end:scores]
    def _episode_metrics(self, episode, steps: int | None) -> dict[str, float]:
        state = self.adapt(episode)

        def metrics(qx, qy, state):
            logits = self._scores(qx, state)
            return task_loss(logits, qy), task_accuracy(logits, qy)

        qx, qy = as_tensor(episode.query_x, self.dtype), as_tensor(episode.query_y, self.dtype)
        loss, accuracy = self._compile(("metrics", tuple(sorted(state))), metrics)(qx, qy, dict(state))
        return {"loss": float(loss), "accuracy": float(accuracy)}
