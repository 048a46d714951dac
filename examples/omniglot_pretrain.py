"""Transfer learning and self-supervised pretraining on Omniglot: train for a time budget, then the few-shot tests.

The learners (``--learner``): ``baseline`` and ``baseline_pp`` (Chen et al. 2019: a linear / cosine classifier over
all training classes), ``simclr`` (Chen et al. 2020: NT-Xent on two augmented views, no labels) and ``mae`` (a
masked autoencoder: 75% of each image hidden, the hidden pixels redrawn, no labels). All train a conv4 max-pool
encoder (64 channels, running batch-norm statistics) with Adam on minibatches of ``--batch_size`` images drawn by
address from the training classes (``dualmeta.pretrain``), so both backends see the same images, views and masks.

The protocol is that of the other Omniglot examples (``dualmeta.protocol``; ``--split``, ``--train_on``,
``--evaluate_on``): by default the Vinyals training alphabets (4112 classes with rotations), an accuracy curve
on the 5 validation alphabets, and the test classes (1692) scored once at the end: 5-way 1-shot, 5-way 5-shot,
20-way 1-shot and 20-way 5-shot, ``--episodes`` fixed episodes each, 15 queries per class, with the few-shot
head ``--head`` (``prototype``: nearest normalised centroid; ``linear``: a new head, 100 SGD steps with momentum
on the support set, as Chen et al.; ``finetune``: the whole network); ``--other_heads`` scores the same episodes
with more heads. Everything goes to a JSON file (``--out``) in the format of ``examples/omniglot_maml.py``, the
weights (neutral format) to ``--checkpoint``; ``--minutes=0 --init_weights=<checkpoint>`` scores another run's
weights (from either backend) without training.

    python examples/omniglot_pretrain.py --backend=torch --learner=baseline --minutes=30 \\
        --out=results/omniglot/baseline_torch.json --checkpoint=baseline_torch.safetensors
    python examples/omniglot_pretrain.py --backend=tf --learner=baseline_pp --minutes=30 --other_heads=prototype
    python examples/omniglot_pretrain.py --learner=simclr --minutes=30 --batch_size=128
    python examples/omniglot_pretrain.py --backend=tf --learner=baseline --minutes=0 \\
        --init_weights=baseline_torch.safetensors        # a torch checkpoint scored in TF
    python examples/omniglot_pretrain.py --max_steps=3 --episodes=2 --hidden=8 --threads=1   # smoke test
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
flags.DEFINE_enum("learner", "baseline", ["baseline", "baseline_pp", "simclr", "mae"], "Pretraining learner.")
flags.DEFINE_float("minutes", 30.0, "Training time budget in minutes (the step in flight finishes).")
flags.DEFINE_integer("max_steps", None, "Stop training after this many steps even within the budget.")
flags.DEFINE_integer("batch_size", 64, "Images per training step.")
flags.DEFINE_enum("head", "linear", ["prototype", "linear", "finetune"], "Few-shot head of the test episodes.")
flags.DEFINE_float("head_lr", 0.01, "Learning rate of the linear/finetune heads' SGD (Chen et al.: 0.01).")
flags.DEFINE_integer("head_steps", 100, "SGD steps of the linear/finetune heads on each support set (Chen et al.: 100).")
flags.DEFINE_list("other_heads", [], "More heads to score the same test episodes with (e.g. prototype).")
flags.DEFINE_integer("test_queries", 15, "Queries per class of test episodes.")
flags.DEFINE_integer("episodes", 600, "Test episodes per setting.")
flags.DEFINE_integer("hidden", 64, "Encoder channels.")
flags.DEFINE_float("meta_lr", 1e-3, "Adam learning rate.")
flags.DEFINE_float("scale", 20.0, "baseline_pp: the cosine classifier's scale (dualmeta's Omniglot recipe: 20 "
                   "for the 4112 classes; Chen et al.'s code: 10 above 200 classes); with --init_weights and no "
                   "--scale: the scale the checkpoint was trained with.")
flags.DEFINE_float("temperature", 0.5, "simclr: NT-Xent temperature.")
flags.DEFINE_float("min_scale", 0.6, "simclr: the smallest crop of a view, as a fraction of the image area (1: none).")
flags.DEFINE_float("max_degrees", 10.0, "simclr: the largest rotation of a view, in degrees (0: none).")
flags.DEFINE_float("mask_ratio", 0.75, "mae: the fraction of each image hidden (strictly between 0 and 1).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Floating point type.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the training batches.")
flags.DEFINE_integer("eval_seed", 2_000_000_011, "Seed of the test episodes (keep it fixed to compare runs).")
flags.DEFINE_string("data_dir", None, "Omniglot folder (default: dualmeta.datasets.omniglot.default_data_dir()).")
flags.DEFINE_string("out", None, "Metrics JSON (default omniglot_<learner>_<backend>.json).")
flags.DEFINE_string("checkpoint", None, "Write the trained weights (safetensors, neutral format) here.")
flags.DEFINE_integer("log_every", 100, "Steps per point of the training curve / progress line.")
flags.DEFINE_float("curve_every", 3.0, "Minutes of training between points of the 5-way 1-shot accuracy curve "
                   "(0: none; excluded from the budget).")
flags.DEFINE_integer("curve_episodes", 100, "Validation episodes per point of the accuracy curve.")
flags.DEFINE_integer("threads", None, "CPU threads of the backend (torch: intra-op; TensorFlow: intra- and inter-op); default: the framework's own.")
flags.DEFINE_string("device", "cpu", "torch device: cpu, cuda, cuda:N or mps (torch only).")

TEST_SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))
flags.DEFINE_list("settings", ["5w1s", "5w5s", "20w1s", "20w5s"], "Test settings (<ways>w<shots>s) to score.")
CLASSES = {"baseline": ("baseline", "Baseline"), "baseline_pp": ("baseline_pp", "BaselinePP"),
           "simclr": ("simclr", "SimCLR"), "mae": ("mae", "MAE")}


def build_learner(backend: str, learner: str, num_classes: int):
    models = importlib.import_module(f"{backend}_meta.models")
    model = models.conv4(hidden=FLAGS.hidden, downsample="maxpool", head="flatten", track_running_stats=True,
                         dtype=FLAGS.dtype, seed=FLAGS.seed)
    if FLAGS.device != "cpu":  # torch only (checked in main); the learner follows the model's device
        model = model.to(FLAGS.device)
    module, name = CLASSES[learner]
    kwargs = dict(meta_lr=FLAGS.meta_lr, head=FLAGS.head, head_lr=FLAGS.head_lr, head_steps=FLAGS.head_steps,
                  seed=FLAGS.seed)
    if learner in ("baseline", "baseline_pp"):
        kwargs["num_classes"] = num_classes
    if learner == "baseline_pp":
        kwargs["scale"] = FLAGS.scale
    if learner == "simclr":
        kwargs["temperature"] = FLAGS.temperature
    return getattr(importlib.import_module(f"{backend}_meta.{module}"), name)(model, **kwargs)


def training_batches(learner: str, dataset):
    from dualmeta import pretrain
    if learner == "simclr":
        return pretrain.ViewBatches(dataset, seed=FLAGS.seed, min_scale=FLAGS.min_scale,
                                    max_degrees=FLAGS.max_degrees)
    if learner == "mae":
        return pretrain.MaskedBatches(dataset, seed=FLAGS.seed, mask_ratio=FLAGS.mask_ratio)
    return pretrain.ClassBatches(dataset, seed=FLAGS.seed)


def inherit_scale() -> None:
    """baseline_pp with --init_weights and no --scale: the cosine scale the checkpoint was trained with (its
    metadata's config), so a checkpoint of another scale is scored with its own head."""
    from dualmeta.weights import load_weights
    if FLAGS.learner != "baseline_pp" or not FLAGS.init_weights or FLAGS["scale"].present:
        return
    try:
        recorded = load_weights(FLAGS.init_weights)[1].get("config", {}).get("scale")
    except (OSError, ValueError):
        return  # load_init_weights reports the file in one line
    if isinstance(recorded, (int, float)) and not isinstance(recorded, bool):
        FLAGS.scale = float(recorded)


def parse_settings(names: list[str]) -> tuple[tuple[int, int], ...]:
    """``["5w1s", "20w5s"]`` -> ``((5, 1), (20, 5))``, refusing names outside TEST_SETTINGS."""
    known = {f"{w}w{s}s": (w, s) for w, s in TEST_SETTINGS}
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise app.UsageError(f"Expected --settings among {list(known)}; received {unknown or names!r}")
    return tuple(known[n] for n in names)


def main(argv):
    check_run_flags(argv)
    from dualmeta import backend, budget, data, pretrain, protocol
    from dualmeta.weights import atomic_write, save_weights

    for head in FLAGS.other_heads:
        if head not in pretrain.HEADS:
            raise app.UsageError(f"Expected --other_heads among {list(pretrain.HEADS)}; received {head!r}")
    if FLAGS.learner == "simclr" and FLAGS.batch_size < 2:
        raise app.UsageError(f"SimCLR contrasts each image with the others of its batch: --batch_size="
                             f"{FLAGS.batch_size} has no negatives; use --batch_size=2 or more")
    try:
        pretrain.check_mask_ratio(FLAGS.mask_ratio)
        pretrain.check_augmentation(FLAGS.min_scale, FLAGS.max_degrees)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    if FLAGS.threads is not None and FLAGS.threads <= 0:
        raise app.UsageError(f"Expected a positive --threads; received --threads={FLAGS.threads}")
    settings = parse_settings(FLAGS.settings)
    images = data.load_omniglot_images(FLAGS.data_dir, image_size=28)
    chosen, final, final_role = run_protocol(images)
    backend.set_threads(FLAGS.backend, FLAGS.threads or 0)
    inherit_scale()
    learner = build_learner(FLAGS.backend, FLAGS.learner, chosen.train.num_classes)
    initial = load_init_weights(learner)
    trained_characters(chosen, initial, images)  # refuses --init_weights trained on the test classes
    config = {name: FLAGS[name].value for name in (
        "backend", "learner", "minutes", "max_steps", "settings", "batch_size", "head", "head_lr", "head_steps",
        "other_heads", "test_queries", "episodes", "hidden", "meta_lr", "dtype", "seed", "eval_seed", "threads",
        "device", "init_weights")}
    config.update({"baseline_pp": {"scale": FLAGS.scale},
                   "simclr": {"temperature": FLAGS.temperature, "min_scale": FLAGS.min_scale,
                              "max_degrees": FLAGS.max_degrees},
                   "mae": {"mask_ratio": FLAGS.mask_ratio}}.get(FLAGS.learner, {}))
    config.update(test_norm="running", batch_norm_at_test=protocol.BATCH_NORM_AT_TEST["running"],
                  split=FLAGS.split, train_on=FLAGS.train_on, evaluate_on=FLAGS.evaluate_on,
                  labels_in_training=FLAGS.learner in ("baseline", "baseline_pp"))
    print(f"{FLAGS.backend} {FLAGS.learner}: training on {chosen.train.num_classes} classes ({chosen.label()}), "
          f"batches of {FLAGS.batch_size} images, for {FLAGS.minutes} min", flush=True)
    curve_tasks, curve = validation_curve(chosen, learner, 5, 1)
    report = {"measured": budget.provenance("examples/omniglot_pretrain.py"), "config": config,
              "protocol": protocol_record(chosen, curve_tasks, FLAGS.curve_episodes, final_role)}
    if initial is not None:
        report["init_weights"] = initial
    try:
        report["train"] = dict(NOT_TRAINED) if FLAGS.minutes == 0 else budget.train_for(
            learner, training_batches(FLAGS.learner, chosen.train), FLAGS.batch_size, FLAGS.minutes,
            max_steps=FLAGS.max_steps, log_every=FLAGS.log_every, curve=curve, curve_every_s=60.0 * FLAGS.curve_every)
    except FloatingPointError as error:
        sys.exit(f"error: {error}")
    print(f"trained {report['train']['steps']} steps in {report['train']['seconds']} s "
          f"({report['train']['seconds_per_step']} s/step)", flush=True)
    if FLAGS.checkpoint:  # before the (long) scoring, so that a failure there keeps the training
        save_weights(FLAGS.checkpoint, learner.get_weights(),
                     metadata={"config": config, "steps": report["train"]["steps"]})
        report["checkpoint"] = FLAGS.checkpoint  # as given: no machine path in results
    report[final_role] = budget.evaluate_settings(learner, final, settings, FLAGS.test_queries,
                                                  FLAGS.episodes, FLAGS.eval_seed)
    others = {}
    for head in FLAGS.other_heads:
        learner.head = head
        print(f"head {head}:", flush=True)
        others[head] = budget.evaluate_settings(learner, final, settings, FLAGS.test_queries, FLAGS.episodes,
                                                FLAGS.eval_seed)
    learner.head = FLAGS.head
    if others:
        report[f"{final_role}_other_heads"] = others
    out = FLAGS.out or f"omniglot_{FLAGS.learner}_{FLAGS.backend}.json"
    atomic_write(out, json.dumps(report, indent=2))
    print(f"metrics written to {out}")


if __name__ == "__main__":
    app.run(main)
