"""Episode-generation throughput on Omniglot (a script, not a test).

Measures, on the Vinyals train split at 28x28 (4112 classes with rotations):

* single 5-way 1-shot 15-query episodes and 60-way 5-shot 5-query episodes (episodes/second);
* stacked meta-batches of 32 5-way 1-shot 15-query episodes (``ClassificationTasks.batch``);

and the headroom against a MAML training step of 0.6 s: how many meta-batches the generator makes in the
time of one step (the data pipeline is not the bottleneck when this is well above 1; aim >= 20x).

    python benchmarks/bench_episodes.py [--data_dir DIR] [--seconds 2] [--step_seconds 0.6]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dualmeta.datasets import omniglot as data  # noqa: E402
from dualmeta.episodes import ClassificationTasks  # noqa: E402


def rate(make_one, seconds: float) -> tuple[float, int]:
    """Calls ``make_one(i)`` for i = 0, 1, ... for about ``seconds``; returns (calls per second, calls)."""
    make_one(10_000_000)  # warm-up (first-call overheads)
    count, start = 0, time.perf_counter()
    while True:
        make_one(count)
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and count >= 5:
            return count / elapsed, count


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="Omniglot folder (default: dualmeta.datasets.omniglot.default_data_dir())")
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--step_seconds", type=float, default=0.6, help="duration of one MAML step")
    parser.add_argument("--meta_batch", type=int, default=32)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    images = data.load_omniglot_images(args.data_dir, image_size=28)
    load_s = time.perf_counter() - start
    train = data.omniglot_split("vinyals", "train", images=images)
    print(f"Omniglot 28x28 loaded in {load_s:.2f} s (a first load decodes the zips, later loads read the "
          f"cache); Vinyals train: {train.num_classes} classes")

    for ways, shots, queries in ((5, 1, 15), (60, 5, 5)):
        tasks = ClassificationTasks(train, ways=ways, shots=shots, queries=queries, seed=0)
        per_s, n = rate(tasks.episode, args.seconds)
        print(f"{ways:>2}-way {shots}-shot {queries:>2}-query episodes: {per_s:9.0f} episodes/s "
              f"({1e3 / per_s:.3f} ms each, {n} episodes)")

    tasks = ClassificationTasks(train, ways=5, shots=1, queries=15, seed=0)
    per_s, n = rate(lambda b: tasks.batch(b, args.meta_batch), args.seconds)
    batch_s = 1.0 / per_s
    print(f"meta-batch of {args.meta_batch} 5-way 1-shot 15-query episodes (stacked): {per_s:7.1f} batches/s "
          f"({1e3 * batch_s:.2f} ms each, {per_s * args.meta_batch:.0f} episodes/s, {n} batches)")
    headroom = args.step_seconds / batch_s
    verdict = "OK" if headroom >= 20 else "BELOW the 20x target"
    print(f"headroom vs a {args.step_seconds} s MAML step: {headroom:.0f} meta-batches per step ({verdict})")


if __name__ == "__main__":
    main()
