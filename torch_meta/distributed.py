"""Meta-batches across processes on ``torch.distributed``. Mirror of ``tf_meta/distributed.py``.

Worker ``r`` of ``W`` computes the meta-gradient of its share of every meta-batch
(:func:`dualmeta.launch.shard`: tasks ``r*B//W ... (r+1)*B//W - 1``), weighted ``n_r / B``; the workers
all-gather these partial sums (one flat tensor per step) and add them in rank order, so every worker
applies the same update and a run with ``W`` workers gives the one-process weights (float64: to round-off;
``W = 1``: bit for bit). Metric learners also merge the running statistics of batch norm as if one process
had embedded every episode in order (:func:`dualmeta.launch.combine_running`).

The engine: a process group over gloo on the CPU, nccl for CUDA devices, initialised from the environment
``torchrun`` sets (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), with a timeout on every
collective (``timeout=300`` s). The gradients are gathered by hand, not by ``DistributedDataParallel``,
which does not support the double backward of second-order MAML. A collective that fails (a peer died
or timed out) raises :class:`dualmeta.launch.WorkerLost`.

Example (two processes, e.g. under ``torchrun --standalone --nproc-per-node=2``)::

    group = distributed.start()
    learner = distributed.DistributedLearner(maml.MAML(models.mlp()), group, meta_batch_size=4)
    tasks = ShardedTasks(RegressionTasks(seed=0), group.rank, group.size)
    learner.meta_train_step(tasks.batch(0, 4))   # this worker's 2 tasks; the update is the 4-task one
"""
from __future__ import annotations

import datetime

import torch

from dualmeta.episodes import Episode
from dualmeta.launch import DEFAULT_TIMEOUT, World, WorkerLost, combine_running, shard, world_from_env
from torch_meta.models import NORM_MOMENTUM
from torch_meta.protonet import MetricLearner

__all__ = ["Group", "start", "DistributedLearner"]


class Group:
    """The workers of one run: ``rank``, ``size``, and the two collectives a step needs."""

    def __init__(self, world: World, device: str = "cpu"):
        self.world, self.rank, self.size, self.device = world, world.rank, world.size, device

    def gather(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Every worker's ``vector`` (same shape on all), in rank order."""
        import torch.distributed as dist
        parts = [torch.empty_like(vector) for _ in range(self.size)]
        try:
            dist.all_gather(parts, vector.contiguous())
        except RuntimeError as error:  # gloo/nccl: "Connection closed by peer", a timeout, an aborted group
            raise WorkerLost(_lost(self.rank, error)) from None
        return parts

    def agree(self, value: int) -> int:
        """The largest ``value`` over the workers (e.g. a signal number, 0 for none)."""
        parts = self.gather(torch.tensor([int(value)], dtype=torch.int64, device=self.device))
        return int(max(int(p.item()) for p in parts))

    def close(self) -> None:
        import torch.distributed as dist
        if dist.is_initialized():
            dist.destroy_process_group()


def _lost(rank: int, error: BaseException) -> str:
    cause = " ".join(str(error).split())[:200]
    return f"worker {rank} lost contact with the other workers in a collective ({cause})"


def start(timeout: float = DEFAULT_TIMEOUT, device: str = "cpu") -> Group:
    """Joins the process group described by the environment; gloo on the CPU, nccl for ``cuda`` devices.

    Raises ``ValueError`` without that environment, ``RuntimeError`` naming the fix if this PyTorch has no
    distributed support or the rendezvous fails.
    """
    import torch.distributed as dist
    world = world_from_env("torch")
    if world is None:
        raise ValueError("torch.distributed needs RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the "
                         "environment; start the workers with `python -m dualmeta train --workers=N` or torchrun")
    if not dist.is_available():
        raise RuntimeError(f"This PyTorch ({torch.__version__}) was built without torch.distributed; install an "
                           "official build (https://pytorch.org/get-started/locally/) or run without --workers")
    engine = "nccl" if device.startswith("cuda") else "gloo"
    if engine == "nccl" and not dist.is_nccl_available():
        raise RuntimeError(f"--device={device} with several workers needs NCCL, which this PyTorch lacks; install "
                           "a CUDA build of PyTorch or use --device=cpu (gloo)")
    if not dist.is_initialized():
        kwargs = {}
        if engine == "nccl":
            torch.cuda.set_device(torch.device(device))
            kwargs["device_id"] = torch.device(device)
        try:
            dist.init_process_group(engine, init_method="env://", rank=world.rank, world_size=world.size,
                                    timeout=datetime.timedelta(seconds=timeout), **kwargs)
        except (RuntimeError, ValueError) as error:
            raise WorkerLost(f"worker {world.rank} could not join the other {world.size - 1} worker(s) "
                             f"({' '.join(str(error).split())[:200]})") from None
    return Group(world, device)


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

    def _running(self) -> list[torch.Tensor]:
        """The running statistics a step updates once per episode (metric learners with tracked stats)."""
        if not isinstance(self.learner, MetricLearner):
            return []
        return [b for _, b in self.learner.model.named_buffers()]

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        """One meta-update of the whole meta-batch from this worker's share ``batch``; the metrics are the
        whole meta-batch's."""
        lo, hi = self.share
        n, total = hi - lo, self.meta_batch_size
        if len(batch.support_x) != n:
            raise ValueError(f"Expected this worker's share of the meta-batch, {n} of {total} tasks (worker "
                             f"{self.group.rank} of {self.group.size}); received {len(batch.support_x)} tasks")
        running = self._running()
        before = [b.clone() for b in running]
        grads, metrics = self.learner._step_gradients(batch)
        names, keys = list(grads), sorted(metrics)
        weight = n / total
        device, dtype = next(iter(grads.values())).device, next(iter(grads.values())).dtype
        pieces = [grads[k].reshape(-1) * weight for k in names]
        pieces.append(torch.tensor([metrics[k] * weight for k in keys], dtype=dtype, device=device))
        pieces += [b.reshape(-1).to(dtype) for b in running]
        parts = self.group.gather(torch.cat(pieces))
        sizes = [grads[k].numel() for k in names] + [len(keys)] + [b.numel() for b in running]
        split = [list(p.split(sizes)) for p in parts]
        summed = [s.clone() for s in split[0][:len(names) + 1]]
        for other in split[1:]:  # rank order: the same additions on every worker
            for i in range(len(summed)):
                summed[i] += other[i]
        self.learner._apply_gradients({k: g.view_as(grads[k]) for k, g in zip(names, summed)})
        if running and self.group.size > 1:
            with torch.no_grad():
                for i, (buffer, start) in enumerate(zip(running, before)):
                    after = [s[len(names) + 1 + i].view_as(buffer).to(buffer.dtype) for s in split]
                    buffer.copy_(combine_running(start, after, self.shares, 1 - NORM_MOMENTUM,
                                                 add=torch.add, scale=torch.mul))
        values = summed[len(names)].tolist()
        return {k: float(v) for k, v in zip(keys, values)}
