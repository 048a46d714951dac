"""Prototypical / Matching Networks on Omniglot: train for a time budget, then the standard evaluations.

The protocol (``dualmeta.protocol``; ``--split``, ``--train_on``, ``--evaluate_on``): training classes,
validation classes and test classes share no character. By default the run trains on the Vinyals
training alphabets (4112 classes with rotations), draws its accuracy curve from the 5 validation alphabets
(688 classes) and scores the test classes (characters 1201-1623, 1692 classes with rotations) once, at the
end. ``--train_on=trainval`` trains on train and val together (the papers' final runs; no curve then);
``--split=lake`` trains on Lake's background alphabets (less the same 5 for validation, or all of them with
``--train_on=background``) and tests on Lake's evaluation alphabets. ``--evaluate_on=val`` makes a pilot
run: the final evaluation is on the validation classes and no test episode is drawn.

Training, one episode per step; ProtoNet by default as Snell et al. 2017: 60-way 5-shot 5-query
episodes, Adam 1e-3 halved every 2000 episodes, a conv4 max-pool encoder (64 channels, 64-d embedding)
with squared Euclidean distances. MatchingNet trains on 5-way 1-shot 15-query episodes (Vinyals et al.
match training and test conditions); ``--fce`` adds full-context embeddings.

Batch norm: the encoder keeps running statistics (``--running_stats``, default on) and evaluation uses
them, as the papers' code does (``model.eval()``), so a test episode's predictions do not depend on the
other images of the episode. ``--norunning_stats`` evaluates with the batch statistics of each episode
(transductive).

Evaluation with 15 queries per class: 5-way 1-shot, 5-way 5-shot, 20-way 1-shot and 20-way 5-shot,
``--episodes`` fixed episodes each (the same in every run and backend), mean accuracy with a 95% confidence
interval; then those of Lake et al.'s 20 one-shot runs (20-way 1-shot, 20 queries each) that share no
character with the training classes, as an error rate: runs 9-20 after Vinyals training, all 20 after
Lake's background set (``dualmeta.protocol.held_out_lake_runs``). Everything goes to a JSON file (``--out``)
and the trained weights, in the neutral format, to ``--checkpoint`` if given (they load in either backend).

    python examples/omniglot_metric.py --backend=torch --minutes=30 --out=protonet_torch.json
    python examples/omniglot_metric.py --backend=tf --learner=matchingnet --fce --minutes=30
    python examples/omniglot_metric.py --split=lake --train_shots=1 --minutes=10    # Lake's protocol, all 20 runs
    python examples/omniglot_metric.py --learner=matchingnet --cosine_scale=10 --evaluate_on=val --minutes=3  # pilot
    python examples/omniglot_metric.py --minutes=0.05 --episodes=5 --hidden=8 --threads=1   # smoke test
    python examples/omniglot_metric.py --device=cuda --minutes=30     # torch on a GPU (the learner follows the model)
    python examples/omniglot_metric.py --backend=tf --train_shots=1 --minutes=0 \
        --init_weights=protonet_torch.safetensors     # evaluate a torch checkpoint in TF, without training

The same runs through the command line (when ``dualmeta/cli.py`` has them): ``python -m dualmeta train
--tasks=omniglot --learner=protonet ...``; this script is standalone and imports only the chosen backend.
"""
from __future__ import annotations

import importlib
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (NOT_TRAINED, check_run_flags, load_init_weights, protocol_record,  # noqa: E402
                     run_protocol, trained_characters, validation_curve)  # (examples/_common.py)

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
flags.DEFINE_string("data_dir", None, "Omniglot folder (default: dualmeta.datasets.omniglot.default_data_dir()).")
flags.DEFINE_string("out", None, "Metrics JSON (default omniglot_<learner>_<backend>.json).")
flags.DEFINE_string("checkpoint", None, "Write the trained weights (safetensors, neutral format) here.")
flags.DEFINE_integer("log_every", 100, "Episodes per point of the training curve / progress line.")
flags.DEFINE_float("curve_every", 3.0, "Minutes of training between points of the 5-way 1-shot accuracy curve "
                   "(0: none; excluded from the budget).")
flags.DEFINE_integer("curve_episodes", 100, "Test episodes per point of the accuracy curve.")
flags.DEFINE_integer("threads", None, "CPU threads of the backend (torch: intra-op; TensorFlow: intra- and inter-op); default: the framework's own. "
                     "On a busy machine 1 can be much faster for small models (--hidden 8).")
flags.DEFINE_string("device", "cpu", "torch device: cpu, cuda, cuda:N or mps (torch only: TensorFlow places "
                    "operations on a visible GPU by itself).")

TEST_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
TRAIN_DEFAULTS = {"protonet": (60, 5, 5), "matchingnet": (5, 1, 15)}


def build_learner(backend: str, learner: str):
    models = importlib.import_module(f"{backend}_meta.models")
    model = models.conv4(hidden=FLAGS.hidden, downsample="maxpool", head="flatten",
                         track_running_stats=FLAGS.running_stats, dtype=FLAGS.dtype, seed=FLAGS.seed)
    if FLAGS.device != "cpu":  # torch only (checked in main); the learner follows the model's device
        model = model.to(FLAGS.device)
    decay = FLAGS.lr_decay_every if FLAGS.lr_decay_every is not None else (2000 if learner == "protonet" else None)
    common = dict(meta_lr=FLAGS.meta_lr, lr_decay_every=decay)
    if learner == "protonet":
        return importlib.import_module(f"{backend}_meta.protonet").ProtoNet(
            model, distance=FLAGS.distance, cosine_scale=FLAGS.cosine_scale, **common)
    return importlib.import_module(f"{backend}_meta.matchingnet").MatchingNet(
        model, fce=FLAGS.fce, cosine_scale=FLAGS.cosine_scale, **common)


def lake_runs(learner, trained: set[str], images) -> dict:
    """Lake's one-shot runs that share no character with the training classes (all 20 after training on
    Lake's background set; runs 9-20 after the Vinyals training characters), as an error rate."""
    from dualmeta import protocol

    runs, kept, excluded = protocol.held_out_lake_runs(trained, images=images, data_dir=FLAGS.data_dir)
    if not runs:
        print("Lake's one-shot runs: every run shares characters with the training classes; none scored")
        return {"runs": 0, "kept": [], "excluded": excluded}
    lake = learner.evaluate(runs)
    result = {"error_rate_percent": 100 * (1 - lake["accuracy"]["mean"]), "ci95_percent": 100 * lake["accuracy"]["ci95"],
              "runs": lake["accuracy"]["n"], "kept": kept, "excluded": excluded, "loss": lake["loss"],
              "held_out": "no run character is a training character (dualmeta.protocol.held_out_lake_runs)"}
    print(f"Lake's one-shot runs {kept[0]}-{kept[-1]} ({len(kept)} held out of {len(kept) + len(excluded)}): error "
          f"rate {result['error_rate_percent']:.2f} ± {result['ci95_percent']:.2f} %", flush=True)
    return result


def main(argv):
    check_run_flags(argv)
    from dualmeta import backend, budget, data, protocol
    from dualmeta.episodes import ClassificationTasks
    from dualmeta.weights import atomic_write, save_weights

    ways, shots, queries = TRAIN_DEFAULTS[FLAGS.learner]
    ways = FLAGS.train_ways or ways
    shots = FLAGS.train_shots or shots
    queries = FLAGS.train_queries or queries
    images = data.load_omniglot_images(FLAGS.data_dir, image_size=28)
    chosen, final, final_role = run_protocol(images)
    if FLAGS.threads is not None and FLAGS.threads <= 0:
        raise app.UsageError(f"Expected a positive --threads; received --threads={FLAGS.threads}")
    backend.set_threads(FLAGS.backend, FLAGS.threads or 0)
    learner = build_learner(FLAGS.backend, FLAGS.learner)
    initial = load_init_weights(learner)
    seen = trained_characters(chosen, initial, images)
    config = {name: FLAGS[name].value for name in (
        "backend", "learner", "minutes", "max_steps", "test_queries", "episodes", "hidden", "meta_lr",
        "distance", "cosine_scale", "fce", "running_stats", "dtype", "seed", "eval_seed", "threads", "device", "init_weights")}
    config.update(train_ways=ways, train_shots=shots, train_queries=queries, lr_decay_every=learner.lr_decay_every,
                  test_norm="running" if FLAGS.running_stats else "query")
    config["batch_norm_at_test"] = protocol.BATCH_NORM_AT_TEST[config["test_norm"]]
    config.update(split=FLAGS.split, train_on=FLAGS.train_on, evaluate_on=FLAGS.evaluate_on)
    print(f"{FLAGS.backend} {FLAGS.learner}: training on {chosen.train.num_classes} classes ({chosen.label()}), "
          f"{ways}-way {shots}-shot {queries}-query, for {FLAGS.minutes} min", flush=True)
    # The curve uses the validation classes, never the test classes (dualmeta.protocol).
    curve_tasks, curve = validation_curve(chosen, learner, 5, 1)
    report = {"measured": budget.provenance("examples/omniglot_metric.py"), "config": config,
              "protocol": protocol_record(chosen, curve_tasks, FLAGS.curve_episodes, final_role)}
    if initial is not None:
        report["init_weights"] = initial
    try:
        report["train"] = dict(NOT_TRAINED) if FLAGS.minutes == 0 else budget.train_for(
            learner, ClassificationTasks(chosen.train, ways, shots, queries, seed=FLAGS.seed), 1, FLAGS.minutes,
            max_steps=FLAGS.max_steps, log_every=FLAGS.log_every,
            curve=curve, curve_every_s=60.0 * FLAGS.curve_every)
    except FloatingPointError as error:
        sys.exit(f"error: {error}")
    report["train"]["final_lr"] = learner.learning_rate()
    print(f"trained {report['train']['steps']} episodes in {report['train']['seconds']} s "
          f"({report['train']['seconds_per_step']} s/episode)", flush=True)
    report[final_role] = budget.evaluate_settings(learner, final, TEST_SETTINGS, FLAGS.test_queries,
                                                  FLAGS.episodes, FLAGS.eval_seed)
    if final_role == "test":  # a pilot (--evaluate_on=val) draws nothing of the test set, Lake's runs included
        report["lake_one_shot"] = lake_runs(learner, seen, images)


    if FLAGS.checkpoint:
        save_weights(FLAGS.checkpoint, learner.get_weights(),
                     metadata={"config": config, "steps": report["train"]["steps"]})
        report["checkpoint"] = FLAGS.checkpoint  # as given: no machine path in results
    out = FLAGS.out or f"omniglot_{FLAGS.learner}_{FLAGS.backend}.json"
    atomic_write(out, json.dumps(report, indent=2))
    print(f"metrics written to {out}")


if __name__ == "__main__":
    app.run(main)
