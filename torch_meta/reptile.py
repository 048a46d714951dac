"""Reptile (Nichol, Achiam, Schulman 2018), PyTorch side. Mirror of ``tf_meta/reptile.py``.

For each task, ``k`` steps of SGD on the support set from ``theta`` give ``phi``; the meta-update moves
``theta`` towards the adapted weights along the pseudo-gradient ``g = theta - mean_tasks(phi)``. With
``meta_optimizer='sgd'`` (default) and ``meta_lr=eps`` this is the paper's ``theta += eps (mean phi - theta)``.
No second derivatives. Arguments as :class:`torch_meta.maml.MAML` without ``first_order``; defaults
``inner_steps=5``, ``meta_lr=1.0``, ``meta_optimizer='sgd'``. The reported loss is the query loss at ``phi``.
``inner_batch_size``: each training inner step takes a class-balanced minibatch of that many support
examples (:func:`dualmeta.episodes.inner_batches`), as the paper's inner loop, which makes its steps see
different examples of a task (with more training shots than test shots, e.g. 10 for 1-shot Omniglot);
``None`` (default): every step uses the whole support set. Adaptation at test time uses the whole set.

References: Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018.
"""
from __future__ import annotations

import torch

from dualmeta.episodes import Episode, check_positive, inner_batches
from torch_meta.maml import MAML, _metrics, _per_task_loss
from torch_meta.models import _batched_call

__all__ = ["Reptile"]


# --8<-- [start:learner]
class Reptile(MAML):
    """Reptile: move the initialisation towards each task's adapted weights."""

    def __init__(self, model, inner_lr: float = 0.4, inner_steps: int = 5, test_inner_steps: int | None = None,
                 meta_lr: float = 1.0, inner_reduction: str = "mean", meta_optimizer: str = "sgd",
                 inner_batch_size: int | None = None):
        super().__init__(model, inner_lr, inner_steps, test_inner_steps, first_order=True, meta_lr=meta_lr,
                         inner_reduction=inner_reduction, meta_optimizer=meta_optimizer)
        if inner_batch_size is not None:
            check_positive(inner_batch_size=inner_batch_size)
        self.inner_batch_size = inner_batch_size

    def _meta_gradients(self, batch: Episode):
        sx, sy, qx, qy = self._tensors(batch)
        params = self.parameters()
        tasks = sx.shape[0]
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        batches = inner_batches(batch.support_y[0], self.inner_batch_size, self.inner_steps)
        batches = None if batches is None else torch.as_tensor(batches, device=sx.device)
        outs, losses = [], []
        for part in self._chunks(tasks, sx.shape[1] + qx.shape[1]):
            with torch.enable_grad():
                fast = self._adapt(sx[part], sy[part], self.inner_steps, create_graph=False, batches=batches)
            with torch.no_grad():
                for n, p in params.items():
                    grads[n] += (p - fast[n]).sum(0) / tasks
                out = _batched_call(self.model, fast, qx[part])
                outs.append(out)
                losses.append(_per_task_loss(out, qy[part]))
        return grads, _metrics(torch.cat(outs), qy, torch.cat(losses))
# --8<-- [end:learner]
