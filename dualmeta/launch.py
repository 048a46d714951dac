"""Meta-batches across processes, the framework-neutral half: who computes what, and the local launcher.

The engines are the frameworks' own (``torch_meta/distributed.py`` on ``torch.distributed``,
``tf_meta/distributed.py`` on ``tf.distribute.MultiWorkerMirroredStrategy``); this module imports neither.

Sharding by address
-------------------
Meta-batch ``b`` of size ``B`` holds the episodes ``b*B ... b*B + B - 1`` (:mod:`dualmeta.episodes`), each a
pure function of ``(seed, index)``, so no data moves between workers. Worker ``r`` of ``W`` builds and
computes the contiguous share ``[r*B // W, (r+1)*B // W)`` of them (:func:`shard`; shares differ by at most
one task, and every worker needs at least one: ``W <= B``). Its partial meta-gradient is the mean over
its ``n_r`` tasks times ``n_r / B``; every worker gathers all partial sums and adds them in rank order
(``g = p_0 + p_1 + ... + p_{W-1}``), so all workers apply the same update, and the result is the
one-process meta-gradient up to the order of a few additions (float64: weights equal to ~1e-15 relative
after many steps; one worker reproduces the one-process step bit for bit). A run can therefore be resumed
with another worker count.

The local launcher
------------------
``python -m dualmeta train --workers=N ...`` (also ``bench``, ``compare``) runs :func:`launch`: it picks
free loopback ports (or checks ``--port``), starts ``N`` copies of the same command line with the
environment of the engine (``MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE`` as ``torchrun --standalone``
sets them; ``TF_CONFIG`` for TensorFlow), lets rank 0 print, and watches the workers: if one dies, the
others are stopped within :data:`GRACE_SECONDS` and one line names the dead worker and the last
checkpoint. Ctrl-C (or SIGTERM) is passed to the workers, which stop together after the current step
(rank 0 saves a checkpoint); a second one kills them at once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Mapping, Sequence

from dualmeta.episodes import Episode, stack_episodes

__all__ = ["EXIT_WORKER_LOST", "DEFAULT_TIMEOUT", "GRACE_SECONDS", "HOST", "WorkerLost", "World", "shard",
           "shard_batch", "ShardedTasks", "world_from_env", "free_ports", "check_ports", "watch_launcher",
           "launch", "combine_running", "check_workers", "DISTRIBUTED_LEARNERS"]

EXIT_WORKER_LOST = 75  # a worker whose peer died: the launcher reports the fault, the worker stays quiet
DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for a peer (process group / collective timeout)
GRACE_SECONDS = 5.0  # after a worker fails, the others get this long to end before they are killed
HOST = "127.0.0.1"
LAUNCHER_ENV = "DUALMETA_LAUNCHER_PID"


class WorkerLost(RuntimeError):
    """A collective failed: another worker died, or did not answer within the timeout."""


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the workers of one engine."""
    engine: str  # 'torch' or 'tf'
    rank: int
    size: int
    local_rank: int = 0
    launched: bool = False  # started by :func:`launch` (which reports faults itself)


# Learners whose meta-step splits into per-worker gradients (``_step_gradients`` / ``_apply_gradients``).
# The model-based learners (lstm, snail) update their encoder's running statistics once per meta-batch from
# all of its images, which shards do not reproduce exactly: they run in one process.
DISTRIBUTED_LEARNERS = ("maml", "fomaml", "reptile", "metasgd", "anil", "finetune", "protonet", "matchingnet")


def check_workers(workers: int, meta_batch_size: int, learner: str | None = None) -> None:
    """Raises ``ValueError`` naming the fix unless ``1 <= workers <= meta_batch_size`` (and, if given, the
    learner is one of :data:`DISTRIBUTED_LEARNERS`)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"Expected --workers to be a positive integer; received --workers={workers!r}")
    if learner is not None and learner not in DISTRIBUTED_LEARNERS:
        raise ValueError(f"--workers shards the meta-batch of {', '.join(DISTRIBUTED_LEARNERS)}; "
                         f"--learner={learner} runs in one process: drop --workers")
    if workers > meta_batch_size:
        raise ValueError(f"--workers={workers} exceeds --meta_batch_size={meta_batch_size}: every worker computes "
                         f"at least one task of each meta-batch; use --workers <= {meta_batch_size} or a larger "
                         "--meta_batch_size")


def shard(rank: int, size: int, meta_batch_size: int) -> tuple[int, int]:
    """``(lo, hi)``: worker ``rank`` of ``size`` computes tasks ``lo ... hi - 1`` of every meta-batch."""
    check_workers(size, meta_batch_size)
    if not 0 <= rank < size:
        raise ValueError(f"Expected 0 <= rank < {size}; received rank={rank}")
    return rank * meta_batch_size // size, (rank + 1) * meta_batch_size // size


def shard_batch(batch: Episode, rank: int, size: int) -> Episode:
    """This worker's share of a stacked meta-batch (a view, for data that is already in memory)."""
    lo, hi = shard(rank, size, len(batch.support_x))
    return Episode(*(a[lo:hi] for a in batch))


class ShardedTasks:
    """A task set whose ``batch(index, size)`` builds only this worker's share of meta-batch ``index``."""

    def __init__(self, tasks, rank: int, size: int):
        self.tasks, self.rank, self.size = tasks, rank, size

    def batch(self, index: int, size: int) -> Episode:
        lo, hi = shard(self.rank, self.size, size)
        return stack_episodes([self.tasks.episode(index * size + j) for j in range(lo, hi)])

    def __getattr__(self, name):
        if name == "tasks":
            raise AttributeError(name)
        return getattr(self.tasks, name)


def combine_running(before, after: Sequence, shares: Sequence[tuple[int, int]], keep: float, add, scale):
    """Running statistics after a sharded step, as if one process had run every episode in order.

    Each episode's forward pass sets ``r <- keep * r + (1 - keep) * s``. Worker ``k`` ran its ``n_k``
    episodes from the common ``before``, ending at ``after[k]``; the one-process result is
    ``keep^B before + sum_k keep^(B - hi_k) (after[k] - keep^n_k before)``. ``add(x, y)`` and ``scale(x, c)``
    are the backend's operations (so this works on tensors of either framework).
    """
    total = shares[-1][1]
    result = scale(before, keep ** total)
    for (lo, hi), value in zip(shares, after):
        delta = add(value, scale(before, -(keep ** (hi - lo))))
        result = add(result, scale(delta, keep ** (total - hi)))
    return result


def world_from_env(engine: str, environ: Mapping[str, str] | None = None) -> World | None:
    """The worker's place from the engine's environment, or ``None`` for a plain one-process run.

    torch: ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` (set by ``torchrun`` and by :func:`launch`);
    tf: ``TF_CONFIG`` with a ``worker`` cluster and this task's index.
    """
    env = os.environ if environ is None else environ
    launched = LAUNCHER_ENV in env
    if engine == "torch":
        if not all(key in env for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR")):
            return None
        try:
            rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", 0))
        except ValueError:
            raise ValueError(f"Expected integer RANK and WORLD_SIZE in the environment; received RANK="
                             f"{env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}") from None
        return World("torch", rank, size, local, launched)
    if engine == "tf":
        if not env.get("TF_CONFIG"):
            return None
        try:
            config = json.loads(env["TF_CONFIG"])
            workers, task = config["cluster"]["worker"], config["task"]
            rank = int(task["index"])
            if task.get("type") != "worker":
                raise KeyError("type")
        except (ValueError, KeyError, TypeError) as error:
            example = '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
            raise ValueError(f"Expected TF_CONFIG like {example} (problem: {error}); received "
                             f"TF_CONFIG={env['TF_CONFIG']!r}") from None
        return World("tf", rank, len(workers), int(env.get("DUALMETA_LOCAL_RANK", rank)), launched)
    raise ValueError(f"Expected one of {{'tf', 'torch'}}; received engine={engine!r}")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports free on ``host`` now (the system picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def check_ports(ports: Sequence[int], host: str = HOST) -> None:
    """Raises ``ValueError`` naming ``--port`` if a port is out of range or in use on ``host``."""
    for port in ports:
        if not 0 < port < 65536:
            raise ValueError(f"Expected --port between 1 and 65535 (with room for one port per TensorFlow "
                             f"worker); received a port {port}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError as error:
                raise ValueError(f"Port {port} on {host} is in use ({error.strerror}); pass another --port, or "
                                 "leave --port out to pick free ports") from None


def watch_launcher() -> None:
    """In a worker started by :func:`launch`: exit at once if the launcher dies (a daemon thread)."""
    pid = os.environ.get(LAUNCHER_ENV)
    if not pid:
        return

    def watch():
        while True:
            if os.getppid() != int(pid):
                os._exit(EXIT_WORKER_LOST)
            time.sleep(1.0)

    threading.Thread(target=watch, name="dualmeta-launcher-watch", daemon=True).start()


def _worker_env(rank: int, workers: int, engines: Sequence[str], torch_port: int, tf_ports: Sequence[int],
                threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TF_CONFIG", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    env[LAUNCHER_ENV] = str(os.getpid())
    env["DUALMETA_LOCAL_RANK"] = str(rank)
    # One thread per worker unless told otherwise (as torchrun does).
    env["OMP_NUM_THREADS"] = str(threads) if threads else env.get("OMP_NUM_THREADS", "1")
    if "torch" in engines:
        env.update(MASTER_ADDR=HOST, MASTER_PORT=str(torch_port), RANK=str(rank), WORLD_SIZE=str(workers),
                   LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(workers))
    if "tf" in engines:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"{HOST}:{p}" for p in tf_ports]},
                                       "task": {"type": "worker", "index": rank}})
    return env


def _last_error(path: str) -> str | None:
    try:
        with open(path, errors="replace") as handle:
            lines = [line.strip() for line in handle if line.startswith("dualmeta: error:")]
    except OSError:
        return None
    return lines[-1] if lines else None


def launch(command: Sequence[str], workers: int, engines: Sequence[str], *, port: int | None = None,
           threads: int | None = None, checkpoint_note: Callable[[], str] | None = None,
           say: Callable[[str], None] | None = None) -> int:
    """Runs ``command`` as ``workers`` local worker processes of ``engines``; returns the exit code.

    Rank 0 inherits stdout and stderr; the others' output goes to a temporary log (its error line is shown
    if it alone failed). A worker killed from outside makes the others stop (killed after
    :data:`GRACE_SECONDS`) and ``say`` prints one line naming it and ``checkpoint_note()``.
    """
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    tf_count = workers if "tf" in engines else 0
    if port is not None:
        ports = [port] if "torch" in engines else []
        ports += list(range(port + (1 if "torch" in engines else 0), port + (1 if "torch" in engines else 0) + tf_count))
        check_ports(ports)
    else:
        ports = free_ports((1 if "torch" in engines else 0) + tf_count)
    torch_port = ports[0] if "torch" in engines else 0
    tf_ports = ports[1:] if "torch" in engines else ports

    state = {"signals": 0, "name": None}
    processes: list[subprocess.Popen] = []
    killed_by_us: set[int] = set()

    def kill_all() -> None:
        for r, p in enumerate(processes):
            if p.poll() is None:
                killed_by_us.add(r)
                p.kill()

    def on_signal(signum, frame):
        state["signals"] += 1
        state["name"] = signal.Signals(signum).name
        if state["signals"] == 1:
            for p in processes:
                if p.poll() is None:
                    p.send_signal(signum)
        else:
            kill_all()

    logs = tempfile.mkdtemp(prefix="dualmeta-workers-")
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    log_files = []
    try:
        for rank in range(workers):
            env = _worker_env(rank, workers, engines, torch_port, tf_ports, threads)
            if rank == 0:
                out = err = None
            else:
                handle = open(os.path.join(logs, f"worker-{rank}.log"), "w")
                log_files.append(handle)
                out, err = subprocess.DEVNULL, handle
            # Own session: the terminal's Ctrl-C reaches the launcher only, which passes it on once.
            processes.append(subprocess.Popen(list(command), env=env, stdout=out, stderr=err,
                                              start_new_session=True))
        failed_at = None
        while any(p.poll() is None for p in processes):
            codes = [p.poll() for p in processes]
            # After the first Ctrl-C / SIGTERM passed on, a worker that exits 130/143 stopped as asked: the
            # others (rank 0 saving the checkpoint, maybe slowly on a loaded machine) are not cut short.
            stopped = (130, 143) if state["signals"] == 1 else ()
            if failed_at is None and any(c not in (None, 0, *stopped) for c in codes):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > GRACE_SECONDS:
                kill_all()
            time.sleep(0.05)
        codes = [p.wait() for p in processes]
    finally:
        kill_all()
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for handle in log_files:
            handle.close()
        for s, old in previous.items():
            signal.signal(s, old)

    try:
        note = checkpoint_note() if checkpoint_note else ""
        if state["signals"] >= 2:
            say(f"dualmeta: error: interrupted twice; the {workers} workers were killed. {note}".strip())
            return 130 if state["name"] == "SIGINT" else 143
        dead = [r for r, c in enumerate(codes) if c < 0 and r not in killed_by_us]
        if dead:
            r = dead[0]
            how = signal.Signals(-codes[r]).name
            others = "the other workers were stopped" if workers > 1 else "no other worker ran"
            say(f"dualmeta: error: worker {r} of {workers} (pid {processes[r].pid}) died ({how}); {others}. {note}"
                .strip())
            return 1
        if codes[0] in (0, EXIT_WORKER_LOST) or codes[0] < 0:
            failed = [r for r, c in enumerate(codes) if c not in (0, EXIT_WORKER_LOST) and r not in killed_by_us]
            if failed:
                r = failed[0]
                line = _last_error(os.path.join(logs, f"worker-{r}.log"))
                detail = line.removeprefix("dualmeta: error:").strip() if line else f"exit code {codes[r]}"
                say(f"dualmeta: error: worker {r} of {workers} failed: {detail}")
                return codes[r] if codes[r] > 0 else 1
            if codes[0] != 0:
                say(f"dualmeta: error: the workers lost contact with each other (a collective failed or timed "
                    f"out); they were stopped. {note}".strip())
                return 1
        return codes[0]
    finally:
        for name in os.listdir(logs):
            os.unlink(os.path.join(logs, name))
        os.rmdir(logs)
