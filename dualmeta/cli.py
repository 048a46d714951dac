"""dualmeta command line: ``python -m dualmeta <command> [--flags]`` or ``dualmeta <command>``.

Commands:
  compare   train the same experiment in both backends from the same weights; report side by side
            (no flags: sinusoid MAML, float64, 5000 steps; 35-80 s on two CPU cores)
  train     meta-train one backend; checkpoints, TensorBoard, metrics.jsonl in --logdir
  evaluate  load a checkpoint (from either backend) and report accuracy/MSE with a 95% CI
  bench     time meta_train_step on synthetic data; prints one JSON line

--workers=N (train, bench, compare) splits every meta-batch over N local worker processes on the backend's
own engine (torch.distributed, tf.distribute) and gives the one-process weights; docs/distributed.md.

Recipes: --flagfile=dualmeta/configs/omniglot_maml_5w1s.flags. Exit codes: 0 done, 1 error (a one-line
message on stderr), 2 bad command line, 130 stopped by SIGINT (Ctrl-C), 143 by SIGTERM (a checkpoint of
the last completed step is saved first; continue with --resume).
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS

COMMANDS = ("train", "evaluate", "compare", "bench", "check-model")
LEARNER_NAMES = ["maml", "fomaml", "reptile", "metasgd", "anil", "finetune", "protonet", "matchingnet", "lstm",
                 "snail", "baseline", "baseline_pp", "simclr", "mae"]
_ABSL_FLAGS = set(FLAGS)

flags.DEFINE_enum("backend", None, ["tf", "torch"], "Backend (default: torch if installed, else tf).")
flags.DEFINE_enum("learner", "maml", LEARNER_NAMES, "Meta-learning algorithm (finetune: the pretrain-then-"
                  "fine-tune baseline; lstm, snail: model-based, the episode read as a sequence).")
flags.DEFINE_enum("tasks", "sinusoid", ["sinusoid", "omniglot", "folder", "miniimagenet", "tieredimagenet", "cifar_fs",
                                        "fc100"], "Task family (folder: your own images, --data_dir=<root with "
                  "train/val/test class folders>; miniimagenet, tieredimagenet, cifar_fs, fc100: the standard "
                  "sets, --data_dir=<their files>, docs/own-data.md).")
flags.DEFINE_enum("split", None, ["vinyals", "lake"], "Omniglot split (default vinyals).")
flags.DEFINE_integer("ways", None, "Classes per episode at validation/test (omniglot default 5).")
flags.DEFINE_integer("shots", None, "Support examples per class (sinusoid: points) (default 10 / 1).")
flags.DEFINE_integer("queries", None, "Query examples per class (sinusoid: points) (default 10 / 15).")
flags.DEFINE_integer("train_ways", None, "Ways in training episodes (default --ways; protonet 60).")
flags.DEFINE_integer("train_shots", None, "Shots in training episodes (default --shots).")
flags.DEFINE_integer("train_queries", None, "Queries in training episodes (default --queries; protonet 5).")
flags.DEFINE_integer("meta_batch_size", None, "Tasks per meta-update (default 25 sinusoid, 32 omniglot).")
flags.DEFINE_integer("inner_steps", None, "Inner-loop steps in training (default 1; reptile 5).")
flags.DEFINE_integer("test_inner_steps", None, "Inner-loop steps at validation/test (default 10 / 3).")
flags.DEFINE_float("inner_lr", None, "Inner-loop learning rate (default 0.01 sinusoid, 0.4 omniglot).")
flags.DEFINE_float("meta_lr", None, "Meta learning rate (default 1e-3; reptile 1.0 with SGD).")
flags.DEFINE_enum("inner_reduction", None, ["mean", "sum_per_shot"],
                  "Support-loss reduction (default: mean; omniglot MAML sum_per_shot, as the original code).")
flags.DEFINE_integer("inner_batch_size", None, "reptile: support examples per inner step, class-balanced "
                     "minibatches (default: the whole support set; Nichol et al. 10 of --train_shots=10 x 5 ways).")
flags.DEFINE_boolean("recompute_inner_steps", None, "maml, metasgd, anil: keep only each inner step's input "
                     "weights and recompute its graph in the backward pass (less memory, more time: docs/cli.md).")
flags.DEFINE_integer("steps", None, "Meta-training steps (default 70000 sinusoid, 60000 omniglot MAML; "
                     "compare 5000, snail 1000; bench 20 timed steps).")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and of the training episodes.")
flags.DEFINE_enum("dtype", None, ["float32", "float64"], "Floating point type (default float32; compare float64).")
flags.DEFINE_enum("activation", "relu", ["relu", "softplus"], "Model nonlinearity. In float32 the backends' "
                  "round-off flips ReLU kinks and long trajectories drift apart; softplus keeps them together.")
flags.DEFINE_integer("hidden", None, "Model width: MLP hidden units (default 40) or conv4 channels (default 64); "
                     "lstm/snail on sinusoid: LSTM units (40) / SNAIL filters (32).")
flags.DEFINE_string("logdir", None, "Run folder (default runs/<tasks>-<learner>-<backend>, runs/compare-...).")
flags.DEFINE_string("data_dir", None, "Omniglot folder (default $DUALMETA_DATA_DIR, else ../shared/data/omniglot "
                    "beside the checkout if present, else ~/.cache/dualmeta/omniglot).")
flags.DEFINE_string("checkpoint", None, "evaluate: checkpoint file or run folder (default <logdir>/checkpoint.safetensors).")
flags.DEFINE_integer("episodes", 600, "Evaluation episodes (fixed: the same in every run and backend).")
flags.DEFINE_enum("test_norm", None, ["query", "support"], "MAML family on omniglot: batch-norm statistics when "
                  "the test queries are scored: query (their own; transductive, as Finn et al.; the default) or "
                  "support (the support set's: each query is classified on its own).")
flags.DEFINE_boolean("resume", False, "train: continue the run in --logdir from its last checkpoint.")
flags.DEFINE_string("report", None, "Write a JSON report to this path (train: evaluates at the end).")
flags.DEFINE_integer("val_every", 1000, "Validate every N steps (and at the last step); 0: only at the end.")
flags.DEFINE_integer("val_episodes", 100, "Validation episodes.")
flags.DEFINE_integer("checkpoint_every", 1000, "Checkpoint every N steps (and at the end); 0: only at the end.")
flags.DEFINE_integer("log_every", 100, "Progress line every N steps when stderr is not a terminal.")
flags.DEFINE_boolean("progress", True, "Training progress on stderr: a tqdm bar on a terminal, a line every "
                     "--log_every steps otherwise; --noprogress: none.")
flags.DEFINE_integer("lr_decay_every", None, "protonet/matchingnet: halve --meta_lr every N steps "
                     "(default: protonet 2000, as Snell et al.; matchingnet never).")
flags.DEFINE_integer("warmup", 3, "bench: untimed warm-up steps.")
flags.DEFINE_float("memory_limit", None, "train, compare: GB of resident memory a process may use; above it the "
                   "run stops with one line and the last checkpoint kept (default: 90% of what was free at the start).")
flags.DEFINE_integer("seeds", 1, "compare: train both backends with N seeds (--seed, --seed+1, ...) and test whether "
                     "their final metrics differ by more than the spread between seeds (Welch's t-test; "
                     "compare-seeds.json/.md in --logdir).")
flags.DEFINE_integer("threads", None, "CPU threads per backend (torch: intra-op; TensorFlow: intra- and inter-op); default 1 for sinusoid (tiny "
                     "operations, where more threads only wait on each other), the framework's own otherwise.")
flags.DEFINE_integer("workers", None, "train, bench, compare: split every meta-batch over N local worker "
                     "processes (one thread each unless --threads) on the backend's engine, torch.distributed or "
                     "tf.distribute; the weights are those of one process. Default: one process.")
flags.DEFINE_integer("port", None, "--workers: the first loopback port (torch: the rendezvous; tf: one per worker "
                     "from here); default: free ports.")
flags.DEFINE_float("dist_timeout", 300.0, "Distributed runs: seconds a collective waits for a missing worker "
                   "before the run stops with an error.")
# Pretraining learners (baseline, baseline_pp, simclr, mae; dualmeta/pretrain.py, docs/learners/baseline.md)
flags.DEFINE_enum("head", None, ["prototype", "linear", "finetune"], "baseline, baseline_pp, simclr, mae: the "
                  "few-shot head on the pretrained encoder at validation/test: prototype (nearest normalised "
                  "centroid; the default), linear (a new head, 100 SGD steps on the support set), finetune (the "
                  "whole network).")
flags.DEFINE_float("mask_ratio", None, "mae: the fraction of each image hidden, strictly between 0 and 1 "
                   "(default 0.75).")
flags.DEFINE_float("drop_rate", None, "protonet, matchingnet with --model=resnet12: DropBlock after each block "
                   "(blocks of 5x5 units in the last two, dropout in the first two), about this fraction dropped in "
                   "training; masks drawn in numpy by address, the same in both backends (0.1 is usual).")
flags.DEFINE_string("device", "cpu", "torch device: cpu, cuda, cuda:N or mps (the model moves there and the "
                    "learner follows it). torch only: TensorFlow places operations on a visible GPU by itself.")

_FLAG_NAMES = tuple(name for name in FLAGS if name not in _ABSL_FLAGS)
COMPARE_STEPS = 5000
# SNAIL's sinusoid step is 40 ms (torch) / 80-140 ms (tf) on 2 busy cores: 5000 steps would take ~10 minutes.
COMPARE_STEPS_BY_LEARNER = {"snail": 1000}
BENCH_STEPS = 20
EXIT_ERROR, EXIT_USAGE = 1, 2
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}
_EXPERIMENT_FLAGS = ("split", "ways", "shots", "queries", "train_ways", "train_shots", "train_queries",
                     "meta_batch_size", "inner_steps", "test_inner_steps", "inner_lr", "meta_lr",
                     "inner_reduction", "inner_batch_size", "recompute_inner_steps", "steps", "seed", "dtype", "hidden",
                     "activation", "lr_decay_every", "data_dir", "mask_ratio", "drop_rate")

_NOT_INHERITED = ("train_ways", "train_shots", "train_queries", "data_dir")  # evaluate: not from the checkpoint
_SHAPE_FLAGS = ("split", "ways", "shots", "queries", "dtype", "hidden", "activation")  # ... when it had another learner


class CommandError(Exception):
    """An error for the user: printed as one line, exit code 1."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _die(message: str, code: int = EXIT_ERROR):
    _say(f"dualmeta: error: {' '.join(str(message).split())}")
    sys.exit(code)


# ----------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------

def _given(name: str) -> bool:
    return FLAGS[name].present > 0


def _backend_name() -> str:
    from dualmeta import backend
    return FLAGS.backend or backend.default_backend()


def _experiment(command: str, base: dict | None = None, backend_name: str | None = None):
    """The experiment from the flags; ``base`` (a checkpoint's settings) fills what the flags leave out."""
    from dualmeta.experiment import resolve

    values = {name: getattr(FLAGS, name) for name in _EXPERIMENT_FLAGS}
    learner, tasks = FLAGS.learner, FLAGS.tasks
    if base is not None:
        learner = FLAGS.learner if _given("learner") else base["learner"]
        tasks = FLAGS.tasks if _given("tasks") else base["tasks"]
        if tasks == base["tasks"]:  # training-episode shapes and the data folder are not the checkpoint's
            names = _EXPERIMENT_FLAGS if learner == base["learner"] else _SHAPE_FLAGS
            for name in names:
                if not _given(name) and name in base and name not in _NOT_INHERITED:
                    values[name] = base[name]
    values["backbone"] = FLAGS.model if command != "check-model" and FLAGS.model else (base or {}).get("backbone")
    if values["dtype"] is None:
        values["dtype"] = "float64" if command == "compare" else "float32"
    if values["steps"] is None and command in ("compare", "bench"):
        values["steps"] = COMPARE_STEPS_BY_LEARNER.get(learner, COMPARE_STEPS) if command == "compare" else BENCH_STEPS
    experiment = resolve(backend=backend_name or _backend_name(), learner=learner, tasks=tasks, **values)
    if FLAGS.test_norm is not None:
        from dualmeta.experiment import MAML_FAMILY
        if experiment.learner not in MAML_FAMILY or not experiment.classification:
            raise ValueError(f"--test_norm chooses the batch-norm statistics of the MAML family's conv4 on "
                             f"--tasks=omniglot; drop it for --learner={experiment.learner} "
                             f"--tasks={experiment.tasks}")
    if FLAGS.head is not None and not experiment.pretrain:
        raise ValueError(f"--head chooses the few-shot head of a pretrained encoder (--learner=baseline, "
                         f"baseline_pp, simclr or mae); drop it for --learner={experiment.learner}")
    return experiment


def _logdir(experiment, command: str) -> str:
    if FLAGS.logdir:
        return FLAGS.logdir
    if command == "compare":
        return os.path.join("runs", f"compare-{experiment.tasks}-{experiment.learner}-{experiment.dtype}")
    return os.path.join("runs", f"{experiment.tasks}-{experiment.learner}-{experiment.backend}")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Hides what C++ libraries print on fd 2 while a framework is imported (TensorFlow's start-up log
    ignores TF_CPP_MIN_LOG_LEVEL); Python errors still propagate. DUALMETA_VERBOSE=1 keeps it."""
    if os.environ.get("DUALMETA_VERBOSE"):
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _threads(experiment) -> int:
    """--threads, else 1 for sinusoid and for distributed workers (0 = the framework's default)."""
    if FLAGS.threads is not None:
        return FLAGS.threads
    return 1 if experiment.tasks == "sinusoid" or _worker() else 0


# ----------------------------------------------------------------------------------------------------
# Distributed runs: this process as one worker of several (docs/distributed.md)
# ----------------------------------------------------------------------------------------------------

_GROUPS: dict = {}  # backend name -> the Group of its engine, joined once per process
_FAULT_NOTE = {"text": ""}  # what a worker that loses its peers says about the checkpoint


def _world(name: str):
    from dualmeta.launch import world_from_env
    return world_from_env(name)


def _worker() -> bool:
    return _world("torch") is not None or _world("tf") is not None


def _lead(name: str) -> bool:
    """This process logs, checkpoints and reports: rank 0, or the only process."""
    world = _world(name)
    return world is None or world.rank == 0


def _device(name: str) -> str:
    """--device for ``name`` (a worker takes the GPU of its local rank when --device=cuda has no index)."""
    if name != "torch":
        return "cpu"
    world = _world(name)
    if FLAGS.device == "cuda" and world is not None:
        return f"cuda:{world.local_rank}"
    return FLAGS.device


def _group(name: str):
    """The engine's group of a distributed worker (started at the first call, before any model), or None."""
    if _world(name) is None:
        return None
    if name not in _GROUPS:
        from absl import logging

        from dualmeta import backend
        if not os.environ.get("DUALMETA_VERBOSE"):
            logging.set_verbosity(logging.WARNING)  # tf.distribute logs its set-up at INFO level
        with _quiet_native_stderr():
            engine = backend.distributed(name)
        _GROUPS[name] = engine.start(timeout=FLAGS.dist_timeout, device=_device(name))
    return _GROUPS[name]


def _train_tasks(experiment, name: str):
    """The training task set; a worker's builds only its share of each meta-batch."""
    from dualmeta.launch import ShardedTasks
    tasks, world = experiment.train_tasks(), _world(name)
    return tasks if world is None else ShardedTasks(tasks, world.rank, world.size)


def _learner(experiment, backend_name: str | None = None):
    from dualmeta import backend
    name = backend_name or experiment.backend
    with _quiet_native_stderr():
        backend.load_backend(name)
    backend.set_threads(name, _threads(experiment))
    group = _group(name)  # TensorFlow: the strategy comes before any other operation
    if group is not None:
        from dualmeta.launch import check_workers
        check_workers(group.size, experiment.meta_batch_size, experiment.learner)
    model, config = experiment.model()
    learner = backend.make_learner(name, experiment.learner, model, config,
                                   dtype=experiment.dtype, seed=experiment.seed,
                                   learner_args=experiment.learner_args(), device=_device(name))
    if group is not None:
        learner = backend.distributed(name).DistributedLearner(learner, group, experiment.meta_batch_size)
    _set_head(learner, experiment)
    return learner


def _checkpoint_note(logdir: str, step: int | None = None) -> str:
    """Where a stopped run continues from: the checkpoint of ``step`` (default: the one on disk, read)."""
    from dualmeta import checkpoint as ckpt
    path = os.path.join(logdir, ckpt.WEIGHTS_FILE)
    if step is None:
        try:
            step = ckpt.read_weights(path).metadata["step"]
        except ckpt.CheckpointError:
            return "No checkpoint was written."
    return f"The last checkpoint is {path} (step {step}); continue with --resume --logdir={logdir}"


def _launch(command: str) -> int:
    """--workers=N outside a worker: checks what can be checked, then starts and watches N local workers."""
    import importlib.util

    from dualmeta import backend, launch
    if command == "evaluate":
        _die("--workers applies to train, bench and compare; evaluate runs in one process: drop --workers",
             EXIT_USAGE)
    name = "torch" if command == "compare" else _backend_name()
    engines = ("torch", "tf") if command == "compare" else (name,)
    for engine in engines:
        framework = backend.BACKENDS[engine][1]
        if importlib.util.find_spec(framework) is None:
            raise backend.BackendUnavailable(
                f"--workers={FLAGS.workers} with the {engine!r} backend needs {framework} "
                f"({'torch.distributed' if engine == 'torch' else 'tf.distribute'}), which is not installed; "
                f"install it with pip install 'dualmeta[{backend.BACKENDS[engine][2]}]'")
    experiment = _experiment(command, backend_name=name)
    launch.check_workers(FLAGS.workers, experiment.meta_batch_size, experiment.learner)
    note = None
    if command == "train":
        from dualmeta import checkpoint as ckpt
        logdir = _logdir(experiment, "train")
        if FLAGS.resume:
            ckpt.load_latest(logdir)  # fails here, with its own message, if there is nothing to resume
        elif os.path.exists(os.path.join(logdir, ckpt.WEIGHTS_FILE)):
            raise CommandError(f"--logdir={logdir} already holds a checkpoint; pass --resume to continue it, or "
                               "choose another --logdir")
        note = lambda: _checkpoint_note(logdir)  # noqa: E731
    return launch.launch([sys.executable, "-m", "dualmeta", *sys.argv[1:]], FLAGS.workers, engines,
                         port=FLAGS.port, threads=FLAGS.threads, checkpoint_note=note, say=_say)


def _check_device(command: str) -> None:
    """--device is for torch (compare: its torch run). Checked before any work, so a missing GPU fails at once:
    a device for tf is a usage error (exit 2), one this machine's PyTorch cannot use an error (exit 1)."""
    if FLAGS.device == "cpu":
        return
    from dualmeta import backend
    name = "torch" if command == "compare" else _backend_name()
    if name == "torch":
        with _quiet_native_stderr():
            backend.load_backend(name)
    try:
        backend.check_device(name, FLAGS.device, name="--device")
    except ValueError as error:  # DeviceUnavailable (a RuntimeError) goes on to main: exit 1
        _die(str(error), EXIT_USAGE)


def _metadata(experiment, learner_name: str) -> dict:
    from dualmeta import __version__
    name, config = experiment.model()
    return {"learner": learner_name, "backend": experiment.backend, "model": {"name": name, "config": config},
            "dtype": experiment.dtype, "experiment": experiment.to_dict(), "dualmeta_version": __version__}


def _set_weights(learner, checkpoint, experiment) -> None:
    """Loads checkpoint weights, naming the tensor and the flags of the checkpoint on a shape mismatch."""
    try:
        learner.set_weights(checkpoint.weights)
    except ValueError as error:
        trained = checkpoint.metadata["experiment"]
        keys = ["tasks", "learner", "hidden"] + (["ways"] if trained.get("ways") else []) + \
            (["activation"] if trained.get("activation", "relu") != "relu" else [])
        flags_used = " ".join(f"--{k}={trained[k]}" for k in keys)
        reason = str(error).replace(" Build the model with the same architecture flags as the checkpoint.", "")
        raise CommandError(f"{checkpoint.path} does not fit the model built from the flags: {reason} The "
                           f"checkpoint was trained with {flags_used}; pass those flags (or leave them out "
                           "to take the checkpoint's)") from None


def _evaluate(learner, experiment, episodes: int, label: str = ""):
    if FLAGS.test_norm is not None:  # checked against the learner in _experiment
        learner.test_norm = FLAGS.test_norm
    _set_head(learner, experiment)
    t0 = time.perf_counter()
    result = learner.evaluate(experiment.eval_tasks().take(episodes))
    _say(f"{label}evaluated {episodes} episodes in {time.perf_counter() - t0:.1f}s")
    return result


def _report(result, experiment, episodes: int, **extra) -> dict:
    from dualmeta.experiment import EVAL_SEED
    from dualmeta.report import evaluation_report
    e = experiment
    settings = dict(tasks=e.tasks, dtype=e.dtype, shots=e.shots, queries=e.queries,
                    test_inner_steps=e.test_inner_steps, eval_seed=EVAL_SEED)
    if e.classification:
        from dualmeta.protocol import BATCH_NORM_AT_TEST
        norm = "running" if e.metric or e.pretrain else (FLAGS.test_norm or "query")
        settings.update(split=e.split, ways=e.ways, test_norm=norm, batch_norm_at_test=BATCH_NORM_AT_TEST[norm])
    if e.pretrain:
        settings["head"] = learner_head(e)
    return evaluation_report(result, classification=e.classification, episodes=episodes, backend=e.backend,
                             learner=e.learner, **settings, **extra)


def learner_head(experiment) -> str:
    """--head, else the pretraining learners' default (prototype)."""
    return FLAGS.head or "prototype"


def _set_head(learner, experiment) -> None:
    """--head for the pretraining learners (the others are refused in _experiment)."""
    if FLAGS.head is not None and experiment.pretrain:
        learner.head = FLAGS.head


def _print_result(report: dict) -> None:
    metric = "accuracy" if "accuracy" in report else "mse"
    value = report[metric]
    print(f"{report['backend']} {report['learner']} on {report['tasks']}: {metric} {value['mean']:.4f} ± "
          f"{value['ci95']:.4f} (95% CI, {report['episodes']} episodes); loss {report['loss']['mean']:.4f}")


# ----------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------

def cmd_train() -> int:
    from dualmeta import checkpoint as ckpt
    from dualmeta.tensorboard import EventWriter
    from dualmeta.train import MetricsLog, Progress, train

    experiment = _experiment("train")
    logdir = _logdir(experiment, "train")
    start, resumed = 0, None
    if FLAGS.resume:
        resumed = ckpt.load_latest(logdir)
        before = resumed.metadata["experiment"]
        changed = [f"--{k}={v!r} (checkpoint: {before[k]!r})" for k, v in experiment.defining().items()
                   if k in before and before[k] != v]  # a setting newer than the checkpoint keeps its default
        if changed:
            raise CommandError(f"--resume refuses settings that change the experiment: {', '.join(changed)}; "
                               "use the run's settings or start a new run in another --logdir")
        start = int(resumed.metadata["step"])
    elif os.path.exists(os.path.join(logdir, ckpt.WEIGHTS_FILE)):
        raise CommandError(f"--logdir={logdir} already holds a checkpoint; pass --resume to continue it, or "
                           "choose another --logdir")
    created = not os.path.exists(logdir)
    ckpt.check_writable(logdir)
    lead = _lead(experiment.backend)
    _FAULT_NOTE["text"] = _checkpoint_note(logdir)
    try:
        learner = _learner(experiment)
        tasks = _train_tasks(experiment, experiment.backend)
        val_episodes = experiment.val_tasks().take(FLAGS.val_episodes) if FLAGS.val_episodes > 0 and lead else None
    except BaseException:
        if created and not os.listdir(logdir):
            os.rmdir(logdir)  # leave no trace of a run that never started
        raise
    if resumed is not None:
        _set_weights(learner, resumed, experiment)
        learner.set_optimizer_state(resumed.state)
        if lead:
            _say(f"Resuming {logdir} from step {start}")
    metadata = _metadata(experiment, experiment.learner)
    index = {"flags": {name: FLAGS[name].value for name in _FLAG_NAMES}, "experiment": experiment.to_dict()}

    def save(step: int) -> None:
        ckpt.save(logdir, step, learner.get_weights(), learner.get_optimizer_state(), metadata, index)
        _FAULT_NOTE["text"] = _checkpoint_note(logdir, step)

    writer = metrics_log = progress = None
    if lead:  # the other workers of a distributed run write nothing
        # A restart event at the first step this run writes, and metrics.jsonl cut to the checkpoint's step,
        # drop what an interrupted (or failed, never checkpointed) run wrote after it.
        MetricsLog.truncate_after(os.path.join(logdir, "metrics.jsonl"), start)
        writer = EventWriter(logdir)
        writer.start(start + 1)
        metrics_log = MetricsLog(os.path.join(logdir, "metrics.jsonl"))
        progress = Progress(experiment.steps, start, every=FLAGS.log_every, enabled=FLAGS.progress)
    group = _GROUPS.get(experiment.backend)
    try:
        outcome = train(learner, tasks, experiment.meta_batch_size, experiment.steps, start_step=start,
                        save=save if lead else None, checkpoint_every=FLAGS.checkpoint_every,
                        validate=(lambda: {k: v["mean"] for k, v in learner.evaluate(val_episodes).items()})
                        if val_episodes else None, val_every=FLAGS.val_every, writer=writer,
                        metrics_log=metrics_log, progress=progress, saved_step=start if resumed else None,
                        agree=group.agree if group is not None else None)
    finally:
        if writer is not None:
            writer.close()
            metrics_log.close()
    path = os.path.join(logdir, ckpt.WEIGHTS_FILE)
    if not lead:
        return EXIT_SIGNAL.get(outcome.status, EXIT_ERROR) if outcome.status != "done" else 0
    if outcome.status != "done":
        _say(f"Stopped by {outcome.status} after step {outcome.step}; checkpoint saved to {path}. "
             f"Continue with: --resume --logdir={logdir}")
        return EXIT_SIGNAL.get(outcome.status, EXIT_ERROR)
    ran = outcome.step - start
    rate = f", {ran / outcome.seconds:.1f} steps/s" if outcome.seconds > 0 else ""
    last = f"; final training loss {outcome.losses[-1]:.4f}" if outcome.losses else ""
    workers = f" on {group.size} worker{'s' if group.size > 1 else ''}" if group is not None else ""
    print(f"Trained {experiment.backend} {experiment.learner} on {experiment.tasks} to step {outcome.step} "
          f"({ran} steps{rate}{workers}){last}; checkpoint: {path}")
    if FLAGS.report:
        result = _evaluate(learner, experiment, FLAGS.episodes)
        report = _report(result, experiment, FLAGS.episodes, checkpoint=path, step=outcome.step)
        _write_report(FLAGS.report, report)
        _print_result(report)
    return 0


def _write_report(path: str, report: dict) -> None:
    from dualmeta.report import write_json
    try:
        write_json(path, report)
    except OSError as error:
        raise CommandError(f"Cannot write the report --report={path} ({error.strerror or error}); "
                           "pass a writable path") from None
    _say(f"Report written to {path}")


def cmd_evaluate() -> int:
    from dualmeta import checkpoint as ckpt
    path = FLAGS.checkpoint or (os.path.join(FLAGS.logdir, ckpt.WEIGHTS_FILE) if FLAGS.logdir else None)
    if path is None:
        raise CommandError("evaluate needs a checkpoint: pass --checkpoint=<run>/checkpoint.safetensors "
                           "or --logdir=<run>")
    checkpoint = ckpt.read_weights(path)
    experiment = _experiment("evaluate", base=checkpoint.metadata["experiment"])
    learner = _learner(experiment)
    _set_weights(learner, checkpoint, experiment)
    result = _evaluate(learner, experiment, FLAGS.episodes)
    report = _report(result, experiment, FLAGS.episodes, checkpoint=checkpoint.path,
                     step=checkpoint.metadata["step"], trained_backend=checkpoint.metadata["backend"])
    _print_result(report)
    if FLAGS.report:
        _write_report(FLAGS.report, report)
    return 0


def cmd_compare() -> int:
    experiment = _experiment("compare", backend_name="torch")
    logdir = _logdir(experiment, "compare")
    if FLAGS.seeds == 1:
        return _compare(experiment, logdir)[0]
    if FLAGS.seeds < 1:
        raise ValueError(f"Expected --seeds >= 1 (2 or more give seed-to-seed error bars); received --seeds={FLAGS.seeds}")
    import dataclasses

    from dualmeta import checkpoint as ckpt
    from dualmeta import experiment as exp
    from dualmeta import report as rep
    from dualmeta import seeds as sd
    reports = {}
    for seed in range(experiment.seed, experiment.seed + FLAGS.seeds):
        one = dataclasses.replace(experiment, seed=seed)
        exp._check(one)  # a seed of the evaluation episodes is refused
        _say(f"compare: seed {seed} ({seed - experiment.seed + 1} of {FLAGS.seeds})")
        code, reports[seed] = _compare(one, os.path.join(logdir, f"seed-{seed}"))
        if code not in (0, EXIT_ERROR):  # stopped by a signal
            return code
    if not _lead("torch"):
        return 0
    from dualmeta.budget import provenance
    summary = sd.seeds_summary(reports, "accuracy" if experiment.classification else "mse")
    config = {k: v for k, v in experiment.to_dict().items() if k not in ("backend", "data_dir", "seed")}
    found = {"measured": provenance("-m dualmeta"), "config": config, **summary}
    rep.write_json(os.path.join(logdir, "compare-seeds.json"), found)
    if FLAGS.report:  # e.g. results/seeds/<name>.json, for the results pages
        _write_report(FLAGS.report, found)
    ckpt.atomic_write_text(os.path.join(logdir, "compare-seeds.md"), sd.seeds_markdown(summary, config))
    test = summary["welch_tf_minus_torch"]
    print(f"seeds {summary['seeds'][0]}-{summary['seeds'][-1]}: backends {'AGREE' if summary['agree'] else 'DIFFER'} "
          f"within the seed-to-seed spread (final {summary['metric']} tf - torch {test['difference']:.3g}, 95% "
          f"interval [{test['ci95'][0]:.3g}, {test['ci95'][1]:.3g}], Welch p = {test['p']:.3g}); per-step parity "
          f"{summary['parity'].upper()}")
    print(sd.STATISTIC)
    print(f"wrote {os.path.join(logdir, 'compare-seeds.json')} and compare-seeds.md")
    return 0 if summary["parity"] == "pass" and summary["agree"] else EXIT_ERROR


def _compare(experiment, logdir: str):
    """One comparison (both backends, one seed) into ``logdir``: ``(exit code, report or None)``."""
    import numpy as np

    from dualmeta import checkpoint as ckpt
    from dualmeta import report as rep
    from dualmeta.tensorboard import EventWriter
    from dualmeta.tolerances import tolerance
    from dualmeta.train import MetricsLog, Progress, train

    lead = _lead("torch")
    if lead:
        ckpt.check_writable(logdir)
        experiment.eval_tasks().take(FLAGS.episodes)  # a missing dataset fails before any training
    learners = {name: _learner(experiment, name) for name in ("torch", "tf")}
    start_weights = learners["torch"].get_weights()  # = dualmeta.weights.initialize(spec, seed) + learner tensors
    learners["tf"].set_weights(start_weights)
    runs = {}
    every = FLAGS.log_every if _given("log_every") else max(1, experiment.steps // 10)
    for name, learner in learners.items():
        tasks = _train_tasks(experiment, name)
        group = _GROUPS.get(name)
        if not lead:  # another worker of a distributed comparison: train, and leave the rest to rank 0
            outcome = train(learner, tasks, experiment.meta_batch_size, experiment.steps, agree=group.agree)
            if outcome.status != "done":
                return EXIT_SIGNAL.get(outcome.status, EXIT_ERROR), None
            continue
        folder = os.path.join(logdir, name)
        os.makedirs(folder, exist_ok=True)
        for old in os.listdir(folder):  # a new comparison replaces the last one's logs
            if old.startswith("events.out.tfevents.") or old == "metrics.jsonl":
                os.unlink(os.path.join(folder, old))
        with EventWriter(folder) as writer:
            log = MetricsLog(os.path.join(folder, "metrics.jsonl"))
            try:
                outcome = train(learner, tasks, experiment.meta_batch_size, experiment.steps, writer=writer,
                                metrics_log=log, progress=Progress(experiment.steps, every=every,
                                                                   label=f"{name:5s} ", enabled=FLAGS.progress),
                                agree=group.agree if group is not None else None)
            finally:
                log.close()
        if outcome.status != "done":
            _say(f"compare stopped by {outcome.status} during the {name} run; no report written")
            return EXIT_SIGNAL.get(outcome.status, EXIT_ERROR), None
        evaluation = _evaluate(learner, experiment, FLAGS.episodes, label=f"{name:5s} ")
        runs[name] = {"losses": outcome.losses, "s_per_step": statistics.median(outcome.times),
                      "mean_s_per_step": outcome.seconds / len(outcome.times), "train_seconds": outcome.seconds,
                      "evaluation": _report(evaluation, experiment, FLAGS.episodes)}
        for key in ("backend", "learner", "tasks", "dtype", "episodes", "eval_seed"):
            runs[name]["evaluation"].pop(key, None)
    if not lead:
        return 0, None
    diffs = rep.relative_differences(runs["tf"]["losses"], runs["torch"]["losses"])
    tol, kind = tolerance("trajectory_loss", experiment.dtype)
    worst = int(np.argmax(diffs))
    final = {k: learners[k].get_weights() for k in learners}
    config = {k: v for k, v in experiment.to_dict().items() if k not in ("backend", "data_dir")}
    report = {
        "verdict": "pass" if float(diffs[worst]) <= tol else "fail",
        "max_rel_loss_diff": float(diffs[worst]), "max_rel_loss_diff_step": worst + 1,
        "tolerance": {"quantity": "trajectory_loss", "dtype": experiment.dtype, "value": tol, "kind": kind,
                      "measured_as": "max over steps of |loss_tf - loss_torch| / |loss_torch|"},
        "steps": experiment.steps, "episodes": FLAGS.episodes, "config": config,
        "workers": _GROUPS["torch"].size if "torch" in _GROUPS else 1,
        "final_weights_max_abs_diff": max(float(np.max(np.abs(final["tf"][n] - final["torch"][n])))
                                          for n in final["torch"]),
        "backends": runs, "rel_loss_diff": diffs.tolist(),
    }
    paths = {ext: os.path.join(logdir, f"compare.{ext}") for ext in ("json", "md", "png")}
    rep.write_json(paths["json"], report)
    ckpt.atomic_write_text(paths["md"], rep.compare_markdown(report))
    if not rep.plot_compare(paths["png"], report):
        _say("matplotlib is not installed, so no compare.png: pip install 'dualmeta[plots]'")
        del paths["png"]
    print(rep.text_table(rep.summary_table(report)))
    print(f"verdict: {report['verdict'].upper()} (max relative loss difference {report['max_rel_loss_diff']:.2e} "
          f"at step {worst + 1}; tolerance {tol:g} for {experiment.dtype})")
    for ext, path in paths.items():
        print(f"wrote {path}")
    if report["verdict"] != "pass" and experiment.dtype == "float32" and experiment.activation == "relu":
        _say("hint: in float32 the backends' round-off lands on opposite sides of ReLU kinks and long "
             "trajectories drift apart; compare with --activation=softplus or --dtype=float64")
    return (0 if report["verdict"] == "pass" else EXIT_ERROR), report


def _synthetic_batch(experiment, seed: int):
    """A random meta-batch with the shapes of the training episodes (no dataset needed)."""
    import numpy as np
    from dualmeta.episodes import Episode
    rng = np.random.default_rng(seed)
    b, shots, queries = experiment.meta_batch_size, experiment.train_shots, experiment.train_queries
    if not experiment.classification:
        x = rng.uniform(-5, 5, size=(b, shots + queries, 1)).astype(np.float32)
        y = (rng.uniform(0.1, 5, size=(b, 1, 1)) * np.sin(x)).astype(np.float32)
        return Episode(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])
    ways, size, channels = experiment.train_ways, experiment.image["image_size"], experiment.image["in_channels"]
    def images(n):
        return rng.random((b, ways * n, size, size, channels), dtype=np.float32)
    def labels(n):
        return np.tile(np.repeat(np.arange(ways, dtype=np.int64), n), (b, 1))
    return Episode(images(shots), labels(shots), images(queries), labels(queries))


def _synchronizer(backend_name: str):
    """Waits for a torch GPU's queued kernels (launched asynchronously), so that a step is timed whole."""
    if backend_name != "torch" or FLAGS.device == "cpu":
        return lambda: None
    import torch
    if FLAGS.device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(FLAGS.device)
    return torch.mps.synchronize


def cmd_bench() -> int:
    import platform
    experiment = _experiment("bench")
    if FLAGS.warmup < 0:
        raise CommandError(f"Expected --warmup >= 0; received --warmup={FLAGS.warmup}")
    learner = _learner(experiment)
    batch = _synthetic_batch(experiment, experiment.seed)
    world = _world(experiment.backend)
    if world is not None:
        from dualmeta.launch import shard_batch
        batch = shard_batch(batch, world.rank, world.size)
    synchronize = _synchronizer(experiment.backend)
    times = []
    for i in range(FLAGS.warmup + experiment.steps):
        t0 = time.perf_counter()
        learner.meta_train_step(batch)
        synchronize()
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - t0)
    e = experiment
    median = statistics.median(times)
    result = {"backend": e.backend, "learner": e.learner, "tasks": e.tasks, "steps": len(times),
              "warmup": FLAGS.warmup, "median_s_per_step": median, "min_s_per_step": min(times),
              "max_s_per_step": max(times), "episodes_per_s": e.meta_batch_size / median,
              "meta_batch_size": e.meta_batch_size, "ways": e.train_ways, "shots": e.train_shots,
              "queries": e.train_queries, "inner_steps": e.inner_steps, "dtype": e.dtype, "hidden": e.hidden,
              "model": e.model()[0], "threads": _threads(e) or "default", "cpus": os.cpu_count(),
              "device": _device(e.backend) if e.backend == "torch" else "tf placement",
              "python": platform.python_version(), "workers": world.size if world is not None else 1}
    if world is not None and world.rank != 0:
        return 0
    print(json.dumps(result), flush=True)
    if FLAGS.report:
        _write_report(FLAGS.report, result)
    return 0


# -- check-model (issue 17): a twin description built in both backends, compared ------------------------
flags.DEFINE_string("model", None, "train/evaluate/compare: the image backbone, conv4 (default), resnet12 or a twin description "
                    "'package.module:name' (called with the num_classes, in_channels, image_size it names); "
                    "check-model: a twin description, 'package.module:name' (a dualmeta.twins.Description or a "
                    "function returning one) or a built-in (mlp, conv4, resnet12).")


def cmd_check_model() -> int:
    if not FLAGS.model:
        raise CommandError("check-model needs --model=package.module:description (or mlp, conv4, resnet12)")
    from dualmeta import checkmodel
    ok, text = checkmodel.report(FLAGS.model, dtypes=(FLAGS.dtype,) if FLAGS.dtype else ("float32", "float64"))
    print(text)
    return 0 if ok else 1


_COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "compare": cmd_compare, "bench": cmd_bench,
             "check-model": cmd_check_model}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        received = " ".join(argv[1:]) or "nothing"
        _die(f"expected one command, {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]} (e.g. `python -m dualmeta "
             f"compare`); received {received}. See --helpshort for the flags", EXIT_USAGE)
    from dualmeta.backend import BackendUnavailable, DeviceUnavailable
    from dualmeta.checkpoint import CheckpointError
    from dualmeta.launch import EXIT_WORKER_LOST, WorkerLost, watch_launcher
    from dualmeta.train import NonFiniteLoss
    try:
        from dualmeta import guard
        guard.configure(memory_limit_gb=FLAGS.memory_limit)
        _check_device(argv[1])
        if FLAGS.workers is not None and not _worker():
            return _launch(argv[1])
        if _worker():
            watch_launcher()
        code = _COMMANDS[argv[1]]()
        for group in _GROUPS.values():  # leave the process group before exit: torch's gloo threads abort
            group.close()               # the interpreter ("terminate called...") if it is still joined
        return code
    except WorkerLost as error:
        if os.environ.get("DUALMETA_LAUNCHER_PID"):
            sys.exit(EXIT_WORKER_LOST)  # the launcher names the dead worker
        _die(f"{error}. {_FAULT_NOTE['text']}")
    except (CommandError, CheckpointError, BackendUnavailable, DeviceUnavailable, NonFiniteLoss,
            FileNotFoundError) as error:
        _die(str(error))
    except ValueError as error:  # a setting the library refused: its message names the accepted values
        _die(str(error))
    except KeyboardInterrupt:
        _die("interrupted; checkpoints already written are intact", EXIT_SIGNAL["SIGINT"])
    except MemoryError:
        _die("out of memory; lower --meta_batch_size, --ways, --queries or --hidden")


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as error:
        _die(f"{error} (see --helpshort)", EXIT_USAGE)


def run() -> None:
    """Entry point of ``python -m dualmeta`` and the ``dualmeta`` console script."""
    # --helpshort lists the key flags of the program (absl files them under sys.argv[0]) under its docstring.
    for name in _FLAG_NAMES:
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    main_module = sys.modules.get("__main__")
    if main_module is not None and not (main_module.__doc__ or "").strip().startswith("dualmeta command line"):
        main_module.__doc__ = __doc__
    app.run(main, flags_parser=_parse)


if __name__ == "__main__":
    run()
