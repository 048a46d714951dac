"""Sinusoid regression (Finn et al. 2017, section 5.1): MAML, first-order MAML, the fine-tuning baseline and
the model-based learners (LSTM, SNAIL).

Trains each learner in each chosen backend on the same episodes from the same neutral initial weights,
then reports the query MSE after 1, 5 and 10 fine-tuning steps on 600 fixed test tasks (K=10 support
points) and draws the paper's figure: a few test tasks before and after adaptation. The model-based
learners (``lstm``, ``snail``: ``dualmeta.sequences``, support order shuffled by address) take no gradient
step at test: their one MSE is the prediction of a forward pass that reads the support set, reported
under ``forward``. They train with the defaults of ``dualmeta.experiment`` (40 LSTM units; 32 SNAIL filters).

    python examples/sinusoid.py                        # both backends, 4000 meta-steps each (a few minutes)
    python examples/sinusoid.py --backends torch --steps 500 --out runs/sinusoid
    python examples/sinusoid.py --learners maml,fomaml,finetune,lstm,snail --out results/sinusoid

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
SEQUENCE = ("lstm", "snail")  # model-based: built as the command line builds them (dualmeta.experiment)
TEST_SEED, PLOT_TASKS = 1_000_003, 3


def build(backend: str, learner: str, args):
    if backend == "torch":
        import torch  # noqa: F401  (torch before tensorflow when both are used)
    if learner in SEQUENCE:
        from dualmeta import backend as backends
        from dualmeta.experiment import resolve

        e = resolve(backend, learner, "sinusoid", meta_batch_size=args.meta_batch_size, meta_lr=args.meta_lr,
                    dtype=args.dtype, seed=args.seed)
        name, config = e.model()
        return backends.make_learner(backend, learner, name, config, dtype=args.dtype, seed=args.seed,
                                     learner_args=e.learner_args())
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
    sequence = learner in SEQUENCE
    train = RegressionTasks("sinusoid", shots=10, queries=10, seed=args.seed)
    test = RegressionTasks("sinusoid", shots=10, queries=10, seed=TEST_SEED)
    if sequence:
        from dualmeta.sequences import ShuffledSupport
        train, test_set = ShuffledSupport(train), ShuffledSupport(test)
    else:
        test_set = test
    start = time.perf_counter()
    for step in range(args.steps):
        metrics = meta.meta_train_step(train.batch(step, args.meta_batch_size))
        if args.verbose and (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  {backend}/{learner} step {step + 1}: query MSE {metrics['loss']:.3f}", file=sys.stderr)
    seconds = time.perf_counter() - start
    episodes = test_set.take(args.episodes)
    if sequence:
        mse = {"forward": meta.evaluate(episodes)["loss"]}
    else:
        mse = {str(k): meta.evaluate(episodes, steps=k)["loss"] for k in (1, 5, 10)}
    grid = np.linspace(-5, 5, 100, dtype=np.float32)[:, None]
    curves = []
    for i in range(PLOT_TASKS):
        episode = test_set.episode(i)
        adapted = ({"forward": meta.predict(grid, meta.adapt(episode))[:, 0].tolist()} if sequence else
                   {f"after_{k}": meta.predict(grid, meta.adapt(episode, steps=k))[:, 0].tolist() for k in (0, 1, 10)})
        curves.append({"truth": test.targets(i, grid)[:, 0].tolist(),
                       "support_x": episode.support_x[:, 0].tolist(), "support_y": episode.support_y[:, 0].tolist(),
                       **adapted})
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
            if "forward" in curve:  # model-based: one forward pass that reads the support set
                ax.plot(grid, curve["forward"], "-", color="C3", label="read the support set")
            else:
                ax.plot(grid, curve["after_0"], ":", label="before adaptation")
                ax.plot(grid, curve["after_1"], "--", label="after 1 step")
                ax.plot(grid, curve["after_10"], "-", label="after 10 steps")
            ax.plot(curve["support_x"], curve["support_y"], "^", label="support (K=10)")
            ax.set_title(f"{result['learner']} ({result['backend']}), task {i}", fontsize=9)
            ax.set_ylim(-6, 6)
    for row in axes:
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,tf", help="comma-separated: tf, torch")
    parser.add_argument("--learners", default="maml,fomaml,finetune",
                        help=f"comma-separated: {', '.join((*LEARNERS, *SEQUENCE))}")
    parser.add_argument("--steps", type=int, default=4000, help="meta-training steps per learner")
    parser.add_argument("--meta_batch_size", type=int, default=25)
    parser.add_argument("--inner_lr", type=float, default=0.01)
    parser.add_argument("--meta_lr", type=float, default=1e-3)
    parser.add_argument("--episodes", type=int, default=600, help="test tasks")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/sinusoid", help="folder for results.json and adaptation.png")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads of each backend (0: its default); "
                        "1 is faster on a busy machine")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in args.learners.split(","):
        if name not in (*LEARNERS, *SEQUENCE):
            parser.error(f"Expected learners from {sorted((*LEARNERS, *SEQUENCE))}; received {name!r}")
    backends = args.backends.split(",")
    for name in backends:
        if name not in ("tf", "torch"):
            parser.error(f"Expected backends from ['tf', 'torch']; received {name!r}")
    if args.threads < 0:
        parser.error(f"Expected --threads >= 0; received {args.threads}")
    if "torch" in backends:
        import torch  # noqa: F401  (import torch before tensorflow)
    from dualmeta.backend import set_threads
    for name in backends:
        set_threads(name, args.threads)
    os.makedirs(args.out, exist_ok=True)
    results = [run(b, name, args) for b in backends for name in args.learners.split(",")]
    print(f"{'backend':8} {'learner':9} {'steps':>6} {'train s':>8}  MSE after 1 / 5 / 10 steps (95% CI)")
    for r in results:
        keys = ("forward",) if "forward" in r["mse"] else ("1", "5", "10")  # model-based: no steps
        cells = " / ".join(f"{r['mse'][k]['mean']:.3f}±{r['mse'][k]['ci95']:.3f}" for k in keys)
        if keys == ("forward",):
            cells = f"(no step: forward pass) {cells}"
        print(f"{r['backend']:8} {r['learner']:9} {r['steps']:>6} {r['train_seconds']:>8.1f}  {cells}")
    measured = provenance("examples/sinusoid.py", sys.argv[1:] if argv is None else list(argv))
    atomic_write(os.path.join(args.out, "results.json"),
                 json.dumps({"measured": measured, "command": measured["command"], "results": results}, indent=1))
    plot(results, os.path.join(args.out, "adaptation.png"))
    print(f"wrote {os.path.join(args.out, 'results.json')} and {os.path.join(args.out, 'adaptation.png')}")
    return results


if __name__ == "__main__":
    main()
