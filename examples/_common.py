"""Flags and checks shared by the Omniglot examples (a helper module, not an example: no smoke run of its own)."""
from __future__ import annotations

import os
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("init_weights", None, "Start from these weights: a file written by --checkpoint in either "
                    "backend (neutral format). With --minutes=0 they are evaluated without training.")

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
    """Gives ``learner`` the weights of ``--init_weights`` if set; returns the report entry (the file's absolute
    path and metadata), None if unset.

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
    return {"path": os.path.abspath(FLAGS.init_weights), **metadata}
