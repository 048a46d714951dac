"""The hand-written TensorFlow conv4 that ``dualmeta.twins.conv4`` replaced (main at a13888f~1), kept as the
reference of ``test_twins.py::test_description_conv4_matches_the_hand_written_one_bit_for_bit``.

Only the structure that decides the bits is kept: one Keras layer per convolution (explicit padding, then a
``'VALID'`` convolution), the exact batch norm and the dense layer of ``tf_meta.models`` (unchanged by the
move), the activation, the downsampling and the head, in the order the hand-written twin called them. Its
variables are created in that twin's order (all convolutions, then all norms, then the classifier).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from dualmeta import weights as neutral
from tf_meta import models

_ACTIVATIONS = {"relu": tf.nn.relu, "softplus": tf.nn.softplus}


class _Conv(models._Param):
    def __init__(self, spec, prefix, stride: int, **kwargs):
        super().__init__(spec, prefix, **kwargs)
        self.stride = stride

    def call(self, x):
        x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return tf.nn.conv2d(x, self.weight, strides=self.stride, padding="VALID")


class Conv4(models._Weights, keras.Model):
    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(name="conv4", **kwargs)
        self.spec, cfg, policy = spec, spec.config, self.dtype_policy
        stride = 2 if cfg["downsample"] == "stride" else 1
        self.convs = [_Conv(spec, f"blocks.{i}.conv", stride, dtype=policy) for i in range(cfg["blocks"])]
        self.norms = [models.BatchNorm(spec, f"blocks.{i}.norm", dtype=policy) for i in range(cfg["blocks"])]
        self.head = models._Dense(spec, "head", dtype=policy) if cfg["num_classes"] is not None else None
        self._param_layers = self.convs + self.norms + ([self.head] if self.head is not None else [])
        self.activation = _ACTIVATIONS[cfg["activation"]]

    def call(self, x, training=False, stats_rows=None):
        for conv, norm in zip(self.convs, self.norms):
            x = self.activation(norm(conv(x), training=training, stats_rows=stats_rows))
            if self.spec.config["downsample"] == "maxpool":
                x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        if self.spec.config["head"] == "flatten":
            x = tf.transpose(x, (0, 3, 1, 2))
            x = tf.reshape(x, (tf.shape(x)[0], -1))
        else:
            x = tf.reduce_mean(x, axis=(1, 2))
        return x if self.head is None else self.head(x)


def conv4(dtype: str = "float32", **config) -> Conv4:
    """The hand-written twin of ``dualmeta.weights.conv4_spec(**config)``, neutral initial weights (seed 0)."""
    spec = neutral.conv4_spec(**config)
    model = Conv4(spec, dtype=dtype)
    size, channels = spec.config["image_size"], spec.config["in_channels"]
    model(tf.zeros((2, size, size, channels), dtype=dtype))
    model.set_weights(neutral.initialize(spec, seed=0, dtype=dtype))
    return model
