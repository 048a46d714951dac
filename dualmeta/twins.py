"""Framework-neutral model descriptions: a twin written once, built by both backends.

A :class:`Description` is a list of layers; ``torch_meta.models.build`` and ``tf_meta.models.build`` turn
it into a model whose parameters carry the neutral names and layouts of ``dualmeta.weights`` (so weights,
checkpoints and the seeded initialiser are shared). Every layer pins what the frameworks would otherwise
choose differently:

* :class:`Conv2d` pads explicitly (``padding`` zeros on every side, then a 'valid' convolution): Keras'
  ``'same'`` with stride 2 pads (0, 1), PyTorch's ``padding=1`` pads (1, 1);
* :class:`BatchNorm` is the exact batch-statistics norm (eps 1e-5, update-rate momentum 0.1), whose
  second-order gradient is right in both backends (Keras' own layer's is not);
* :class:`Flatten` reads the map in (C, H, W) order whatever the backend's memory layout;
* :class:`MaxPool` uses 'valid' windows (floor of the size), :class:`Activation` names its slope.

Images enter in NHWC (the neutral layout). A ten-line twin::

    from dualmeta import twins as T

    def tiny(ways=5):
        return T.Description("tiny", input_shape=(28, 28, 1), layers=(
            T.Conv2d("conv", 1, 8, kernel=3, stride=2, padding=1),
            T.BatchNorm("norm", 8),
            T.Activation("relu"),
            T.GlobalMean(),
            T.Dense("head", 8, ways),
        ))

``python -m dualmeta check-model --model=package.module:tiny`` builds it in both backends and compares
forward pass, gradients and second-order gradients (see ``dualmeta.checkmodel``).

A :class:`Function` layer runs a parameter-free function given per backend (``'package.module:name'``);
it is the one place the two backends can differ, and the check names it when they do.
"""
from __future__ import annotations

import importlib
import inspect
from typing import NamedTuple

import numpy as np

from dualmeta import weights as neutral

__all__ = ["Conv2d", "BatchNorm", "Activation", "MaxPool", "Flatten", "GlobalMean", "Dense", "Residual", "DropBlock",
           "Function", "Description", "ACTIVATIONS", "mlp", "conv4", "resnet12", "load", "layer_names", "drop_layers",
           "drop_masks", "dropblock_mask", "check_drops", "largest_map"]

ACTIVATIONS = ("relu", "softplus", "leaky_relu")


class Conv2d(NamedTuple):
    """``kernel`` x ``kernel`` convolution, ``padding`` zeros on every side first; kernel OIHW (neutral)."""
    name: str
    in_channels: int
    out_channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    bias: bool = False


class BatchNorm(NamedTuple):
    """Exact batch norm over (N, H, W) of a (N, H, W, C) map; running statistics only if tracked."""
    name: str
    channels: int
    track_running_stats: bool = False


class Activation(NamedTuple):
    """``relu``, ``softplus`` or ``leaky_relu`` (negative slope ``slope``)."""
    kind: str
    slope: float = 0.1
    name: str = ""


class MaxPool(NamedTuple):
    """``size`` x ``size`` max-pooling with stride ``size``, no padding (floor of the spatial size)."""
    size: int = 2
    name: str = ""


class Flatten(NamedTuple):
    """(N, H, W, C) -> (N, C*H*W) in channel-major (C, H, W) order (PyTorch's order, in both backends)."""
    name: str = ""


class GlobalMean(NamedTuple):
    """(N, H, W, C) -> (N, C): mean over space."""
    name: str = ""


class Dense(NamedTuple):
    """``x @ weight.T + bias`` with the weight (out, in), neutral layout."""
    name: str
    in_features: int
    out_features: int


class Residual(NamedTuple):
    """``body(x) + shortcut(x)``; an empty shortcut is the identity."""
    name: str
    body: tuple
    shortcut: tuple = ()


class DropBlock(NamedTuple):
    """DropBlock (Ghiasi et al. 2018) on a (N, H, W, C) map in training: square blocks of ``block`` x ``block``
    units of each channel are zeroed, about a fraction ``rate`` of the units, and the rest rescaled by
    (units / units kept). ``block=1`` is dropout. The masks are not drawn by the backends: the learner draws
    them in numpy by address (:func:`drop_masks`) and hands the same arrays to both; without masks (evaluation)
    the layer is the identity."""
    name: str
    rate: float
    block: int = 5


class Function(NamedTuple):
    """A parameter-free function per backend: ``torch`` and ``tf`` are ``'package.module:name'`` paths."""
    name: str
    torch: str
    tf: str


class Description(NamedTuple):
    """A twin model: ``name``, the shape of one input (``(features,)`` or NHWC ``(H, W, C)``), its layers.

    ``config`` is what a checkpoint records to rebuild it (a builder's arguments); ``spec()`` lists the
    tensors in the order both backends use (and ``dualmeta.weights.initialize`` draws them in).
    """
    name: str
    input_shape: tuple
    layers: tuple
    config: dict | None = None

    def features(self) -> tuple:
        """The layers without a last ``Dense`` named ``head``: what ``embed`` runs (the features)."""
        last = self.layers[-1] if self.layers else None
        return self.layers[:-1] if isinstance(last, Dense) and last.name == "head" else self.layers

    def spec(self) -> neutral.ModelSpec:
        tensors = {}
        _tensors(self.layers, tensors)
        config = dict(self.config) if self.config is not None else dict(input_shape=tuple(self.input_shape))
        return neutral.ModelSpec(self.name, config, tensors)


def _tensors(layers, tensors: dict) -> None:
    for layer in layers:
        if isinstance(layer, Conv2d):
            fan_in = layer.in_channels * layer.kernel ** 2
            tensors[f"{layer.name}.weight"] = neutral.TensorSpec(
                (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel), "conv", fan_in)
            if layer.bias:
                tensors[f"{layer.name}.bias"] = neutral.TensorSpec((layer.out_channels,), "bias", fan_in)
        elif isinstance(layer, BatchNorm):
            tensors[f"{layer.name}.weight"] = neutral.TensorSpec((layer.channels,), "norm_weight")
            tensors[f"{layer.name}.bias"] = neutral.TensorSpec((layer.channels,), "norm_bias")
            if layer.track_running_stats:
                tensors[f"{layer.name}.running_mean"] = neutral.TensorSpec((layer.channels,), "running_mean")
                tensors[f"{layer.name}.running_var"] = neutral.TensorSpec((layer.channels,), "running_var")
        elif isinstance(layer, Dense):
            tensors[f"{layer.name}.weight"] = neutral.TensorSpec((layer.out_features, layer.in_features), "dense",
                                                                 layer.in_features)
            tensors[f"{layer.name}.bias"] = neutral.TensorSpec((layer.out_features,), "bias", layer.in_features)
        elif isinstance(layer, Residual):
            _tensors(layer.body, tensors)
            _tensors(layer.shortcut, tensors)
        elif isinstance(layer, Activation):
            if layer.kind not in ACTIVATIONS:
                raise ValueError(f"Expected one of {list(ACTIVATIONS)}; received activation={layer.kind!r}")
        elif isinstance(layer, DropBlock):
            if isinstance(layer.rate, bool) or not isinstance(layer.rate, (int, float)) or not 0 <= layer.rate < 1:
                raise ValueError(f"Expected a DropBlock rate in [0, 1) (0.1 is usual); received {layer!r}")
            if isinstance(layer.block, bool) or not isinstance(layer.block, int) or layer.block < 1:
                raise ValueError(f"Expected a positive integer DropBlock block size (5 is usual); received {layer!r}")
        elif not isinstance(layer, (MaxPool, Flatten, GlobalMean, Function)):
            raise ValueError(f"Expected dualmeta.twins layers (Conv2d, BatchNorm, Activation, MaxPool, Flatten, "
                             f"GlobalMean, Dense, Residual, DropBlock, Function); received {layer!r}")


def layer_names(layers, prefix: str = "") -> list[str]:
    """A name for every layer, in order (unnamed ones get ``<position>.<type>``): what the check reports."""
    names = []
    for i, layer in enumerate(layers):
        label = layer.name or f"{prefix}{i}.{type(layer).__name__.lower()}"
        names.append(label)
    return names


# -- DropBlock masks, drawn in numpy by address ---------------------------------------------------------
def drop_layers(description: Description) -> list[tuple[DropBlock, tuple[int, int, int]]]:
    """The active DropBlock layers (rate > 0) with the (H, W, C) shape of the map each one drops from."""
    found = []
    _walk_shapes(description.layers, tuple(description.input_shape), found)
    return found


def largest_map(description: Description) -> int | None:
    """Elements of the largest feature map of one input image (a convolution's output); None for a vector
    model, or where a ``Function`` layer leaves the shapes unknown."""
    if len(description.input_shape) != 3 or any(isinstance(layer, Function) for layer in description.layers):
        return None
    sizes = []
    _walk_shapes(description.layers, tuple(description.input_shape), [], sizes)
    return max(sizes, default=None)


def _walk_shapes(layers, shape: tuple, found: list, sizes: list | None = None) -> tuple:
    for layer in layers:
        if isinstance(layer, Conv2d):
            h, w, _ = shape
            size = lambda n: (n + 2 * layer.padding - layer.kernel) // layer.stride + 1
            shape = (size(h), size(w), layer.out_channels)
            if sizes is not None:
                sizes.append(shape[0] * shape[1] * shape[2])
        elif isinstance(layer, MaxPool):
            shape = (shape[0] // layer.size, shape[1] // layer.size, shape[2])
        elif isinstance(layer, Residual):
            start = shape
            shape = _walk_shapes(layer.body, start, found, sizes)
            _walk_shapes(layer.shortcut, start, found, sizes)
        elif isinstance(layer, (Flatten, GlobalMean, Dense)):
            shape = (None,)
        elif isinstance(layer, DropBlock):
            if len(shape) != 3 or shape[0] is None:
                raise ValueError(f"DropBlock {layer.name!r} needs a (H, W, C) feature map; put it before "
                                 "Flatten/GlobalMean/Dense")
            if layer.rate > 0:
                found.append((layer, shape))
        elif isinstance(layer, Function):
            if any(isinstance(later, DropBlock) for later in layers[layers.index(layer):]):
                raise ValueError(f"DropBlock after the Function layer {layer.name!r}: its map shape is unknown; "
                                 "put the DropBlock before the Function")
    return shape


def dropblock_mask(rng: np.random.Generator, shape: tuple, rate: float, block: int) -> np.ndarray:
    """One DropBlock mask of ``shape`` (N, H, W, C), float64, already scaled by units / units kept.

    Block centres are drawn where a whole block fits (the top-left corner in ``0..H-block``), each with
    probability ``gamma = rate / block**2 * H*W / ((H-block+1) * (W-block+1))``, so that about ``rate`` of the
    units fall in a block (Ghiasi et al.'s formula); a block wider than the map is cut to the map.
    """
    n, h, w, c = shape
    block = min(int(block), h, w)
    fit_h, fit_w = h - block + 1, w - block + 1
    gamma = rate / block ** 2 * (h * w) / (fit_h * fit_w)
    centres = rng.random((n, fit_h, fit_w, c)) < gamma
    dropped = np.zeros(shape, dtype=bool)
    for i in range(block):
        for j in range(block):
            dropped[:, i:i + fit_h, j:j + fit_w, :] |= centres
    keep = (~dropped).astype(np.float64)
    kept = keep.sum()
    return keep * (keep.size / kept) if kept > 0 else keep


def drop_masks(description: Description, tasks: int, images: int, seed: int, step: int) -> dict[str, np.ndarray]:
    """The masks of every active DropBlock of ``description`` for one training step: ``(tasks, images, H, W, C)``
    per layer name, float64 (the backend casts them), NHWC. By address: task ``t``'s masks are a pure function
    of ``(seed, step, t)`` and the layer's position, so both backends (and a resumed run) drop the same units.
    Empty if nothing drops."""
    masks = {}
    for position, (layer, (h, w, c)) in enumerate(drop_layers(description)):
        masks[layer.name] = np.stack([dropblock_mask(
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(step), t, position]))),
            (int(images), h, w, c), float(layer.rate), int(layer.block)) for t in range(int(tasks))])
    return masks


def check_drops(model, learner: str) -> None:
    """Refuses a twin with an active DropBlock for a learner that draws no masks (it would silently not drop)."""
    description = getattr(model, "description", None)
    if isinstance(description, Description) and drop_layers(description):
        raise ValueError(f"{learner} does not draw DropBlock masks (protonet and matchingnet do); "
                         "build the model with drop_rate=0 (drop --drop_rate)")


def resolve(path: str):
    """``'package.module:name'`` -> the object; a one-line error naming the fix."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"Expected 'package.module:name'; received {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Cannot import {module_name!r} for {path!r} ({error}); put it on PYTHONPATH") from None
    if not hasattr(module, attribute):
        raise ValueError(f"{module_name!r} has no {attribute!r}; received {path!r}")
    return getattr(module, attribute)


def load(path: str, **arguments) -> Description:
    """A user's twin: ``'package.module:name'`` naming a :class:`Description` or a function returning one.

    A function gets those of ``arguments`` (the command line offers ``num_classes``, ``in_channels`` and
    ``image_size``, and ``ways`` equal to ``num_classes``) that its signature names; a :class:`Description`
    is used as it is."""
    found = resolve(path)
    if callable(found) and not isinstance(found, Description):
        try:
            parameters = inspect.signature(found).parameters
        except (TypeError, ValueError):
            parameters = {}
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        description = found(**{k: v for k, v in arguments.items() if takes_all or k in parameters})
    else:
        description = found
    if not isinstance(description, Description):
        raise ValueError(f"{path!r} is not a dualmeta.twins.Description (nor a function returning one); "
                         f"received {type(description).__name__}")
    description.spec()  # validates the layers
    return description


# -- the built-in twins ---------------------------------------------------------------------------------
def mlp(in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1,
        activation: str = "relu") -> Description:
    """``in -> hidden... -> out`` (``dualmeta.weights.mlp_spec``) as a description."""
    spec = neutral.mlp_spec(in_features, tuple(hidden), out_features, activation)  # validates the arguments
    sizes = [in_features, *hidden, out_features]
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(f"layers.{i}", int(a), int(b)))
        if i < len(sizes) - 2:
            layers.append(Activation(activation))
    return Description("mlp", (int(in_features),), tuple(layers), spec.config)


def conv4(in_channels: int = 1, hidden: int = 64, num_classes: int | None = None, downsample: str = "stride",
          head: str = "flatten", image_size: int = 28, blocks: int = 4, track_running_stats: bool = False,
          activation: str = "relu") -> Description:
    """The conv4 backbone (``dualmeta.weights.conv4_spec``, see there for the arguments) as a description."""
    spec = neutral.conv4_spec(in_channels, hidden, num_classes, downsample, head, image_size, blocks,
                              track_running_stats, activation)  # validates the arguments
    layers, channels = [], in_channels
    for i in range(blocks):
        layers += [Conv2d(f"blocks.{i}.conv", int(channels), int(hidden), 3, 2 if downsample == "stride" else 1, 1),
                   BatchNorm(f"blocks.{i}.norm", int(hidden), bool(track_running_stats)),
                   Activation(activation)]
        if downsample == "maxpool":
            layers.append(MaxPool(2))
        channels = hidden
    layers.append(Flatten() if head == "flatten" else GlobalMean())
    if num_classes is not None:
        features = spec.tensors["head.weight"].shape[1]
        layers.append(Dense("head", features, int(num_classes)))
    return Description("conv4", (int(image_size), int(image_size), int(in_channels)), tuple(layers), spec.config)


def resnet12(in_channels: int = 3, channels: tuple[int, ...] = (64, 160, 320, 640), num_classes: int | None = None,
             image_size: int = 84, track_running_stats: bool = False, slope: float = 0.1, drop_rate: float = 0.0,
             drop_block: int = 5) -> Description:
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): residual blocks of three 3x3 convolutions.

    Each block ``b``: ``conv1 -> norm1 -> leaky ReLU -> conv2 -> norm2 -> leaky ReLU -> conv3 -> norm3``,
    plus a shortcut ``1x1 conv -> norm``; the sum goes through leaky ReLU (slope ``slope``) and a 2x2
    max-pool. Then the spatial mean (640 features at the paper's widths) and an optional classifier.
    Names: ``blocks.{b}.conv{1,2,3}``, ``blocks.{b}.norm{1,2,3}``, ``blocks.{b}.shortcut.conv``,
    ``blocks.{b}.shortcut.norm``, ``head``. A tiny variant (``channels=(4, 4, 8, 8), image_size=16``) is
    what the parity tests run.

    ``drop_rate > 0`` adds a :class:`DropBlock` after each block's max-pool (``blocks.{b}.drop``), as Lee et
    al.'s MetaOptNet code places it: blocks of ``drop_block`` x ``drop_block`` in the last two blocks, single
    units (dropout) in the first two. Only the metric learners draw its masks (``protonet``, ``matchingnet``).
    """
    channels = tuple(int(c) for c in channels)
    for name, value in dict(in_channels=in_channels, image_size=image_size).items():
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"Expected {name} to be a positive integer; received {name}={value!r}")
    if not channels or min(channels) <= 0:
        raise ValueError(f"Expected positive channel counts; received channels={channels}")
    if image_size < 2 ** len(channels):
        raise ValueError(f"image_size={image_size} is too small for {len(channels)} max-pooled blocks; "
                         f"use image_size >= {2 ** len(channels)}")
    layers, c_in, track = [], int(in_channels), bool(track_running_stats)
    for b, c in enumerate(channels):
        p = f"blocks.{b}"
        body = (Conv2d(f"{p}.conv1", c_in, c), BatchNorm(f"{p}.norm1", c, track), Activation("leaky_relu", slope),
                Conv2d(f"{p}.conv2", c, c), BatchNorm(f"{p}.norm2", c, track), Activation("leaky_relu", slope),
                Conv2d(f"{p}.conv3", c, c), BatchNorm(f"{p}.norm3", c, track))
        shortcut = (Conv2d(f"{p}.shortcut.conv", c_in, c, kernel=1, padding=0), BatchNorm(f"{p}.shortcut.norm", c, track))
        layers += [Residual(p, body, shortcut), Activation("leaky_relu", slope), MaxPool(2)]
        if drop_rate:
            layers.append(DropBlock(f"{p}.drop", float(drop_rate), int(drop_block) if b >= len(channels) - 2 else 1))
        c_in = c
    layers.append(GlobalMean())
    if num_classes is not None:
        layers.append(Dense("head", c_in, int(num_classes)))
    config = dict(in_channels=int(in_channels), channels=channels, num_classes=num_classes,
                  image_size=int(image_size), track_running_stats=track, slope=float(slope))
    if drop_rate:  # recorded only when set: a checkpoint of the plain ResNet-12 keeps its config
        if isinstance(drop_rate, bool) or not 0 < drop_rate < 1:
            raise ValueError(f"Expected 0 <= drop_rate < 1 (0.1 is usual); received drop_rate={drop_rate!r}")
        config.update(drop_rate=float(drop_rate), drop_block=int(drop_block))
    return Description("resnet12", (int(image_size), int(image_size), int(in_channels)), tuple(layers), config)
