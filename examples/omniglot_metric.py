"""Prototypical / Matching Networks on Omniglot: train for a time budget, then the standard evaluations.

Training: Vinyals et al.'s train+val characters (``omniglot_split('vinyals', 'trainval')``, 4800 classes
with rotations), one episode per step; ProtoNet by default as Snell et al. 2017: 60-way 5-shot 5-query
episodes, Adam 1e-3 halved every 2000 episodes, a conv4 max-pool encoder (64 channels, 64-d embedding)
with squared Euclidean distances. MatchingNet trains on 5-way 1-shot 15-query episodes (Vinyals et al.
match training and test conditions); ``--fce`` adds full-context embeddings.

Batch norm: the encoder keeps running statistics (``--running_stats``, default on) and evaluation uses
them, as the papers' code does (``model.eval()``), so a test episode's predictions do not depend on the
other images of the episode. ``--norunning_stats`` evaluates with the batch statistics of each episode
(transductive).

Evaluation, on the 1692 test classes (characters 1201-1623 with rotations) with 15 queries per class:
5-way 1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot, ``--episodes`` fixed episodes each (the same
in every run and backend), mean accuracy with a 95% confidence interval; then Lake et al.'s 20 one-shot
runs (20-way 1-shot, 20 queries each) as an error rate. Everything goes to a JSON file (``--out``) and
the trained weights, in the neutral format, to ``--checkpoint`` if given (they load in either backend).

    python examples/omniglot_metric.py --backend=torch --minutes=30 --out=protonet_torch.json
    python examples/omniglot_metric.py --backend=tf --learner=matchingnet --fce --minutes=30
    python examples/omniglot_metric.py --minutes=0.05 --episodes=5 --hidden=8 --threads=1   # smoke test

The same runs through the command line (when ``dualmeta/cli.py`` has them): ``python -m dualmeta train
--tasks=omniglot --learner=protonet ...``; this script is standalone and imports only the chosen backend.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "torch", ["tf", "torch"], "Backend.")
flags.DEFINE_enum("learner", "protonet", ["protonet", "matchingnet"], "Metric learner.")
flags.DEFINE_float("minutes", 30.0, "Training time budget in minutes (the step in flight finishes).")
flags.DEFINE_integer("max_steps", None, "Stop training after this many episodes even within the budget.")
flags.DEFINE_integer("train_ways", None, "Ways of training episodes (default protonet 60, matchingnet 5).")
flags.DEFINE_integer("train_shots", None, "Shots of training episodes (default protonet 5, matchingnet 1).")
flags.DEFINE_integer("train_queries", None, "Queries of training episodes (default protonet 5, matchingnet 15).")
flags.DEFINE_integer("test_queries", 15, "Queries per class of test episodes.")
flags.DEFINE_integer("episodes", 600, "Test episodes per setting.")
flags.DEFINE_integer("hidden", 64, "Encoder channels.")
flags.DEFINE_float("meta_lr", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("lr_decay_every", None, "Halve the learning rate every N episodes (default protonet 2000, "
                     "matchingnet never).")
flags.DEFINE_enum("distance", "euclidean", ["euclidean", "cosine"], "protonet: distance.")
flags.DEFINE_float("cosine_scale", 1.0, "Scale of cosine similarities (protonet --distance=cosine, matchingnet).")
flags.DEFINE_boolean("fce", False, "matchingnet: full-context embeddings.")
flags.DEFINE_boolean("running_stats", True, "Evaluate with batch-norm running statistics (else batch statistics).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Floating point type.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the training episodes.")
flags.DEFINE_integer("eval_seed", 2_000_000_011, "Seed of the test episodes (keep it fixed to compare runs).")
flags.DEFINE_string("data_dir", None, "Omniglot folder (default: dualmeta.data.default_data_dir()).")
flags.DEFINE_string("out", None, "Metrics JSON (default omniglot_<learner>_<backend>.json).")
flags.DEFINE_string("checkpoint", None, "Write the trained weights (safetensors, neutral format) here.")
flags.DEFINE_integer("log_every", 100, "Print the mean training loss/accuracy every N episodes.")
flags.DEFINE_integer("threads", None, "CPU threads of the backend (intra-op); default: the framework's own. "
                     "On a busy machine 1 can be much faster for small models (--hidden 8).")

TEST_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
TRAIN_DEFAULTS = {"protonet": (60, 5, 5), "matchingnet": (5, 1, 15)}


def set_threads(backend: str, threads: int | None) -> None:
    if threads is None:
        return
    if threads <= 0:
        raise app.UsageError(f"Expected a positive --threads; received --threads={threads}")
    if backend == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)


def build_learner(backend: str, learner: str):
    models = importlib.import_module(f"{backend}_meta.models")
    model = models.conv4(hidden=FLAGS.hidden, downsample="maxpool", head="flatten",
                         track_running_stats=FLAGS.running_stats, dtype=FLAGS.dtype, seed=FLAGS.seed)
    decay = FLAGS.lr_decay_every if FLAGS.lr_decay_every is not None else (2000 if learner == "protonet" else None)
    common = dict(meta_lr=FLAGS.meta_lr, lr_decay_every=decay)
    if learner == "protonet":
        return importlib.import_module(f"{backend}_meta.protonet").ProtoNet(
            model, distance=FLAGS.distance, cosine_scale=FLAGS.cosine_scale, **common)
    return importlib.import_module(f"{backend}_meta.matchingnet").MatchingNet(
        model, fce=FLAGS.fce, cosine_scale=FLAGS.cosine_scale, **common)


def train(learner, tasks, minutes: float, max_steps: int | None) -> dict:
    start = time.perf_counter()
    deadline = start + 60.0 * minutes
    step, window, first_step_s = 0, [], None
    while step == 0 or (time.perf_counter() < deadline and (max_steps is None or step < max_steps)):
        t0 = time.perf_counter()
        metrics = learner.meta_train_step(tasks.batch(step, 1))
        if step == 0:
            first_step_s = time.perf_counter() - t0
        if not math.isfinite(metrics["loss"]):
            raise FloatingPointError(f"Training loss is {metrics['loss']} at step {step}; lower --meta_lr")
        window.append(metrics)
        step += 1
        if step % FLAGS.log_every == 0:
            loss = sum(m["loss"] for m in window) / len(window)
            accuracy = sum(m["accuracy"] for m in window) / len(window)
            print(f"step {step:6d}  loss {loss:.4f}  accuracy {accuracy:.4f}  lr {learner.learning_rate():.2e}  "
                  f"{time.perf_counter() - start:7.1f} s", flush=True)
            window = []
    seconds = time.perf_counter() - start
    last = window[-1] if window else metrics
    return {"steps": step, "seconds": round(seconds, 2), "first_step_seconds": round(first_step_s, 3),
            "seconds_per_step": round((seconds - first_step_s) / max(step - 1, 1), 4),
            "final_loss": last["loss"], "final_accuracy": last["accuracy"], "final_lr": learner.learning_rate()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.minutes > 0:
        raise app.UsageError(f"Expected a positive --minutes; received --minutes={FLAGS.minutes}")
    from dualmeta import data
    from dualmeta.episodes import ClassificationTasks
    from dualmeta.weights import save_weights

    ways, shots, queries = TRAIN_DEFAULTS[FLAGS.learner]
    ways = FLAGS.train_ways or ways
    shots = FLAGS.train_shots or shots
    queries = FLAGS.train_queries or queries
    images = data.load_omniglot_images(FLAGS.data_dir, image_size=28)
    trainval = data.omniglot_split("vinyals", "trainval", images=images)
    test = data.omniglot_split("vinyals", "test", images=images)
    set_threads(FLAGS.backend, FLAGS.threads)
    learner = build_learner(FLAGS.backend, FLAGS.learner)
    config = {name: FLAGS[name].value for name in (
        "backend", "learner", "minutes", "max_steps", "test_queries", "episodes", "hidden", "meta_lr",
        "distance", "cosine_scale", "fce", "running_stats", "dtype", "seed", "eval_seed", "threads")}
    config.update(train_ways=ways, train_shots=shots, train_queries=queries, lr_decay_every=learner.lr_decay_every,
                  batch_norm_at_test="running statistics" if FLAGS.running_stats else "batch statistics")
    print(f"{FLAGS.backend} {FLAGS.learner}: training on {trainval.num_classes} classes, {ways}-way {shots}-shot "
          f"{queries}-query, for {FLAGS.minutes} min", flush=True)
    report = {"config": config}
    report["train"] = train(learner, ClassificationTasks(trainval, ways, shots, queries, seed=FLAGS.seed),
                            FLAGS.minutes, FLAGS.max_steps)
    print(f"trained {report['train']['steps']} episodes in {report['train']['seconds']} s "
          f"({report['train']['seconds_per_step']} s/episode)", flush=True)

    report["test"] = {}
    for test_ways, test_shots in TEST_SETTINGS:
        tasks = ClassificationTasks(test, test_ways, test_shots, FLAGS.test_queries, seed=FLAGS.eval_seed)
        start = time.perf_counter()
        result = learner.evaluate(tasks.episode(i) for i in range(FLAGS.episodes))
        name = f"{test_ways}w{test_shots}s"
        report["test"][name] = {**result, "seconds": round(time.perf_counter() - start, 2)}
        acc = result["accuracy"]
        print(f"{name:>6}: accuracy {100 * acc['mean']:.2f} ± {100 * acc['ci95']:.2f} % over {acc['n']} episodes",
              flush=True)

    runs = data.lake_one_shot_runs(FLAGS.data_dir, image_size=28)
    lake = learner.evaluate(runs)
    report["lake_one_shot"] = {"error_rate_percent": 100 * (1 - lake["accuracy"]["mean"]),
                               "ci95_percent": 100 * lake["accuracy"]["ci95"], "runs": lake["accuracy"]["n"],
                               "loss": lake["loss"]}
    print(f"Lake's {len(runs)} one-shot runs: error rate {report['lake_one_shot']['error_rate_percent']:.2f} ± "
          f"{report['lake_one_shot']['ci95_percent']:.2f} %", flush=True)

    if FLAGS.checkpoint:
        save_weights(FLAGS.checkpoint, learner.get_weights(),
                     metadata={"config": config, "steps": report["train"]["steps"]})
        report["checkpoint"] = os.path.abspath(FLAGS.checkpoint)
    out = FLAGS.out or f"omniglot_{FLAGS.learner}_{FLAGS.backend}.json"
    with open(out, "w") as handle:
        json.dump(report, handle, indent=2)
    print(f"metrics written to {out}")


if __name__ == "__main__":
    app.run(main)
