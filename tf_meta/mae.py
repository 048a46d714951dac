"""Masked autoencoder (image completion), TensorFlow side. Mirror of ``torch_meta/mae.py``.

Self-supervised pretraining by completing images: ``dualmeta.pretrain.MaskedBatches`` hides ``mask_ratio``
(0.75) of each image's ``patch x patch`` cells (mask ``m``, 1 = hidden; numpy, by address), the encoder ``f``
reads the image with the hidden pixels set to zero, and a decoder MLP ``d``
(``features -> decoder_hidden -> ReLU -> H*W*C``, the pixels in NHWC order) redraws the whole image; the loss is
the mean squared error over the hidden pixels only:

    r = d(f(x * (1 - m))),   loss = sum(m * (r - x)^2) / sum(m).

(Not He et al.'s ViT MAE: conv4 has no tokens to drop, so the hidden pixels are zeroed instead; the loss on
the hidden part is theirs.) No label is used: a batch is a ``MaskedImages`` (images and masks). At test the
decoder is dropped and a few-shot head reads the encoder's features of whole images (``tf_meta.pretrain``).

Arguments (defaults): ``model`` (a head-less conv4), ``decoder_hidden=256``, ``meta_lr=1e-3``,
``meta_optimizer='adam'``, ``head='prototype'``, ``head_steps=100``, ``head_lr=0.01``, ``seed=0`` (of the
decoder's initial weights). The mask ratio belongs to the batches (``MaskedBatches(mask_ratio=0.75)``).

References: He, Chen, Xie, Li, Dollar, Girshick. Masked Autoencoders Are Scalable Vision Learners. CVPR 2022;
Pathak et al. Context Encoders: Feature Learning by Inpainting. CVPR 2016.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from dualmeta import pretrain as neutral
from tf_meta.core import as_tensor
from tf_meta.pretrain import Pretrainer

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
        pixels = int(np.prod(self.image_shape))
        for i, (fan_in, fan_out) in enumerate([(self.features, decoder_hidden), (decoder_hidden, pixels)]):
            init = neutral.classifier_init(fan_out, fan_in, seed + i, self.dtype.name)
            self._add(f"decoder.{i}.weight", init["weight"])
            self._add(f"decoder.{i}.bias", init["bias"])

    def reconstruct(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The decoder's images ``(N, H, W, C)`` from ``x`` with the ``mask`` pixels hidden (evaluation mode)."""
        shown = as_tensor(x, self.dtype) * (1 - as_tensor(mask, self.dtype))
        return self._compile("reconstruct", lambda s: self._decode(s, training=False))(shown).numpy()

    # --8<-- [start:loss]
    def _decode(self, shown: tf.Tensor, training: bool, update_stats: bool = False) -> tf.Tensor:
        e = self.extra
        h = tf.nn.relu(tf.matmul(self._encode(shown, training, update_stats), e["decoder.0.weight"], transpose_b=True)
                       + e["decoder.0.bias"])
        out = tf.matmul(h, e["decoder.1.weight"], transpose_b=True) + e["decoder.1.bias"]
        return tf.reshape(out, (-1,) + self.image_shape)

    def _inputs(self, batch):
        neutral.check_masked(batch)
        return as_tensor(batch.x, self.dtype), as_tensor(batch.mask, self.dtype)

    def _batch_loss(self, inputs, update_stats):
        x, mask = inputs
        reconstruction = self._decode(x * (1 - mask), training=True, update_stats=update_stats)
        loss = tf.reduce_sum(mask * tf.square(reconstruction - x)) / (tf.reduce_sum(mask) * x.shape[-1])
        return loss, {}
    # --8<-- [end:loss]
