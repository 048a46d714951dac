"""Reptile (Nichol, Achiam, Schulman 2018), TensorFlow side. Mirror of ``torch_meta/reptile.py``.

For each task, ``k`` steps of SGD on the support set from ``theta`` give ``phi``; the meta-update moves
``theta`` towards the adapted weights along the pseudo-gradient ``g = theta - mean_tasks(phi)``. With
``meta_optimizer='sgd'`` (default) and ``meta_lr=eps`` this is the paper's ``theta += eps (mean phi - theta)``.
No second derivatives. Arguments as :class:`tf_meta.maml.MAML` without ``first_order``; defaults
``inner_steps=5``, ``meta_lr=1.0``, ``meta_optimizer='sgd'``. The reported loss is the query loss at ``phi``.
``inner_batch_size``: each training inner step takes a class-balanced minibatch of that many support
examples (:func:`dualmeta.episodes.inner_batches`), as the paper's inner loop, which makes its steps see
different examples of a task (with more training shots than test shots, e.g. 10 for 1-shot Omniglot);
``None`` (default): every step uses the whole support set. Adaptation at test time uses the whole set.

References: Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms. 2018.
"""
from __future__ import annotations

import tensorflow as tf

from dualmeta.episodes import Episode, check_positive, inner_batches
from tf_meta.core import is_classification, task_accuracy, task_loss
from tf_meta.maml import MAML
from tf_meta.models import functional_call

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
        batches = inner_batches(batch.support_y[0], self.inner_batch_size, self.inner_steps)
        return super()._meta_gradients(batch) if batches is None else super()._meta_gradients(batch, batches)

    def _task_gradients(self, sx, sy, qx, qy, variables, batches=None):
        fast = self._adapt(sx, sy, self.inner_steps, create_graph=False, batches=batches)
        names = list(self.parameters())
        grads = [tf.convert_to_tensor(v) - fast[n] for n, v in zip(names, variables)]
        out = functional_call(self.model, fast, qx)
        acc = task_accuracy(out, qy) if is_classification(qy) else tf.zeros((), out.dtype)
        return task_loss(out, qy), acc, grads
# --8<-- [end:learner]
