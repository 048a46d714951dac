"""Benchmark: one process against ``--workers=N`` (docs/distributed.md, "Speed").

Runs ``python -m dualmeta bench`` (synthetic Omniglot-shaped batches) for each (learner, backend), in one
process with the framework's default threads, in one process with one thread, and with ``--workers``
single-threaded workers, one after the other, and prints a markdown table of the median seconds per step,
the ratio workers / one process, the best ratio the machine allows (the one-thread time split perfectly over
the workers, over the one-process time: it is bounded by how well the framework's own threads scale) and the
workers' efficiency (that perfect split over the measured time), with the load average before and after
(timings taken under load are not comparable with those of an idle machine).

    python benchmarks/bench_distributed.py                       # MAML 5w1s 15q B=32 2nd order; ProtoNet
    python benchmarks/bench_distributed.py --steps=20 --out=results/bench/distributed.json
    python benchmarks/bench_distributed.py --learners=maml --backends=torch --steps=2   # a smoke run

The MAML case is the one of the issue: Omniglot 5-way 1-shot 15-query, meta-batch 32, one inner step,
second order, conv4-64. ProtoNet: Snell et al.'s 60-way 1-shot 5-query training episodes, meta-batch 2
(two episodes a step, so that two workers have one each).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CASES = {
    "maml": ["--tasks=omniglot", "--learner=maml", "--ways=5", "--shots=1", "--queries=15", "--meta_batch_size=32"],
    "protonet": ["--tasks=omniglot", "--learner=protonet", "--meta_batch_size=2"],
}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _bench(args: list[str], timeout: float) -> dict:
    result = subprocess.run([sys.executable, "-m", "dualmeta", "bench", *args], capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"bench failed ({' '.join(args)}): {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--learners", default="maml,protonet")
    parser.add_argument("--backends", default="torch,tf")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--out", default=None, help="also write the records as JSON here")
    options = parser.parse_args()
    rows, records = [], {"load_before": _load(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                         "command": " ".join(sys.argv), "runs": []}
    for learner in options.learners.split(","):
        for backend in options.backends.split(","):
            common = [f"--backend={backend}", *CASES[learner], f"--steps={options.steps}",
                      f"--warmup={options.warmup}"]
            one = _bench(common, options.timeout)
            serial = _bench(common + ["--threads=1"], options.timeout)
            many = _bench(common + [f"--workers={options.workers}"], options.timeout)
            records["runs"] += [one, serial, many]
            t1, ts, tw = (r["median_s_per_step"] for r in (one, serial, many))
            # A perfect split of the serial work over the workers takes ts / workers: that over t1 is the best
            # ratio the machine allows; ideal / measured is the workers' efficiency.
            ideal = ts / options.workers
            rows.append(f"| {learner} | {backend} | {t1:.3f} | {ts:.3f} | {tw:.3f} | {tw / t1:.2f}x "
                        f"| {ideal / t1:.2f}x | {ideal / tw:.0%} |")
            print(rows[-1], flush=True)
    records["load_after"] = _load()
    print(f"\n| learner | backend | 1 process (default threads) s/step | 1 process, 1 thread s/step "
          f"| --workers={options.workers} (1 thread each) s/step | ratio | best ratio (1 thread / {options.workers}) "
          f"| workers' efficiency |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nload average (1, 5, 15 min) before: {records['load_before']}; after: {records['load_after']}; "
          f"{os.cpu_count()} CPUs; {options.steps} timed steps after {options.warmup} warm-up steps")
    if options.out:
        with open(options.out, "w") as handle:
            json.dump(records, handle, indent=2)


if __name__ == "__main__":
    main()
