"""Prototypical Networks (Snell et al. 2017), TensorFlow side. Mirror of ``torch_meta/protonet.py``.

An encoder ``f`` (the conv4 max-pool backbone, no classifier) embeds the support and query images of an
episode as one batch. The prototype of class ``k`` is the mean embedding of its support examples, and a
query ``x`` gets one logit per class from its distance to the prototype:

    c_k = mean_{i: y_i = k} f(x_i),        logits_k(x) = -s * d(f(x), c_k)

``distance='euclidean'`` (the paper's): ``d(z, c) = ||z - c||^2``, ``s = 1``. ``distance='cosine'``:
``d(z, c) = 1 - cos(z, c)`` and ``s = cosine_scale`` (a fixed inverse temperature; 1.0 is the plain cosine,
whose logits lie in [-1, 1] and train slowly with many ways; ~10 is a common choice). Norms use
``sqrt(|z|^2 + 1e-12)``. The loss is the softmax cross-entropy of the query logits, averaged over the
queries and then over the episodes of a meta-batch, minimised by the meta-optimiser (Adam with PyTorch's
formula, or SGD) with a step decay ``lr = meta_lr * lr_decay ** (t // lr_decay_every)``, ``t`` the number
of meta-training steps taken (the optimiser's step count, so a restored optimiser state resumes the
schedule; one step = one episode at meta-batch 1). The paper: Adam, 1e-3, halved every 2000 episodes
(``lr_decay_every=2000``); training may use more ways than testing (60-way 5-shot 5-query on Omniglot):
the ways come from the episodes given, whose labels must be ``0..ways-1``.

Batch norm: training embeds support and query as one batch with batch statistics (and updates the
running statistics if the model tracks them, as the paper's code does). Evaluation (``evaluate``,
``adapt``, ``prototypes``, ``distances``, ``embed``, ``predict``) uses the running statistics of a model
built with ``track_running_stats=True`` (the paper's ``model.eval()``; ``examples/omniglot_metric.py``
does this), and otherwise batch statistics (transductive, like MAML): of the whole episode for
``evaluate``, ``adapt``, ``prototypes`` and ``distances``, of the images given for ``embed`` and
``predict``. ``meta_gradients`` leaves the running statistics alone; ``meta_train_step`` updates them.

Parity note: the squared distances are invariant to a common shift of all embeddings, so with ReLU the
last norm shift of a channel whose pooled maxima are all positive has a gradient that is zero up to
round-off; Adam turns that round-off into learning-rate-sized steps, different in each backend. In
float32 the two backends' runs part within tens of episodes (in that shift first, in the loss once it
matters); float64, or a model built with ``activation='softplus'``, keeps them together.

Arguments (defaults): ``model`` (a twin model, usually ``conv4(downsample='maxpool')`` without
``num_classes``), ``meta_lr=1e-3``, ``distance='euclidean'``, ``cosine_scale=1.0``,
``lr_decay_every=None`` (no decay), ``lr_decay=0.5``, ``meta_optimizer='adam'``.

Beyond the shared learner interface: ``embed(x)``, ``prototypes(episode)`` and ``distances(episode)`` return
numpy arrays; ``adapt(episode)`` returns ``{"prototypes": (ways, features)}`` for ``predict(x, weights)``,
which returns the logits of ``x``; ``meta_gradients(batch)`` returns the gradients (neutral layout) and the
metrics without updating; ``learning_rate()`` is the rate of the next step.

Example:
    >>> import numpy as np
    >>> from dualmeta.episodes import ClassDataset, ClassificationTasks
    >>> from tf_meta import models, protonet
    >>> data = ClassDataset.from_grouped(np.random.default_rng(0).random((10, 6, 28, 28), dtype=np.float32))
    >>> tasks = ClassificationTasks(data, ways=5, shots=2, queries=3, seed=0)
    >>> learner = protonet.ProtoNet(models.conv4(hidden=8, downsample="maxpool"), lr_decay_every=2000)
    >>> sorted(learner.meta_train_step(tasks.batch(0, 1)))
    ['accuracy', 'loss']
    >>> learner.prototypes(tasks.episode(1)).shape
    (5, 8)

References: Snell, Swersky, Zemel. Prototypical Networks for Few-shot Learning. NeurIPS 2017.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from dualmeta.episodes import Episode
from dualmeta.twins import drop_masks
from tf_meta.core import OPTIMIZERS, Learner, Optimizer, as_tensor, task_accuracy, task_loss
from tf_meta.models import functional_call

__all__ = ["DISTANCES", "NORM_EPS", "MetricLearner", "ProtoNet"]

DISTANCES = ("euclidean", "cosine")
NORM_EPS = 1e-12  # added to squared norms before the square root (cosine similarities)


def _episode_ways(support_y: np.ndarray) -> int:
    """The number of classes of an episode, or of every episode of a meta-batch (all must agree).

    Raises ``ValueError`` unless the support labels of every episode are exactly ``0..ways-1``.
    """
    labels = np.asarray(support_y)
    if labels.ndim not in (1, 2) or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("Expected integer support labels of shape (shots*ways,) or (tasks, shots*ways); "
                         f"received dtype {labels.dtype} and shape {labels.shape}")
    rows = labels.reshape(-1, labels.shape[-1])
    ways = int(rows.max()) + 1
    for row in rows:
        if not np.array_equal(np.unique(row), np.arange(ways)):
            raise ValueError(f"Expected support labels covering 0..{ways - 1} in every episode (each class needs "
                             f"a support example); received labels {sorted(set(row.tolist()))}")
    return ways


def _normalize(z: tf.Tensor) -> tf.Tensor:
    return z * tf.math.rsqrt(tf.reduce_sum(tf.square(z), axis=-1, keepdims=True) + NORM_EPS)


class MetricLearner(Learner):
    """The machinery of the metric learners: episode embedding, training, evaluation, learning-rate decay.

    A subclass defines ``_fit(support_z, support_onehot) -> state`` (what ``adapt`` returns) and
    ``_scores(query_z, state) -> logits``; everything else is shared.
    """

    draws_drop_masks = True

    def __init__(self, model, meta_lr: float = 1e-3, lr_decay_every: int | None = None, lr_decay: float = 0.5,
                 meta_optimizer: str = "adam"):
        super().__init__(model, meta_lr=meta_lr, meta_optimizer=meta_optimizer)
        if meta_optimizer not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={meta_optimizer!r}")
        if isinstance(meta_lr, bool) or not isinstance(meta_lr, (int, float)) or not meta_lr > 0:
            raise ValueError(f"Expected a positive meta_lr; received meta_lr={meta_lr!r}")
        if lr_decay_every is not None and (isinstance(lr_decay_every, bool) or not isinstance(
                lr_decay_every, (int, np.integer)) or lr_decay_every <= 0):
            raise ValueError("Expected lr_decay_every to be None (no decay) or a positive integer; "
                             f"received lr_decay_every={lr_decay_every!r}")
        if isinstance(lr_decay, bool) or not isinstance(lr_decay, (int, float)) or not 0 < lr_decay <= 1:
            raise ValueError(f"Expected 0 < lr_decay <= 1; received lr_decay={lr_decay!r}")
        self.lr_decay_every = None if lr_decay_every is None else int(lr_decay_every)
        self.lr_decay = float(lr_decay)
        self.drop_seed = 0  # the seed of the DropBlock masks (the CLI sets the run's --seed)

    # --8<-- [start:lr_decay]
    def learning_rate(self) -> float:
        """The meta-learning rate of the next step: ``meta_lr * lr_decay ** (steps // lr_decay_every)``."""
        if self.lr_decay_every is None:
            return float(self.meta_lr)
        return float(self.meta_lr) * self.lr_decay ** (self._steps_taken() // self.lr_decay_every)
    # --8<-- [end:lr_decay]

    def embed(self, x: np.ndarray) -> np.ndarray:
        """Embeddings of numpy images (one batch), in evaluation mode."""
        encode = self._compile("embed", lambda x: self._encode(x, training=False))
        return encode(as_tensor(x, self.dtype)).numpy()

    def adapt(self, episode: Episode, steps: int | None = None) -> dict[str, tf.Tensor]:
        """What the support set determines (e.g. the prototypes), for ``predict``; ``steps`` is unused."""
        ways, sx, sy, qx, _ = self._episode(episode)

        def fit(sx, sy, qx):
            support_z, onehot, _ = self._embeddings(sx, sy, qx, ways, training=False)
            return self._fit(support_z, onehot)

        return self._compile(("adapt", ways), fit)(sx, sy, qx)

    def predict(self, x: np.ndarray, weights: Mapping[str, tf.Tensor] | None = None) -> np.ndarray:
        """Logits of numpy images ``x`` (embedded as one batch) against ``weights = adapt(episode)``."""
        if weights is None:
            raise ValueError(f"{type(self).__name__}.predict needs the support state: "
                             "predict(x, learner.adapt(episode))")
        scores = self._compile("predict", lambda x, state: self._scores(self._encode(x, training=False), state))
        return scores(as_tensor(x, self.dtype), {k: tf.convert_to_tensor(v) for k, v in weights.items()}).numpy()

    def meta_gradients(self, batch: Episode) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Gradients of the mean query loss over the meta-batch (neutral layout) and the metrics; no update."""
        grads, metrics = self._gradients(batch, update_stats=False)
        return {n: self.to_neutral(n, g.numpy()) for n, g in grads.items()}, metrics

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One update on a stacked meta-batch; returns the mean query loss and accuracy."""
        grads, metrics = self._step_gradients(batch)
        self._apply_gradients(grads)
        return metrics

    def _step_gradients(self, batch: Episode):
        return self._gradients(batch, update_stats=True)

    def _apply_gradients(self, grads) -> None:
        self._set_lr(self.learning_rate())
        self.optimizer.apply(grads)

    # -- backend machinery --------------------------------------------------------------------------
    def _steps_taken(self) -> int:
        return int(self.optimizer.t.numpy())

    def _set_lr(self, lr: float) -> None:
        """A new rate: ``Optimizer`` bakes ``lr`` into its ``tf.function`` when first traced, so the
        optimiser is rebuilt around the same state (once per decay, every ``lr_decay_every`` steps)."""
        if self.optimizer.lr != lr:
            state = self.optimizer.get_state()
            self._optimizer = Optimizer(self.parameters(), self.meta_optimizer, lr, self.kinds())
            self._optimizer.set_state(state)

    def _encode(self, x: tf.Tensor, training: bool, update_stats: bool = False, drop=None) -> tf.Tensor:
        """The encoder on NHWC images: batch statistics if ``training`` or if the model keeps no running
        statistics, else the running statistics; these are updated only if ``training and update_stats``.
        ``drop``: the DropBlock masks of this forward pass (training only)."""
        kwargs = {"drop": drop} if drop else {}
        if training and not update_stats and self.model.non_trainable_variables:
            params = {n: tf.convert_to_tensor(v) for n, v in self.model_parameters().items()}
            return functional_call(self.model, params, x, training=True, **kwargs)
        return self.model(x, training=training, **kwargs)

    def _drop_masks(self, batch: Episode) -> dict[str, np.ndarray]:
        """The DropBlock masks of this training step, ``(tasks, support + query, H, W, C)`` per layer, by
        address (``drop_seed``, the step, the task): the same arrays in both backends."""
        description = getattr(self.model, "description", None)
        if description is None:
            return {}
        tasks, images = batch.support_x.shape[0], batch.support_x.shape[1] + batch.query_x.shape[1]
        return drop_masks(description, tasks, images, self.drop_seed, self._steps_taken())

    def _episode(self, episode: Episode):
        """``(ways, support_x, support_y, query_x, query_y)`` of a numpy episode, as tensors."""
        ways = _episode_ways(episode.support_y)
        query_y = np.asarray(episode.query_y)
        if query_y.size and (query_y.min() < 0 or query_y.max() >= ways):
            raise ValueError(f"Expected query labels in 0..{ways - 1} (the support classes); received labels "
                             f"from {query_y.min()} to {query_y.max()}")
        return (ways, *self._tensors(episode))

    def _embeddings(self, sx, sy, qx, ways: int, training: bool, update_stats: bool = False, drop=None):
        """``(support_z, support_onehot, query_z)`` of one episode; support and query embedded as one batch."""
        z = self._encode(tf.concat([sx, qx], axis=0), training, update_stats, drop)
        n = sx.shape[0]
        return z[:n], tf.one_hot(sy, ways, dtype=z.dtype), z[n:]

    def _logits(self, sx, sy, qx, ways: int, training: bool, update_stats: bool = False, drop=None) -> tf.Tensor:
        support_z, onehot, query_z = self._embeddings(sx, sy, qx, ways, training, update_stats, drop)
        return self._scores(query_z, self._fit(support_z, onehot))

    # --8<-- [start:episode_loss]
    def _batch_gradients(self, sx, sy, qx, qy, drop, ways: int, update_stats: bool):
        variables = list(self.parameters().values())
        tasks = sx.shape[0]
        with tf.GradientTape() as tape:
            losses, accuracies = [], []
            for t in range(tasks):
                logits = self._logits(sx[t], sy[t], qx[t], ways, True, update_stats,
                                      {name: mask[t] for name, mask in drop.items()})
                losses.append(task_loss(logits, qy[t]))
                accuracies.append(task_accuracy(logits, qy[t]))
            loss = tf.add_n(losses) / tasks
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, loss, tf.add_n(accuracies) / tasks

    def _gradients(self, batch: Episode, update_stats: bool):
        ways, *tensors = self._episode(batch)
        drop = {name: tf.constant(mask, self.dtype) for name, mask in self._drop_masks(batch).items()}
        step = self._compile(("gradients", ways, update_stats),
                             lambda sx, sy, qx, qy, drop: self._batch_gradients(sx, sy, qx, qy, drop, ways, update_stats))
        grads, loss, accuracy = step(*tensors, drop)
        return dict(zip(self.parameters(), grads)), {"loss": float(loss), "accuracy": float(accuracy)}
    # --8<-- [end:episode_loss]

    def _episode_metrics(self, episode: Episode, steps: int | None) -> dict[str, float]:
        ways, *tensors = self._episode(episode)

        def metrics(sx, sy, qx, qy):
            logits = self._logits(sx, sy, qx, ways, training=False)
            return task_loss(logits, qy), task_accuracy(logits, qy)

        loss, accuracy = self._compile(("metrics", ways), metrics)(*tensors)
        return {"loss": float(loss), "accuracy": float(accuracy)}

    def _fit(self, support_z: tf.Tensor, onehot: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def _scores(self, query_z: tf.Tensor, state: Mapping[str, tf.Tensor]) -> tf.Tensor:
        raise NotImplementedError


class ProtoNet(MetricLearner):
    """Prototypical Networks: logits are negative (squared Euclidean or cosine) distances to class means."""

    def __init__(self, model, meta_lr: float = 1e-3, distance: str = "euclidean", cosine_scale: float = 1.0,
                 lr_decay_every: int | None = None, lr_decay: float = 0.5, meta_optimizer: str = "adam"):
        super().__init__(model, meta_lr=meta_lr, lr_decay_every=lr_decay_every, lr_decay=lr_decay,
                         meta_optimizer=meta_optimizer)
        if distance not in DISTANCES:
            raise ValueError(f"Expected one of {list(DISTANCES)}; received distance={distance!r}")
        if isinstance(cosine_scale, bool) or not isinstance(cosine_scale, (int, float)) or not cosine_scale > 0:
            raise ValueError(f"Expected a positive cosine_scale; received cosine_scale={cosine_scale!r}")
        self.distance, self.cosine_scale = distance, float(cosine_scale)

    def prototypes(self, episode: Episode) -> np.ndarray:
        """The class prototypes of an episode, ``(ways, features)``: mean support embeddings."""
        return self.adapt(episode)["prototypes"].numpy()

    def distances(self, episode: Episode) -> np.ndarray:
        """Distances ``(queries, ways)`` from each query embedding to each prototype (evaluation mode)."""
        ways, sx, sy, qx, _ = self._episode(episode)

        def distances(sx, sy, qx):
            support_z, onehot, query_z = self._embeddings(sx, sy, qx, ways, training=False)
            return self._distance(query_z, self._fit(support_z, onehot)["prototypes"])

        return self._compile(("distances", ways), distances)(sx, sy, qx).numpy()

    # --8<-- [start:prototypes]
    def _fit(self, support_z, onehot):
        return {"prototypes": tf.matmul(onehot, support_z, transpose_a=True) / tf.reduce_sum(onehot, axis=0)[:, None]}

    def _distance(self, query_z: tf.Tensor, prototypes: tf.Tensor) -> tf.Tensor:
        if self.distance == "euclidean":
            return tf.reduce_sum(tf.square(query_z[:, None, :] - prototypes[None, :, :]), axis=-1)
        return 1 - tf.matmul(_normalize(query_z), _normalize(prototypes), transpose_b=True)

    def _scores(self, query_z, state):
        distances = self._distance(query_z, state["prototypes"])
        return -distances if self.distance == "euclidean" else -self.cosine_scale * distances
    # --8<-- [end:prototypes]
