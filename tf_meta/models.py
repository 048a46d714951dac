"""Twin models, TensorFlow side: Keras 3 models built from ``dualmeta.twins`` descriptions, in the neutral format.

``mlp`` and ``conv4`` are the built-in descriptions (``dualmeta.twins.mlp``, ``dualmeta.twins.conv4``) built
by :class:`Twin`, like ``resnet12`` and a user's own; :class:`MLP` and :class:`Conv4` name them.

Mirror of ``torch_meta/models.py``: the same builders, arguments, parameter names and numbers. Keras
keeps its own layouts (HWIO convolution kernels, (in, out) dense kernels, NHWC maps); ``get_weights`` and
``set_weights`` convert to and from the neutral layouts (OIHW, (out, in)) of ``dualmeta.weights``.

Pinned so that both backends compute the same function:

* convolutions pad explicitly by 1 on every side and then use ``'VALID'`` (Keras' ``'same'`` with
  stride 2 on an even input pads (0, 1), PyTorch's ``padding=1`` pads (1, 1));
* batch norm is :class:`BatchNorm`, not ``keras.layers.BatchNormalization`` (whose variance stops the
  gradient through the mean, which makes MAML's second-order meta-gradient wrong), with eps=1e-5 and an
  update-rate momentum of 0.1 (PyTorch's meaning; Keras' own layer uses eps=1e-3 and a keep-rate of 0.99);
* the flatten head transposes the NHWC map to NCHW first, so features come in (C, H, W) order.
"""
from __future__ import annotations

from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from dualmeta import twins as T
from dualmeta import weights as neutral

__all__ = ["BatchNorm", "MLP", "Conv4", "mlp", "conv4", "functional_call", "NORM_EPS", "NORM_MOMENTUM", "Twin", "build",
           "resnet12", "description"]

NORM_EPS = 1e-5
NORM_MOMENTUM = 0.1  # update rate: running = (1 - momentum) * running + momentum * batch_statistic

# Neutral <-> Keras layouts, by tensor kind.
# 'conv1d' (SNAIL's causal convolutions): neutral (out, in, k) as torch's Conv1d, Keras' Conv1D (k, in, out).
_TO_NEUTRAL = {"conv": lambda w: np.transpose(w, (3, 2, 0, 1)), "dense": lambda w: np.transpose(w),
               "conv1d": lambda w: np.transpose(w, (2, 1, 0))}
_FROM_NEUTRAL = {"conv": lambda w: np.transpose(w, (2, 3, 1, 0)), "dense": lambda w: np.transpose(w),
                 "conv1d": lambda w: np.transpose(w, (2, 1, 0))}


def _keras_shape(tensor: neutral.TensorSpec) -> tuple[int, ...]:
    shape = tensor.shape
    if tensor.kind == "conv":
        return (shape[2], shape[3], shape[1], shape[0])
    if tensor.kind == "dense":
        return (shape[1], shape[0])
    if tensor.kind == "conv1d":
        return (shape[2], shape[1], shape[0])
    return shape


class _Param(keras.layers.Layer):
    """A layer that owns the tensors of one neutral prefix (e.g. ``blocks.0.conv``)."""

    def __init__(self, spec: neutral.ModelSpec, prefix: str, **kwargs):
        super().__init__(name=prefix.replace(".", "_"), **kwargs)
        self.neutral = {}  # suffix -> (neutral name, TensorSpec)
        for name, tensor in spec.tensors.items():
            if name.rsplit(".", 1)[0] == prefix:
                self.neutral[name.rsplit(".", 1)[1]] = (name, tensor)
        for suffix, (name, tensor) in self.neutral.items():
            initializer = {"norm_weight": "ones", "running_var": "ones", "norm_bias": "zeros",
                           "running_mean": "zeros", "bias": "zeros"}.get(tensor.kind, "glorot_uniform")
            setattr(self, suffix, self.add_weight(shape=_keras_shape(tensor), initializer=initializer,
                                                  trainable=tensor.trainable, name=suffix))
        self.built = True  # its weights exist now; a twin reads them without calling the layer


class _Conv(_Param):
    """A ``dualmeta.twins.Conv2d``: explicit zero padding, then a ``'VALID'`` convolution (and its bias).

    Called as a Keras layer, not inlined in ``Twin._run``: the hand-written conv4 did so, and inlining the
    convolution moved some TF conv-kernel meta-gradients by one ulp (the layer call puts ops of its own in
    the graph TensorFlow differentiates, which can change the order in which a gradient sums its parts).
    Measured with ``parity_tests/record_revision.py``; ``parity_tests/test_twins.py`` guards it."""

    def __init__(self, spec, layer, **kwargs):
        super().__init__(spec, layer.name, **kwargs)
        self.stride, self.padding, self.has_bias = layer.stride, layer.padding, layer.bias

    def call(self, x):
        p = self.padding
        if p:
            x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
        x = tf.nn.conv2d(x, self.weight, strides=self.stride, padding="VALID")
        return x + self.bias if self.has_bias else x


class _Dense(_Param):
    """A ``dualmeta.twins.Dense``: ``x @ weight + bias`` (Keras' (in, out) kernel)."""

    def call(self, x):
        return tf.matmul(x, self.weight) + self.bias


class BatchNorm(_Param):
    """Batch normalisation over (N, H, W) that is exact at second order.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased batch variance
    ``var = mean((x - mean)^2)``; the gradient flows through both statistics. Running statistics (with
    the unbiased variance, as in PyTorch) are kept only if the model tracks them, and used in inference.
    ``stats_rows=n`` takes the batch statistics from the first ``n`` rows only and applies them to every
    row (support-set statistics at test: see ``Learner.test_norm``); running statistics are not updated then.
    """

    def __init__(self, spec, prefix, eps: float = NORM_EPS, momentum: float = NORM_MOMENTUM, **kwargs):
        super().__init__(spec, prefix, **kwargs)
        self.eps, self.momentum = eps, momentum
        self.track_running_stats = "running_mean" in self.neutral

    def call(self, x, training=False, stats_rows=None):
        if stats_rows is not None and (training or not self.track_running_stats):
            ref = x[:stats_rows]  # statistics of the first rows only; no running update
            mean = tf.reduce_mean(ref, axis=(0, 1, 2), keepdims=True)
            var = tf.reduce_mean(tf.square(ref - mean), axis=(0, 1, 2), keepdims=True)
        elif training or not self.track_running_stats:
            mean = tf.reduce_mean(x, axis=(0, 1, 2), keepdims=True)
            var = tf.reduce_mean(tf.square(x - mean), axis=(0, 1, 2), keepdims=True)
            if training and self.track_running_stats:
                n = tf.cast(tf.size(x) // tf.shape(x)[-1], x.dtype)
                m = self.momentum
                self.running_mean.assign((1 - m) * self.running_mean + m * tf.reshape(mean, [-1]))
                unbiased = tf.reshape(var, [-1]) * n / tf.maximum(n - 1, 1)
                self.running_var.assign((1 - m) * self.running_var + m * unbiased)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * tf.math.rsqrt(var + self.eps) * self.weight + self.bias


class _Weights:
    """Neutral-format conversion shared by the twin models."""
    spec: neutral.ModelSpec

    def neutral_variables(self) -> dict[str, keras.Variable]:
        """Neutral name -> Keras variable (in Keras layout), in the spec's order."""
        found = {}
        for layer in self._param_layers:
            for suffix, (name, _) in layer.neutral.items():
                found[name] = getattr(layer, suffix)
        return {name: found[name] for name in self.spec.tensors}

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer under its neutral name and layout, as numpy arrays.

        Note: this replaces ``keras.Model.get_weights`` (a list) with the neutral dict.
        """
        out = {}
        for name, variable in self.neutral_variables().items():
            value = np.asarray(variable.numpy())
            out[name] = np.ascontiguousarray(_TO_NEUTRAL.get(self.spec.tensors[name].kind, np.copy)(value))
        return out

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Loads neutral weights (all of them, exact names and shapes) into the model."""
        neutral.check_weights({k: v.shape for k, v in self.spec.tensors.items()}, weights)
        for name, variable in self.neutral_variables().items():
            value = _FROM_NEUTRAL.get(self.spec.tensors[name].kind, np.asarray)(np.asarray(weights[name]))
            variable.assign(np.asarray(value, dtype=variable.dtype))


def _build(model: keras.Model, example_shape: tuple[int, ...], init: str, seed: int, dtype: str):
    model(np.zeros((2,) + example_shape, dtype=dtype))  # creates the variables
    if init == "neutral":
        model.set_weights(neutral.initialize(model.spec, seed=seed, dtype=dtype))
    elif init != "native":
        raise ValueError(f"Expected one of ['native', 'neutral']; received init={init!r}")
    return model


def mlp(in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1,
        dtype: str = "float32", init: str = "neutral", seed: int = 0, activation: str = "relu") -> MLP:
    """Builds the MLP of ``dualmeta.weights.mlp_spec``.

    ``init='neutral'`` loads ``dualmeta.weights.initialize(spec, seed)`` (identical in both backends);
    ``init='native'`` keeps the framework's own initialiser.
    """
    spec = neutral.mlp_spec(in_features, tuple(hidden), out_features, activation)
    return _build(MLP(spec, dtype=neutral.check_dtype(dtype)), (in_features,), init, seed, dtype)


def conv4(in_channels: int = 1, hidden: int = 64, num_classes: int | None = None,
          downsample: str = "stride", head: str = "flatten", image_size: int = 28, blocks: int = 4,
          track_running_stats: bool = False, dtype: str = "float32", init: str = "neutral",
          seed: int = 0, activation: str = "relu") -> Conv4:
    """Builds the conv4 backbone of ``dualmeta.weights.conv4_spec`` (see there for the arguments)."""
    spec = neutral.conv4_spec(in_channels, hidden, num_classes, downsample, head, image_size, blocks,
                              track_running_stats, activation)
    model = Conv4(spec, dtype=neutral.check_dtype(dtype))
    return _build(model, (image_size, image_size, in_channels), init, seed, dtype)


def functional_call(model: keras.Model, params: Mapping[str, tf.Tensor], x: tf.Tensor,
                    training: bool = True, stats_rows: int | None = None, drop=None) -> tf.Tensor:
    """Runs ``model`` on ``x`` with ``params`` (neutral names, Keras layouts) in place of its variables.

    Uses Keras' ``stateless_call``. Batch norm uses batch statistics when ``training``; the running
    statistics it would update are discarded, so the call is a pure function of ``params`` and ``x``.
    ``stats_rows=n``: batch statistics from the first ``n`` rows of ``x`` only (a model without running
    statistics). ``drop``: DropBlock masks (a twin's ``call``).
    """
    names = {id(variable): name for name, variable in model.neutral_variables().items()}
    trainable = [params[names[id(v)]] if names[id(v)] in params else v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    kwargs = {} if stats_rows is None else {"stats_rows": int(stats_rows)}
    if drop:
        kwargs["drop"] = drop
    outputs, _ = model.stateless_call(trainable, non_trainable, x, training=training, **kwargs)
    return outputs


# -- twins from a neutral description (dualmeta.twins) ------------------------------------------------------
_TWIN_ACTIVATIONS = {"relu": lambda x, layer: tf.nn.relu(x), "softplus": lambda x, layer: tf.nn.softplus(x),
                     # not tf.nn.leaky_relu: its alpha is a float32 attribute (0.1 -> 0.100000001), off by 1e-9
                     # in float64; torch keeps the slope in double. Slope at 0 as in torch (x > 0 ? x : slope x).
                     "leaky_relu": lambda x, layer: tf.where(x > 0, x, x * layer.slope)}


class Twin(_Weights, keras.Model):
    """A model built from a ``dualmeta.twins.Description``: neutral names, NHWC images, Keras layouts inside.

    ``call(x, training=False, stats_rows=None)``; ``probe`` collects ``(layer name, output)`` of every layer
    (Keras copies list arguments, so the sink is a plain attribute), which ``dualmeta check-model`` compares.
    """

    def __init__(self, description, **kwargs):
        super().__init__(name=description.name, **kwargs)
        self.description, self.spec = description, description.spec()
        self._owners = {}
        self._make(description.layers)
        self._param_layers = list(self._owners.values())

    def _make(self, layers):
        policy = self.dtype_policy
        for layer in layers:
            if isinstance(layer, T.Conv2d):
                self._owners[layer.name] = _Conv(self.spec, layer, dtype=policy)
            elif isinstance(layer, T.Dense):
                self._owners[layer.name] = _Dense(self.spec, layer.name, dtype=policy)
            elif isinstance(layer, T.BatchNorm):
                self._owners[layer.name] = BatchNorm(self.spec, layer.name, dtype=policy)
            elif isinstance(layer, T.Residual):
                self._make(layer.body)
                self._make(layer.shortcut)

    def _run(self, layers, x, training, stats_rows, trace, prefix="", drop=None):
        """``layers`` on NHWC (or flat) ``x``; ``drop`` maps DropBlock names to their NHWC masks (a DropBlock
        without one is the identity)."""
        for label, layer in zip(T.layer_names(layers, prefix), layers):
            if isinstance(layer, (T.Conv2d, T.Dense)):
                x = self._owners[layer.name](x)
            elif isinstance(layer, T.BatchNorm):
                x = self._owners[layer.name](x, training=training, stats_rows=stats_rows)
            elif isinstance(layer, T.Activation):
                x = _TWIN_ACTIVATIONS[layer.kind](x, layer)
            elif isinstance(layer, T.MaxPool):
                x = tf.nn.max_pool2d(x, layer.size, layer.size, "VALID")
            elif isinstance(layer, T.Flatten):
                x = tf.transpose(x, (0, 3, 1, 2))  # NHWC -> NCHW: the neutral (C, H, W) flatten order
                x = tf.reshape(x, (tf.shape(x)[0], -1))
            elif isinstance(layer, T.GlobalMean):
                x = tf.reduce_mean(x, axis=(1, 2))
            elif isinstance(layer, T.Residual):
                body = self._run(layer.body, x, training, stats_rows, trace, label + ".", drop)
                x = body + (self._run(layer.shortcut, x, training, stats_rows, trace, label + ".shortcut.", drop)
                            if layer.shortcut else x)
            elif isinstance(layer, T.DropBlock):
                if drop and layer.name in drop:
                    x = x * drop[layer.name]
            elif isinstance(layer, T.Function):
                x = T.resolve(layer.tf)(x)
            if trace is not None:
                trace.append((label, x))
        return x

    def call(self, x, training=False, stats_rows=None, drop=None):
        """``drop``: DropBlock masks by layer name, NHWC (``dualmeta.twins.drop_masks``); none: no drop."""
        return self._run(self.description.layers, x, training, stats_rows, self.__dict__.get("_trace_sink"),
                         drop=drop)

    def embed(self, x, training=False, stats_rows=None):
        """The features before the classifier: every layer but a last ``Dense`` named ``head``."""
        return self._run(self.description.features(), x, training, stats_rows, None)


class MLP(Twin):
    """The built-in MLP, ``in -> hidden... -> out`` (``dualmeta.twins.mlp``), from its ``dualmeta.weights`` spec."""

    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(T.mlp(**spec.config), **kwargs)


class Conv4(Twin):
    """The built-in conv4 (``dualmeta.twins.conv4``): blocks of (3x3 conv, batch norm, activation, downsample),
    a flatten or mean head, an optional classifier; from its ``dualmeta.weights`` spec. ``call`` takes NHWC
    images and returns logits, or embeddings when there is no classifier."""

    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(T.conv4(**spec.config), **kwargs)


def build(description, dtype: str = "float32", init: str = "neutral", seed: int = 0) -> Twin:
    """The Keras twin of a ``dualmeta.twins.Description`` (neutral initial weights from ``seed``)."""
    model = Twin(description, dtype=neutral.check_dtype(dtype))
    return _build(model, tuple(description.input_shape), init, seed, dtype)


def resnet12(in_channels: int = 3, channels: tuple[int, ...] = (64, 160, 320, 640), num_classes: int | None = None,
             image_size: int = 84, track_running_stats: bool = False, slope: float = 0.1, drop_rate: float = 0.0,
             drop_block: int = 5, dtype: str = "float32", init: str = "neutral", seed: int = 0) -> Twin:
    """ResNet-12 of ``dualmeta.twins.resnet12`` (see there for the arguments)."""
    return build(T.resnet12(in_channels, tuple(channels), num_classes, image_size, track_running_stats, slope,
                            drop_rate, drop_block), dtype, init, seed)


def description(path: str, num_classes: int | None = None, in_channels: int = 1, image_size: int = 28,
                dtype: str = "float32", init: str = "neutral", seed: int = 0) -> Twin:
    """The twin of a user's description, ``'package.module:name'`` (``dualmeta.twins.load``), as
    ``--model=package.module:name`` builds it for every learner."""
    return build(T.load(path, num_classes=num_classes, ways=num_classes, in_channels=in_channels,
                            image_size=image_size), dtype, init, seed)

def probe(description, weights: Mapping[str, np.ndarray], x: np.ndarray, direction: np.ndarray,
          inner_lr: float = 0.1) -> dict[str, np.ndarray]:
    """What ``dualmeta check-model`` compares: every layer's output, the gradients of ``sum(out * direction)``
    and the second-order gradient through one inner step (MAML's), as numpy in neutral layouts."""
    dtype = str(np.asarray(x).dtype)
    model = build(description, dtype=dtype)
    model.set_weights(weights)
    x_t, d_t = tf.constant(np.asarray(x)), tf.constant(np.asarray(direction))
    trace = []
    model.__dict__["_trace_sink"] = trace  # bypasses Keras' attribute tracking
    try:
        model(x_t, training=True)
    finally:
        model.__dict__.pop("_trace_sink")
    found = {f"forward/{label}": np.asarray(value) for label, value in trace}
    variables = {n: v for n, v in model.neutral_variables().items() if v.trainable}
    names = list(variables)
    kinds = {n: model.spec.tensors[n].kind for n in names}
    params = {n: tf.convert_to_tensor(v.value) for n, v in variables.items()}
    with tf.GradientTape() as outer_tape:
        outer_tape.watch(list(params.values()))
        with tf.GradientTape() as tape:
            tape.watch(list(params.values()))
            loss = tf.reduce_sum(functional_call(model, params, x_t) * d_t)
        grads = tape.gradient(loss, [params[n] for n in names])
        fast = {n: params[n] - inner_lr * g for n, g in zip(names, grads)}
        outer = tf.reduce_sum(tf.square(functional_call(model, fast, x_t) * d_t))
    second = outer_tape.gradient(outer, [params[n] for n in names])
    for n, g, s in zip(names, grads, second):
        to_neutral = _TO_NEUTRAL.get(kinds[n], np.asarray)
        found[f"grads/{n}"] = np.ascontiguousarray(to_neutral(np.asarray(g)))
        found[f"second_order/{n}"] = np.ascontiguousarray(to_neutral(np.asarray(s)))
    return found
