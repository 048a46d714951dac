"""Benchmark: MAML meta-training steps in both backends against a plain PyTorch reference loop.

The reference is what a careful PyTorch user writes (and what learn2learn does, within ~7% here): a
per-task loop with ``torch.func.functional_call`` and ``autograd.grad(create_graph=True)`` on an
``nn.Sequential`` conv4 with ``nn.BatchNorm2d``, and ``torch.optim.Adam``. Everything is timed in one
run, interleaved, so the printed ratios compare like with like.

    python benchmarks/bench_maml.py                    # conv4, 5-way 1-shot 15-query, 32 tasks, 1 step
    python benchmarks/bench_maml.py --first_order --steps 10
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402  (torch before tensorflow)
from torch import nn  # noqa: E402

from dualmeta.episodes import Episode  # noqa: E402


def synthetic_batch(tasks, ways, shots, queries, size=28, seed=0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(rng.random((tasks, ways * shots, size, size, 1), dtype=np.float32),
                   np.tile(np.repeat(np.arange(ways), shots), (tasks, 1)).astype(np.int64),
                   rng.random((tasks, ways * queries, size, size, 1), dtype=np.float32),
                   np.tile(np.repeat(np.arange(ways), queries), (tasks, 1)).astype(np.int64))


class Reference:
    """Plain PyTorch MAML: per-task loop, functional_call, autograd.grad, torch.optim.Adam."""

    def __init__(self, ways, hidden=64, inner_lr=0.4, first_order=False):
        layers = []
        channels = 1
        for _ in range(4):
            layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1), nn.BatchNorm2d(hidden, track_running_stats=False),
                       nn.ReLU()]
            channels = hidden
        self.model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, ways))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.inner_lr, self.first_order = inner_lr, first_order

    def step(self, batch: Episode):
        sx, sy, qx, qy = (torch.as_tensor(a) for a in batch)
        sx, qx = sx.permute(0, 1, 4, 2, 3), qx.permute(0, 1, 4, 2, 3)
        self.opt.zero_grad()
        params = dict(self.model.named_parameters())
        for t in range(sx.shape[0]):
            loss = nn.functional.cross_entropy(torch.func.functional_call(self.model, params, sx[t]), sy[t])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not self.first_order)
            fast = {n: p - self.inner_lr * g for (n, p), g in zip(params.items(), grads)}
            query = nn.functional.cross_entropy(torch.func.functional_call(self.model, fast, qx[t]), qy[t])
            (query / sx.shape[0]).backward()
        self.opt.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--first_order", action="store_true")
    parser.add_argument("--backends", default="reference,torch,tf")
    args = parser.parse_args()

    batch = synthetic_batch(args.tasks, args.ways, args.shots, args.queries)
    runners = {}
    for name in args.backends.split(","):
        if name == "reference":
            runners[name] = Reference(args.ways, args.hidden, first_order=args.first_order).step
        else:
            models = __import__(f"{name}_meta.models", fromlist=["x"])
            maml = __import__(f"{name}_meta.maml", fromlist=["x"])
            model = models.conv4(num_classes=args.ways, hidden=args.hidden, downsample="stride", head="mean")
            runners[name] = maml.MAML(model, inner_lr=0.4, first_order=args.first_order).meta_train_step
    times = {name: [] for name in runners}
    for name, run in runners.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            run(batch)
        print(f"# {name}: warm-up {args.warmup} steps (incl. tracing) {time.perf_counter() - start:.1f}s", file=sys.stderr)
    for _ in range(args.steps):  # interleaved, so drift in machine load hits every variant alike
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    ref = statistics.median(times["reference"]) if "reference" in times else None
    for name, samples in times.items():
        median = statistics.median(samples)
        print(json.dumps({"backend": name, "learner": "fomaml" if args.first_order else "maml",
                          "steps": args.steps, "median_s_per_step": round(median, 4),
                          "min_s_per_step": round(min(samples), 4), "max_s_per_step": round(max(samples), 4),
                          "episodes_per_s": round(args.tasks / median, 1),
                          "ratio_to_reference": None if ref is None else round(median / ref, 3),
                          "config": {k: v for k, v in vars(args).items() if k not in ("backends",)}}))


if __name__ == "__main__":
    main()
