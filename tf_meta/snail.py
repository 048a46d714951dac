"""SNAIL, the Simple Neural Attentive Meta-Learner (Mishra et al. 2018), TensorFlow side.
Mirror of ``torch_meta/snail.py``.

A model-based meta-learner with the sequence framing of the LSTM learner (``dualmeta.sequences``):
support steps ``[f(x_i), onehot(y_i)]``, then each query ``[f(x_q), 0]`` alone after them. Instead of a
recurrent state, SNAIL interleaves temporal-convolution (TC) blocks and causal soft-attention blocks, each
concatenating its output to its input (dense connections):

    TC:         H <- [H, tanh(conv_f(H)) * sigmoid(conv_g(H))]   for dilations d = 1, 2, 4, ..., < T
                conv(H)_t = W_0 H_{t-d} + W_1 H_t + b            (causal, kernel 2, zeros before step 0)
    attention:  H <- [H, softmax(Q K^T / sqrt(d_k) + M) V]       Q, K, V linear in H; M = -inf above the diagonal

with ``T = support_size + 1`` (``ceil(log2 T)`` layers per TC block); a linear head on the query step's
features gives its logits (or regression value). The paper's Omniglot network, the default of
``sequence.snail``: TC(128), attention(64, 32), TC(128), attention(256, 128), on a conv4 embedding.
The encoder and the blocks train end to end on the query loss, averaged over the queries of the
meta-batch, with the meta-optimiser (Adam with PyTorch's formula, or SGD).

Arguments (defaults): ``model`` (a ``sequence.snail(...)`` model; ``support_size`` is the longest support
set it reads: a longer one is refused), ``meta_lr=1e-3``, ``meta_optimizer='adam'``.

Beyond the shared learner interface: ``adapt(episode)`` returns the support features ``{"support"}``
for ``predict(x, state)``; ``sequence_outputs(x, slots)`` runs one explicit sequence; ``embed(x)``;
``meta_gradients(batch)`` returns the gradients (neutral layout) and the metrics without updating.

Example:
    >>> import numpy as np
    >>> from dualmeta.episodes import RegressionTasks
    >>> from dualmeta.sequences import ShuffledSupport
    >>> from tf_meta import sequence, snail
    >>> tasks = ShuffledSupport(RegressionTasks("sinusoid", shots=5, queries=3, seed=0))
    >>> model = sequence.snail(ways=None, support_size=5, filters=8, keys=(8,), values=(8,))
    >>> learner = snail.SNAIL(model)
    >>> sorted(learner.meta_train_step(tasks.batch(0, 4)))
    ['loss']
    >>> episode = tasks.episode(1)
    >>> learner.predict(episode.query_x, learner.adapt(episode)).shape
    (3, 1)

References: Mishra, Rohaninejad, Chen, Abbeel. A Simple Neural Attentive Meta-Learner. ICLR 2018.
"""
from __future__ import annotations

from tf_meta.sequence import SequenceLearner

__all__ = ["SNAIL"]


class SNAIL(SequenceLearner):
    """SNAIL: causal temporal convolutions and causal soft attention over the support set; queries alone."""

    MODEL = "snail"
