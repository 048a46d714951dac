"""MAML (Finn et al. 2017), PyTorch side. Mirror of ``tf_meta/maml.py``.

Inner loop, for each task, ``k`` steps of SGD on the support loss from the meta-parameters ``theta``:

    phi_0 = theta,    phi_{j+1} = phi_j - alpha * grad L_support(phi_j)

outer loss, the query loss at ``phi_k`` averaged over the meta-batch, minimised over ``theta`` by Adam.
Second order (default): the meta-gradient differentiates through the inner gradients
(``autograd.grad(create_graph=True)``); ``first_order=True`` treats them as constants.

Arguments (defaults): ``model`` (a twin model), ``inner_lr=0.4``, ``inner_steps=1`` (training),
``test_inner_steps=None`` (same as ``inner_steps``), ``first_order=False``, ``meta_lr=1e-3``,
``inner_reduction='mean'`` (``'sum_per_shot'``: the support loss summed and divided by the shots, as in
the original code, i.e. ``ways`` times the mean for classification), ``meta_optimizer='adam'``,
``recompute_steps=False``: second order keeps every inner step's activations and gradient graph until the
meta-gradient, so memory grows with ``inner_steps``; ``True`` keeps only each step's input weights and
recomputes the step during the backward pass (``_Recomputed``, an ``autograd.Function``; not
``torch.utils.checkpoint``, which gives the right numbers here but keeps most of the inner backward's
tensors: measured 25% less memory against 50%), trading one more forward-and-inner-backward per step for
the memory. The numbers are the same bit for bit (``parity_tests``).

Example:
    >>> from torch_meta import models, maml
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
import torch
import torch.nn.functional as F

from dualmeta.allocator import MMAP_THRESHOLD
from dualmeta.episodes import Episode
from dualmeta.twins import largest_map
from torch_meta.core import INNER_REDUCTIONS, Learner, is_classification
from torch_meta.models import _batched_call

__all__ = ["MAML"]


class _Recomputed(torch.autograd.Function):
    """``step(*tensors) -> tuple of tensors`` that stores only its inputs and recomputes itself in backward.

    The forward pass runs ``step`` on detached copies of the inputs and drops its graph; the backward pass
    runs it again under autograd (the inner ``autograd.grad(create_graph=True)`` rebuilds the gradient's
    graph) and back-propagates the upstream gradients through it. Mirror of ``tf_meta.maml._recomputed``.
    """

    @staticmethod
    def forward(ctx, step, *inputs):
        ctx.step = step
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            outputs = step(*[t.detach().requires_grad_(t.requires_grad) for t in inputs])
        return tuple(o.detach() for o in outputs)

    @staticmethod
    def backward(ctx, *upstream):
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            outputs = ctx.step(*inputs)
        wanted = [t for t in inputs if t.requires_grad]
        grads = iter(torch.autograd.grad(outputs, wanted, grad_outputs=upstream, allow_unused=True))
        return (None, *[next(grads) if t.requires_grad else None for t in inputs])


def _per_task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``task_loss`` of each task of a meta-batch: outputs ``(B, N, ...)`` -> ``(B,)``."""
    if is_classification(targets):
        return F.cross_entropy(outputs.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape).mean(1)
    return (outputs - targets).square().flatten(1).mean(1)


def _metrics(outputs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    metrics = {"loss": float(losses.mean())}
    if is_classification(targets):
        metrics["accuracy"] = float((outputs.argmax(-1) == targets).to(outputs.dtype).mean())
    return metrics


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
        return [n for n, _ in self.model.named_parameters()]

    def inner_rates(self) -> Mapping[str, torch.Tensor | float]:
        """The inner learning rate of each adapted parameter."""
        return {n: self.inner_lr for n in self.adapted_names()}

    def inner_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-task support losses ``(B,)`` for outputs ``(B, N, ...)``, with ``inner_reduction`` applied."""
        loss = _per_task_loss(outputs, targets)
        if self.inner_reduction == "sum_per_shot" and is_classification(targets):
            loss = loss * outputs.shape[-1]  # sum over ways*shots examples / shots = ways * mean
        return loss
    # --8<-- [end:what_adapts]

    # --8<-- [start:inner_loop]
    def _adapt(self, x: torch.Tensor, y: torch.Tensor, steps: int, create_graph: bool,
               batches=None) -> dict[str, torch.Tensor]:
        """Inner loops of a meta-batch ``x: (B, N, ...)`` at once: adapted weights with a leading task axis.

        Every task starts from its own view of the meta-parameters (``expand``), so the gradient of the
        summed support losses with respect to those views is each task's own gradient. ``batches``
        (``(steps, b)`` indices from :func:`dualmeta.episodes.inner_batches`): step ``i`` trains on the
        support examples ``batches[i]`` only (Reptile's minibatches); ``None``: on all of them.
        """
        tasks = x.shape[0]
        fast = {n: p.expand((tasks,) + tuple(p.shape)) for n, p in self.model.named_parameters()}
        names, rates = self.adapted_names(), self.inner_rates()
        keys, learned = list(fast), [n for n in names if isinstance(rates[n], torch.Tensor)]
        rate_tensors = [rates[n] for n in learned]  # Meta-SGD's rates: inputs of a recomputed step

        def step(xb, yb, *tensors):
            weights = dict(zip(keys, tensors[:len(keys)]))
            rate = {**rates, **dict(zip(learned, tensors[len(keys):]))}
            loss = self.inner_loss(_batched_call(self.model, weights, xb), yb).sum()
            grads = torch.autograd.grad(loss, [weights[n] for n in names], create_graph=create_graph)
            weights.update((n, weights[n] - rate[n] * g) for n, g in zip(names, grads))
            return tuple(weights[k] for k in keys)

        recompute = self.recompute_steps and create_graph
        for i in range(steps):
            xb, yb = (x, y) if batches is None else (x[:, batches[i]], y[:, batches[i]])
            if recompute:
                weights = _Recomputed.apply(lambda *t, xb=xb, yb=yb: step(xb, yb, *t), *fast.values(), *rate_tensors)
            else:
                weights = step(xb, yb, *fast.values(), *rate_tensors)
            fast = dict(zip(keys, weights))
        return fast
    # --8<-- [end:inner_loop]

    def adapt(self, episode: Episode, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Adapted weights after ``steps`` (default ``test_inner_steps``) inner steps on the support set."""
        sx, sy, _, _ = self._tensors(episode)
        with torch.enable_grad():
            fast = self._adapt(sx[None], sy[None], self.test_inner_steps if steps is None else steps,
                               create_graph=False)
        return {n: t[0].detach() for n, t in fast.items()}

    # -- meta-training ------------------------------------------------------------------------------
    def meta_gradients(self, batch: Episode) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Meta-gradient of the mean query loss over the meta-batch (neutral layout) and the metrics."""
        grads, metrics = self._meta_gradients(batch)
        return {n: g.cpu().numpy() for n, g in grads.items()}, metrics

    def _chunks(self, tasks: int, images: int) -> list[slice]:
        """Groups of tasks run in one graph (grouped convolutions), ``images`` = inputs per task.

        An MLP runs the whole meta-batch at once (small ops: Python overhead dominates). A convnet runs at
        most 8 tasks per group (one 5-way 1-shot 1-query task at a time leaves the step overhead-bound: 0.25 s
        against 0.13-0.15 s for groups of 8, 32 tasks), and only as many as keep the group's largest feature map
        within ``dualmeta.allocator.MMAP_THRESHOLD`` (32 MiB): larger blocks are mapped afresh from the kernel
        on every allocation, page fault by page fault (a whole meta-batch of 80-image tasks ran 1.7x slower
        than groups of 8, whose 28x28 conv4 maps take 32 MB). Second order keeps every inner step's graph of
        a group until its meta-gradient, so ``k`` inner steps divide the group by ``k`` (with or without
        ``recompute_steps``, whose numbers stay bit for bit those of the stored graph). docs/performance.md.
        """
        description = getattr(self.model, "description", None)  # a twin's: vectors (an MLP) or images
        if description is not None and len(description.input_shape) == 1:
            return [slice(0, tasks)]
        per_image = largest_map(description) if description is not None else None
        if per_image:
            size = MMAP_THRESHOLD // (max(images, 1) * per_image * self.dtype.itemsize)
        else:  # a model whose shapes are unknown: about 256 images per group
            size = 256 // max(images, 1)
        if not self.first_order:  # a group keeps the graphs of all its inner steps until its meta-gradient
            size //= max(self.inner_steps, 1)
        size = max(1, min(8, size))
        return [slice(i, min(i + size, tasks)) for i in range(0, tasks, size)]

    def _step_gradients(self, batch: Episode):
        return self._meta_gradients(batch)

    # --8<-- [start:meta_step]
    def _meta_gradients(self, batch: Episode):
        sx, sy, qx, qy = self._tensors(batch)
        params = self.parameters()
        tasks = sx.shape[0]
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        outs, losses = [], []
        for part in self._chunks(tasks, sx.shape[1] + qx.shape[1]):
            fast = self._adapt(sx[part], sy[part], self.inner_steps, create_graph=not self.first_order)
            out = _batched_call(self.model, fast, qx[part])
            loss = _per_task_loss(out, qy[part])
            chunk_grads = torch.autograd.grad(loss.sum() / tasks, list(params.values()), allow_unused=True)
            for n, g in zip(params, chunk_grads):
                if g is not None:
                    grads[n] += g
            outs.append(out.detach())
            losses.append(loss.detach())
        return grads, _metrics(torch.cat(outs), qy, torch.cat(losses))

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One meta-update on a stacked meta-batch; returns the mean query loss (and accuracy)."""
        grads, metrics = self._meta_gradients(batch)
        self.optimizer.apply(grads)
        return metrics
    # --8<-- [end:meta_step]
