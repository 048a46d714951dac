"""dualmeta.allocator: after keep_freed_memory(), blocks of a few MB freed and allocated again cost no page
faults; glibc's defaults (DUALMETA_MALLOC=system) fault them in afresh every time. Each case runs in a fresh
interpreter, since the thresholds are process-wide and this one's may already be set."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A step's pattern: many blocks of a few MB alive at once, then all freed. glibc's adaptive mmap threshold
# rises to 4 MB after the first round, and its trim threshold to twice that, so with its defaults the 40 MB
# that each round frees at the top of the heap go back to the kernel, and the next round faults them in again.
# numpy allocates through malloc. Counts the minor page faults of the rounds after the first.
PROBE = r"""
import json, resource, sys
import numpy as np
from dualmeta import allocator
said = allocator.keep_freed_memory() if sys.argv[1] == "call" else "not called"
def rounds(n):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        maps = [np.ones(512 * 1024) for _ in range(10)]  # 10 blocks of 4 MB, every page touched
        del maps
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
rounds(1)
print(json.dumps({"said": said, "status": allocator.status(), "faults": rounds(20)}))
"""


def probe(call: bool, **env) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    environment.pop("DUALMETA_MALLOC", None)
    environment.update(env, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", PROBE, "call" if call else "skip"], capture_output=True, text=True,
                         env=environment, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)")


def test_kept_memory_is_not_faulted_in_again():
    default, kept = probe(call=False), probe(call=True)
    assert kept["said"] == kept["status"] == "kept"
    # 20 rounds of 40 MB in 4 KiB pages is ~200,000 faults when the memory goes back to the kernel each time
    assert default["faults"] > 20_000, default
    assert kept["faults"] < 500, kept


def test_the_user_can_leave_the_allocator_alone():
    system = probe(call=True, DUALMETA_MALLOC="system")
    assert system["said"] == "DUALMETA_MALLOC=system" and system["faults"] > 20_000
    theirs = probe(call=True, MALLOC_TRIM_THRESHOLD_="131072")
    assert theirs["said"].startswith("glibc settings in the environment: MALLOC_TRIM_THRESHOLD_")


def test_a_wrong_setting_is_refused_in_one_line():
    run = subprocess.run([sys.executable, "-c", "from dualmeta import allocator; allocator.keep_freed_memory()"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT, "DUALMETA_MALLOC": "yes"})
    assert run.returncode != 0
    assert "Expected DUALMETA_MALLOC=keep or DUALMETA_MALLOC=system" in run.stderr.strip().splitlines()[-1]


def test_both_backends_keep_freed_memory_when_a_learner_is_built():
    code = ("import sys; from dualmeta import allocator; import {b}_meta.models as m, {b}_meta.maml as l; "
            "before = allocator.status(); l.MAML(m.mlp(hidden=(4,))); print(before + '|' + allocator.status())")
    for backend in ("torch", "tf"):
        run = subprocess.run([sys.executable, "-c", code.format(b=backend)], capture_output=True, text=True,
                             timeout=300, env={**{k: v for k, v in os.environ.items() if k != "DUALMETA_MALLOC"},
                                               "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
        assert run.returncode == 0, run.stderr[-2000:]
        assert run.stdout.strip().splitlines()[-1] == "not called|kept", (backend, run.stdout)
