"""Matching Networks (Vinyals et al. 2016), PyTorch side. Mirror of ``tf_meta/matchingnet.py``.

An encoder embeds the support and query images of an episode as one batch (``g`` for the support set,
``f`` for the queries; both are the model unless ``fce=True``). A query attends over the support set with
a softmax over cosine similarities, and its class probabilities are the attention-weighted sum of the
one-hot support labels:

    a(x, x_i) = softmax_i(s * cos(f(x), g(x_i))),        p(y = k | x) = sum_{i: y_i = k} a(x, x_i)

with ``s = cosine_scale`` (1.0, the paper's plain cosine, by default) and norms ``sqrt(|z|^2 + 1e-12)``.
``predict`` and the loss use ``log p`` (computed as ``log(sum_{i in k} e_i) - log(sum_i e_i)`` with
``e_i = exp(s_i - max_j s_j)``, so it cannot underflow for ``cosine_scale`` up to ~40 in float32); the loss
is the negative log-likelihood of the query labels, averaged over queries and episodes.

Full-context embeddings (``fce=True``, the paper's appendix): ``g(x_i) = g'(x_i) + h_fw_i + h_bw_i``, a
bidirectional LSTM (hidden size = embedding size) over the support embeddings ``g'`` in the episode's
order; ``f(x) = h_K`` after ``K = fce_steps`` steps of an attention LSTM that reads the support set:

    r = softmax(h_{k-1} g^T) g,    (h', c_k) = LSTM(f'(x), [h_{k-1}, r], c_{k-1}),    h_k = h' + f'(x)

from ``h_0 = c_0 = 0``. The LSTM cells are written out (gates ``i, f, g, o`` as in PyTorch, one weight on
the concatenated ``[input, hidden]`` and one bias, forget bias 0), so both backends compute the same
function. Their tensors are learner tensors in the neutral format: ``fce.support_forward.{weight,bias}``,
``fce.support_backward.{weight,bias}`` (``(4D, 2D)``, ``(4D,)``) and ``fce.query.{weight,bias}``
(``(4D, 3D)``, ``(4D,)``), layout ``(out, in)``, drawn from U(-1/sqrt(D), 1/sqrt(D)) seeded by ``seed``.

Training, evaluation, batch norm (running statistics if the model tracks them, else batch statistics of
the episode) and the learning-rate decay are those of :class:`ProtoNet` (see ``protonet.py``).
``adapt(episode)`` returns ``{"support": g (support, D), "labels": one-hot (support, ways)}``;
``predict(x, weights)`` returns the log-probabilities of ``x``; ``attention(episode)`` returns the attention
weights ``(queries, support)`` as numpy (rows sum to 1).

Arguments (defaults): ``model``, ``meta_lr=1e-3``, ``fce=False``, ``fce_steps=5``, ``cosine_scale=1.0``,
``lr_decay_every=None``, ``lr_decay=0.5``, ``meta_optimizer='adam'``, ``seed=0`` (FCE initial weights).

Example:
    >>> import numpy as np
    >>> from dualmeta.episodes import ClassDataset, ClassificationTasks
    >>> from torch_meta import models, matchingnet
    >>> data = ClassDataset.from_grouped(np.random.default_rng(0).random((10, 6, 28, 28), dtype=np.float32))
    >>> tasks = ClassificationTasks(data, ways=5, shots=1, queries=3, seed=0)
    >>> learner = matchingnet.MatchingNet(models.conv4(hidden=8, downsample="maxpool"), fce=True)
    >>> sorted(learner.meta_train_step(tasks.batch(0, 1)))
    ['accuracy', 'loss']
    >>> learner.attention(tasks.episode(1)).sum(axis=1).round(6).tolist()
    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]

References: Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. Matching Networks for One Shot Learning.
NeurIPS 2016.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dualmeta.episodes import Episode
from torch_meta.protonet import MetricLearner, _normalize

__all__ = ["MatchingNet"]


def _fce_weights(size: int, seed: int, dtype: str) -> dict[str, np.ndarray]:
    """Seeded initial FCE tensors (neutral names and layouts), the same in both backends."""
    shapes = {"fce.support_forward.weight": (4 * size, 2 * size), "fce.support_forward.bias": (4 * size,),
              "fce.support_backward.weight": (4 * size, 2 * size), "fce.support_backward.bias": (4 * size,),
              "fce.query.weight": (4 * size, 3 * size), "fce.query.bias": (4 * size,)}
    bound = 1.0 / math.sqrt(size)
    return {name: np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 10_000 + i])))
            .uniform(-bound, bound, size=shape).astype(dtype) for i, (name, shape) in enumerate(shapes.items())}


# --8<-- [start:lstm_cell]
def _lstm_cell(x, h, c, weight, bias):
    """One LSTM step: gates ``i, f, g, o = [x, h] W^T + b``."""
    i, f, g, o = (torch.cat([x, h], dim=-1) @ weight.T + bias).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c
# --8<-- [end:lstm_cell]


class MatchingNet(MetricLearner):
    """Matching Networks: cosine attention over the support set; optional full-context embeddings."""

    def __init__(self, model, meta_lr: float = 1e-3, fce: bool = False, fce_steps: int = 5,
                 cosine_scale: float = 1.0, lr_decay_every: int | None = None, lr_decay: float = 0.5,
                 meta_optimizer: str = "adam", seed: int = 0):
        super().__init__(model, meta_lr=meta_lr, lr_decay_every=lr_decay_every, lr_decay=lr_decay,
                         meta_optimizer=meta_optimizer)
        if not isinstance(fce, (bool, np.bool_)):
            raise ValueError(f"Expected fce to be True or False; received fce={fce!r}")
        if isinstance(fce_steps, bool) or not isinstance(fce_steps, (int, np.integer)) or fce_steps <= 0:
            raise ValueError(f"Expected fce_steps to be a positive integer; received fce_steps={fce_steps!r}")
        if isinstance(cosine_scale, bool) or not isinstance(cosine_scale, (int, float)) or not cosine_scale > 0:
            raise ValueError(f"Expected a positive cosine_scale; received cosine_scale={cosine_scale!r}")
        self.fce, self.fce_steps, self.cosine_scale = bool(fce), int(fce_steps), float(cosine_scale)
        if self.fce:
            dtype = str(self.dtype).replace("torch.", "")
            for name, value in _fce_weights(self._embedding_size(), seed, dtype).items():
                self.extra[name] = torch.tensor(value, device=self._device).requires_grad_(True)

    def attention(self, episode: Episode) -> np.ndarray:
        """Attention weights ``(queries, support)`` of each query over the support set (rows sum to 1)."""
        ways, sx, sy, qx, _ = self._episode(episode)
        with torch.no_grad():
            support_z, onehot, query_z = self._embeddings(sx, sy, qx, ways, training=False)
            return torch.softmax(self._similarities(query_z, self._fit(support_z, onehot)), dim=-1).cpu().numpy()

    # -- backend machinery --------------------------------------------------------------------------
    def _embedding_size(self) -> int:
        cfg = self.model.spec.config
        shape = (cfg["in_features"],) if self.model.spec.name == "mlp" else (
            cfg["image_size"], cfg["image_size"], cfg["in_channels"])
        with torch.no_grad():
            probe = torch.zeros((2,) + shape, dtype=self.dtype, device=self._device)
            return int(self._encode(probe, training=False).shape[-1])

    def _lstm(self, xs: torch.Tensor, prefix: str) -> torch.Tensor:
        """Hidden states ``(T, D)`` of an LSTM run over the rows of ``xs`` in order, from zero states."""
        weight, bias = self.extra[prefix + ".weight"], self.extra[prefix + ".bias"]
        h = c = xs.new_zeros((1, xs.shape[1]))
        states = []
        for x in xs:
            h, c = _lstm_cell(x[None], h, c, weight, bias)
            states.append(h)
        return torch.cat(states)

    # --8<-- [start:attention]
    def _fit(self, support_z, onehot):
        if self.fce:
            forward = self._lstm(support_z, "fce.support_forward")
            backward = self._lstm(support_z.flip(0), "fce.support_backward").flip(0)
            support_z = support_z + forward + backward
        return {"support": support_z, "labels": onehot}

    def _similarities(self, query_z: torch.Tensor, state) -> torch.Tensor:
        """``cosine_scale * cos(f(x), g(x_i))``, ``(queries, support)``, with the FCE query embedding if any."""
        support = state["support"]
        if self.fce:
            weight, bias = self.extra["fce.query.weight"], self.extra["fce.query.bias"]
            h = c = torch.zeros_like(query_z)
            for _ in range(self.fce_steps):
                read = torch.softmax(h @ support.T, dim=-1) @ support
                h, c = _lstm_cell(query_z, torch.cat([h, read], dim=-1), c, weight, bias)
                h = h + query_z
            query_z = h
        return self.cosine_scale * (_normalize(query_z) @ _normalize(support).T)

    def _scores(self, query_z, state):
        similarities = self._similarities(query_z, state)
        weights = torch.exp(similarities - similarities.max(dim=-1, keepdim=True).values.detach())
        return torch.log(weights @ state["labels"]) - torch.log(weights.sum(dim=-1, keepdim=True))

    # --8<-- [end:attention]
