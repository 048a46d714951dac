"""Model-based meta-learners, TensorFlow side: the sequence models and the learner machinery they share.

Mirror of ``torch_meta/sequence.py``. An episode is read as a sequence (``dualmeta.sequences``): the support
steps ``[f(x_i), slot_i]`` in the episode's order, then every query ``[f(x_q), 0]`` appended *alone* to the
support set. ``f`` is the model's conv4 encoder (classification) or the identity (regression: raw ``x``).
The model's output at a query's step is its prediction: logits over the episode's ways (the first ``ways``
of the head's outputs) or the regression value. No gradient step is taken at test time.

Two models, each a twin of the PyTorch one with the neutral names and layouts of ``dualmeta.sequences``:

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

Keras layouts (converted at the boundary, as every tf_meta tensor): the LSTM kernels are Keras' ``LSTM``
layout, ``kernel (in, 4H)`` and ``recurrent_kernel (H, 4H)``, whose gate order i, f, c, o is PyTorch's
i, f, g, o under another name; the two biases stay two (Keras' one bias is their sum, see
``docs/tf_vs_torch.md``); causal convolution kernels are Keras' ``Conv1D`` layout ``(2, C, out)``.
"""
from __future__ import annotations

import math
from typing import Mapping

import keras
import numpy as np
import tensorflow as tf

from dualmeta import sequences as neutral_seq
from dualmeta import weights as neutral
from dualmeta.episodes import Episode
from tf_meta.core import OPTIMIZERS, Learner, as_tensor, task_accuracy, task_loss
from tf_meta.models import Conv4, _Param, _Weights, functional_call
from tf_meta.protonet import _episode_ways

__all__ = ["LSTMNet", "SNAILNet", "lstm", "snail", "SequenceLearner", "lstm_cell", "causal_conv",
           "causal_attention"]


def _dense(h, weight):
    """``h @ weight`` for ``h`` of any rank as one 2-D product (instead of TensorFlow's broadcasting batched
    matmul of a 3-D by a 2-D tensor; a sinusoid SNAIL gradient went from 89 to 77 ms, one measurement on a
    busy machine)."""
    return tf.reshape(tf.reshape(h, [-1, h.shape[-1]]) @ weight, list(h.shape[:-1]) + [weight.shape[-1]])


# --8<-- [start:lstm_cell]
def lstm_cell(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """One LSTM step, Keras' layout: ``[i, f, g, o] = x kernel + b_ih + h recurrent_kernel + b_hh``."""
    i, f, g, o = tf.split((_dense(x, weight_ih) + bias_ih) + (_dense(h, weight_hh) + bias_hh), 4, axis=-1)
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    return tf.sigmoid(o) * tf.tanh(c), c
# --8<-- [end:lstm_cell]


# --8<-- [start:snail_ops]
def causal_conv(h, weight, bias, dilation: int):
    """Causal convolution, kernel 2, over steps ``(N, T, C)``: ``W[0] h_{t-d} + W[1] h_t + b``.

    ``weight`` is ``(2, C, out)`` (Conv1D's layout); steps before the sequence are zeros (left padding by
    ``dilation``, none on the right: Keras' ``padding='causal'``)."""
    past = tf.pad(h, [[0, 0], [dilation, 0], [0, 0]])[:, :h.shape[1]]
    return _dense(past, weight[0]) + _dense(h, weight[1]) + bias


def causal_attention(h, query, key, value):
    """Causal soft attention over steps ``(N, T, C)``: ``softmax(Q K^T / sqrt(d_k) + M) V``, ``M_ts = -inf``
    for ``s > t``; ``query``/``key``/``value`` are ``(weight, bias)`` pairs (``bias`` may be ``None``)."""
    q, k, v = (_dense(h, w) if b is None else _dense(h, w) + b for w, b in (query, key, value))
    logits = tf.matmul(q, k, transpose_b=True) / math.sqrt(q.shape[-1])
    future = tf.linalg.band_part(tf.ones((h.shape[1], h.shape[1])), 0, -1) - tf.eye(h.shape[1]) > 0
    return tf.nn.softmax(tf.where(future, tf.constant(-np.inf, logits.dtype), logits), axis=-1) @ v
# --8<-- [end:snail_ops]


class _SequenceNet(_Weights, keras.Model):
    """The encoder of a sequence model (``None`` for regression) and the neutral-format conversion."""

    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(name=spec.name, **kwargs)
        self.spec = spec
        encoder = spec.config["encoder"]
        self.encoder = None if encoder is None else Conv4(neutral.conv4_spec(**encoder), dtype=self.dtype_policy)
        self._param_layers = []

    def _tensors(self, prefix: str) -> _Param:
        layer = _Param(self.spec, prefix, dtype=self.dtype_policy)
        self._param_layers.append(layer)
        return layer

    def neutral_variables(self) -> dict[str, keras.Variable]:
        """Neutral name -> Keras variable (in Keras layout), in the spec's order; the encoder's under ``encoder.``."""
        found = {} if self.encoder is None else {f"encoder.{n}": v for n, v in self.encoder.neutral_variables().items()}
        for layer in self._param_layers:
            for suffix, (name, _) in layer.neutral.items():
                found[name] = getattr(layer, suffix)
        return {name: found[name] for name in self.spec.tensors}


class LSTMNet(_SequenceNet):
    """One LSTM layer over the steps and a linear head (see the module docstring)."""

    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(spec, **kwargs)
        self.lstm = self._tensors("lstm")
        self.head = self._tensors("head")

    def _cell(self, x, h, c):
        p = self.lstm
        return lstm_cell(x, h, c, p.weight_ih, p.weight_hh, p.bias_ih, p.bias_hh)

    def _head(self, h):
        return _dense(h, self.head.weight) + self.head.bias

    # --8<-- [start:lstm_read]
    def support_state(self, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        """``{"h", "c"}`` after reading the support steps ``(B, S, D)`` in order from zero states."""
        h = c = tf.zeros((steps.shape[0], self.spec.config["hidden"]), steps.dtype)
        for t in range(steps.shape[1]):
            h, c = self._cell(steps[:, t], h, c)
        return {"h": h, "c": c}

    def query_outputs(self, queries: tf.Tensor, state: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Outputs ``(B, Q, out)``: each query ``(B, Q, D)`` is one step from the support state, alone."""
        h, _ = self._cell(queries, state["h"][:, None], state["c"][:, None])
        return self._head(h)
    # --8<-- [end:lstm_read]

    def sequence_outputs(self, steps: tf.Tensor) -> tf.Tensor:
        """Outputs ``(B, T, out)`` at every step of full sequences ``(B, T, D)`` (causal)."""
        h = c = tf.zeros((steps.shape[0], self.spec.config["hidden"]), steps.dtype)
        outputs = []
        for t in range(steps.shape[1]):
            h, c = self._cell(steps[:, t], h, c)
            outputs.append(self._head(h))
        return tf.stack(outputs, axis=1)


def _pair(t: _Param) -> tuple[tf.Tensor, tf.Tensor | None]:
    return t.weight, (t.bias if "bias" in t.neutral else None)


class SNAILNet(_SequenceNet):
    """TC and causal attention blocks with dense concatenation, and a linear head (see the module docstring)."""

    def __init__(self, spec: neutral.ModelSpec, **kwargs):
        super().__init__(spec, **kwargs)
        cfg = spec.config
        self.dilations = neutral_seq.dilations(cfg["support_size"])
        self.blocks = []
        for b in range(2 * len(cfg["keys"])):
            if b % 2 == 0:
                self.blocks.append([{part: self._tensors(f"blocks.{b}.layers.{i}.{part}")
                                     for part in ("filter", "gate")} for i in range(len(self.dilations))])
            else:
                self.blocks.append({part: self._tensors(f"blocks.{b}.{part}") for part in ("query", "key", "value")})
        self.head = self._tensors("head")

    def _features(self, steps: tf.Tensor) -> tf.Tensor:
        """Features ``(N, T, C)`` of every step of sequences ``(N, T, D)``."""
        h = steps
        for block in self.blocks:
            if isinstance(block, list):
                for layer, dilation in zip(block, self.dilations):
                    f = causal_conv(h, *_pair(layer["filter"]), dilation)
                    g = causal_conv(h, *_pair(layer["gate"]), dilation)
                    h = tf.concat([h, tf.tanh(f) * tf.sigmoid(g)], axis=-1)
            else:
                h = tf.concat([h, causal_attention(h, _pair(block["query"]), _pair(block["key"]),
                                                   _pair(block["value"]))], axis=-1)
        return h

    def _head(self, h):
        return _dense(h, self.head.weight) + self.head.bias

    # --8<-- [start:snail_read]
    def support_state(self, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        """``{"support": features (B, S, C)}`` of the support steps (causal: they never see a query)."""
        return {"support": self._features(steps)}

    def query_outputs(self, queries: tf.Tensor, state: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Outputs ``(B, Q, out)``: each query is step ``S`` after the support set, alone. A layer reads the
        support's features of its input width (dense concatenation keeps them a prefix) and the query's own."""
        support, h = state["support"], queries
        s = support.shape[1]
        for block in self.blocks:
            if isinstance(block, list):
                for layer, dilation in zip(block, self.dilations):
                    width = h.shape[-1]
                    past = support[:, s - dilation, None, :width] if dilation <= s else tf.zeros_like(h[:, :1])
                    f, g = ((_dense(past, w[0]) + _dense(h, w[1]) + b)
                            for w, b in (_pair(layer["filter"]), _pair(layer["gate"])))
                    h = tf.concat([h, tf.tanh(f) * tf.sigmoid(g)], axis=-1)
            else:
                width = h.shape[-1]
                (wq, bq), (wk, _), (wv, bv) = _pair(block["query"]), _pair(block["key"]), _pair(block["value"])
                q, k, v = _dense(h, wq) + bq, _dense(h, wk), _dense(h, wv) + bv
                keys, values = _dense(support[..., :width], wk), _dense(support[..., :width], wv) + bv
                scale = math.sqrt(q.shape[-1])
                logits = tf.concat([tf.matmul(q, keys, transpose_b=True),
                                    tf.reduce_sum(q * k, axis=-1, keepdims=True)], axis=-1) / scale
                p = tf.nn.softmax(logits, axis=-1)
                h = tf.concat([h, p[..., :s] @ values + p[..., s:] * v], axis=-1)
        return self._head(h)
    # --8<-- [end:snail_read]

    def sequence_outputs(self, steps: tf.Tensor) -> tf.Tensor:
        """Outputs ``(B, T, out)`` at every step of full sequences ``(B, T, D)`` (causal)."""
        return self._head(self._features(steps))


def _build(model: _SequenceNet, init: str, seed: int, dtype: str) -> _SequenceNet:
    if model.encoder is not None:  # creates the encoder's variables
        cfg = model.encoder.spec.config
        model.encoder(np.zeros((2, cfg["image_size"], cfg["image_size"], cfg["in_channels"]), dtype=dtype))
    if init == "neutral":
        model.set_weights(neutral.initialize(model.spec, seed=seed, dtype=dtype))
    elif init != "native":
        raise ValueError(f"Expected one of ['native', 'neutral']; received init={init!r}")
    return model


def lstm(ways: int | None = None, hidden: int = 128, encoder: dict | None = None, in_features: int = 1,
         out_features: int = 1, dtype: str = "float32", init: str = "neutral", seed: int = 0,
         forget_bias: float = 0.0) -> LSTMNet:
    """Builds the LSTM model of ``dualmeta.sequences.lstm_spec`` (see there for the arguments)."""
    spec = neutral_seq.lstm_spec(ways, hidden, encoder, in_features, out_features, forget_bias)
    return _build(LSTMNet(spec, dtype=neutral.check_dtype(dtype)), init, seed, dtype)


def snail(ways: int | None = None, support_size: int = 5, filters: int = 128, keys: tuple[int, ...] = (64, 256),
          values: tuple[int, ...] = (32, 128), encoder: dict | None = None, in_features: int = 1,
          out_features: int = 1, dtype: str = "float32", init: str = "neutral", seed: int = 0) -> SNAILNet:
    """Builds the SNAIL model of ``dualmeta.sequences.snail_spec`` (see there for the arguments)."""
    spec = neutral_seq.snail_spec(ways, support_size, filters, tuple(keys), tuple(values), encoder, in_features,
                                  out_features)
    return _build(SNAILNet(spec, dtype=neutral.check_dtype(dtype)), init, seed, dtype)


class SequenceLearner(Learner):
    """The machinery of the model-based learners: framing, encoding, training, evaluation.

    The model (``LSTMNet`` or ``SNAILNet``) defines ``support_state(steps)``, ``query_outputs(queries, state)``
    and ``sequence_outputs(steps)``; everything else is shared.
    """

    MODEL = ""  # the model name (spec.name) a subclass accepts

    def __init__(self, model, meta_lr: float = 1e-3, meta_optimizer: str = "adam"):
        name = getattr(getattr(model, "spec", None), "name", None)
        if name != self.MODEL:
            raise ValueError(f"{type(self).__name__} needs a {self.MODEL!r} model (tf_meta.sequence."
                             f"{self.MODEL}(...)); received a {name or type(model).__name__!r} model")
        if meta_optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={meta_optimizer!r}")
        if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not meta_lr > 0:
            raise ValueError(f"Expected a positive meta_lr; received meta_lr={meta_lr!r}")
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer)
        self.ways = model.spec.config["ways"]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Encoder features of numpy inputs (evaluation mode; regression inputs come back unchanged)."""
        encode = self._compile("embed", lambda x: self._encode(x, training=False))
        return encode(as_tensor(x, self.dtype)).numpy()

    def adapt(self, episode: Episode, steps: int | None = None) -> dict:
        """The support state (LSTM: ``h, c``; SNAIL: the support features) for ``predict``; ``steps`` is unused."""
        framed, _ = self._frame(episode)

        def support(x, slots):
            return self.model.support_state(self._steps(x, slots, training=False))

        return self._compile("adapt", support)(as_tensor(framed.support_x, self.dtype),
                                               as_tensor(framed.support_slots, self.dtype))

    def predict(self, x: np.ndarray, weights: Mapping | None = None) -> np.ndarray:
        """Outputs of queries ``x`` after the support set of ``weights = adapt(episode)``, each query read alone:
        logits over the model's ``ways`` outputs (an episode with fewer ways uses the first ones), or the
        regression values."""
        if weights is None:
            raise ValueError(f"{type(self).__name__}.predict needs the support state: "
                             "predict(x, learner.adapt(episode))")
        x = np.asarray(x)[None]
        width = self.ways if self.ways is not None else self.model.spec.config["out_features"]
        state = {k: tf.convert_to_tensor(v) for k, v in weights.items()}

        def outputs(x, slots, state):
            return self.model.query_outputs(self._steps(x, slots, training=False), state)

        out = self._compile("predict", outputs)(as_tensor(x, self.dtype),
                                                as_tensor(np.zeros(x.shape[:2] + (width,)), self.dtype), state)
        return out[0].numpy()

    def sequence_outputs(self, x: np.ndarray, slots: np.ndarray) -> np.ndarray:
        """Outputs at every step of one explicit sequence: inputs ``x`` ``(T, ...)``, label slots ``(T, width)``
        (evaluation mode). The last step of ``support, (x_q, 0)`` is what ``predict`` gives for ``x_q``."""
        def outputs(x, slots):
            return self.model.sequence_outputs(self._steps(x, slots, training=False))

        compiled = self._compile("sequence", outputs)
        x, slots = as_tensor(np.asarray(x)[None], self.dtype), as_tensor(np.asarray(slots)[None], self.dtype)
        return compiled(x, slots)[0].numpy()

    def meta_gradients(self, batch: Episode) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Gradients of the mean query loss over the meta-batch (neutral layout) and the metrics; no update."""
        grads, metrics = self._gradients(batch, update_stats=False)
        return {n: self.to_neutral(n, g.numpy()) for n, g in grads.items()}, metrics

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
    def _compile(self, key, fn):
        """``Learner._compile`` without AutoGraph: the sequence code loops over Python integers only, and
        converting it took most of the tracing time (seconds per function)."""
        if key not in self._compiled:
            self._compiled[key] = tf.function(fn, autograph=False)
        return self._compiled[key]

    def _frame(self, episode: Episode):
        """The numpy framing of an episode or meta-batch and its ways (``None`` for regression)."""
        framed = neutral_seq.frame(episode, self.ways)
        neutral_seq.check_sequence_episode(self.model.spec, framed)
        ways = None if self.ways is None else _episode_ways(np.asarray(episode.support_y))
        return framed, ways

    def _encode(self, x: tf.Tensor, training: bool, update_stats: bool = False) -> tf.Tensor:
        """The encoder on NHWC images (regression: the identity); batch norm as in ``protonet.py``."""
        encoder = self.model.encoder
        if encoder is None:
            return x
        if training and not update_stats and encoder.non_trainable_variables:
            params = {n: tf.convert_to_tensor(v) for n, v in encoder.neutral_variables().items() if v.trainable}
            return functional_call(encoder, params, x, training=True)
        return encoder(x, training=training)

    def _steps(self, x: tf.Tensor, slots: tf.Tensor, training: bool, update_stats: bool = False) -> tf.Tensor:
        """Steps ``(B, N, D)``: encoded inputs ``(B, N, ...)`` beside their label slots ``(B, N, width)``."""
        z = self._encode(tf.reshape(x, [-1] + list(x.shape[2:])), training, update_stats)
        return tf.concat([tf.reshape(z, list(x.shape[:2]) + list(z.shape[1:])), slots], axis=-1)

    def _restrict(self, outputs: tf.Tensor, ways: int | None) -> tf.Tensor:
        return outputs if ways is None else outputs[..., :ways]

    def _outputs(self, x, slots, support: int, ways, training: bool, update_stats: bool = False) -> tf.Tensor:
        """Query outputs ``(B, Q, out)``; support and query inputs (``x``, ``slots``: support steps first)
        encoded as one batch."""
        steps = self._steps(x, slots, training, update_stats)
        outputs = self.model.query_outputs(steps[:, support:], self.model.support_state(steps[:, :support]))
        outputs = self._restrict(outputs, ways)
        return tf.reshape(outputs, [-1, outputs.shape[-1]])

    def _metrics(self, outputs, query_y):
        targets = tf.reshape(query_y, [outputs.shape[0]] + list(query_y.shape[2:]))
        loss = task_loss(outputs, targets)
        accuracy = task_accuracy(outputs, targets) if self.ways is not None else tf.zeros((), outputs.dtype)
        return loss, accuracy

    def _tensors_of(self, framed):
        x = np.concatenate([framed.support_x, framed.query_x], axis=1)
        slots = np.concatenate([framed.support_slots, framed.query_slots], axis=1)
        return as_tensor(x, self.dtype), as_tensor(slots, self.dtype), as_tensor(framed.query_y, self.dtype)

    def _result(self, loss, accuracy) -> dict[str, float]:
        return {"loss": float(loss)} if self.ways is None else {"loss": float(loss), "accuracy": float(accuracy)}

    # --8<-- [start:episode_loss]
    def _batch_gradients(self, x, slots, query_y, support: int, ways, update_stats: bool):
        variables = list(self.parameters().values())
        with tf.GradientTape() as tape:
            loss, accuracy = self._metrics(self._outputs(x, slots, support, ways, True, update_stats), query_y)
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, loss, accuracy

    def _gradients(self, batch: Episode, update_stats: bool):
        framed, ways = self._frame(batch)
        support = framed.support_slots.shape[1]
        encoder = self.model.encoder
        update_stats = update_stats and encoder is not None and bool(encoder.non_trainable_variables)  # one trace

        def step(x, slots, y):
            return self._batch_gradients(x, slots, y, support, ways, update_stats)

        step = self._compile(("gradients", support, ways, update_stats), step)
        grads, loss, accuracy = step(*self._tensors_of(framed))
        return dict(zip(self.parameters(), grads)), self._result(loss, accuracy)
    # --8<-- [end:episode_loss]

    def _episode_metrics(self, episode: Episode, steps: int | None) -> dict[str, float]:
        framed, ways = self._frame(episode)
        support = framed.support_slots.shape[1]

        def metrics(x, slots, y):
            return self._metrics(self._outputs(x, slots, support, ways, training=False), y)

        return self._result(*self._compile(("metrics", support, ways), metrics)(*self._tensors_of(framed)))


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
