"""Twin models, PyTorch side: ``nn.Module``s built from ``dualmeta.twins`` descriptions, in the neutral weight format.

``mlp`` and ``conv4`` are the built-in descriptions (``dualmeta.twins.mlp``, ``dualmeta.twins.conv4``) built
by :class:`Twin`, like ``resnet12`` and a user's own; :class:`MLP` and :class:`Conv4` name them.

Mirror of ``tf_meta/models.py``: the same builders, arguments, parameter names and numbers. Parameter
names and layouts *are* the neutral ones (``dualmeta.weights``), so conversion is a copy. Images come in
NHWC, the neutral layout, and are permuted to NCHW inside ``forward``.

Pinned so that both backends compute the same function:

* convolutions pad explicitly by 1 on every side (Keras' ``'same'`` with stride 2 pads (0, 1));
* batch norm is :class:`BatchNorm`, the same formula as the Keras twin, eps=1e-5 and an update-rate
  momentum of 0.1 (PyTorch's meaning; Keras' built-in layer uses eps=1e-3 and a keep-rate of 0.99);
* the flatten head reads the map in (C, H, W) order.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualmeta import twins as T
from dualmeta import weights as neutral

__all__ = ["BatchNorm", "MLP", "Conv4", "mlp", "conv4", "functional_call", "NORM_EPS", "NORM_MOMENTUM", "Twin", "build",
           "resnet12", "description"]

NORM_EPS = 1e-5
NORM_MOMENTUM = 0.1  # update rate: running = (1 - momentum) * running + momentum * batch_statistic


def _torch_dtype(dtype: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[neutral.check_dtype(dtype)]


class BatchNorm(nn.Module):
    """Batch normalisation over (N, H, W) that is exact at second order.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased batch variance
    ``var = mean((x - mean)^2)``; the gradient flows through both statistics. Running statistics (with
    the unbiased variance, as in PyTorch) are kept only if ``track_running_stats``, and used in eval mode.
    ``stats_rows=n`` takes the batch statistics from the first ``n`` rows only and applies them to every
    row (support-set statistics at test: see ``Learner.test_norm``); running statistics are not updated then.
    """

    def __init__(self, channels: int, eps: float = NORM_EPS, momentum: float = NORM_MOMENTUM,
                 track_running_stats: bool = False):
        super().__init__()
        self.eps, self.momentum, self.track_running_stats = eps, momentum, track_running_stats
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, stats_rows: int | None = None) -> torch.Tensor:
        # PyTorch's fused kernel computes exactly this formula (and its second derivatives): biased batch
        # variance for the normalisation, the unbiased one for the running variance, update-rate momentum.
        batch_stats = self.training or not self.track_running_stats
        if stats_rows is not None and batch_stats:  # statistics of the first rows only; no running update
            ref = x[:stats_rows]
            mean = ref.mean(dim=(0, 2, 3), keepdim=True)
            var = (ref - mean).square().mean(dim=(0, 2, 3), keepdim=True)
            return (x - mean) * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]
        running = self.training and self.track_running_stats
        return F.batch_norm(x, self.running_mean if running or not batch_stats else None,
                            self.running_var if running or not batch_stats else None, self.weight, self.bias,
                            training=batch_stats, momentum=self.momentum, eps=self.eps)


class _Weights:
    """Neutral-format conversion shared by the twin models (PyTorch layout is the neutral one)."""
    spec: neutral.ModelSpec

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every parameter and buffer under its neutral name, as numpy arrays."""
        state = self.state_dict()
        return {name: state[name].detach().cpu().numpy().copy() for name in self.spec.tensors}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Loads neutral weights (all of them, exact names and shapes) into the model."""
        neutral.check_weights({k: v.shape for k, v in self.spec.tensors.items()}, weights)
        state = self.state_dict()
        with torch.no_grad():
            for name in self.spec.tensors:
                state[name].copy_(torch.as_tensor(np.asarray(weights[name])))


def _build(module: nn.Module, init: str, seed: int, dtype: str) -> nn.Module:
    module = module.to(_torch_dtype(dtype))
    if init == "neutral":
        module.set_weights(neutral.initialize(module.spec, seed=seed, dtype=dtype))
    elif init != "native":
        raise ValueError(f"Expected one of ['native', 'neutral']; received init={init!r}")
    return module


def mlp(in_features: int = 1, hidden: tuple[int, ...] = (40, 40), out_features: int = 1,
        dtype: str = "float32", init: str = "neutral", seed: int = 0, activation: str = "relu") -> MLP:
    """Builds the MLP of ``dualmeta.weights.mlp_spec``.

    ``init='neutral'`` loads ``dualmeta.weights.initialize(spec, seed)`` (identical in both backends);
    ``init='native'`` keeps the framework's own initialiser.
    """
    return _build(MLP(neutral.mlp_spec(in_features, tuple(hidden), out_features, activation)), init, seed, dtype)


def conv4(in_channels: int = 1, hidden: int = 64, num_classes: int | None = None,
          downsample: str = "stride", head: str = "flatten", image_size: int = 28, blocks: int = 4,
          track_running_stats: bool = False, dtype: str = "float32", init: str = "neutral",
          seed: int = 0, activation: str = "relu") -> Conv4:
    """Builds the conv4 backbone of ``dualmeta.weights.conv4_spec`` (see there for the arguments)."""
    spec = neutral.conv4_spec(in_channels, hidden, num_classes, downsample, head, image_size, blocks,
                              track_running_stats, activation)
    return _build(Conv4(spec), init, seed, dtype)


def functional_call(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor,
                    training: bool = True, stats_rows: int | None = None) -> torch.Tensor:
    """Runs ``model`` on ``x`` with ``params`` (neutral names) in place of its parameters.

    Batch norm uses batch statistics when ``training`` and never updates running statistics here, so
    the call is a pure function of ``params`` and ``x`` (what MAML's inner loop needs). ``stats_rows=n``:
    batch statistics from the first ``n`` rows of ``x`` only (a model without running statistics).
    """
    was_training = model.training
    model.train(training)
    try:
        buffers = {name: buf for name, buf in model.named_buffers()}
        if training:
            # Detach running-statistics updates from the caller: use scratch copies.
            buffers = {name: buf.clone() for name, buf in buffers.items()}
        kwargs = {} if stats_rows is None else {"stats_rows": int(stats_rows)}
        return torch.func.functional_call(model, {**buffers, **params}, (x,), kwargs)
    finally:
        model.train(was_training)


# Images per task from which a meta-batch's feature maps are stored channels last, the layout a plain
# per-task loop over NHWC images gets by accident: oneDNN then keeps it from layer to layer without copies.
# Fewer images (support sets, 1-query tasks) run faster as (N, B*C, H, W) rows. PyTorch's CPU batch norm
# is less exact on channels-last float32 maps (measured: 3.5e-5 against 1.1e-5 in rows on maps of mean 5,
# and an ANIL float32 meta-gradient 4% from its float64 value), so channels-last maps are centred on their
# (detached) per-channel mean before it: batch norm does not change under a shift of its input, in value
# or in any derivative, and the centred maps are as exact as rows (7.6e-6). docs/performance.md.
_CHANNELS_LAST_FROM = 32


def _batched_call(model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``functional_call`` for a meta-batch of tasks at once, each with its own weights.

    ``params[name]`` has a leading task axis ``B``; ``x`` is ``(B, N, ...)``; returns ``(B, N, outputs)``.
    Batch statistics only (training mode, no running statistics). The B tasks' feature maps are laid
    side by side on the channel axis, so a convolution with ``groups=B`` applies every task's own kernel
    to its own images in one call, and a plain per-channel batch norm over that axis is exactly each task's
    batch norm. One big operation per layer instead of B small ones keeps both cores busy and removes the
    per-task Python loop; the numbers equal the loop's up to round-off (``parity_tests`` checks them).
    Any twin's description runs this way; one with a :class:`dualmeta.twins.Function` layer (whose function
    knows nothing of the task axis) runs one task at a time.
    """
    if not isinstance(model, Twin) or _has_function(model.description.layers):
        return torch.stack([functional_call(model, {n: p[b] for n, p in params.items()}, x[b])
                            for b in range(x.shape[0])])
    tasks, n = x.shape[:2]
    if x.dim() == 5:  # (B, N, H, W, C) -> (N, B*C, H, W): task b's channels at b*C ... (b+1)*C - 1
        if n >= _CHANNELS_LAST_FROM:  # stored (N, H, W, B*C): oneDNN keeps channels last from layer to layer
            h = x.permute(1, 2, 3, 0, 4).contiguous().view(n, x.shape[2], x.shape[3], -1).permute(0, 3, 1, 2)
        else:
            h = x.permute(1, 0, 4, 2, 3).reshape(n, tasks * x.shape[4], x.shape[2], x.shape[3])
        layout = "maps"
    else:
        h, layout = x, "bn"
    h, layout = _batched_run(model.description.layers, params, h, layout, tasks)
    return h.transpose(0, 1) if layout == "nb" else h


def _has_function(layers) -> bool:
    return any(isinstance(layer, T.Function)
               or (isinstance(layer, T.Residual) and _has_function(layer.body + layer.shortcut)) for layer in layers)


def _batched_run(layers, params, h, layout: str, tasks: int):
    """The layers on B tasks at once. Layouts: ``maps`` (N, B*C, H, W), ``nb`` (N, B, F), ``bn`` (B, N, F)."""
    for i, layer in enumerate(layers):
        if isinstance(layer, T.Conv2d):
            w = params[f"{layer.name}.weight"]
            bias = params[f"{layer.name}.bias"].reshape(-1) if layer.bias else None
            h = F.conv2d(h, w.reshape((-1,) + tuple(w.shape[2:])), bias, stride=layer.stride, padding=layer.padding,
                         groups=tasks)
        elif isinstance(layer, T.BatchNorm):
            # PyTorch's fused batch norm computes BatchNorm's formula (biased batch variance, gradient through
            # both statistics, exact at second order) in one kernel; parity_tests hold it to the Keras twin.
            if h.dim() == 4 and not h.is_contiguous():  # channels last: centred first (see _CHANNELS_LAST_FROM)
                h = h - h.mean(dim=(0, 2, 3), keepdim=True).detach()
            h = F.batch_norm(h, None, None, params[f"{layer.name}.weight"].reshape(-1),
                             params[f"{layer.name}.bias"].reshape(-1), training=True, eps=NORM_EPS)
        elif isinstance(layer, T.Activation):
            # ReLU overwrites a map this loop made itself (no backward keeps it): one pass and no new map
            fresh = layer.kind == "relu" and i > 0 and isinstance(layers[i - 1], _MADE_ANEW)
            h = F.relu_(h) if fresh else _TWIN_ACTIVATIONS[layer.kind](h, layer)
        elif isinstance(layer, T.MaxPool):
            h = F.max_pool2d(h, layer.size)
        elif isinstance(layer, (T.Flatten, T.GlobalMean)):
            h = h.reshape(h.shape[0], tasks, h.shape[1] // tasks, h.shape[2], h.shape[3])
            h, layout = (h.flatten(2) if isinstance(layer, T.Flatten) else h.mean(dim=(3, 4))), "nb"
        elif isinstance(layer, T.Dense):
            w, b = params[f"{layer.name}.weight"], params[f"{layer.name}.bias"]
            h = torch.einsum("nbf,bof->bno" if layout == "nb" else "bni,boi->bno", h, w) + b[:, None]
            layout = "bn"
        elif isinstance(layer, T.DropBlock):
            pass  # training with masks is the metric learners' (core.Learner refuses the others)
        elif isinstance(layer, T.Residual):
            body, _ = _batched_run(layer.body, params, h, layout, tasks)
            h = body + (_batched_run(layer.shortcut, params, h, layout, tasks)[0] if layer.shortcut else h)
    return h, layout


# -- twins from a neutral description (dualmeta.twins) ------------------------------------------------------
_TWIN_ACTIVATIONS = {"relu": lambda x, layer: F.relu(x), "softplus": lambda x, layer: F.softplus(x),
                     "leaky_relu": lambda x, layer: F.leaky_relu(x, layer.slope)}


# Layers whose output is a new tensor that their backward does not keep: ReLU may overwrite it in place.
_MADE_ANEW = (T.Conv2d, T.BatchNorm, T.Dense, T.Residual)


class _Tensors(nn.Module):
    """Holds the parameters of one neutral prefix (``blocks.0.conv``) as ``weight``/``bias`` attributes."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]):
        super().__init__()
        for suffix, shape in shapes.items():
            setattr(self, suffix, nn.Parameter(torch.zeros(shape)))


def _child(root: nn.Module, path: str, make):
    """The module at dotted ``path`` under ``root``, created (with containers above it) if missing."""
    *parents, last = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    if not hasattr(node, last):
        node.add_module(last, make())
    return getattr(node, last)


class Twin(_Weights, nn.Module):
    """A model built from a ``dualmeta.twins.Description``: neutral names, NHWC images in, PyTorch inside.

    ``forward(x, stats_rows=None, trace=None)``: ``trace`` (a list) collects ``(layer name, output)`` of every
    layer, feature maps in NHWC, which is what ``dualmeta check-model`` compares.
    """

    def __init__(self, description):
        super().__init__()
        self.description, self.spec = description, description.spec()
        self._make(description.layers)

    def _make(self, layers):
        for layer in layers:
            if isinstance(layer, T.Conv2d):
                shapes = {"weight": (layer.out_channels, layer.in_channels, layer.kernel, layer.kernel)}
                if layer.bias:
                    shapes["bias"] = (layer.out_channels,)
                _child(self, layer.name, lambda: _Tensors(shapes))
            elif isinstance(layer, T.Dense):
                _child(self, layer.name, lambda: _Tensors({"weight": (layer.out_features, layer.in_features),
                                                           "bias": (layer.out_features,)}))
            elif isinstance(layer, T.BatchNorm):
                _child(self, layer.name, lambda: BatchNorm(layer.channels, track_running_stats=layer.track_running_stats))
            elif isinstance(layer, T.Residual):
                self._make(layer.body)
                self._make(layer.shortcut)

    def _get(self, name: str) -> nn.Module:
        return self.get_submodule(name)

    def _run(self, layers, x, stats_rows, trace, prefix="", norm=None, drop=None):
        """``layers`` on NCHW (or flat) ``x``. ``norm(module, x)``, if given, replaces the batch norms' own call.
        ``drop`` maps DropBlock names to their masks (NCHW tensors); a DropBlock without one is the identity.

        Without a ``trace``, an activation followed by a max-pool runs after it (a non-decreasing activation
        commutes with the max exactly, values and gradients alike, and then touches a quarter of the
        elements), and ReLU overwrites this list's own intermediate in place.
        """
        labels, i = T.layer_names(layers, prefix), 0
        while i < len(layers):
            label, layer = labels[i], layers[i]
            if isinstance(layer, T.Conv2d):
                m = self._get(layer.name)
                x = F.conv2d(x, m.weight, getattr(m, "bias", None) if layer.bias else None, stride=layer.stride,
                             padding=layer.padding)
            elif isinstance(layer, T.BatchNorm):
                m = self._get(layer.name)
                x = m(x, stats_rows) if norm is None else norm(m, x)
            elif isinstance(layer, T.Activation):
                fresh = trace is None and i > 0 and isinstance(layers[i - 1], _MADE_ANEW)
                if trace is None and i + 1 < len(layers) and isinstance(layers[i + 1], T.MaxPool) and (
                        layer.kind != "leaky_relu" or layer.slope >= 0):
                    i, fresh = i + 1, True
                    x = F.max_pool2d(x, layers[i].size)
                x = F.relu_(x) if layer.kind == "relu" and fresh else _TWIN_ACTIVATIONS[layer.kind](x, layer)
            elif isinstance(layer, T.MaxPool):
                x = F.max_pool2d(x, layer.size)
            elif isinstance(layer, T.Flatten):
                x = x.flatten(1)  # NCHW: the neutral (C, H, W) order
            elif isinstance(layer, T.GlobalMean):
                x = x.mean(dim=(2, 3))
            elif isinstance(layer, T.Dense):
                m = self._get(layer.name)
                x = F.linear(x, m.weight, m.bias)
            elif isinstance(layer, T.Residual):
                body = self._run(layer.body, x, stats_rows, trace, label + ".", norm, drop)
                x = body + (self._run(layer.shortcut, x, stats_rows, trace, label + ".shortcut.", norm, drop)
                            if layer.shortcut else x)
            elif isinstance(layer, T.DropBlock):
                if drop is not None and layer.name in drop:
                    x = x * drop[layer.name]
            elif isinstance(layer, T.Function):
                x = T.resolve(layer.torch)(x)
            if trace is not None:
                trace.append((label, x.permute(0, 2, 3, 1) if x.dim() == 4 else x))
            i += 1
        return x

    def forward(self, x: torch.Tensor, stats_rows: int | None = None, trace: list | None = None,
                drop: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``drop``: DropBlock masks by layer name, NHWC (``dualmeta.twins.drop_masks``); none: no drop."""
        if len(self.description.input_shape) == 3:
            x = x.permute(0, 3, 1, 2)  # NHWC (neutral) -> NCHW
        return self._run(self.description.layers, x, stats_rows, trace, drop=nchw_masks(drop))

    def embed(self, x: torch.Tensor, stats_rows: int | None = None) -> torch.Tensor:
        """The features before the classifier: every layer but a last ``Dense`` named ``head``."""
        if len(self.description.input_shape) == 3:
            x = x.permute(0, 3, 1, 2)
        return self._run(self.description.features(), x, stats_rows, None)


def nchw_masks(drop: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """DropBlock masks (NHWC, the neutral layout) as the NCHW tensors ``Twin._run`` multiplies by."""
    return None if not drop else {name: mask.permute(0, 3, 1, 2) for name, mask in drop.items()}


class MLP(Twin):
    """The built-in MLP, ``in -> hidden... -> out`` (``dualmeta.twins.mlp``), from its ``dualmeta.weights`` spec."""

    def __init__(self, spec: neutral.ModelSpec):
        super().__init__(T.mlp(**spec.config))


class Conv4(Twin):
    """The built-in conv4 (``dualmeta.twins.conv4``): blocks of (3x3 conv, batch norm, activation, downsample),
    a flatten or mean head, an optional classifier; from its ``dualmeta.weights`` spec. ``forward`` takes NHWC
    images and returns logits, or embeddings when there is no classifier."""

    def __init__(self, spec: neutral.ModelSpec):
        super().__init__(T.conv4(**spec.config))


def build(description, dtype: str = "float32", init: str = "neutral", seed: int = 0) -> Twin:
    """The PyTorch twin of a ``dualmeta.twins.Description`` (neutral initial weights from ``seed``)."""
    return _build(Twin(description), init, seed, dtype)


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
    x_t, d_t = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(direction))
    trace = []
    params = dict(model.named_parameters())
    out = torch.func.functional_call(model, {**{n: b.clone() for n, b in model.named_buffers()}, **params}, (x_t,),
                                     {"trace": trace})
    found = {f"forward/{label}": value.detach().numpy() for label, value in trace}
    names = list(params)
    grads = torch.autograd.grad((out * d_t).sum(), [params[n] for n in names], create_graph=True)
    found.update({f"grads/{n}": g.detach().numpy() for n, g in zip(names, grads)})
    fast = {n: params[n] - inner_lr * g for n, g in zip(names, grads)}
    outer = (functional_call(model, fast, x_t) * d_t).square().sum()
    second = torch.autograd.grad(outer, [params[n] for n in names])
    found.update({f"second_order/{n}": g.numpy() for n, g in zip(names, second)})
    return found
