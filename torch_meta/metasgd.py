"""Meta-SGD (Li et al. 2017), PyTorch side. Mirror of ``tf_meta/metasgd.py``.

MAML with a learned inner learning rate for every parameter entry: ``phi = theta - a * grad L_support``
with ``a`` of the same shape as ``theta``, initialised to ``inner_lr`` and meta-learned with ``theta``.
The rates are learner tensors named ``inner_lrs.<parameter name>`` in the neutral format (same layout as
their parameter). Arguments as :class:`torch_meta.maml.MAML`.

References: Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot Learning. 2017.
"""
from __future__ import annotations

import torch

from torch_meta.maml import MAML

__all__ = ["MetaSGD"]


# --8<-- [start:learner]
class MetaSGD(MAML):
    """MAML with meta-learned per-parameter inner learning rates."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        for n in self.adapted_names():
            param = dict(model.named_parameters())[n]
            self.extra["inner_lrs." + n] = torch.full_like(param, self.inner_lr).requires_grad_(True)

    def inner_rates(self):
        return {n: self.extra["inner_lrs." + n] for n in self.adapted_names()}
# --8<-- [end:learner]
