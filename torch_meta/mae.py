"""Masked autoencoder (image completion), PyTorch side. Mirror of ``tf_meta/mae.py``.

Self-supervised pretraining by completing images: ``dualmeta.pretrain.MaskedBatches`` hides ``mask_ratio``
(0.75) of each image's ``patch x patch`` cells (mask ``m``, 1 = hidden; numpy, by address), the encoder ``f``
reads the image with the hidden pixels set to zero, and a decoder MLP ``d``
(``features -> decoder_hidden -> ReLU -> H*W*C``, the pixels in NHWC order) redraws the whole image; the loss is
the mean squared error over the hidden pixels only:

    r = d(f(x * (1 - m))),   loss = sum(m * (r - x)^2) / sum(m).

(Not He et al.'s ViT MAE: conv4 has no tokens to drop, so the hidden pixels are zeroed instead; the loss on
the hidden part is theirs.) No label is used: a batch is a ``MaskedImages`` (images and masks). At test the
decoder is dropped and a few-shot head reads the encoder's features of whole images (``torch_meta.pretrain``).

Arguments (defaults): ``model`` (a head-less conv4), ``decoder_hidden=256``, ``meta_lr=1e-3``,
``meta_optimizer='adam'``, ``head='prototype'``, ``head_steps=100``, ``head_lr=0.01``, ``seed=0`` (of the
decoder's initial weights). The mask ratio belongs to the batches (``MaskedBatches(mask_ratio=0.75)``).

References: He, Chen, Xie, Li, Dollar, Girshick. Masked Autoencoders Are Scalable Vision Learners. CVPR 2022;
Pathak et al. Context Encoders: Feature Learning by Inpainting. CVPR 2016.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dualmeta import pretrain as neutral
from torch_meta.pretrain import Pretrainer

__all__ = ["MAE"]


class MAE(Pretrainer):
    """Masked-image autoencoding: reconstruct the hidden pixels; no labels."""

    def __init__(self, model, decoder_hidden: int = 256, meta_lr: float = 1e-3, meta_optimizer: str = "adam",
                 head: str = "prototype", head_steps: int = neutral.HEAD_STEPS, head_lr: float = neutral.HEAD_LR,
                 seed: int = 0):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer, head=head,
                         head_steps=head_steps, head_lr=head_lr)
        cfg = model.spec.config
        self.image_shape = (cfg["image_size"], cfg["image_size"], cfg["in_channels"])
        dtype = str(self.dtype).split(".")[-1]
        pixels = int(np.prod(self.image_shape))
        for i, (fan_in, fan_out) in enumerate([(self.features, decoder_hidden), (decoder_hidden, pixels)]):
            init = neutral.classifier_init(fan_out, fan_in, seed + i, dtype)
            self._add(f"decoder.{i}.weight", init["weight"])
            self._add(f"decoder.{i}.bias", init["bias"])

    def reconstruct(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The decoder's images ``(N, H, W, C)`` from ``x`` with the ``mask`` pixels hidden (evaluation mode)."""
        with torch.no_grad():
            return self._decode(self._as_tensor(x) * (1 - self._as_tensor(mask)), training=False).cpu().numpy()

    # --8<-- [start:loss]
    def _decode(self, shown: torch.Tensor, training: bool, update_stats: bool = False) -> torch.Tensor:
        e = self.extra
        h = F.relu(self._encode(shown, training, update_stats) @ e["decoder.0.weight"].T + e["decoder.0.bias"])
        return (h @ e["decoder.1.weight"].T + e["decoder.1.bias"]).reshape((-1,) + self.image_shape)

    def _batch_loss(self, batch, update_stats):
        neutral.check_masked(batch)
        x, mask = self._as_tensor(batch.x), self._as_tensor(batch.mask)
        reconstruction = self._decode(x * (1 - mask), training=True, update_stats=update_stats)
        loss = (mask * (reconstruction - x).square()).sum() / (mask.sum() * x.shape[-1])
        return loss, {}
    # --8<-- [end:loss]
