"""Benchmark: does a compiler fuse what is left of a torch_meta MAML step? ``torch.compile`` against eager.

Three runners do one second-order MAML step on the synthetic meta-batch of ``bench_maml.py`` (conv4, stride-2
convolutions, mean head; 5-way 1-shot 15-query, 32 tasks by default), timed interleaved in one process:

* ``reference``: ``bench_maml.MAMLReference``, the plain per-task PyTorch loop;
* ``eager``: ``torch_meta.maml.MAML`` as it ships;
* ``compiled``: the same learner whose meta-gradient of each group of tasks, inner gradient included, is one
  pure function (``torch.func.grad`` inside ``torch.func.grad``) handed to ``torch.compile`` (Inductor, static
  shapes), so that batch norm, ReLU and the inner update can be fused around the convolutions.

Printed: the compile time, the largest relative difference between the eager and the compiled meta-gradient,
and the median seconds per step with the ratio to the reference; ``--out`` writes them as JSON. Measured
2026-12-07 on 2 cores: 120 s to compile (8 s from Inductor's cache), then 0.86x against eager's 0.76x
(``results/compile/maml.json``; two earlier runs 0.72x / 0.68x and 0.82x / 0.79x); so dualmeta does not
compile its steps (docs/performance.md).

    python benchmarks/bench_compile.py --steps=6 --out results/compile/maml.json
    python benchmarks/bench_compile.py --steps=1 --tasks=2 --hidden=8 --queries=1   # smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bench_maml  # noqa: E402
from torch_meta import maml, models  # noqa: E402
from dualmeta.budget import machine, provenance  # noqa: E402
from dualmeta.weights import atomic_write  # noqa: E402
from torch_meta.maml import _batched_call, _metrics, _per_task_loss  # noqa: E402


class CompiledMAML(maml.MAML):
    """``MAML`` whose grouped meta-gradient is compiled (second order, the model's own inner rate)."""

    def _group_loss(self, params, sx, sy, qx, qy, tasks: int):
        group = sx.shape[0]
        fast = {n: p.expand((group,) + tuple(p.shape)) for n, p in params.items()}
        for _ in range(self.inner_steps):
            def support_loss(adapted, fast=fast):
                return self.inner_loss(_batched_call(self.model, {**fast, **adapted}, sx), sy).sum()
            grads = torch.func.grad(support_loss)(fast)
            fast = {n: fast[n] - self.inner_lr * grads[n] for n in fast}
        out = _batched_call(self.model, fast, qx)
        loss = _per_task_loss(out, qy)
        return loss.sum() / tasks, (out.detach(), loss.detach())

    def _meta_gradients(self, batch):
        if not hasattr(self, "_compiled_group"):
            self._compiled_group = torch.compile(torch.func.grad(self._group_loss, has_aux=True), dynamic=False)
        sx, sy, qx, qy = self._tensors(batch)
        params = {n: p.detach() for n, p in self.parameters().items()}
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        outs, losses = [], []
        for part in self._chunks(sx.shape[0], sx.shape[1] + qx.shape[1]):
            group_grads, (out, loss) = self._compiled_group(params, sx[part], sy[part], qx[part], qy[part],
                                                            sx.shape[0])
            for n, g in group_grads.items():
                grads[n] += g
            outs.append(out)
            losses.append(loss)
        return grads, _metrics(torch.cat(outs), qy, torch.cat(losses))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps (rounds) per runner")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the figures as JSON to this path")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"Expected --steps >= 1; received --steps={args.steps}")
    batch = bench_maml.synthetic_batch(args.tasks, args.ways, 1, args.queries)

    def learner(cls):
        return cls(models.conv4(num_classes=args.ways, hidden=args.hidden, downsample="stride", head="mean"),
                   inner_lr=0.4)

    eager, compiled = learner(maml.MAML), learner(CompiledMAML)
    compiled.set_weights(eager.get_weights())
    expected, _ = eager.meta_gradients(batch)
    start = time.perf_counter()
    found, _ = compiled.meta_gradients(batch)
    compile_s = time.perf_counter() - start
    print(f"compile and first step: {compile_s:.1f} s")
    worst = max(float(np.abs(found[n] - g).max() / max(np.abs(g).max(), 1e-30)) for n, g in expected.items())
    print(f"largest relative difference of the meta-gradient, compiled vs eager: {worst:.3g}")
    runners = {"reference": bench_maml.MAMLReference(args.ways, args.hidden).step,
               "eager": eager.meta_train_step, "compiled": compiled.meta_train_step}
    for run in runners.values():
        run(batch)
    times = {name: [] for name in runners}
    for _ in range(args.steps):  # interleaved
        for name, run in runners.items():
            start = time.perf_counter()
            run(batch)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    for name, median in medians.items():
        print(f"{name}: {median:.4f} s/step, {median / medians['reference']:.3f}x the reference")
    if args.out:
        report = {"measured": provenance("benchmarks/bench_compile.py", None if argv is None else list(argv)),
                  "machine": machine(), "config": {k: v for k, v in vars(args).items() if k != "out"},
                  "compile_and_first_step_s": round(compile_s, 1), "meta_gradient_max_relative_difference": worst,
                  "s_per_step": {name: round(m, 4) for name, m in medians.items()},
                  "ratio_to_reference": {name: round(m / medians["reference"], 3) for name, m in medians.items()}}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        atomic_write(args.out, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
