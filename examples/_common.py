"""Flag checks shared by the Omniglot examples (a helper module, not an example: no smoke run of its own)."""
from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def check_run_flags(argv) -> None:
    """No stray arguments, a positive ``--minutes``, and a ``--device`` the chosen backend can use: usage
    errors for bad flags; one line and exit 1 for a device this PyTorch cannot reach."""
    from dualmeta import backend

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.minutes > 0:
        raise app.UsageError(f"Expected a positive --minutes; received --minutes={FLAGS.minutes}")
    try:
        backend.check_device(FLAGS.backend, FLAGS.device, name="--device")
    except backend.DeviceUnavailable as error:
        sys.exit(f"error: {error}")
    except ValueError as error:
        raise app.UsageError(str(error)) from None
