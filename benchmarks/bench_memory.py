"""Benchmark: peak memory of one meta-step, each learner in each backend and the plain PyTorch reference.

The runners are those of ``benchmarks/bench_maml.py`` (same model, same synthetic meta-batch, same
arguments). Each (learner, runner) is measured in a fresh Python process, so no allocator cache of an
earlier runner is counted: the process builds the runner, runs ``--warmup`` steps (TF traces its step
there), then a thread samples the resident memory (``/proc/self/statm``) every millisecond during one
more step. Reported per runner, in MB:

* ``before``: resident memory with the framework imported, the model built and warmed up;
* ``step_peak``: the highest resident memory during the measured step;
* ``step_growth``: ``step_peak - before``, what the step itself needs (graphs, activations, gradients);
* ``process_peak``: ``ru_maxrss`` of the process at the end (imports and tracing included).

Resident memory does not depend on the machine's load, so this benchmark can run beside other work
(unlike the timings of ``bench_maml.py``).

    python benchmarks/bench_memory.py                                  # every learner, 5-way 1-shot 15-query
    python benchmarks/bench_memory.py --learners=maml --inner_steps=5  # second order over 5 inner steps
    python benchmarks/bench_memory.py --out results/bench/memory.json
    python benchmarks/bench_memory.py --learners=maml --tasks=2 --hidden=8 --queries=1   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
MB = 2 ** 20


def _rss() -> int:
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(args) -> dict:
    """In the child: one runner's memory (see the module docstring)."""
    import bench_maml

    learner, backend = args.probe.split(":")
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    batch = bench_maml.synthetic_batch(args.tasks, args.ways, args.shots, args.queries)
    run = bench_maml.make_runner(learner, backend, args)
    for _ in range(args.warmup):
        run(batch)
    before = peak = _rss()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    run(batch)
    done.set()
    sampler.join()
    peak = max(peak, _rss())
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    return {"learner": learner, "runner": backend, "before_mb": round(before / MB, 1),
            "step_peak_mb": round(peak / MB, 1), "step_growth_mb": round((peak - before) / MB, 1),
            "process_peak_mb": round(maxrss / MB, 1)}


def main(argv=None):
    import bench_maml

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", default=",".join(bench_maml.LEARNERS))
    parser.add_argument("--backends", default=",".join(bench_maml.BACKENDS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--inner_steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch/TF threads in each probe (memory does not "
                        "depend on them much; 1 keeps the probes light)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # learner:runner, in the child
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args)))
        return None
    if not os.path.exists("/proc/self/statm"):
        parser.error("this benchmark reads /proc/self/statm (Linux)")
    learners = bench_maml.names(args.learners, bench_maml.LEARNERS, "--learners", parser)
    backends = bench_maml.names(args.backends, bench_maml.BACKENDS, "--backends", parser)
    shared = [f"--{k}={v}" for k, v in vars(args).items()
              if k not in ("learners", "backends", "out", "probe") and v is not None]
    rows = []
    for learner in learners:
        for backend in backends:
            child = subprocess.run([sys.executable, os.path.abspath(__file__), *shared,
                                    f"--probe={learner}:{backend}"], capture_output=True, text=True,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if child.returncode != 0:
                sys.exit(f"error: the {learner}/{backend} probe failed: {child.stderr.strip().splitlines()[-1:]}")
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"{'learner':9} {'runner':10} {'before MB':>10} {'step peak MB':>13} {'step growth MB':>15} "
          f"{'vs reference':>13}")
    for row in rows:
        ref = next((r for r in rows if r["learner"] == row["learner"] and r["runner"] == "reference"), None)
        ratio = (f"{row['step_growth_mb'] / ref['step_growth_mb']:.2f}x"
                 if ref and ref["step_growth_mb"] > 0 else "-")
        print(f"{row['learner']:9} {row['runner']:10} {row['before_mb']:>10} {row['step_peak_mb']:>13} "
              f"{row['step_growth_mb']:>15} {ratio:>13}")
    if args.out:
        from dualmeta.budget import provenance
        from dualmeta.weights import atomic_write
        config = {k: v for k, v in vars(args).items() if k not in ("out", "probe")}
        report = {"measured": provenance("benchmarks/bench_memory.py", None if argv is None else list(argv)),
                  "config": {**config, "setting": bench_maml.setting(args, learners[0])}, "rows": rows}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
        print(f"# wrote {args.out}", file=sys.stderr)
    return rows


if __name__ == "__main__":
    main()
