"""Meta-batch learners on Omniglot: train for a time budget, then evaluate on the Vinyals test classes.

Learners: ``maml`` (second order), ``fomaml``, ``reptile``, ``metasgd``, ``anil`` and the ``finetune``
baseline, and the model-based ``lstm`` and ``snail`` (``dualmeta.sequences``: the episode read as a
sequence, support order shuffled by address; a max-pool conv4 embedding with running batch-norm statistics,
the defaults of ``dualmeta.experiment``), in either backend. Defaults follow Finn et al. 2017 and the original code: the stride-2 conv4
(64 channels, features averaged over space), 5-way 1-shot tasks with **one query per class** in training
(as the original code; 15 per class at test), meta-batch 32, one inner SGD step of 0.4 in training and
three at test, the support loss summed and divided by the shots (``inner_reduction='sum_per_shot'``),
Adam 1e-3. Reptile: 5 inner steps, meta step 1.0 (plain SGD on ``theta - phi``). No model selection
happens, the last weights are evaluated.

The protocol (``dualmeta.protocol``; ``--split``, ``--train_on``, ``--evaluate_on``): training, validation
and test classes share no character. By default the run trains on the Vinyals training alphabets (4112
classes with rotations), measures its accuracy curve (``--curve_every`` > 0; excluded from the time budget,
only reported) on ``--curve_episodes`` episodes of the 5 validation alphabets, and scores the test classes
(characters 1201-1623 with rotations, 1692 classes) once, at the end. ``--train_on=trainval`` trains on the
1200 train+val characters (4800 classes) as the original MAML code, with no curve; ``--evaluate_on=val``
makes a pilot run that draws no test episode.

Evaluation: ``--episodes`` fixed N-way K-shot episodes (the training ways and shots; 15 queries per class),
the same in every run and backend, mean accuracy with a 95% confidence interval. Batch norm at test
(``--test_norm``): ``query`` normalises the queries with their own batch statistics (transductive, as
Finn et al.'s code); ``support`` with the support set's, so each query is classified from the support set
and itself alone (``--test_norm=query,support`` scores both on the same weights). Everything goes to a JSON file (``--out``), the weights (neutral
format) to ``--checkpoint``.

    python examples/omniglot_maml.py --backend=torch --minutes=30 --out=results/omniglot/maml_5w1s_torch.json
    python examples/omniglot_maml.py --backend=tf --learner=fomaml --minutes=10
    python examples/omniglot_maml.py --ways=20 --inner_lr=0.1 --inner_steps=5 --test_inner_steps=5 \\
        --meta_batch_size=16                                      # the paper's 20-way setting
    python examples/omniglot_maml.py --test_norm=query,support --minutes=10        # transductive and not
    python examples/omniglot_maml.py --learner=reptile --inner_reduction=mean --evaluate_on=val --minutes=3  # pilot
    python examples/omniglot_maml.py --learner=snail --ways=20 --minutes=30       # model-based, 20-way 1-shot
    python examples/omniglot_maml.py --minutes=0.05 --episodes=3 --hidden=8 --threads=1   # smoke test
    python examples/omniglot_maml.py --device=cuda --minutes=30       # torch on a GPU (the learner follows the model)
    python examples/omniglot_maml.py --backend=tf --minutes=0 --init_weights=maml_torch.safetensors  # evaluate only
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import (NOT_TRAINED, check_run_flags, load_init_weights, protocol_record,  # noqa: E402
                     run_protocol, trained_characters, validation_curve)  # (examples/_common.py)

FLAGS = flags.FLAGS
flags.DEFINE_enum("backend", "torch", ["tf", "torch"], "Backend.")
flags.DEFINE_enum("learner", "maml", ["maml", "fomaml", "reptile", "metasgd", "anil", "finetune", "lstm", "snail"],
                  "Learner.")
flags.DEFINE_float("minutes", 30.0, "Training time budget in minutes (the step in flight finishes).")
flags.DEFINE_integer("max_steps", None, "Stop training after this many meta-steps even within the budget.")
flags.DEFINE_integer("ways", 5, "Classes per task (training and test).")
flags.DEFINE_integer("shots", 1, "Support examples per class (training and test).")
flags.DEFINE_integer("train_shots", None, "Support examples per class in training (default --shots; Reptile "
                     "trains 1-shot Omniglot with 10, Nichol et al.).")
flags.DEFINE_integer("train_queries", 1, "Query examples per class in training (the original code: 1).")
flags.DEFINE_integer("test_queries", 15, "Query examples per class at test.")
flags.DEFINE_integer("meta_batch_size", None, "Tasks per meta-step (default 32).")
flags.DEFINE_float("inner_lr", None, "Inner SGD learning rate (default 0.4).")
flags.DEFINE_integer("inner_steps", None, "Inner steps in training (default 1; reptile 5).")
flags.DEFINE_integer("test_inner_steps", None, "Inner steps at test (default 3).")
flags.DEFINE_enum("inner_reduction", None, ["mean", "sum_per_shot"], "Support-loss reduction (default "
                  "sum_per_shot, the original code's).")
flags.DEFINE_integer("inner_batch_size", None, "reptile: support examples per inner step (class-balanced "
                     "minibatches; default: the whole support set).")
flags.DEFINE_float("meta_lr", None, "Meta learning rate (default Adam 1e-3; reptile SGD 1.0).")
flags.DEFINE_integer("episodes", 600, "Test episodes.")
flags.DEFINE_list("test_norm", ["query"], "Batch-norm statistics at test, one evaluation each (the first is the "
                  "run's figure): query (the query set's own: transductive, as Finn et al.), support (the support "
                  "set's: not transductive). E.g. --test_norm=query,support. lstm, snail: running statistics "
                  "(fixed).")
flags.DEFINE_float("curve_every", 3.0, "Minutes of training between points of the accuracy curve (0: none).")
flags.DEFINE_integer("curve_episodes", 100, "Test episodes per point of the accuracy curve.")
flags.DEFINE_integer("hidden", 64, "Convolution channels.")
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Floating point type.")
flags.DEFINE_integer("seed", 0, "Seed of the initial weights and the training episodes.")
flags.DEFINE_integer("eval_seed", 2_000_000_011, "Seed of the test episodes (keep it fixed to compare runs).")
flags.DEFINE_string("data_dir", None, "Omniglot folder (default: dualmeta.datasets.omniglot.default_data_dir()).")
flags.DEFINE_string("out", None, "Metrics JSON (default omniglot_<learner>_<ways>w<shots>s_<backend>.json).")
flags.DEFINE_string("checkpoint", None, "Write the trained weights (safetensors, neutral format) here.")
flags.DEFINE_integer("log_every", 100, "Steps per point of the training curve / progress line.")
flags.DEFINE_integer("threads", 0, "CPU threads of the backend (torch: intra-op; TensorFlow: intra- and inter-op); 0: the framework's default.")
flags.DEFINE_string("device", "cpu", "torch device: cpu, cuda, cuda:N or mps (torch only: TensorFlow places "
                    "operations on a visible GPU by itself).")


def main(argv):
    check_run_flags(argv)
    from dualmeta import backend, budget, data, protocol
    from dualmeta.episodes import ClassificationTasks
    from dualmeta.experiment import OMNIGLOT_DRAWINGS, resolve
    from dualmeta.weights import atomic_write, save_weights

    try:
        experiment = resolve(FLAGS.backend, FLAGS.learner, "omniglot", ways=FLAGS.ways, shots=FLAGS.shots,
                             train_shots=FLAGS.train_shots, queries=FLAGS.test_queries,
                             train_queries=FLAGS.train_queries,
                             meta_batch_size=FLAGS.meta_batch_size, inner_lr=FLAGS.inner_lr,
                             inner_steps=FLAGS.inner_steps, test_inner_steps=FLAGS.test_inner_steps,
                             inner_reduction=FLAGS.inner_reduction, inner_batch_size=FLAGS.inner_batch_size,
                             meta_lr=FLAGS.meta_lr, hidden=FLAGS.hidden, dtype=FLAGS.dtype, seed=FLAGS.seed)
        if FLAGS.shots + FLAGS.test_queries > OMNIGLOT_DRAWINGS:
            raise ValueError(f"--shots + --test_queries = {FLAGS.shots + FLAGS.test_queries} exceeds the "
                             f"{OMNIGLOT_DRAWINGS} drawings of an Omniglot character; lower --test_queries")
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    backend.set_threads(FLAGS.backend, FLAGS.threads)
    model_name, model_config = experiment.model()
    learner = backend.make_learner(FLAGS.backend, FLAGS.learner, model_name, model_config, dtype=FLAGS.dtype,
                                   seed=FLAGS.seed, learner_args=experiment.learner_args(), device=FLAGS.device)
    initial = load_init_weights(learner)

    norms = list(dict.fromkeys(FLAGS.test_norm))
    for norm in norms:
        if norm not in ("query", "support"):
            raise app.UsageError(f"Expected --test_norm values among ['query', 'support']; received {norm!r}")
    wrap = None
    if experiment.sequence:  # the embedding keeps running statistics: each query is embedded alone
        if FLAGS["test_norm"].present:
            raise app.UsageError(f"--test_norm does not apply to --learner={FLAGS.learner} (its embedding "
                                 f"normalises with running statistics at test); drop it")
        from dualmeta.sequences import ShuffledSupport as wrap
        norms = ["running"]
    images = data.load_omniglot_images(FLAGS.data_dir, image_size=28)
    chosen, final, final_role = run_protocol(images)
    trained_characters(chosen, initial, images)  # refuses --init_weights trained on the test classes
    e = experiment
    config = {"backend": e.backend, "learner": e.learner, "ways": e.ways, "shots": e.shots,
              "train_shots": e.train_shots, "train_queries": e.train_queries,
              "test_queries": FLAGS.test_queries,
              "meta_batch_size": e.meta_batch_size, "inner_lr": e.inner_lr, "inner_steps": e.inner_steps,
              "test_inner_steps": e.test_inner_steps, "inner_reduction": e.inner_reduction,
              "inner_batch_size": e.inner_batch_size, "meta_lr": e.meta_lr,
              "minutes": FLAGS.minutes, "max_steps": FLAGS.max_steps, "episodes": FLAGS.episodes,
              "hidden": e.hidden, "dtype": e.dtype, "seed": e.seed, "eval_seed": FLAGS.eval_seed,
              "threads": FLAGS.threads or "default", "device": FLAGS.device,
              "init_weights": FLAGS.init_weights, "model": model_config,
              "split": FLAGS.split, "train_on": FLAGS.train_on, "evaluate_on": FLAGS.evaluate_on,
              "test_norm": norms[0], "batch_norm_at_test": protocol.BATCH_NORM_AT_TEST[norms[0]],
              "train_classes": chosen.train.num_classes,
              "test_classes": chosen.test.num_classes, "argv": sys.argv[1:]}
    print(f"{e.backend} {e.learner}: {e.ways}-way {e.shots}-shot, {chosen.train.num_classes} training classes "
          f"({chosen.label()}), meta-batch {e.meta_batch_size}, {FLAGS.minutes} min", flush=True)

    # The curve uses the validation classes, never the test classes (dualmeta.protocol); the curve's batch
    # norm is the run's first --test_norm.
    if not e.sequence:
        learner.test_norm = norms[0]
    curve_tasks, curve = validation_curve(chosen, learner, e.ways, e.shots, wrap=wrap)
    train_tasks = ClassificationTasks(chosen.train, e.train_ways, e.train_shots, e.train_queries, seed=e.seed)
    if wrap is not None:
        train_tasks = wrap(train_tasks)
    report = {"measured": budget.provenance("examples/omniglot_maml.py"), "config": config,
              "protocol": protocol_record(chosen, curve_tasks, FLAGS.curve_episodes, final_role)}
    if initial is not None:
        report["init_weights"] = initial
    try:
        report["train"] = dict(NOT_TRAINED) if FLAGS.minutes == 0 else budget.train_for(
            learner, train_tasks,
            e.meta_batch_size, FLAGS.minutes, max_steps=FLAGS.max_steps, log_every=FLAGS.log_every,
            curve=curve, curve_every_s=60.0 * FLAGS.curve_every)
    except FloatingPointError as error:
        sys.exit(f"error: {error}")
    t = report["train"]
    print(f"trained {t['steps']} meta-steps in {t['seconds']} s ({t['seconds_per_step']} s/step)", flush=True)
    for i, norm in enumerate(norms):  # the first is the run's figure; the others are extra rows
        if not e.sequence:
            learner.test_norm = norm
        print(f"batch norm at test: {protocol.BATCH_NORM_AT_TEST[norm]}", flush=True)
        result = budget.evaluate_settings(learner, final, [(e.ways, e.shots)], FLAGS.test_queries,
                                          FLAGS.episodes, FLAGS.eval_seed, wrap=wrap)
        if i == 0:
            report[final_role] = result
        else:
            report.setdefault(f"{final_role}_other_norms", {})[norm] = result
    if FLAGS.checkpoint:
        save_weights(FLAGS.checkpoint, learner.get_weights(), metadata={"config": config, "steps": t["steps"]})
        report["checkpoint"] = FLAGS.checkpoint  # as given: no machine path in results
    out = FLAGS.out or f"omniglot_{e.learner}_{e.ways}w{e.shots}s_{e.backend}.json"
    atomic_write(out, json.dumps(report, indent=2).encode())
    print(f"metrics written to {out}")


if __name__ == "__main__":
    app.run(main)
