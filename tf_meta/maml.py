"""MAML (Finn et al. 2017), TensorFlow side. Mirror of ``torch_meta/maml.py``.

Inner loop, for each task, ``k`` steps of SGD on the support loss from the meta-parameters ``theta``:

    phi_0 = theta,    phi_{j+1} = phi_j - alpha * grad L_support(phi_j)

outer loss, the query loss at ``phi_k`` averaged over the meta-batch, minimised over ``theta`` by Adam.
Second order (default): the meta-gradient differentiates through the inner gradients (nested
``tf.GradientTape``s around Keras' ``stateless_call``); ``first_order=True`` treats them as constants.

Arguments (defaults): ``model`` (a twin model), ``inner_lr=0.4``, ``inner_steps=1`` (training),
``test_inner_steps=None`` (same as ``inner_steps``), ``first_order=False``, ``meta_lr=1e-3``,
``inner_reduction='mean'`` (``'sum_per_shot'``: the support loss summed and divided by the shots, as in
the original code, i.e. ``ways`` times the mean for classification), ``meta_optimizer='adam'``,
``recompute_steps=False``: second order keeps every inner step's activations and gradient graph until the
meta-gradient, so memory grows with ``inner_steps``; ``True`` keeps only each step's input weights and
recomputes the step during the backward pass (``_recomputed``: a ``tf.custom_gradient`` whose gradient
runs the step again under its own tape; ``tf.recompute_grad`` cannot be used, its forward pass stops the
inner tape), trading about one more forward-and-inner-backward per step for the memory. The numbers are
the same up to the order in which the tape adds gradient contributions (<= 7.3e-16 relative in float64,
``parity_tests``).

Example:
    >>> from tf_meta import models, maml
    >>> from dualmeta.episodes import RegressionTasks
    >>> learner = maml.MAML(models.mlp(), inner_lr=0.01)
    >>> metrics = learner.meta_train_step(RegressionTasks(seed=0).batch(0, 4))
    >>> sorted(metrics)
    ['loss']

References: Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks.
ICML 2017.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from dualmeta.episodes import Episode
from tf_meta.core import INNER_REDUCTIONS, Learner, is_classification, task_accuracy, task_loss
from tf_meta.models import functional_call

__all__ = ["MAML"]


def _recomputed(step):
    """``step(*tensors) -> tuple of tensors``, whose backward pass recomputes it instead of storing its graph.

    The forward pass keeps only the inputs; the gradient runs ``step`` again under a tape of its own (the
    step's inner tape nests inside it, so the gradient of the inner gradient is there) and back-propagates
    the upstream gradients through it. Mirror of ``torch.utils.checkpoint(use_reentrant=False)``.
    """
    @tf.custom_gradient
    def run(*inputs):
        def grad(*upstream):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(inputs)
                again = step(*inputs)
            return tape.gradient(again, inputs, output_gradients=list(upstream),
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return step(*inputs), grad
    return run


class MAML(Learner):
    """Model-Agnostic Meta-Learning with k-step SGD inner loops; second order unless ``first_order``."""

    def __init__(self, model, inner_lr: float = 0.4, inner_steps: int = 1, test_inner_steps: int | None = None,
                 first_order: bool = False, meta_lr: float = 1e-3, inner_reduction: str = "mean",
                 meta_optimizer: str = "adam", recompute_steps: bool = False):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer)
        self.recompute_steps = bool(recompute_steps)
        if inner_reduction not in INNER_REDUCTIONS:
            raise ValueError(f"Expected one of {list(INNER_REDUCTIONS)}; received inner_reduction={inner_reduction!r}")
        if inner_steps < 0 or (test_inner_steps is not None and test_inner_steps < 0):
            raise ValueError(f"Expected non-negative inner steps; received inner_steps={inner_steps}, "
                             f"test_inner_steps={test_inner_steps}")
        self.inner_lr, self.inner_steps, self.first_order = float(inner_lr), int(inner_steps), bool(first_order)
        self.test_inner_steps = self.inner_steps if test_inner_steps is None else int(test_inner_steps)
        self.inner_reduction = inner_reduction

    # -- what the inner loop adapts, and how fast ---------------------------------------------------
    # --8<-- [start:what_adapts]
    def adapted_names(self) -> list[str]:
        """Names of the parameters the inner loop updates (all of the model's)."""
        return list(self.model_parameters())

    def inner_rates(self) -> Mapping[str, tf.Tensor | float]:
        """The inner learning rate of each adapted parameter."""
        return {n: self.inner_lr for n in self.adapted_names()}

    def inner_loss(self, outputs: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        loss = task_loss(outputs, targets)
        if self.inner_reduction == "sum_per_shot" and is_classification(targets):
            loss = loss * outputs.shape[-1]  # sum over ways*shots examples / shots = ways * mean
        return loss
    # --8<-- [end:what_adapts]

    # --8<-- [start:inner_loop]
    def _adapt(self, x: tf.Tensor, y: tf.Tensor, steps: int, create_graph: bool,
               batches=None) -> dict[str, tf.Tensor]:
        fast = {n: tf.convert_to_tensor(v) for n, v in self.model_parameters().items()}
        names, rates = self.adapted_names(), self.inner_rates()
        keys, learned = list(fast), [n for n in names if not isinstance(rates[n], float)]
        # Learned rates (Meta-SGD) enter the step as tensors: a custom gradient may not read variables.
        rate_tensors = [tf.convert_to_tensor(rates[n]) for n in learned]

        def step(xb, yb, *tensors):
            weights = dict(zip(keys, tensors[:len(keys)]))
            rate = {**rates, **dict(zip(learned, tensors[len(keys):]))}
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([weights[n] for n in names])
                loss = self.inner_loss(functional_call(self.model, weights, xb), yb)
            grads = tape.gradient(loss, [weights[n] for n in names])
            for n, g in zip(names, grads):
                g = g if create_graph else tf.stop_gradient(g)
                weights[n] = weights[n] - rate[n] * g
            return tuple(weights[k] for k in keys)

        recompute = self.recompute_steps and create_graph
        for i in range(steps):
            xb, yb = (x, y) if batches is None else (tf.gather(x, batches[i]), tf.gather(y, batches[i]))
            if recompute:
                weights = _recomputed(lambda *t, xb=xb, yb=yb: step(xb, yb, *t))(*fast.values(), *rate_tensors)
            else:
                weights = step(xb, yb, *fast.values(), *rate_tensors)
            fast = dict(zip(keys, weights))
        return fast
    # --8<-- [end:inner_loop]

    def _adapted(self, support_x, support_y, steps):
        return self._adapt(support_x, support_y, self.test_inner_steps if steps is None else steps,
                           create_graph=False)

    def adapt(self, episode: Episode, steps: int | None = None) -> dict[str, tf.Tensor]:
        """Adapted weights after ``steps`` (default ``test_inner_steps``) inner steps on the support set."""
        return super().adapt(episode, steps)

    # -- meta-training ------------------------------------------------------------------------------
    def meta_gradients(self, batch: Episode) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Meta-gradient of the mean query loss over the meta-batch (neutral layout) and the metrics."""
        grads, metrics = self._meta_gradients(batch)
        return {n: self.to_neutral(n, g.numpy()) for n, g in grads.items()}, metrics

    def _step_gradients(self, batch: Episode):
        return self._meta_gradients(batch)

    # --8<-- [start:meta_step]
    def _task_gradients(self, sx, sy, qx, qy, variables):
        """Query loss, accuracy and meta-gradient of one task (traced inside the meta-batch loop)."""
        with tf.GradientTape() as tape:
            fast = self._adapt(sx, sy, self.inner_steps, create_graph=not self.first_order)
            out = functional_call(self.model, fast, qx)
            loss = task_loss(out, qy)
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        acc = task_accuracy(out, qy) if is_classification(qy) else tf.zeros((), out.dtype)
        return loss, acc, grads

    def _batch_gradients(self, sx, sy, qx, qy, *extra):
        """Sum over tasks of the per-task meta-gradients / tasks, in a ``tf.range`` loop (short tracing).

        ``extra`` tensors are shared by every task and passed on to ``_task_gradients``."""
        variables = list(self.parameters().values())
        tasks = tf.shape(sx)[0]
        scale = 1.0 / tf.cast(tasks, self.dtype)
        totals = [tf.zeros_like(v) for v in variables]
        loss_sum, acc_sum = tf.zeros((), self.dtype), tf.zeros((), self.dtype)
        for t in tf.range(tasks):
            loss, acc, grads = self._task_gradients(sx[t], sy[t], qx[t], qy[t], variables, *extra)
            totals = [a + g * scale for a, g in zip(totals, grads)]
            loss_sum += loss
            acc_sum += acc
        return totals, loss_sum * scale, acc_sum * scale

    def _meta_gradients(self, batch: Episode, *extra):
        tensors = self._tensors(batch)
        totals, loss, acc = self._compile("meta_gradients", self._batch_gradients)(*tensors, *extra)
        metrics = {"loss": float(loss)}
        if is_classification(tensors[3]):
            metrics["accuracy"] = float(acc)
        return dict(zip(self.parameters(), totals)), metrics

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One meta-update on a stacked meta-batch; returns the mean query loss (and accuracy)."""
        grads, metrics = self._meta_gradients(batch)
        self.optimizer.apply(grads)
        return metrics
    # --8<-- [end:meta_step]
