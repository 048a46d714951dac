"""The LSTM black-box learner (Hochreiter et al. 2001; Santoro et al. 2016's LSTM baseline), PyTorch side.
Mirror of ``tf_meta/lstm.py``.

A model-based meta-learner: an LSTM reads the support set of an episode as a sequence of steps
``[f(x_i), onehot(y_i)]`` (regression: ``[x_i, y_i]``), in the order the task set gives it
(``dualmeta.sequences.ShuffledSupport`` shuffles it per episode, by address), and its state after the
last support step is the learned "adaptation". Each query ``[f(x_q), 0]`` is one more step from that
state, alone (no query sees another), and a linear head on the hidden state gives its prediction:

    (h_t, c_t) = LSTM([f(x_t), s_t], h_{t-1}, c_{t-1}),  h_0 = c_0 = 0,   y_q = W h(x_q | h_S, c_S) + b

with PyTorch's gates (``i, f, g, o``, two biases; ``sequence.lstm_cell``). The encoder ``f`` (a head-less
conv4 with running batch-norm statistics) and the LSTM are trained end to end on the query loss
(cross-entropy over the episode's ways, or MSE), averaged over the queries of the meta-batch, with the
meta-optimiser (Adam with PyTorch's formula, or SGD). There is no gradient step at test time.

Arguments (defaults): ``model`` (a ``sequence.lstm(...)`` model: ``ways`` and ``encoder`` for
classification, ``ways=None`` for regression), ``meta_lr=1e-3``, ``meta_optimizer='adam'``.
The LSTM reads support sets of any length; episodes may have fewer ways than the head (the first
``ways`` logits are used), never more.

Beyond the shared learner interface: ``adapt(episode)`` returns the support state ``{"h", "c"}``
for ``predict(x, state)``; ``sequence_outputs(x, slots)`` runs one explicit sequence; ``embed(x)``;
``meta_gradients(batch)`` returns the gradients (neutral layout) and the metrics without updating.

Example:
    >>> import numpy as np
    >>> from dualmeta.episodes import RegressionTasks
    >>> from dualmeta.sequences import ShuffledSupport
    >>> from torch_meta import lstm, sequence
    >>> tasks = ShuffledSupport(RegressionTasks("sinusoid", shots=5, queries=3, seed=0))
    >>> learner = lstm.LSTMLearner(sequence.lstm(ways=None, hidden=16))
    >>> sorted(learner.meta_train_step(tasks.batch(0, 4)))
    ['loss']
    >>> episode = tasks.episode(1)
    >>> learner.predict(episode.query_x, learner.adapt(episode)).shape
    (3, 1)

References: Hochreiter, Younger, Conwell. Learning to Learn Using Gradient Descent. ICANN 2001.
Santoro, Bartunov, Botvinick, Wierstra, Lillicrap. Meta-Learning with Memory-Augmented Neural Networks.
ICML 2016.
"""
from __future__ import annotations

from torch_meta.sequence import SequenceLearner

__all__ = ["LSTMLearner"]


class LSTMLearner(SequenceLearner):
    """The LSTM black-box learner: the support set is read into the LSTM's state; queries are one step more."""

    MODEL = "lstm"
