"""The neutral weight format: names, shapes, layouts, a seeded numpy initialiser, and safetensors files.

Both backends read and write weights as ``dict[str, numpy.ndarray]`` with the names and layouts below,
so a model initialised here, or trained in one backend, loads into the other unchanged.

Names follow PyTorch's module paths::

    mlp:    layers.{i}.weight (out, in)        layers.{i}.bias (out,)
    conv4:  blocks.{i}.conv.weight (O, I, 3, 3)
            blocks.{i}.norm.weight (O,)          blocks.{i}.norm.bias (O,)
            blocks.{i}.norm.running_mean (O,)    blocks.{i}.norm.running_var (O,)   [buffers, optional]
            head.weight (classes, features)      head.bias (classes,)               [optional]

Layouts are PyTorch's: convolution kernels OIHW, dense kernels (out, in); a flatten head reads the
feature map in channel-major (C, H, W) order. The Keras backend converts at its boundary (HWIO and
(in, out) kernels, an NHWC map transposed to NCHW before flattening).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Mapping, NamedTuple

import numpy as np

__all__ = ["TensorSpec", "ModelSpec", "mlp_spec", "conv4_spec", "initialize", "save_weights",
           "load_weights", "atomic_write", "check_weights", "DTYPES", "check_dtype", "ACTIVATIONS"]

DTYPES = ("float32", "float64")


def check_dtype(dtype: str) -> str:
    """Returns ``dtype`` if it is ``'float32'`` or ``'float64'``, else raises naming the accepted values."""
    if dtype not in DTYPES:
        raise ValueError(f"Expected one of {list(DTYPES)}; received dtype={dtype!r}")
    return dtype


class TensorSpec(NamedTuple):
    """One tensor of a model: its neutral shape, its role, and whether a gradient updates it."""
    shape: tuple[int, ...]
    kind: str  # 'conv', 'conv1d', 'dense', 'bias', 'norm_weight', 'norm_bias', 'running_mean', 'running_var'
    fan_in: int = 0

    @property
    def trainable(self) -> bool:
        return self.kind not in ("running_mean", "running_var")


class ModelSpec(NamedTuple):
    """The architecture a builder makes in either backend: its arguments and its tensors, in order."""
    name: str
    config: dict
    tensors: dict  # name -> TensorSpec, in the order both backends list their parameters


ACTIVATIONS = ("relu", "softplus")


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"Expected one of {list(ACTIVATIONS)}; received activation={activation!r}")
    return activation


def mlp_spec(in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1,
             activation: str = "relu") -> ModelSpec:
    """Multi-layer perceptron: ``in -> hidden... -> out`` with ReLU between layers (not after the last).

    ``activation='softplus'`` swaps ReLU for the smooth ``log(1 + exp(x))``: its derivative has no jump,
    so finite differences work and float32 round-off cannot flip a unit across a kink (see
    ``docs/tolerances.md``).
    """
    sizes = [in_features, *hidden, out_features]
    for size in sizes:
        if not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"Expected positive layer sizes; received {sizes}")
    tensors = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        tensors[f"layers.{i}.weight"] = TensorSpec((n_out, n_in), "dense", n_in)
        tensors[f"layers.{i}.bias"] = TensorSpec((n_out,), "bias", n_in)
    config = dict(in_features=int(in_features), hidden=tuple(int(h) for h in hidden),
                  out_features=int(out_features), activation=check_activation(activation))
    return ModelSpec("mlp", config, tensors)


DOWNSAMPLES = ("stride", "maxpool")
HEADS = ("flatten", "mean")


def conv4_feature_size(image_size: int, blocks: int, downsample: str) -> int:
    """Spatial size after the blocks: stride-2 convs (padding 1) give ceil(s/2), 2x2 max-pools floor(s/2)."""
    size = image_size
    for _ in range(blocks):
        size = (size + 1) // 2 if downsample == "stride" else size // 2
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for {blocks} '{downsample}' blocks; "
                         f"use image_size >= {2 ** blocks}")
    return size


def conv4_spec(in_channels: int = 1, hidden: int = 64, num_classes: int | None = None,
               downsample: str = "stride", head: str = "flatten", image_size: int = 28, blocks: int = 4,
               track_running_stats: bool = False, activation: str = "relu") -> ModelSpec:
    """The few-shot backbone: ``blocks`` x (3x3 conv, batch norm, ReLU, downsample), a head, a classifier.

    The convolutions have no bias: batch norm subtracts the batch mean right after, which cancels any
    bias, so its true gradient is zero and what a framework computes for it is round-off. Adam divides
    that round-off by its own magnitude and turns it into learning-rate-sized steps of arbitrary sign,
    different in each framework; without the bias there is nothing to diverge (and nothing is lost: the
    norm's own shift plays its role).

    ``activation`` is ``'relu'`` or the smooth ``'softplus'`` (see :func:`mlp_spec`).
    ``downsample='stride'`` uses stride-2 convolutions (Omniglot MAML), ``'maxpool'`` 2x2 max-pooling
    (ProtoNets, mini-ImageNet MAML). ``head='flatten'`` flattens the (C, H, W) map, ``'mean'`` averages
    it over space. ``num_classes=None`` leaves out the linear classifier (an embedding network).
    """
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"Expected one of {list(DOWNSAMPLES)}; received downsample={downsample!r}")
    if head not in HEADS:
        raise ValueError(f"Expected one of {list(HEADS)}; received head={head!r}")
    for name, value in dict(in_channels=in_channels, hidden=hidden, blocks=blocks, image_size=image_size).items():
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"Expected {name} to be a positive integer; received {name}={value!r}")
    if num_classes is not None and (not isinstance(num_classes, (int, np.integer)) or num_classes <= 0):
        raise ValueError(f"Expected num_classes to be None or a positive integer; received {num_classes!r}")
    size = conv4_feature_size(image_size, blocks, downsample)
    tensors = {}
    channels = in_channels
    for i in range(blocks):
        fan_in = channels * 9
        tensors[f"blocks.{i}.conv.weight"] = TensorSpec((hidden, channels, 3, 3), "conv", fan_in)
        tensors[f"blocks.{i}.norm.weight"] = TensorSpec((hidden,), "norm_weight")
        tensors[f"blocks.{i}.norm.bias"] = TensorSpec((hidden,), "norm_bias")
        if track_running_stats:
            tensors[f"blocks.{i}.norm.running_mean"] = TensorSpec((hidden,), "running_mean")
            tensors[f"blocks.{i}.norm.running_var"] = TensorSpec((hidden,), "running_var")
        channels = hidden
    features = hidden * (size * size if head == "flatten" else 1)
    if num_classes is not None:
        tensors["head.weight"] = TensorSpec((num_classes, features), "dense", features)
        tensors["head.bias"] = TensorSpec((num_classes,), "bias", features)
    config = dict(in_channels=int(in_channels), hidden=int(hidden), num_classes=num_classes,
                  downsample=downsample, head=head, image_size=int(image_size), blocks=int(blocks),
                  track_running_stats=bool(track_running_stats), activation=check_activation(activation))
    return ModelSpec("conv4", config, tensors)


def initialize(spec: ModelSpec, seed: int = 0, dtype: str = "float32") -> dict[str, np.ndarray]:
    """Seeded neutral initial weights, the same on every machine.

    Kernels and biases are drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default for Linear
    and Conv2d); norm scales are 1 and shifts 0; running means 0 and variances 1. Each tensor has its own
    generator, seeded by ``(seed, position)``, so adding a head does not change the body's weights.
    An LSTM spec's ``forget_bias`` (``dualmeta.sequences.lstm_spec``) is added to the forget-gate rows of
    ``lstm.bias_hh`` (gates i, f, g, o: rows ``H:2H``), as Keras' ``unit_forget_bias`` does.
    """
    check_dtype(dtype)
    weights = {}
    for position, (name, tensor) in enumerate(spec.tensors.items()):
        if tensor.kind in ("conv", "conv1d", "dense", "bias"):
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), position])))
            bound = 1.0 / math.sqrt(tensor.fan_in)
            value = rng.uniform(-bound, bound, size=tensor.shape)
        elif tensor.kind in ("norm_weight", "running_var"):
            value = np.ones(tensor.shape)
        else:
            value = np.zeros(tensor.shape)
        if name == "lstm.bias_hh" and spec.config.get("forget_bias"):
            hidden = spec.config["hidden"]
            value[hidden:2 * hidden] += spec.config["forget_bias"]
        weights[name] = value.astype(dtype)
    return weights


def check_weights(expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, np.ndarray],
                  what: str = "weights") -> None:
    """Raises ``ValueError`` naming missing, unexpected and wrongly shaped tensors."""
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        raise ValueError(f"These {what} do not fit the model: missing {missing}, unexpected {unexpected}. "
                         "Build the model with the same architecture flags as the checkpoint.")
    for name, shape in expected.items():
        got = tuple(np.shape(weights[name]))
        if got != tuple(shape):
            raise ValueError(f"{what} tensor {name!r} has shape {got}, the model expects {tuple(shape)}. "
                             "Build the model with the same architecture flags as the checkpoint.")


def save_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray],
                 metadata: Mapping[str, object] | None = None) -> None:
    """Writes ``weights`` to a safetensors file atomically (a temporary file, then a rename).

    ``metadata`` values are stored as JSON strings in the safetensors header. If writing fails (disk
    full, no permission), the previous file at ``path`` is left untouched.
    """
    from safetensors.numpy import save as _save  # local: keeps `import dualmeta` light

    path = os.fspath(path)
    header = {key: json.dumps(value) for key, value in (metadata or {}).items()}
    arrays = {name: np.ascontiguousarray(value).reshape(np.shape(value)) for name, value in weights.items()}  # keeps 0-d arrays 0-d
    atomic_write(path, _save(arrays, metadata=header))


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader sees the old file or the new one, never a half-written one; if writing fails (disk full, no
    permission, an interrupt), the old file is left untouched and the temporary file removed. The new file
    gets mode 0644 (``mkstemp`` makes it 0600).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Reads a safetensors file: ``(weights, metadata)``. Raises ``ValueError`` for a foreign or corrupt file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as _load

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path!r}; pass the path of a .safetensors checkpoint")
    with open(path, "rb") as handle:
        blob = handle.read()
    try:
        weights = _load(blob)
        header_size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8:8 + header_size]).get("__metadata__", {}) or {}
        metadata = {key: json.loads(value) for key, value in header.items()}
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as error:
        raise ValueError(f"{path!r} is not a readable safetensors weights file ({error}); "
                         "pass a checkpoint written by dualmeta or any safetensors writer") from error
    return weights, metadata
