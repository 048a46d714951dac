"""Baseline (Chen et al. 2019), PyTorch side. Mirror of ``tf_meta/baseline.py``.

Transfer learning: the encoder ``f`` and a linear classifier over *all* training classes are trained with
softmax cross-entropy on minibatches of ``dualmeta.pretrain.ClassBatches`` (global class ids):

    logits(x) = W f(x) + b,    W: (num_classes, features),  loss = mean CE(logits, y)

minimised with Adam (PyTorch's formula, ``core.Optimizer``). At test the classifier is dropped, the encoder
frozen, and a head is fitted on each episode's support set (``head``: ``'linear'`` - the paper's 100 SGD
steps, momentum 0.9, batch 4 -, ``'prototype'`` - nearest normalised centroid -, or ``'finetune'``; see
``torch_meta.pretrain``). The classifier's initial weights come from ``dualmeta.pretrain.classifier_init``
(seeded numpy, identical in both backends); it is stored as ``classifier.weight`` / ``classifier.bias``.

Arguments (defaults): ``model`` (a head-less conv4), ``num_classes`` (training classes; 4112 for the Vinyals
split with rotations), ``meta_lr=1e-3``, ``meta_optimizer='adam'``, ``head='prototype'``, ``head_steps=100``,
``head_lr=0.01``, ``seed=0`` (of the classifier's initial weights).

Example:
    >>> import numpy as np
    >>> from dualmeta.episodes import ClassDataset, ClassificationTasks
    >>> from dualmeta.pretrain import ClassBatches
    >>> from torch_meta import baseline, models
    >>> data = ClassDataset.from_grouped(np.random.default_rng(0).random((6, 4, 16, 16), dtype=np.float32))
    >>> learner = baseline.Baseline(models.conv4(hidden=4, downsample="maxpool", image_size=16, blocks=2,
    ...                                          track_running_stats=True), num_classes=6)
    >>> sorted(learner.meta_train_step(ClassBatches(data, seed=0).batch(0, 8)))
    ['accuracy', 'loss']

References: Chen, Liu, Kira, Wang, Huang. A Closer Look at Few-shot Classification. ICLR 2019.
"""
from __future__ import annotations

import torch

from dualmeta import pretrain as neutral
from torch_meta.core import task_accuracy, task_loss
from torch_meta.pretrain import Pretrainer

__all__ = ["Baseline"]


class Baseline(Pretrainer):
    """Supervised pretraining with a linear classifier over all training classes; few-shot heads at test."""

    def __init__(self, model, num_classes: int, meta_lr: float = 1e-3, meta_optimizer: str = "adam",
                 head: str = "prototype", head_steps: int = neutral.HEAD_STEPS, head_lr: float = neutral.HEAD_LR,
                 seed: int = 0):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer, head=head,
                         head_steps=head_steps, head_lr=head_lr)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Expected num_classes >= 2 (the training classes); received num_classes={num_classes!r}")
        self.num_classes = num_classes
        init = neutral.classifier_init(num_classes, self.features, seed, str(self.dtype).split(".")[-1])
        self._add("classifier.weight", init["weight"])
        self._add_bias(init["bias"])

    def _add_bias(self, bias) -> None:
        self._add("classifier.bias", bias)

    # --8<-- [start:loss]
    def _classify(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.extra["classifier.weight"].T + self.extra["classifier.bias"]

    def _batch_loss(self, batch, update_stats):
        neutral.check_class_ids(batch.y, self.num_classes)  # on the numpy ids: no device sync per step
        x, y = self._as_tensor(batch.x), self._as_tensor(batch.y)
        logits = self._classify(self._encode(x, training=True, update_stats=update_stats))
        return task_loss(logits, y), {"accuracy": task_accuracy(logits.detach(), y)}
    # --8<-- [end:loss]
