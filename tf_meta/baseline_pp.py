"""Baseline++ (Chen et al. 2019), TensorFlow side. Mirror of ``torch_meta/baseline_pp.py``.

Baseline with a cosine classifier: the logit of class ``k`` is a scaled cosine between the features and the
class's weight vector,

    logits_k(x) = s * <n(f(x)), n(w_k)>,   n(z) = z / sqrt(|z|^2 + 1e-12),

with a fixed scale ``s = scale`` (the paper's code: 10 for more than 200 classes, 2 otherwise) or, with
``learn_scale=True``, a learned one (``classifier.scale``, starting at ``scale``). No bias. At test the
``linear`` head is a cosine head of the same scale, starting at the normalised support class means;
``prototype`` and ``finetune`` are as for every encoder (``tf_meta.pretrain``).

Arguments (defaults): those of ``Baseline``, and ``scale=10.0``, ``learn_scale=False``.

References: Chen, Liu, Kira, Wang, Huang. A Closer Look at Few-shot Classification. ICLR 2019.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualmeta import pretrain as neutral
from tf_meta.baseline import Baseline
from tf_meta.pretrain import normalize

__all__ = ["BaselinePP"]


class BaselinePP(Baseline):
    """Baseline with a cosine classifier (fixed or learned scale)."""

    def __init__(self, model, num_classes: int, meta_lr: float = 1e-3, meta_optimizer: str = "adam",
                 head: str = "prototype", head_steps: int = neutral.HEAD_STEPS, head_lr: float = neutral.HEAD_LR,
                 seed: int = 0, scale: float = 10.0, learn_scale: bool = False):
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"Expected a positive cosine scale; received scale={scale!r}")
        self.scale, self.learn_scale = float(scale), bool(learn_scale)
        super().__init__(model, num_classes, meta_lr=meta_lr, meta_optimizer=meta_optimizer, head=head,
                         head_steps=head_steps, head_lr=head_lr, seed=seed)

    def _add_bias(self, bias) -> None:  # no bias; a learned scale instead, if asked for
        if self.learn_scale:
            self._add("classifier.scale", np.asarray([self.scale]))  # shape (1,)

    def _scale(self):
        return self.extra["classifier.scale"] if self.learn_scale else self.scale

    # --8<-- [start:cosine]
    def _classify(self, z: tf.Tensor) -> tf.Tensor:
        return self._scale() * tf.matmul(normalize(z), normalize(self.extra["classifier.weight"]), transpose_b=True)

    def _head_init(self, z, onehot):
        return {"weight": tf.matmul(onehot, normalize(z), transpose_a=True) / tf.reduce_sum(onehot, axis=0)[:, None]}

    def _head_logits(self, z, head):
        return self._scale() * tf.matmul(normalize(z), normalize(head["weight"]), transpose_b=True)
    # --8<-- [end:cosine]
