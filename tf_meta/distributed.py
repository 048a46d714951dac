"""Meta-batches across processes on ``tf.distribute``. Mirror of ``torch_meta/distributed.py``.

Worker ``r`` of ``W`` computes the meta-gradient of its share of every meta-batch
(:func:`dualmeta.launch.shard`: tasks ``r*B//W ... (r+1)*B//W - 1``), weighted ``n_r / B``; the workers
all-gather these partial sums (one flat tensor per step) and add them in rank order, so every worker
applies the same update and a run with ``W`` workers gives the one-process weights (float64: to round-off;
``W = 1``: bit for bit). Metric learners also merge the running statistics of batch norm as if one process
had embedded every episode in order (:func:`dualmeta.launch.combine_running`).

The engine: ``tf.distribute.MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``, created by
:func:`start` before any other TensorFlow operation, used for its collectives only (inside the custom
step: ``get_replica_context().all_gather``; Keras' ``model.fit`` is not involved), RING communication on
the CPU, with a timeout on every collective (``timeout=300`` s). A collective that fails (a peer died
or timed out) raises :class:`dualmeta.launch.WorkerLost`.

Example (two processes, each with its ``TF_CONFIG``)::

    group = distributed.start()
    learner = distributed.DistributedLearner(maml.MAML(models.mlp()), group, meta_batch_size=4)
    tasks = ShardedTasks(RegressionTasks(seed=0), group.rank, group.size)
    learner.meta_train_step(tasks.batch(0, 4))   # this worker's 2 tasks; the update is the 4-task one
"""
from __future__ import annotations

import re

import tensorflow as tf

from dualmeta.episodes import Episode
from dualmeta.launch import DEFAULT_TIMEOUT, World, WorkerLost, combine_running, shard, world_from_env
from tf_meta.models import NORM_MOMENTUM
from tf_meta.protonet import MetricLearner

__all__ = ["Group", "start", "DistributedLearner"]


class Group:
    """The workers of one run: ``rank``, ``size``, and the two collectives a step needs."""

    def __init__(self, world: World, strategy, device: str = "cpu"):
        self.world, self.rank, self.size, self.device = world, world.rank, world.size, device
        self.strategy = strategy
        self._gather = tf.function(self._gather_eager)

    def _gather_eager(self, vector):
        def replica(x):
            return tf.distribute.get_replica_context().all_gather(x[None], axis=0)
        return self.strategy.experimental_local_results(self.strategy.run(replica, args=(vector,)))[0]

    def gather(self, vector: tf.Tensor) -> list[tf.Tensor]:
        """Every worker's ``vector`` (same shape on all), in rank order."""
        try:
            rows = self._gather(vector)
        except tf.errors.OpError as error:  # unavailable peer, deadline exceeded, cancelled collective
            raise WorkerLost(_lost(self.rank, error)) from None
        return tf.unstack(rows)

    def agree(self, value: int) -> int:
        """The largest ``value`` over the workers (e.g. a signal number, 0 for none)."""
        parts = self.gather(tf.constant([float(value)], dtype=tf.float64))
        return int(max(float(p[0]) for p in parts))

    def close(self) -> None:
        pass


def _lost(rank: int, error: BaseException) -> str:
    """One line from TensorFlow's long collective error: its kind, its first own line, the peer it names."""
    text = str(getattr(error, "message", error))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith((" ", "\t"))
             and not line.startswith(("Graph execution error", "Detected at node", "[["))]
    cause = f"{type(error).__name__}: {lines[0] if lines else 'no details'}"[:200]
    peer = re.search(r"remote target /job:worker/replica:\d+/task:(\d+)", text)
    named = f", from worker {peer.group(1)}" if peer else ""
    return f"worker {rank} lost contact with the other workers in a collective ({cause}{named})"


def start(timeout: float = DEFAULT_TIMEOUT, device: str = "cpu") -> Group:
    """Creates the ``MultiWorkerMirroredStrategy`` of ``TF_CONFIG`` (call it before any TensorFlow operation).

    RING collectives on the CPU (NCCL where TensorFlow sees a GPU). Raises ``ValueError`` without a
    ``TF_CONFIG``.
    """
    world = world_from_env("tf")
    if world is None:
        raise ValueError("tf.distribute needs TF_CONFIG in the environment; start the workers with "
                         "`python -m dualmeta train --workers=N` or set TF_CONFIG on every machine")
    experimental = tf.distribute.experimental
    implementation = (experimental.CommunicationImplementation.AUTO if tf.config.list_physical_devices("GPU")
                      else experimental.CommunicationImplementation.RING)
    options = experimental.CommunicationOptions(implementation=implementation, timeout_seconds=timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError, ValueError) as error:
        raise WorkerLost(f"worker {world.rank} could not join the other {world.size - 1} worker(s) "
                         f"({' '.join(str(error).split())[:200]})") from None
    return Group(world, strategy, device)


class DistributedLearner:
    """A learner whose ``meta_train_step`` takes this worker's share of a meta-batch and applies the update of
    the whole meta-batch; everything else (``evaluate``, ``get_weights``, ...) is the wrapped learner's.

    ``meta_batch_size`` is the whole meta-batch ``B``; each ``meta_train_step(batch)`` must receive the
    share :func:`dualmeta.launch.shard` gives this worker (:class:`dualmeta.launch.ShardedTasks` builds it).
    """

    def __init__(self, learner, group: Group, meta_batch_size: int):
        self.learner, self.group, self.meta_batch_size = learner, group, int(meta_batch_size)
        self.shares = [shard(r, group.size, self.meta_batch_size) for r in range(group.size)]
        self.share = self.shares[group.rank]

    def __getattr__(self, name):
        if name == "learner":  # not set yet (a failed __init__, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.learner, name)

    def _running(self) -> list[tf.Variable]:
        """The running statistics a step updates once per episode (metric learners with tracked stats)."""
        if not isinstance(self.learner, MetricLearner):
            return []
        return list(self.learner.model.non_trainable_variables)

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One meta-update of the whole meta-batch from this worker's share ``batch``; the metrics are the
        whole meta-batch's."""
        lo, hi = self.share
        n, total = hi - lo, self.meta_batch_size
        if len(batch.support_x) != n:
            raise ValueError(f"Expected this worker's share of the meta-batch, {n} of {total} tasks (worker "
                             f"{self.group.rank} of {self.group.size}); received {len(batch.support_x)} tasks")
        running = self._running()
        before = [tf.identity(v) for v in running]
        grads, metrics = self.learner._step_gradients(batch)
        names, keys = list(grads), sorted(metrics)
        weight = n / total
        dtype = grads[names[0]].dtype
        pieces = [tf.reshape(grads[k], [-1]) * tf.constant(weight, dtype) for k in names]  # not via float32
        pieces.append(tf.constant([metrics[k] * weight for k in keys], dtype=dtype))
        pieces += [tf.cast(tf.reshape(v, [-1]), dtype) for v in running]
        parts = self.group.gather(tf.concat(pieces, axis=0))
        sizes = [int(tf.size(grads[k])) for k in names] + [len(keys)] + [int(tf.size(v)) for v in running]
        split = [tf.split(p, sizes) for p in parts]
        summed = list(split[0][:len(names) + 1])
        for other in split[1:]:  # rank order: the same additions on every worker
            summed = [a + b for a, b in zip(summed, other)]
        self.learner._apply_gradients({k: tf.reshape(g, tf.shape(grads[k])) for k, g in zip(names, summed)})
        if running and self.group.size > 1:
            for i, (variable, start) in enumerate(zip(running, before)):
                after = [tf.cast(tf.reshape(s[len(names) + 1 + i], tf.shape(variable)), variable.dtype)
                         for s in split]
                variable.assign(combine_running(start, after, self.shares, 1 - NORM_MOMENTUM,
                                                add=tf.add, scale=lambda x, c: x * tf.constant(c, x.dtype)))
        values = summed[len(names)].numpy().tolist()
        return {k: float(v) for k, v in zip(keys, values)}
