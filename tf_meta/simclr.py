"""SimCLR (Chen et al. 2020), TensorFlow side. Mirror of ``torch_meta/simclr.py``.

Self-supervised pretraining: each image of a batch of ``N`` is augmented twice (``dualmeta.pretrain.ViewBatches``:
random resized crop and a small rotation, in numpy, by address), the ``2N`` views go through the encoder ``f``
and a projection MLP ``g`` (``features -> projection_hidden -> ReLU -> projection_dim``), and the NT-Xent loss
pulls the two views of an image together and pushes the other ``2N - 2`` views away:

    z_i = n(g(f(v_i))),   s_ij = <z_i, z_j> / tau,
    loss = mean_i [ -s_{i,p(i)} + log sum_{j != i} exp(s_ij) ],   p(i) = the other view of i's image,

``n(z) = z / sqrt(|z|^2 + 1e-12)``, ``tau = temperature``. The self-similarity ``s_ii`` is removed by
subtracting 1e4 from it (``exp`` underflows to exactly 0 in both backends). No label is used: a batch is a
``ViewPair`` (two view arrays, nothing else), and ``meta_train_step`` refuses anything that carries labels.
The reported ``accuracy`` is how often the other view is the most similar one. At test the projection is
dropped and a few-shot head reads the encoder's features (``tf_meta.pretrain``).

Arguments (defaults): ``model`` (a head-less conv4), ``temperature=0.5``, ``projection_hidden=128``,
``projection_dim=64``, ``meta_lr=1e-3``, ``meta_optimizer='adam'``, ``head='prototype'``, ``head_steps=100``,
``head_lr=0.01``, ``seed=0`` (of the projection's initial weights).

References: Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual
Representations. ICML 2020.
"""
from __future__ import annotations

import tensorflow as tf

from dualmeta import pretrain as neutral
from tf_meta.core import as_tensor
from tf_meta.pretrain import Pretrainer, normalize

__all__ = ["SimCLR", "SELF_SIMILARITY_OFFSET"]

SELF_SIMILARITY_OFFSET = 1e4


class SimCLR(Pretrainer):
    """Contrastive pretraining of the encoder on two augmented views per image; no labels."""

    def __init__(self, model, temperature: float = 0.5, projection_hidden: int = 128, projection_dim: int = 64,
                 meta_lr: float = 1e-3, meta_optimizer: str = "adam", head: str = "prototype",
                 head_steps: int = neutral.HEAD_STEPS, head_lr: float = neutral.HEAD_LR, seed: int = 0):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer, head=head,
                         head_steps=head_steps, head_lr=head_lr)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"Expected a positive temperature; received temperature={temperature!r}")
        self.temperature = float(temperature)
        for i, (fan_in, fan_out) in enumerate([(self.features, projection_hidden), (projection_hidden, projection_dim)]):
            init = neutral.classifier_init(fan_out, fan_in, seed + i, self.dtype.name)
            self._add(f"projection.{i}.weight", init["weight"])
            self._add(f"projection.{i}.bias", init["bias"])

    def _project(self, h: tf.Tensor) -> tf.Tensor:
        e = self.extra
        h = tf.nn.relu(tf.matmul(h, e["projection.0.weight"], transpose_b=True) + e["projection.0.bias"])
        return tf.matmul(h, e["projection.1.weight"], transpose_b=True) + e["projection.1.bias"]

    def _inputs(self, batch):
        neutral.check_views(batch)
        return (as_tensor(neutral.stack_views(batch), self.dtype),)

    # --8<-- [start:nt_xent]
    def _batch_loss(self, inputs, update_stats):
        (views,) = inputs
        n = views.shape[0] // 2
        z = normalize(self._project(self._encode(views, training=True, update_stats=update_stats)))
        eye = tf.eye(2 * n, dtype=z.dtype)
        logits = tf.matmul(z, z, transpose_b=True) / self.temperature - SELF_SIMILARITY_OFFSET * eye
        targets = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets), z.dtype))
        return loss, {"accuracy": accuracy}
    # --8<-- [end:nt_xent]
