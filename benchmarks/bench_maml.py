"""Benchmark: MAML-family meta-training steps in both backends against plain PyTorch references.

For every learner (``maml``, ``fomaml``, ``metasgd``, ``anil``, ``reptile``, ``finetune``) three runners do
one meta-step on the same synthetic meta-batch (conv4 with stride-2 convolutions, batch norm on batch
statistics, mean-pooled head; 28x28x1 images; 5-way 1-shot 15-query, 32 tasks by default):

* ``reference``: the algorithm as a careful PyTorch user (or learn2learn) writes it, independent of
  dualmeta: an ``nn.Sequential`` conv4 (``Conv2d(stride=2, padding=1, bias=False)``,
  ``BatchNorm2d(track_running_stats=False)``, ``ReLU``; ``AdaptiveAvgPool2d``, ``Linear``), a loop over
  tasks, the inner loop with ``torch.func.functional_call`` and ``torch.autograd.grad``, and
  ``torch.optim``. Per learner:

  - ``maml``: inner SGD on all weights with ``create_graph=True``; the query loss / tasks is
    back-propagated per task into ``.grad``; ``Adam(lr=1e-3)``;
  - ``fomaml``: the same with ``create_graph=False`` (the meta-gradient is the query gradient at phi);
  - ``metasgd``: MAML whose inner step is ``w - a * g`` with a learned rate tensor ``a`` per weight
    (an ``nn.ParameterList`` initialised to ``inner_lr``), updated by the same Adam as the weights;
  - ``anil``: the body's features of the support and of the query set are computed once per task
    (two calls, so that batch norm sees each set alone, as in dualmeta), with their graph kept; only the
    ``Linear`` head is adapted (second order); the outer step updates body and head;
  - ``reptile``: ``inner_steps`` (default 5) of SGD from detached copies of the weights, no
    ``create_graph``; ``.grad = theta - mean_tasks(phi)`` and ``SGD(lr=1.0)``; the query loss at phi is
    computed without gradients for the report, as dualmeta's Reptile does;
  - ``finetune``: no inner loop: a supervised step on each task's query set at theta (batch norm per
    task, as dualmeta's ``FineTune`` with ``inner_steps=0``), loss / tasks, ``Adam(lr=1e-3)``;

* ``torch``: ``torch_meta.<module>.<Class>(model, **kwargs).meta_train_step``;
* ``tf``: ``tf_meta.<module>.<Class>(model, **kwargs).meta_train_step`` (compiled; tracing happens in
  the warm-up).

The reference and dualmeta learner get the same keyword arguments (``LEARNERS`` below), so the inner
steps, rates, reduction (mean cross-entropy) and meta-batch are the same on both sides. All runners are
built in one process, warmed up (``--warmup`` untimed steps each), then timed interleaved: each of the
``--steps`` rounds runs every (learner, runner) once, so that drift in machine load hits them alike.
Reported: the median seconds per meta-step, the ratio backend / reference (below 1: faster), and the
median page faults per step (``resource.getrusage``'s minor faults: fresh memory the kernel mapped in).

The allocator: building a ``torch_meta`` or ``tf_meta`` learner sets glibc's thresholds once for the whole
process (``dualmeta.allocator.keep_freed_memory``), so the reference runs under them too (it has no page
faults either way: its per-task tensors stay below glibc's own adaptive threshold).
``DUALMETA_MALLOC=system python benchmarks/bench_maml.py`` measures every runner with glibc's defaults.

The floor (``--floor``, on by default): the floating-point operations of one reference step, counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products, forward, backward and
double backward; the element-wise work of batch norm and ReLU is not counted), divided by the best rate
this machine reaches in the same run, the faster of a 2048 sgemm and a large 3x3 convolution (512 images,
64 -> 64 channels, 14x14) on the same threads. No implementation of the step can be faster than the floor;
``torch_floor`` and ``tf_floor`` say how many floors a step takes.

    python benchmarks/bench_maml.py                                  # all learners, 10 timed steps each
    python benchmarks/bench_maml.py --learners=maml,anil --steps=20 --threads=2
    python benchmarks/bench_maml.py --steps=20 --out results/bench/maml_family.json
    python benchmarks/bench_maml.py --learners=maml,anil --steps=1 --warmup=1 --tasks=2 --hidden=8 \\
        --queries=1 --threads=1                                      # smoke test, a few seconds

The convolutions (``--convolutions``, on by default): each runner's own calls of the four convolutions,
forward and backward, over the query sets alone (``convolutions`` below), timed in the same rounds. Every
MAML-family step at 15 queries makes at least these calls, so ``<runner>_convolutions_ratio`` (their time over
the reference step's) is the best ratio that runner could reach if everything else in its step were free.

One JSON line per (learner, runner) goes to stdout; ``--out`` writes the table as one JSON file.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402  (torch before tensorflow)
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.func import functional_call  # noqa: E402

from dualmeta.allocator import status as allocator_status  # noqa: E402
from dualmeta.episodes import Episode  # noqa: E402
from dualmeta.budget import machine, provenance  # noqa: E402
from dualmeta.weights import atomic_write  # noqa: E402

BACKENDS = ("reference", "torch", "tf")
CONVOLUTIONS = "convolutions"  # the key of the convolutions-only runners


def synthetic_batch(tasks, ways, shots, queries, size=28, seed=0) -> Episode:
    rng = np.random.default_rng(seed)
    return Episode(rng.random((tasks, ways * shots, size, size, 1), dtype=np.float32),
                   np.tile(np.repeat(np.arange(ways), shots), (tasks, 1)).astype(np.int64),
                   rng.random((tasks, ways * queries, size, size, 1), dtype=np.float32),
                   np.tile(np.repeat(np.arange(ways), queries), (tasks, 1)).astype(np.int64))


# -- plain PyTorch references (no dualmeta code) ----------------------------------------------------------
def reference_conv4(ways: int, hidden: int) -> nn.Sequential:
    """conv4: 4 x (3x3 stride-2 conv, batch norm on batch statistics, ReLU), mean pooling, linear head."""
    layers, channels = [], 1
    for _ in range(4):
        layers += [nn.Conv2d(channels, hidden, 3, stride=2, padding=1, bias=False),
                   nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU()]
        channels = hidden
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(hidden, ways))


def nchw(batch: Episode) -> tuple[torch.Tensor, ...]:
    sx, sy, qx, qy = (torch.as_tensor(a) for a in batch)
    return sx.permute(0, 1, 4, 2, 3), sy, qx.permute(0, 1, 4, 2, 3), qy


class MAMLReference:
    """MAML: per-task loop, functional_call, autograd.grad(create_graph=True), torch.optim.Adam."""

    first_order = False

    def __init__(self, ways: int, hidden: int, inner_lr: float = 0.4, inner_steps: int = 1):
        self.model = reference_conv4(ways, hidden)
        self.inner_lr, self.inner_steps = inner_lr, inner_steps
        self.opt = self.make_optimizer()

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def inner_rates(self, names) -> dict:
        return {n: self.inner_lr for n in names}

    def adapt(self, module: nn.Module, fast: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
        """``inner_steps`` of SGD on ``module``'s weights ``fast`` (a dict by name) on ``(x, y)``."""
        rates = self.inner_rates(fast)
        for _ in range(self.inner_steps):
            loss = F.cross_entropy(functional_call(module, fast, (x,)), y)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not self.first_order)
            fast = {n: w - rates[n] * g for (n, w), g in zip(fast.items(), grads)}
        return fast

    def step(self, batch: Episode) -> float:
        sx, sy, qx, qy = nchw(batch)
        tasks, total = len(sx), 0.0
        self.opt.zero_grad()
        params = dict(self.model.named_parameters())
        for t in range(tasks):
            fast = self.adapt(self.model, params, sx[t], sy[t])
            loss = F.cross_entropy(functional_call(self.model, fast, (qx[t],)), qy[t])
            (loss / tasks).backward()
            total += float(loss.detach())
        self.opt.step()
        return total / tasks


class FirstOrderMAMLReference(MAMLReference):
    """First-order MAML: the inner gradients are constants (``create_graph=False``)."""

    first_order = True


class MetaSGDReference(MAMLReference):
    """Meta-SGD: MAML with a learned inner rate per weight entry, trained by the same Adam."""

    def make_optimizer(self) -> torch.optim.Optimizer:
        self.rates = nn.ParameterList(nn.Parameter(torch.full_like(p, self.inner_lr))
                                      for p in self.model.parameters())
        return torch.optim.Adam([*self.model.parameters(), *self.rates], lr=1e-3)

    def inner_rates(self, names) -> dict:
        by_name = dict(zip((n for n, _ in self.model.named_parameters()), self.rates))
        return {n: by_name[n] for n in names}


class ANILReference(MAMLReference):
    """ANIL: features once per task (support, query), only the linear head adapted, second order."""

    def __init__(self, ways: int, hidden: int, inner_lr: float = 0.4, inner_steps: int = 1):
        super().__init__(ways, hidden, inner_lr, inner_steps)
        self.body, self.head = self.model[:-1], self.model[-1]

    def step(self, batch: Episode) -> float:
        sx, sy, qx, qy = nchw(batch)
        tasks, total = len(sx), 0.0
        self.opt.zero_grad()
        head = dict(self.head.named_parameters())
        for t in range(tasks):
            support, query = self.body(sx[t]), self.body(qx[t])  # graph kept: the outer step trains the body
            fast = self.adapt(self.head, head, support, sy[t])
            loss = F.cross_entropy(functional_call(self.head, fast, (query,)), qy[t])
            (loss / tasks).backward()
            total += float(loss.detach())
        self.opt.step()
        return total / tasks


class ReptileReference(MAMLReference):
    """Reptile: SGD from a detached copy per task, ``.grad = theta - mean(phi)``, ``torch.optim.SGD(lr=1)``."""

    first_order = True

    def __init__(self, ways: int, hidden: int, inner_lr: float = 0.4, inner_steps: int = 5):
        super().__init__(ways, hidden, inner_lr, inner_steps)

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=1.0)

    def step(self, batch: Episode) -> float:
        sx, sy, qx, qy = nchw(batch)
        tasks, total = len(sx), 0.0
        params = dict(self.model.named_parameters())
        deltas = {n: torch.zeros_like(p) for n, p in params.items()}
        for t in range(tasks):
            fast = self.adapt(self.model, {n: p.detach().requires_grad_() for n, p in params.items()},
                              sx[t], sy[t])
            with torch.no_grad():
                for n, p in params.items():
                    deltas[n] += (p - fast[n]) / tasks
                total += float(F.cross_entropy(functional_call(self.model, fast, (qx[t],)), qy[t]))
        for n, p in params.items():
            p.grad = deltas[n]
        self.opt.step()
        return total / tasks


class FineTuneReference(MAMLReference):
    """Fine-tuning baseline's training step: supervised on each task's query set, no inner loop."""

    def step(self, batch: Episode) -> float:
        _, _, qx, qy = nchw(batch)
        tasks, total = len(qx), 0.0
        self.opt.zero_grad()
        for t in range(tasks):
            loss = F.cross_entropy(self.model(qx[t]), qy[t])
            (loss / tasks).backward()
            total += float(loss.detach())
        self.opt.step()
        return total / tasks


# -- the table: learner -> reference, dualmeta class, shared arguments ------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    reference: type
    learner: str  # "<module>.<Class>" in torch_meta / tf_meta
    kwargs: dict  # passed to both the reference and the dualmeta learner
    inner_steps: int | None  # the learner's default; None: no inner loop in training


LEARNERS = {
    "maml": Variant(MAMLReference, "maml.MAML", {"inner_lr": 0.4}, 1),
    "fomaml": Variant(FirstOrderMAMLReference, "fomaml.FirstOrderMAML", {"inner_lr": 0.4}, 1),
    "metasgd": Variant(MetaSGDReference, "metasgd.MetaSGD", {"inner_lr": 0.4}, 1),
    "anil": Variant(ANILReference, "anil.ANIL", {"inner_lr": 0.4}, 1),
    # second order with each inner step's graph recomputed in the backward pass (less memory); its
    # reference is plain MAML's loop, which stores the graph
    "maml_recompute": Variant(MAMLReference, "maml.MAML", {"inner_lr": 0.4, "recompute_steps": True}, 1),
    "reptile": Variant(ReptileReference, "reptile.Reptile", {"inner_lr": 0.4}, 5),
    "finetune": Variant(FineTuneReference, "finetune.FineTune", {}, None),
}


def variant_kwargs(variant: Variant, inner_steps: int | None) -> dict:
    if variant.inner_steps is None:
        return dict(variant.kwargs)
    return {**variant.kwargs, "inner_steps": variant.inner_steps if inner_steps is None else inner_steps}


def make_runner(learner: str, backend: str, args):
    variant = LEARNERS[learner]
    kwargs = variant_kwargs(variant, args.inner_steps)
    if backend == "reference":
        kwargs.pop("recompute_steps", None)
        return variant.reference(args.ways, args.hidden, **kwargs).step
    models = __import__(f"{backend}_meta.models", fromlist=["conv4"])
    module_name, class_name = variant.learner.split(".")
    module = __import__(f"{backend}_meta.{module_name}", fromlist=[class_name])
    model = models.conv4(num_classes=args.ways, hidden=args.hidden, downsample="stride", head="mean")
    return getattr(module, class_name)(model, **kwargs).meta_train_step


# -- the convolutions alone: what each backend's step cannot do without --------------------------------------
def convolutions(backend: str, args):
    """One forward and backward pass of the conv4's four convolutions alone (no batch norm, ReLU or head) over
    the meta-batch's query sets, with per-task weights, called as that backend's step calls them: the
    reference and TensorFlow task by task (TensorFlow cannot differentiate grouped convolutions on CPU),
    torch_meta in its groups of tasks (``torch_meta.models._batched_call`` on a convolutions-only twin,
    ``MAML._chunks``). Every MAML-family step at 15 queries runs at least these calls (second order adds
    the support set's); returns ``run(batch)``. The kernels are shared by the tasks (the reference's and
    TensorFlow's calls cost the same with per-task kernels; torch_meta's get them expanded per task)."""
    channels = [1] + [args.hidden] * 4
    if backend == "reference":
        weights = [torch.randn(o, i, 3, 3, requires_grad=True) for i, o in zip(channels, channels[1:])]

        def run(batch):
            _, _, qx, _ = nchw(batch)
            for t in range(len(qx)):
                h = qx[t]
                for w in weights:
                    h = F.conv2d(h, w, stride=2, padding=1)
                torch.autograd.grad(h.sum(), weights)
        return run
    from dualmeta import twins
    layers = tuple(twins.Conv2d(f"conv{i}", c, o, 3, 2, 1) for i, (c, o) in enumerate(zip(channels, channels[1:])))
    description = twins.Description("convolutions", (28, 28, 1), layers)
    if backend == "torch":
        from torch_meta import maml, models
        model = models.build(description)
        learner = maml.MAML(model)

        def run(batch):
            _, _, qx, _ = learner._tensors(batch)
            tasks = qx.shape[0]
            params = dict(model.named_parameters())
            for part in learner._chunks(tasks, batch[0].shape[1] + qx.shape[1]):
                size = part.stop - part.start
                fast = {n: p.expand((size,) + tuple(p.shape)) for n, p in params.items()}
                torch.autograd.grad(models._batched_call(model, fast, qx[part]).sum(), list(params.values()))
        return run
    import tensorflow as tf
    kernels = [tf.Variable(tf.random.normal((3, 3, i, o))) for i, o in zip(channels, channels[1:])]

    @tf.function
    def step(qx):  # the same kernels for every task: the calls and their cost are those of per-task kernels
        total = [tf.zeros_like(k) for k in kernels]
        for t in tf.range(tf.shape(qx)[0]):
            with tf.GradientTape() as tape:
                h = qx[t]
                for k in kernels:
                    h = tf.nn.conv2d(tf.pad(h, [[0, 0], [1, 1], [1, 1], [0, 0]]), k, strides=2, padding="VALID")
                out = tf.reduce_sum(h)
            total = [a + g for a, g in zip(total, tape.gradient(out, kernels))]
        return total

    return lambda batch: step(tf.constant(batch[2]))


def step_gflop(run, batch) -> float:
    """GFLOP of one step of ``run`` (a reference runner: plain torch), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        run(batch)
    return counter.get_total_flops() / 1e9


def peak_gflops(seconds: float = 1.0) -> dict[str, float]:
    """The best GFLOP/s of this process's threads in a 2048 sgemm and a large 3x3 convolution."""
    def rate(fn, flop):
        fn()
        best, start = math.inf, time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t)
        return round(flop / best / 1e9, 1)

    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    x, w = torch.rand(512, 64, 14, 14), torch.rand(64, 64, 3, 3)
    with torch.no_grad():
        return {"sgemm_2048": rate(lambda: a @ b, 2 * 2048 ** 3),
                "conv3x3_512x64x14x14": rate(lambda: F.conv2d(x, w, padding=1), 2 * 512 * 64 * 14 * 14 * 64 * 9)}


def setting(args, learner: str) -> str:
    kwargs = variant_kwargs(LEARNERS[learner], args.inner_steps)
    steps = kwargs.get("inner_steps")
    inner = "no inner loop" if steps is None else f"{steps} inner step{'' if steps == 1 else 's'}"
    return f"{args.ways}-way {args.shots}-shot {args.queries}-query, {args.tasks} tasks, {inner}"


def names(value: str, accepted, flag: str, parser) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    wrong = [v for v in chosen if v not in accepted]
    if wrong or not chosen:
        parser.error(f"Expected a comma-separated subset of {list(accepted)}; received {flag}={value!r}")
    return chosen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", default=",".join(LEARNERS), help="comma-separated: " + ", ".join(LEARNERS))
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: " + ", ".join(BACKENDS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps (rounds) per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (and TF tracing)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--inner_steps", type=int, default=None,
                        help="inner steps of every learner with an inner loop (default: each learner's own, "
                             "1; reptile 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads and TF intra-op threads (default: the frameworks' own)")
    parser.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                        help="count the FLOPs of a reference step and measure the machine's peak rate "
                             "(the floor columns); --no-floor skips it")
    parser.add_argument("--convolutions", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the query pass's convolutions alone in each runner's own calls "
                             "(interleaved with the steps): the part of a step no runner can skip")
    parser.add_argument("--out", default=None, help="write the table as JSON to this path")
    args = parser.parse_args(argv)
    learners = names(args.learners, LEARNERS, "--learners", parser)
    backends = names(args.backends, BACKENDS, "--backends", parser)
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"Expected --steps >= 1 and --warmup >= 0; received --steps={args.steps}, "
                     f"--warmup={args.warmup}")

    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if "tf" in backends:
            import tensorflow as tf  # before any TF op runs, or the setting is refused
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    batch = synthetic_batch(args.tasks, args.ways, args.shots, args.queries)
    runners = {(learner, backend): make_runner(learner, backend, args)
               for learner in learners for backend in backends}
    if args.convolutions:
        runners.update({(CONVOLUTIONS, backend): convolutions(backend, args) for backend in backends})
    times = {key: [] for key in runners}
    faults = {key: [] for key in runners}
    for (learner, backend), run in runners.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            run(batch)
        print(f"# {learner}/{backend}: warm-up {args.warmup} steps (incl. tracing) "
              f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    for _ in range(args.steps):  # interleaved, so drift in machine load hits every variant alike
        for key, run in runners.items():
            start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            run(batch)
            times[key].append(time.perf_counter() - start)
            faults[key].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    load_after = os.getloadavg()[0]
    gflop, peak = {}, None
    if args.floor:  # after the timed rounds, so that they see the same machine as without --floor
        for learner in learners:
            gflop[learner] = step_gflop(runners.get((learner, "reference"))
                                        or make_runner(learner, "reference", args), batch)
        peak = peak_gflops()
        print(f"# peak GFLOP/s: {peak}", file=sys.stderr)

    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(model="conv4 stride-2, batch norm on batch statistics, mean head, 28x28x1 images",
                  torch_threads=torch.get_num_threads(), allocator=allocator_status())
    medians = {key: statistics.median(samples) for key, samples in times.items()}
    fault_medians = {key: int(statistics.median(samples)) for key, samples in faults.items()}
    rows = []
    conv = {b: medians[(CONVOLUTIONS, b)] for b in backends} if args.convolutions else {}
    if conv:
        print("# the query pass's convolutions alone, s: " + ", ".join(f"{b} {t:.4f}" for b, t in conv.items()),
              file=sys.stderr)
    for learner in learners:
        ref = medians.get((learner, "reference"))
        for backend in backends:
            samples, median = times[(learner, backend)], medians[(learner, backend)]
            print(json.dumps({"backend": backend, "learner": learner, "steps": args.steps,
                              "median_s_per_step": round(median, 4), "min_s_per_step": round(min(samples), 4),
                              "max_s_per_step": round(max(samples), 4),
                              "episodes_per_s": round(args.tasks / median, 1),
                              "ratio_to_reference": None if ref is None else round(median / ref, 3),
                              "page_faults_per_step": fault_medians[(learner, backend)],
                              "setting": setting(args, learner), "config": config}))
        row = {"learner": learner, "setting": setting(args, learner), "reference_s": None, "torch_s": None,
               "tf_s": None, "torch_ratio": None, "tf_ratio": None, "steps": args.steps}
        for backend in backends:
            row[f"{backend}_s"] = round(medians[(learner, backend)], 4)
            row[f"{backend}_faults"] = fault_medians[(learner, backend)]
            if backend != "reference" and ref is not None:
                row[f"{backend}_ratio"] = round(medians[(learner, backend)] / ref, 3)
            if backend in conv and ref is not None:  # the best ratio if all but these calls were free
                row[f"{backend}_convolutions_ratio"] = round(conv[backend] / ref, 3)
        if peak is not None:
            floor = gflop[learner] / max(peak.values())
            row["gflop"], row["floor_s"] = float(f"{gflop[learner]:.4g}"), float(f"{floor:.3g}")
            for backend in backends:
                row[f"{backend}_floor"] = round(medians[(learner, backend)] / floor, 2) if floor else None
        rows.append(row)
    if args.out:
        info = machine()
        info["load_average_1min"] = {"before": round(load_before, 2), "after": round(load_after, 2)}
        measured = provenance("benchmarks/bench_maml.py", None if argv is None else list(argv))
        report = {"measured": measured, "machine": info, "config": config, "rows": rows}
        if peak is not None:
            report["peak_gflops"] = peak
        if conv:
            report["convolutions"] = {f"{b}_s": round(t, 4) for b, t in conv.items()}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
        print(f"# wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
