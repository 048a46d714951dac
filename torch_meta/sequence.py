"""Model-based meta-learners, PyTorch side: the sequence models and the learner machinery they share.

Mirror of ``tf_meta/sequence.py``. An episode is read as a sequence (``dualmeta.sequences``): the support
steps ``[f(x_i), slot_i]`` in the episode's order, then every query ``[f(x_q), 0]`` appended *alone* to the
support set. ``f`` is the model's conv4 encoder (classification) or the identity (regression: raw ``x``).
The model's output at a query's step is its prediction: logits over the episode's ways (the first ``ways``
of the head's outputs) or the regression value. No gradient step is taken at test time.

Two models, each a twin of the Keras one with the neutral names and layouts of ``dualmeta.sequences``:

* :class:`LSTMNet`: one LSTM layer, written out with PyTorch's gates and two biases,
  ``[i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh``, ``c' = s(f) c + s(i) tanh(g)``,
  ``h' = s(o) tanh(c')`` (``s`` the logistic sigmoid), from ``h = c = 0``; a linear head on ``h``.
  The support state ``(h, c)`` after the support set is what ``adapt`` returns; a query is one more step.
* :class:`SNAILNet`: blocks of TC (dense layers ``[H, tanh(conv_f(H)) * s(conv_g(H))]`` with causal
  convolutions of kernel 2 and dilations 1, 2, 4, ...: ``conv(H)_t = W_0 H_{t-d} + W_1 H_t + b``, zero
  before the sequence) and causal attention (``[H, softmax(Q K^T / sqrt(d_k) + M) V]``, ``M`` = -inf above
  the diagonal); a linear head. ``adapt`` returns the support's features; a query's step attends to the
  support set and itself.

Running every query from the support state gives the same numbers as ``B x Q`` separate sequences
``support, x_q`` (``sequence_outputs`` computes those; the parity tests compare).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dualmeta import sequences as neutral_seq
from dualmeta import weights as neutral
from dualmeta.episodes import Episode
from torch_meta.core import OPTIMIZERS, Learner, task_accuracy, task_loss
from torch_meta.models import Conv4, _build, _Weights, functional_call
from torch_meta.protonet import _episode_ways

__all__ = ["LSTMNet", "SNAILNet", "lstm", "snail", "SequenceLearner", "lstm_cell", "causal_conv",
           "causal_attention"]


# --8<-- [start:lstm_cell]
def lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """One LSTM step, PyTorch's layout: ``[i, f, g, o] = x W_ih^T + b_ih + h W_hh^T + b_hh``."""
    i, f, g, o = ((x @ weight_ih.T + bias_ih) + (h @ weight_hh.T + bias_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
# --8<-- [end:lstm_cell]


# --8<-- [start:snail_ops]
def causal_conv(h, weight, bias, dilation: int):
    """Causal convolution, kernel 2, over steps ``(N, T, C)``: ``W[..., 0] h_{t-d} + W[..., 1] h_t + b``.

    ``weight`` is ``(out, C, 2)`` (Conv1d's layout); steps before the sequence are zeros (left padding by
    ``dilation``, none on the right)."""
    past = F.pad(h, (0, 0, dilation, 0))[:, :h.shape[1]]
    return past @ weight[:, :, 0].T + h @ weight[:, :, 1].T + bias


def causal_attention(h, query, key, value):
    """Causal soft attention over steps ``(N, T, C)``: ``softmax(Q K^T / sqrt(d_k) + M) V``, ``M_ts = -inf``
    for ``s > t``; ``query``/``key``/``value`` are ``(weight, bias)`` pairs (``bias`` may be ``None``)."""
    q, k, v = (h @ w.T if b is None else h @ w.T + b for w, b in (query, key, value))
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    future = torch.ones(h.shape[1], h.shape[1], dtype=torch.bool, device=h.device).triu(1)
    return torch.softmax(logits.masked_fill(future, float("-inf")), dim=-1) @ v
# --8<-- [end:snail_ops]


class _SequenceNet(_Weights, nn.Module):
    """The encoder of a sequence model (``None`` for regression) and the neutral-format conversion."""

    def __init__(self, spec: neutral.ModelSpec):
        super().__init__()
        self.spec = spec
        encoder = spec.config["encoder"]
        self.encoder = None if encoder is None else Conv4(neutral.conv4_spec(**encoder))


class _Tensors(nn.Module):
    """Holds parameters under given names (e.g. ``weight_ih``) with the spec's shapes."""

    def __init__(self, spec: neutral.ModelSpec, prefix: str):
        super().__init__()
        for name, tensor in spec.tensors.items():
            if name.rsplit(".", 1)[0] == prefix:
                self.register_parameter(name.rsplit(".", 1)[1], nn.Parameter(torch.zeros(tensor.shape)))


class LSTMNet(_SequenceNet):
    """One LSTM layer over the steps and a linear head (see the module docstring)."""

    def __init__(self, spec: neutral.ModelSpec):
        super().__init__(spec)
        self.lstm = _Tensors(spec, "lstm")
        self.head = _Tensors(spec, "head")

    def _cell(self, x, h, c):
        p = self.lstm
        return lstm_cell(x, h, c, p.weight_ih, p.weight_hh, p.bias_ih, p.bias_hh)

    def _head(self, h):
        return h @ self.head.weight.T + self.head.bias

    # --8<-- [start:lstm_read]
    def support_state(self, steps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"h", "c"}`` after reading the support steps ``(B, S, D)`` in order from zero states."""
        h = c = steps.new_zeros((steps.shape[0], self.spec.config["hidden"]))
        for t in range(steps.shape[1]):
            h, c = self._cell(steps[:, t], h, c)
        return {"h": h, "c": c}

    def query_outputs(self, queries: torch.Tensor, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Outputs ``(B, Q, out)``: each query ``(B, Q, D)`` is one step from the support state, alone."""
        h, _ = self._cell(queries, state["h"][:, None], state["c"][:, None])
        return self._head(h)
    # --8<-- [end:lstm_read]

    def sequence_outputs(self, steps: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, T, out)`` at every step of full sequences ``(B, T, D)`` (causal)."""
        h = c = steps.new_zeros((steps.shape[0], self.spec.config["hidden"]))
        outputs = []
        for t in range(steps.shape[1]):
            h, c = self._cell(steps[:, t], h, c)
            outputs.append(self._head(h))
        return torch.stack(outputs, dim=1)


class _TCBlock(nn.Module):
    def __init__(self, spec, prefix: str, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({part: _Tensors(spec, f"{prefix}.layers.{i}.{part}")
                                                   for part in ("filter", "gate")}) for i in range(layers))


class _AttentionBlock(nn.Module):
    def __init__(self, spec, prefix: str):
        super().__init__()
        self.query, self.key, self.value = (_Tensors(spec, f"{prefix}.{part}") for part in ("query", "key", "value"))


def _pair(t: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    return t.weight, getattr(t, "bias", None)


class SNAILNet(_SequenceNet):
    """TC and causal attention blocks with dense concatenation, and a linear head (see the module docstring)."""

    def __init__(self, spec: neutral.ModelSpec):
        super().__init__(spec)
        cfg = spec.config
        self.dilations = neutral_seq.dilations(cfg["support_size"])
        self.blocks = nn.ModuleList()
        for b in range(2 * len(cfg["keys"])):
            self.blocks.append(_TCBlock(spec, f"blocks.{b}", len(self.dilations)) if b % 2 == 0
                               else _AttentionBlock(spec, f"blocks.{b}"))
        self.head = _Tensors(spec, "head")

    def _features(self, steps: torch.Tensor) -> torch.Tensor:
        """Features ``(N, T, C)`` of every step of sequences ``(N, T, D)``."""
        h = steps
        for block in self.blocks:
            if isinstance(block, _TCBlock):
                for layer, dilation in zip(block.layers, self.dilations):
                    f = causal_conv(h, *_pair(layer["filter"]), dilation)
                    g = causal_conv(h, *_pair(layer["gate"]), dilation)
                    h = torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], dim=-1)
            else:
                h = torch.cat([h, causal_attention(h, _pair(block.query), _pair(block.key), _pair(block.value))],
                              dim=-1)
        return h

    def _head(self, h):
        return h @ self.head.weight.T + self.head.bias

    # --8<-- [start:snail_read]
    def support_state(self, steps: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"support": features (B, S, C)}`` of the support steps (causal: they never see a query)."""
        return {"support": self._features(steps)}

    def query_outputs(self, queries: torch.Tensor, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Outputs ``(B, Q, out)``: each query is step ``S`` after the support set, alone. A layer reads the
        support's features of its input width (dense concatenation keeps them a prefix) and the query's own."""
        support, h = state["support"], queries
        s = support.shape[1]
        for block in self.blocks:
            if isinstance(block, _TCBlock):
                for layer, dilation in zip(block.layers, self.dilations):
                    width = h.shape[-1]
                    past = support[:, s - dilation, None, :width] if dilation <= s else h.new_zeros(h[:, :1].shape)
                    f, g = ((past @ w[:, :, 0].T + h @ w[:, :, 1].T + b)
                            for w, b in (_pair(layer["filter"]), _pair(layer["gate"])))
                    h = torch.cat([h, torch.tanh(f) * torch.sigmoid(g)], dim=-1)
            else:
                width = h.shape[-1]
                (wq, bq), (wk, _), (wv, bv) = _pair(block.query), _pair(block.key), _pair(block.value)
                q, k, v = h @ wq.T + bq, h @ wk.T, h @ wv.T + bv
                keys, values = support[..., :width] @ wk.T, support[..., :width] @ wv.T + bv
                scale = math.sqrt(q.shape[-1])
                logits = torch.cat([q @ keys.transpose(1, 2), (q * k).sum(-1, keepdim=True)], dim=-1) / scale
                p = torch.softmax(logits, dim=-1)
                h = torch.cat([h, p[..., :s] @ values + p[..., s:] * v], dim=-1)
        return self._head(h)
    # --8<-- [end:snail_read]

    def sequence_outputs(self, steps: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, T, out)`` at every step of full sequences ``(B, T, D)`` (causal)."""
        return self._head(self._features(steps))


def lstm(ways: int | None = None, hidden: int = 128, encoder: dict | None = None, in_features: int = 1,
         out_features: int = 1, dtype: str = "float32", init: str = "neutral", seed: int = 0,
         forget_bias: float = 0.0) -> LSTMNet:
    """Builds the LSTM model of ``dualmeta.sequences.lstm_spec`` (see there for the arguments)."""
    spec = neutral_seq.lstm_spec(ways, hidden, encoder, in_features, out_features, forget_bias)
    return _build(LSTMNet(spec), init, seed, dtype)


def snail(ways: int | None = None, support_size: int = 5, filters: int = 128, keys: tuple[int, ...] = (64, 256),
          values: tuple[int, ...] = (32, 128), encoder: dict | None = None, in_features: int = 1,
          out_features: int = 1, dtype: str = "float32", init: str = "neutral", seed: int = 0) -> SNAILNet:
    """Builds the SNAIL model of ``dualmeta.sequences.snail_spec`` (see there for the arguments)."""
    spec = neutral_seq.snail_spec(ways, support_size, filters, tuple(keys), tuple(values), encoder, in_features,
                                  out_features)
    return _build(SNAILNet(spec), init, seed, dtype)


class SequenceLearner(Learner):
    """The machinery of the model-based learners: framing, encoding, training, evaluation.

    The model (``LSTMNet`` or ``SNAILNet``) defines ``support_state(steps)``, ``query_outputs(queries, state)``
    and ``sequence_outputs(steps)``; everything else is shared.
    """

    MODEL = ""  # the model name (spec.name) a subclass accepts

    def __init__(self, model, meta_lr: float = 1e-3, meta_optimizer: str = "adam"):
        name = getattr(getattr(model, "spec", None), "name", None)
        if name != self.MODEL:
            raise ValueError(f"{type(self).__name__} needs a {self.MODEL!r} model (torch_meta.sequence."
                             f"{self.MODEL}(...)); received a {name or type(model).__name__!r} model")
        if meta_optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={meta_optimizer!r}")
        if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not meta_lr > 0:
            raise ValueError(f"Expected a positive meta_lr; received meta_lr={meta_lr!r}")
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer)
        self.ways = model.spec.config["ways"]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Encoder features of numpy inputs (evaluation mode; regression inputs come back unchanged)."""
        with torch.no_grad():
            return self._encode(self._as_tensor(x), training=False).cpu().numpy()

    def adapt(self, episode: Episode, steps: int | None = None) -> dict:
        """The support state (LSTM: ``h, c``; SNAIL: the support features) for ``predict``; ``steps`` is unused."""
        framed, _ = self._frame(episode)
        with torch.no_grad():
            return self.model.support_state(self._steps(framed.support_x, framed.support_slots, training=False))

    def predict(self, x: np.ndarray, weights: Mapping | None = None) -> np.ndarray:
        """Outputs of queries ``x`` after the support set of ``weights = adapt(episode)``, each query read alone:
        logits over the model's ``ways`` outputs (an episode with fewer ways uses the first ones), or the
        regression values."""
        if weights is None:
            raise ValueError(f"{type(self).__name__}.predict needs the support state: "
                             "predict(x, learner.adapt(episode))")
        x = np.asarray(x)[None]
        width = self.ways if self.ways is not None else self.model.spec.config["out_features"]
        with torch.no_grad():
            queries = self._steps(x, np.zeros(x.shape[:2] + (width,)), training=False)
            return self.model.query_outputs(queries, weights)[0].cpu().numpy()

    def sequence_outputs(self, x: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Outputs at every step of one explicit sequence: inputs ``x`` ``(T, ...)``, label slots ``(T, width)``
        (evaluation mode). The last step of ``support, (x_q, 0)`` is what ``predict`` gives for ``x_q``."""
        with torch.no_grad():
            return self.model.sequence_outputs(self._steps(np.asarray(x)[None], np.asarray(slots)[None],
                                                           training=False))[0].cpu().numpy()

    def meta_gradients(self, batch: Episode) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Gradients of the mean query loss over the meta-batch (neutral layout) and the metrics; no update."""
        grads, metrics = self._gradients(batch, update_stats=False)
        return {n: g.cpu().numpy() for n, g in grads.items()}, metrics

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One update on a stacked meta-batch; returns the mean query loss (and accuracy)."""
        grads, metrics = self._gradients(batch, update_stats=True)
        self.optimizer.apply(grads)
        return metrics

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Loads neutral weights; refuses, in one line with the fix, those of a regression model for a
        classifier (or vice versa) or of another head size."""
        _check_kind(self.model.spec, weights)
        super().set_weights(weights)

    # -- backend machinery --------------------------------------------------------------------------
    def _frame(self, episode: Episode):
        """The numpy framing of an episode or meta-batch and its ways (``None`` for regression)."""
        framed = neutral_seq.frame(episode, self.ways)
        neutral_seq.check_sequence_episode(self.model.spec, framed)
        ways = None if self.ways is None else _episode_ways(np.asarray(episode.support_y))
        return framed, ways

    def _encode(self, x: torch.Tensor, training: bool, update_stats: bool = False) -> torch.Tensor:
        """The encoder on NHWC images (regression: the identity); batch norm as in ``protonet.py``."""
        encoder = self.model.encoder
        if encoder is None:
            return x
        if training and update_stats:
            encoder.train()
            return encoder(x)
        return functional_call(encoder, dict(encoder.named_parameters()), x, training=training)

    def _steps(self, x: np.ndarray, slots: np.ndarray, training: bool, update_stats: bool = False) -> torch.Tensor:
        """Steps ``(B, N, D)``: encoded inputs ``(B, N, ...)`` beside their label slots ``(B, N, width)``."""
        x = self._as_tensor(x)
        z = self._encode(x.reshape((-1,) + tuple(x.shape[2:])), training, update_stats)
        return torch.cat([z.reshape(x.shape[:2] + z.shape[1:]), self._as_tensor(slots)], dim=-1)

    def _restrict(self, outputs: torch.Tensor, ways: int | None) -> torch.Tensor:
        return outputs if ways is None else outputs[..., :ways]

    def _outputs(self, framed, ways, training: bool, update_stats: bool = False) -> torch.Tensor:
        """Query outputs ``(B, Q, out)``; support and query inputs encoded as one batch."""
        b, s, q = framed.support_slots.shape[0], framed.support_slots.shape[1], framed.query_slots.shape[1]
        x = np.concatenate([framed.support_x, framed.query_x], axis=1)
        steps = self._steps(x, np.concatenate([framed.support_slots, framed.query_slots], axis=1), training,
                            update_stats)
        outputs = self.model.query_outputs(steps[:, s:], self.model.support_state(steps[:, :s]))
        return self._restrict(outputs, ways).reshape(b * q, -1)

    def _metrics(self, outputs, framed):
        targets = self._as_tensor(framed.query_y.reshape((outputs.shape[0],) + framed.query_y.shape[2:]))
        loss = task_loss(outputs, targets)
        accuracy = task_accuracy(outputs.detach(), targets) if self.ways is not None else None
        return loss, accuracy

    # --8<-- [start:episode_loss]
    def _gradients(self, batch: Episode, update_stats: bool):
        framed, ways = self._frame(batch)
        params = self.parameters()
        with torch.enable_grad():
            loss, accuracy = self._metrics(self._outputs(framed, ways, True, update_stats), framed)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        grads = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(params.items(), grads)}
        metrics = {"loss": float(loss.detach())}
        if accuracy is not None:
            metrics["accuracy"] = float(accuracy)
        return grads, metrics
    # --8<-- [end:episode_loss]

    def _episode_metrics(self, episode: Episode, steps: int | None) -> dict[str, float]:
        framed, ways = self._frame(episode)
        with torch.no_grad():
            loss, accuracy = self._metrics(self._outputs(framed, ways, training=False), framed)
        return {"loss": float(loss)} if accuracy is None else {"loss": float(loss), "accuracy": float(accuracy)}


def _check_kind(spec: neutral.ModelSpec, weights: Mapping[str, np.ndarray]) -> None:
    """One-line refusals for weights of another kind of sequence model (the generic check lists tensors)."""
    cfg = spec.config
    has_encoder = any(name.startswith("encoder.") for name in weights)
    built = f"classification (ways={cfg['ways']})" if cfg["ways"] is not None else "regression"
    if has_encoder != (cfg["encoder"] is not None):
        given = "a classifier with an image encoder" if has_encoder else "a regression model (no encoder)"
        fix = "--tasks=omniglot" if has_encoder else "--tasks=sinusoid"
        raise ValueError(f"These {spec.name} weights are of {given}, but this {spec.name} model is built for "
                         f"{built}; build it like the checkpoint ({fix}, or "
                         f"ways={'<ways>' if has_encoder else 'None'})")
    head = np.shape(weights.get("head.bias", ()))
    if head and head[0] != spec.tensors["head.bias"].shape[0]:
        raise ValueError(f"These {spec.name} weights have a head of {head[0]} outputs, this model has "
                         f"{spec.tensors['head.bias'].shape[0]}; build it with ways={head[0]} (--ways={head[0]}) "
                         "to load them")
