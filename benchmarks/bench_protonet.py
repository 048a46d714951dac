"""ProtoNet training speed: seconds per episode of both backends against a plain PyTorch reference.

One Omniglot 60-way 5-shot 5-query episode (600 images of 28x28, the paper's training episodes) through
the conv4 max-pool encoder (64 channels), prototypes, softmax cross-entropy and an Adam update, timed
for:

* ``reference``: plain torch written here, the way a user would: ``nn.Sequential`` of
  ``Conv2d(padding=1) + BatchNorm2d + ReLU + MaxPool2d``, prototypes by ``view(ways, shots, -1).mean(1)``,
  ``F.cross_entropy`` of the negative squared distances, ``torch.optim.Adam`` (NCHW input);
* ``torch``: ``torch_meta.protonet.ProtoNet.meta_train_step``;
* ``tf``: ``tf_meta.protonet.ProtoNet.meta_train_step`` (compiled once; tracing is excluded).

All see the same episodes in the same process. The runners take turns (``--rounds`` rounds of ``--steps``
episodes each, after ``--warmup`` untimed episodes) so that load from other processes falls on all of
them alike; the figure is the median over the timed episodes, and the ratio is backend / reference
(below 1 is faster than the reference). The machine's load is printed: on a shared machine compare
ratios from one run, not absolute times across runs.

    python benchmarks/bench_protonet.py [--data_dir DIR | --synthetic] [--rounds 3] [--steps 5]
        [--backends tf,torch] [--torch_threads N] [--profile] [--out PATH]
    python benchmarks/bench_protonet.py --out results/bench/protonet.json

``--out`` writes the result as JSON (``measured``, ``machine``, ``config`` and ``rows`` with one row: the
schema of ``bench_maml.py --out``). ``--profile`` prints the torch profiler's top operators for the
reference and the torch backend.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402  (before tensorflow)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from dualmeta.episodes import ClassDataset, ClassificationTasks  # noqa: E402
from dualmeta.budget import machine, provenance  # noqa: E402
from dualmeta.weights import atomic_write  # noqa: E402


def episodes_source(args) -> ClassificationTasks:
    if args.synthetic:
        images = np.random.default_rng(0).random((200, 20, 28, 28), dtype=np.float32)
        dataset = ClassDataset.from_grouped(images)
    else:
        from dualmeta.datasets import omniglot as data
        dataset = data.omniglot_split("vinyals", "trainval", data_dir=args.data_dir)
    return ClassificationTasks(dataset, args.ways, args.shots, args.queries, seed=0)


class Reference:
    """Plain PyTorch ProtoNet step (no dualmeta code)."""

    def __init__(self, hidden: int, ways: int, shots: int, queries: int):
        def block(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.MaxPool2d(2))

        self.encoder = nn.Sequential(block(1, hidden), block(hidden, hidden), block(hidden, hidden),
                                     block(hidden, hidden), nn.Flatten())
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=1e-3, eps=1e-8)
        self.ways, self.shots = ways, shots
        self.targets = torch.arange(ways).repeat_interleave(queries)  # queries come class by class

    def step(self, episode) -> float:
        support = torch.from_numpy(episode.support_x).permute(0, 3, 1, 2).contiguous()
        query = torch.from_numpy(episode.query_x).permute(0, 3, 1, 2).contiguous()
        z = self.encoder(torch.cat([support, query]))
        n = support.shape[0]
        prototypes = z[:n].view(self.ways, self.shots, -1).mean(dim=1)
        distances = (z[n:, None, :] - prototypes[None]).pow(2).sum(dim=-1)
        loss = F.cross_entropy(-distances, self.targets)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())


def make_runner(name: str, hidden: int, args):
    if name == "reference":
        reference = Reference(hidden, args.ways, args.shots, args.queries)
        return lambda episode: reference.step(episode)
    models = __import__(f"{name}_meta.models", fromlist=["conv4"])
    protonet = __import__(f"{name}_meta.protonet", fromlist=["ProtoNet"])
    learner = protonet.ProtoNet(models.conv4(hidden=hidden, downsample="maxpool", track_running_stats=True),
                                lr_decay_every=2000)
    return lambda episode: learner.meta_train_step(episode)["loss"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="Omniglot folder (default: dualmeta.datasets.omniglot.default_data_dir())")
    parser.add_argument("--synthetic", action="store_true", help="random images instead of Omniglot")
    parser.add_argument("--backends", default="tf,torch", help="comma-separated: tf, torch")
    parser.add_argument("--ways", type=int, default=60)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=3, help="untimed episodes per runner (and TF tracing)")
    parser.add_argument("--steps", type=int, default=5, help="timed episodes per runner and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="torch profiler tables (reference, torch)")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch.set_num_threads for the reference and the torch backend (default: torch's)")
    parser.add_argument("--out", default=None, help="write the result as JSON to this path")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("tf", "torch"):
            raise SystemExit(f"Expected backends among {{'tf', 'torch'}}; received --backends={args.backends!r}")
    load_before = os.getloadavg()[0]
    tasks = episodes_source(args)
    names = ["reference"] + backends
    runners = {name: make_runner(name, args.hidden, args) for name in names}
    total = args.warmup + args.rounds * args.steps
    batches = [tasks.batch(i, 1) for i in range(total)]
    singles = [type(b)(*(part[0] for part in b)) for b in batches]

    print(f"ProtoNet {args.ways}-way {args.shots}-shot {args.queries}-query, conv4 max-pool hidden {args.hidden}, "
          f"28x28; torch {torch.__version__} ({torch.get_num_threads()} threads), load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm-up (TF traces here)
        start = time.perf_counter()
        for i in range(args.warmup):
            runners[name](singles[i] if name == "reference" else batches[i])
        print(f"  warm-up {name:>9}: {time.perf_counter() - start:6.2f} s for {args.warmup} episodes")
    for round_ in range(args.rounds):
        for name in names:
            for i in range(args.steps):
                index = args.warmup + round_ * args.steps + i
                start = time.perf_counter()
                runners[name](singles[index] if name == "reference" else batches[index])
                times[name].append(time.perf_counter() - start)
    reference = statistics.median(times["reference"])
    print(f"{'runner':>10}  {'s/episode':>9}  {'min':>6}  {'max':>6}  {'ratio':>6}")
    for name in names:
        median = statistics.median(times[name])
        print(f"{name:>10}  {median:9.3f}  {min(times[name]):6.3f}  {max(times[name]):6.3f}  "
              f"{median / reference:5.2f}x")
    load_after = os.getloadavg()[0]
    print(f"load average after: {load_after:.2f}")
    if args.out:
        row = {"learner": "protonet", "setting": f"{args.ways}-way {args.shots}-shot {args.queries}-query episode",
               "reference_s": round(reference, 4), "torch_s": None, "tf_s": None, "torch_ratio": None,
               "tf_ratio": None, "steps": args.rounds * args.steps}
        for name in backends:
            median = statistics.median(times[name])
            row[f"{name}_s"], row[f"{name}_ratio"] = round(median, 4), round(median / reference, 3)
        config = {k: v for k, v in vars(args).items() if k not in ("out", "profile")}
        config.update(model=f"conv4 max-pool, hidden {args.hidden}, batch norm with running statistics, 28x28x1",
                      torch_threads=torch.get_num_threads())
        info = machine()
        info["load_average_1min"] = {"before": round(load_before, 2), "after": round(load_after, 2)}
        measured = provenance("benchmarks/bench_protonet.py", argv)
        report = {"measured": measured, "machine": info, "config": config, "rows": [row]}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")

    if args.profile:
        for name in [n for n in ("reference", "torch") if n in names]:
            with torch.profiler.profile() as profiler:
                for i in range(2):
                    runners[name](singles[i] if name == "reference" else batches[i])
            print(f"\n--- {name}: top operators over 2 episodes ---")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
