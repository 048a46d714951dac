"""Meta-SGD (Li et al. 2017), TensorFlow side. Mirror of ``torch_meta/metasgd.py``.

MAML with a learned inner learning rate for every parameter entry: ``phi = theta - a * grad L_support``
with ``a`` of the same shape as ``theta``, initialised to ``inner_lr`` and meta-learned with ``theta``.
The rates are learner tensors named ``inner_lrs.<parameter name>`` in the neutral format (same layout as
their parameter). Arguments as :class:`tf_meta.maml.MAML`.

References: Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017.
"""
from __future__ import annotations

import tensorflow as tf

from tf_meta.maml import MAML

__all__ = ["MetaSGD"]


# --8<-- [start:learner]
class MetaSGD(MAML):
    """MAML with meta-learned per-parameter inner learning rates."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        kinds = {n: t.kind for n, t in model.spec.tensors.items()}
        for n, param in self.model_parameters().items():
            if n in self.adapted_names():
                self.extra["inner_lrs." + n] = tf.Variable(tf.fill(param.shape, tf.constant(self.inner_lr, param.dtype)),
                                                           name="inner_lrs." + n)
                self.extra_kinds["inner_lrs." + n] = kinds[n]

    def inner_rates(self):
        return {n: self.extra["inner_lrs." + n] for n in self.adapted_names()}
# --8<-- [end:learner]
