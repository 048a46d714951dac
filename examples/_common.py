"""Flags and checks shared by the Omniglot examples (a helper module, not an example: no smoke run of its own)."""
from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("init_weights", None, "Start from these weights: a file written by --checkpoint in either "
                    "backend (neutral format). With --minutes=0 they are evaluated without training.")

flags.DEFINE_enum("split", "vinyals", ["vinyals", "lake"], "Omniglot split (dualmeta.protocol): vinyals (test = "
                  "characters 1201-1623) or lake (test = Lake's evaluation alphabets; all 20 one-shot runs held out).")
flags.DEFINE_enum("train_on", "train", ["train", "trainval", "background"], "Training classes: 'train' holds the "
                  "validation alphabets out (curves and pilots use them); 'trainval' (vinyals) / 'background' (lake) "
                  "trains on train and val together, as the papers' final runs (then no curve).")
flags.DEFINE_enum("evaluate_on", "test", ["test", "val"], "Final evaluation: 'test' (the published figure, scored "
                  "once) or 'val' (a pilot run that chooses a setting: no test episode is drawn).")

NOT_TRAINED = {"steps": 0, "seconds": 0.0, "seconds_per_step": None, "train_curve": [], "eval_curve": []}


def check_run_flags(argv) -> None:
    """No stray arguments, a positive ``--minutes``, and a ``--device`` the chosen backend can use: usage
    errors for bad flags; one line and exit 1 for a device this PyTorch cannot reach."""
    from dualmeta import backend

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not (FLAGS.minutes > 0 or (FLAGS.minutes == 0 and FLAGS.init_weights)):
        raise app.UsageError(f"Expected a positive --minutes (0 only with --init_weights, to evaluate without "
                             f"training); received --minutes={FLAGS.minutes}")
    try:
        backend.check_device(FLAGS.backend, FLAGS.device, name="--device")
    except backend.DeviceUnavailable as error:
        sys.exit(f"error: {error}")
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def load_init_weights(learner) -> dict | None:
    """Gives ``learner`` the weights of ``--init_weights`` if set; returns the report entry (the file's path as
    given, and its metadata), None if unset.

    A missing, foreign or mismatched file ends the run with one line naming the file and the fix."""
    from dualmeta.weights import load_weights

    if not FLAGS.init_weights:
        return None
    try:
        weights, metadata = load_weights(FLAGS.init_weights)
        learner.set_weights(weights)
    except (OSError, ValueError) as error:
        sys.exit(f"error: --init_weights={FLAGS.init_weights}: {error}")
    print(f"weights from {FLAGS.init_weights} (trained by {metadata.get('config', {}).get('backend', '?')})",
          flush=True)
    return {"path": FLAGS.init_weights, **metadata}  # as given: results files name no machine path


def run_protocol(images):
    """The run's classes (``dualmeta.protocol.omniglot_protocol`` from ``--split``/``--train_on``) and its
    curve/final-evaluation sets: ``(protocol, final dataset, final role)``. Usage errors for a curve or a
    pilot without validation classes."""
    from dualmeta import protocol

    try:
        chosen = protocol.omniglot_protocol(FLAGS.split, FLAGS.train_on, images=images)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    if chosen.val is None and (FLAGS.curve_every > 0 or FLAGS.evaluate_on == "val"):
        raise app.UsageError(f"--train_on={FLAGS.train_on} trains on the validation classes too, so there is no "
                             f"held-out set for the curve or a pilot; pass --curve_every=0 and --evaluate_on=test, "
                             f"or --train_on=train")
    final = chosen.val if FLAGS.evaluate_on == "val" else chosen.test
    return chosen, final, FLAGS.evaluate_on


def validation_curve(chosen, learner, ways: int, shots: int, wrap=None):
    """``(tasks, curve)``: the accuracy curve's episodes, drawn from the validation classes (never the test
    classes), and the function ``budget.train_for`` calls to measure it; ``(None, None)`` without a curve.
    ``wrap``: applied to the task set (``dualmeta.sequences.ShuffledSupport`` for the model-based learners)."""
    from dualmeta.episodes import ClassificationTasks

    if FLAGS.curve_every <= 0 or FLAGS.minutes <= 0:
        return None, None
    tasks = ClassificationTasks(chosen.val, ways, shots, FLAGS.test_queries, seed=FLAGS.eval_seed)
    if wrap is not None:
        tasks = wrap(tasks)
    return tasks, (lambda: learner.evaluate(tasks.episode(i) for i in range(FLAGS.curve_episodes)))


def protocol_record(chosen, curve_tasks, curve_episodes: int, final_role: str) -> dict:
    """What the results file says about the protocol: the split and its sets, what the curve drew (the
    characters of its episodes, checked disjoint from the test characters), and what the final score is on."""
    from dualmeta import protocol

    record = {**chosen.describe(), "label": chosen.label(), "final_evaluation": final_role}
    if curve_tasks is not None:
        drawn = protocol.characters_drawn(curve_tasks, curve_episodes)
        shared = drawn & protocol.characters(chosen.test)
        if shared:  # cannot happen with omniglot_protocol's disjoint sets; a guard for edits of this file
            raise AssertionError(f"the curve draws test characters (e.g. {sorted(shared)[0]})")
        record["curve"] = {"subset": chosen.subsets[1], "episodes": curve_episodes,
                           "characters_drawn": sorted(drawn)}
    return record


def trained_characters(chosen, initial: dict | None, images) -> set[str]:
    """Every character the weights have seen: this run's training classes (if it trains) and those of
    ``--init_weights`` (from its recorded split; a file without one counts as trained on Vinyals trainval,
    the examples' training set before dualmeta.protocol). Exits with a usage error when the test classes
    are among them."""
    from dualmeta import protocol

    seen = protocol.characters(chosen.train) if FLAGS.minutes > 0 else set()
    if initial is not None:
        config = initial.get("config", {})
        split, train_on = config.get("split", "vinyals"), config.get("train_on", "trainval")
        try:
            seen |= protocol.characters(protocol.omniglot_protocol(split, train_on, images=images).train)
        except ValueError as error:
            raise app.UsageError(f"--init_weights: {error}") from None
        shared = seen & protocol.characters(chosen.test)
        if shared:
            raise app.UsageError(f"--init_weights were trained on --split={split} --train_on={train_on}, which "
                                 f"holds {len(shared)} of the test characters of --split={FLAGS.split} (e.g. "
                                 f"{sorted(shared)[0]}); evaluate them with --split={split}")
    return seen
