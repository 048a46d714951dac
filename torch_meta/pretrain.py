"""Pretraining machinery, PyTorch side: an encoder trained on image batches, scored with few-shot heads.

Mirror of ``tf_meta/pretrain.py``. A :class:`Pretrainer` holds a head-less conv4 (``model``, usually
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
import torch
import torch.nn.functional as F

from dualmeta import pretrain as neutral
from torch_meta.core import OPTIMIZERS, Learner, task_accuracy, task_loss
from torch_meta.models import functional_call

__all__ = ["Pretrainer", "normalize", "momentum_sgd"]

NORM_EPS = 1e-12


def normalize(z: torch.Tensor) -> torch.Tensor:
    return z * torch.rsqrt(z.square().sum(dim=-1, keepdim=True) + NORM_EPS)


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
        """A learner tensor (neutral layout, which is PyTorch's) that the optimiser updates."""
        self.extra[name] = torch.tensor(np.asarray(value), dtype=self.dtype, device=self._device,
                                        requires_grad=True)

    # -- the encoder ------------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor, training: bool, update_stats: bool = False,
                params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        if training and update_stats and params is None:
            self.model.train()
            return self.model(x)
        params = dict(self.model.named_parameters()) if params is None else params
        return functional_call(self.model, params, x, training=training)

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Features of numpy images in evaluation mode."""
        with torch.no_grad():
            return self._encode(self._as_tensor(x), training=False).cpu().numpy()

    # -- training ---------------------------------------------------------------------------------------
    def _batch_loss(self, batch, update_stats: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _gradients(self, batch, update_stats: bool):
        params = self.parameters()
        with torch.enable_grad():
            loss, metrics = self._batch_loss(batch, update_stats)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}
        return grads, {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in metrics.items()}}

    def meta_gradients(self, batch) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Gradients of the batch loss (neutral layout) and the metrics; no update, running statistics kept."""
        grads, metrics = self._gradients(batch, update_stats=False)
        return {n: g.cpu().numpy() for n, g in grads.items()}, metrics

    def meta_train_step(self, batch) -> dict[str, float]:
        """One optimiser step on a batch of ``dualmeta.pretrain``; returns the loss (and accuracy)."""
        grads, metrics = self._step_gradients(batch)
        self._apply_gradients(grads)
        return metrics

    def _step_gradients(self, batch):
        return self._gradients(batch, update_stats=True)

    # -- few-shot heads ---------------------------------------------------------------------------------
    def _head_init(self, z: torch.Tensor, onehot: torch.Tensor) -> dict[str, torch.Tensor]:
        ways = onehot.shape[1]
        return {"weight": z.new_zeros((ways, z.shape[1])), "bias": z.new_zeros((ways,))}

    def _head_logits(self, z: torch.Tensor, head: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return z @ head["weight"].T + head["bias"]

    def _fit_head(self, sx: torch.Tensor, sy: torch.Tensor, ways: int, finetune: bool) -> dict:
        """The head (and for ``finetune`` the encoder parameters) after the SGD steps on the support set."""
        onehot = F.one_hot(sy, ways).to(self.dtype)
        encoder = {n: p.detach() for n, p in self.model.named_parameters()}
        with torch.no_grad():
            z = self._encode(sx, training=False)
            head = self._head_init(z, onehot)
        params = {**({f"encoder.{n}": p for n, p in encoder.items()} if finetune else {}),
                  **{f"head.{n}": p for n, p in head.items()}}
        buffers = {n: torch.zeros_like(p) for n, p in params.items()}
        order = torch.as_tensor(neutral.head_batches(len(sy), self.head_steps), device=self._device)
        for rows in order:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
            with torch.enable_grad():
                if finetune:
                    weights = {n[len("encoder."):]: p for n, p in params.items() if n.startswith("encoder.")}
                    features = self._encode(sx[rows], training=False, params=weights)
                else:
                    features = z[rows]
                logits = self._head_logits(features, {n[5:]: p for n, p in params.items() if n.startswith("head.")})
                loss = F.cross_entropy(logits, sy[rows])
                grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
            with torch.no_grad():
                params, buffers = momentum_sgd(params, buffers, grads, self.head_lr, neutral.HEAD_MOMENTUM)
        return {n: p.detach() for n, p in params.items()}

    def adapt(self, episode, steps: int | None = None) -> dict[str, torch.Tensor]:
        """The state ``head`` fits on the support set: ``prototypes``, or ``head.*`` (and ``encoder.*``)."""
        ways = neutral.check_support_classes(episode.support_y)
        sx, sy = self._as_tensor(episode.support_x), self._as_tensor(episode.support_y)
        if self.head == "prototype":
            with torch.no_grad():
                z = normalize(self._encode(sx, training=False))
                onehot = F.one_hot(sy, ways).to(z.dtype)
                return {"prototypes": (onehot.T @ z) / onehot.sum(dim=0)[:, None]}
        return self._fit_head(sx, sy, ways, finetune=self.head == "finetune")

    def predict(self, x: np.ndarray, weights: Mapping[str, torch.Tensor] | None = None) -> np.ndarray:
        """Logits of numpy images against ``weights = adapt(episode)``."""
        if weights is None:
            raise ValueError(f"{type(self).__name__}.predict needs the support state: "
                             "predict(x, learner.adapt(episode))")
        with torch.no_grad():
            return self._scores(self._as_tensor(x), weights).cpu().numpy()

    # --8<-- [start:scores]
    def _scores(self, x: torch.Tensor, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if "prototypes" in state:
            z = normalize(self._encode(x, training=False))
            return -(z[:, None, :] - state["prototypes"][None]).square().sum(dim=-1)
        encoder = {n[len("encoder."):]: p for n, p in state.items() if n.startswith("encoder.")}
        z = self._encode(x, training=False, params=encoder or None)
        return self._head_logits(z, {n[5:]: p for n, p in state.items() if n.startswith("head.")})

    # --8<-- [end:scores]
    def _episode_metrics(self, episode, steps: int | None) -> dict[str, float]:
        state = self.adapt(episode)
        qy = self._as_tensor(episode.query_y)
        with torch.no_grad():
            logits = self._scores(self._as_tensor(episode.query_x), state)
            return {"loss": float(task_loss(logits, qy)), "accuracy": float(task_accuracy(logits, qy))}
