"""Sinusoid regression (Finn et al. 2017, section 5.1): MAML, first-order MAML and the fine-tuning baseline.

Trains each learner in each chosen backend on the same episodes from the same neutral initial weights,
then reports the query MSE after 1, 5 and 10 fine-tuning steps on 600 fixed test tasks (K=10 support
points) and draws the paper's figure: a few test tasks before and after adaptation.

    python examples/sinusoid.py                        # both backends, 4000 meta-steps each (a few minutes)
    python examples/sinusoid.py --backends torch --steps 500 --out runs/sinusoid

Paper, after 70k meta-steps: MAML 0.67 / 0.38 / 0.35 MSE after 1 / 5 / 10 steps; pretraining
("fine-tune" here) 2.41 / 2.23 / 2.19.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from dualmeta.budget import provenance  # noqa: E402
from dualmeta.episodes import RegressionTasks  # noqa: E402
from dualmeta.weights import atomic_write  # noqa: E402

LEARNERS = {"maml": ("maml", "MAML", {}), "fomaml": ("fomaml", "FirstOrderMAML", {}),
            "finetune": ("finetune", "FineTune", {})}
TEST_SEED, PLOT_TASKS = 1_000_003, 3


def build(backend: str, learner: str, args):
    if backend == "torch":
        import torch  # noqa: F401  (torch before tensorflow when both are used)
    models = importlib.import_module(f"{backend}_meta.models")
    module, cls, extra = LEARNERS[learner]
    model = models.mlp(1, (40, 40), 1, dtype=args.dtype, seed=args.seed)
    learner_cls = getattr(importlib.import_module(f"{backend}_meta.{module}"), cls)
    if learner == "finetune":
        return learner_cls(model, inner_lr=args.inner_lr, test_inner_steps=10, meta_lr=args.meta_lr)
    return learner_cls(model, inner_lr=args.inner_lr, inner_steps=1, test_inner_steps=10, meta_lr=args.meta_lr,
                       **extra)


def run(backend: str, learner: str, args) -> dict:
    meta = build(backend, learner, args)
    train = RegressionTasks("sinusoid", shots=10, queries=10, seed=args.seed)
    start = time.perf_counter()
    for step in range(args.steps):
        metrics = meta.meta_train_step(train.batch(step, args.meta_batch_size))
        if args.verbose and (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  {backend}/{learner} step {step + 1}: query MSE {metrics['loss']:.3f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    test = RegressionTasks("sinusoid", shots=10, queries=10, seed=TEST_SEED)
    episodes = test.take(args.episodes)
    mse = {str(k): meta.evaluate(episodes, steps=k)["loss"] for k in (1, 5, 10)}
    grid = np.linspace(-5, 5, 100, dtype=np.float32)[:, None]
    curves = []
    for i in range(PLOT_TASKS):
        episode = test.episode(i)
        curves.append({"truth": test.targets(i, grid)[:, 0].tolist(),
                       "support_x": episode.support_x[:, 0].tolist(), "support_y": episode.support_y[:, 0].tolist(),
                       **{f"after_{k}": meta.predict(grid, meta.adapt(episode, steps=k))[:, 0].tolist()
                          for k in (0, 1, 10)}})
    return {"backend": backend, "learner": learner, "steps": args.steps, "train_seconds": round(seconds, 2),
            "mse": mse, "curves": curves}


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(-5, 5, 100)
    fig, axes = plt.subplots(len(results), PLOT_TASKS, figsize=(4 * PLOT_TASKS, 3 * len(results)), squeeze=False)
    for row, result in zip(axes, results):
        for i, ax in enumerate(row):
            curve = result["curves"][i]
            ax.plot(grid, curve["truth"], "k", label="ground truth")
            ax.plot(grid, curve["after_0"], ":", label="before adaptation")
            ax.plot(grid, curve["after_1"], "--", label="after 1 step")
            ax.plot(grid, curve["after_10"], "-", label="after 10 steps")
            ax.plot(curve["support_x"], curve["support_y"], "^", label="support (K=10)")
            ax.set_title(f"{result['learner']} ({result['backend']}), task {i}", fontsize=9)
            ax.set_ylim(-6, 6)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,tf", help="comma-separated: tf, torch")
    parser.add_argument("--learners", default="maml,fomaml,finetune", help=f"comma-separated: {', '.join(LEARNERS)}")
    parser.add_argument("--steps", type=int, default=4000, help="meta-training steps per learner")
    parser.add_argument("--meta_batch_size", type=int, default=25)
    parser.add_argument("--inner_lr", type=float, default=0.01)
    parser.add_argument("--meta_lr", type=float, default=1e-3)
    parser.add_argument("--episodes", type=int, default=600, help="test tasks")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/sinusoid", help="folder for results.json and adaptation.png")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in args.learners.split(","):
        if name not in LEARNERS:
            parser.error(f"Expected learners from {sorted(LEARNERS)}; received {name!r}")
    backends = args.backends.split(",")
    for name in backends:
        if name not in ("tf", "torch"):
            parser.error(f"Expected backends from ['tf', 'torch']; received {name!r}")
    if "torch" in backends:
        import torch  # noqa: F401  (import torch before tensorflow)
    os.makedirs(args.out, exist_ok=True)
    results = [run(b, name, args) for b in backends for name in args.learners.split(",")]
    print(f"{'backend':8} {'learner':9} {'steps':>6} {'train s':>8}  MSE after 1 / 5 / 10 steps (95% CI)")
    for r in results:
        cells = " / ".join(f"{r['mse'][k]['mean']:.3f}±{r['mse'][k]['ci95']:.3f}" for k in ("1", "5", "10"))
        print(f"{r['backend']:8} {r['learner']:9} {r['steps']:>6} {r['train_seconds']:>8.1f}  {cells}")
    measured = provenance("examples/sinusoid.py", sys.argv[1:] if argv is None else list(argv))
    atomic_write(os.path.join(args.out, "results.json"),
                 json.dumps({"measured": measured, "command": measured["command"], "results": results}, indent=1))
    plot(results, os.path.join(args.out, "adaptation.png"))
    print(f"wrote {os.path.join(args.out, 'results.json')} and {os.path.join(args.out, 'adaptation.png')}")
    return results


if __name__ == "__main__":
    main()
