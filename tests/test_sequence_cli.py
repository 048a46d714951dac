"""The model-based learners (``--learner=lstm|snail``) on the command line and in ``dualmeta.experiment``.

Settings are resolved in-process; one tiny sinusoid run per learner goes through the real CLI in a
subprocess (train in torch, evaluate the checkpoint in tf, refuse it for Omniglot in one line).
"""
from __future__ import annotations

import numpy as np
import pytest

from dualmeta import cli, experiment
from dualmeta.episodes import RegressionTasks
from dualmeta.sequences import ShuffledSupport, frame, support_permutation
from tests.test_cli import assert_one_line_error, run_cli

TINY = ["--meta_batch_size=2", "--hidden=4", "--shots=3", "--queries=2", "--val_episodes=2", "--val_every=0",
        "--log_every=1000", "--steps=3", "--dtype=float64"]


@pytest.mark.parametrize("learner", ["lstm", "snail"])
def test_sequence_settings(learner):
    sine = experiment.resolve("torch", learner=learner)
    name, config = sine.model()
    assert name == learner and config["ways"] is None and config.get("encoder") is None
    assert sine.learner_args() == dict(meta_lr=1e-3)
    assert (sine.inner_lr, sine.inner_steps, sine.test_inner_steps) == (None, None, None)
    assert isinstance(sine.train_tasks(), ShuffledSupport)
    if learner == "snail":
        assert config["support_size"] == sine.shots == 10
    omniglot = experiment.resolve("torch", learner=learner, tasks="omniglot", ways=20, train_ways=5)
    name, config = omniglot.model()
    assert config["ways"] == 20 and config["encoder"]["track_running_stats"]  # head: max(ways, train_ways)
    recipe = {"lstm": (16, 3e-3), "snail": (32, 1e-3)}[learner]  # the Omniglot recipes of docs/learners
    assert (omniglot.meta_batch_size, omniglot.meta_lr, omniglot.train_queries, omniglot.queries) == (*recipe, 1, 15)
    assert config.get("forget_bias") == (1.0 if learner == "lstm" else None)
    assert sine.model()[1].get("forget_bias") is None  # the sinusoid LSTM starts as PyTorch's nn.LSTM
    with pytest.raises(ValueError, match=f"--inner_lr does not apply to --learner={learner}"):
        experiment.resolve("torch", learner=learner, inner_lr=0.1)


@pytest.mark.parametrize("backend", ["tf", "torch"])
def test_forget_bias_is_added_to_the_forget_gate_rows_only(backend):
    """``forget_bias`` shifts rows H:2H (gate f of i, f, g, o) of ``lstm.bias_hh`` at the start, and nothing else;
    each backend's builder gives those neutral weights; a value that is not finite is refused."""
    from dualmeta import backend as backends
    from dualmeta.sequences import lstm_spec
    from dualmeta.weights import initialize
    plain, shifted = (initialize(lstm_spec(ways=None, hidden=6, forget_bias=b), seed=3) for b in (0.0, 2.5))
    difference = shifted["lstm.bias_hh"] - plain["lstm.bias_hh"]
    np.testing.assert_allclose(difference, np.r_[np.zeros(6), np.full(6, 2.5), np.zeros(12)], atol=1e-6)
    assert all(np.array_equal(plain[name], shifted[name]) for name in plain if name != "lstm.bias_hh")
    model = backends.build_model(backend, "lstm", dict(ways=None, hidden=6, forget_bias=2.5), seed=3)
    built = model.get_weights()
    assert all(np.array_equal(np.asarray(built[name]), shifted[name]) for name in shifted)
    with pytest.raises(ValueError, match="Expected a finite forget_bias"):
        lstm_spec(ways=None, hidden=6, forget_bias=float("nan"))


def test_compare_default_steps_per_learner():
    from absl.testing import flagsaver
    with flagsaver.flagsaver():
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["dualmeta", "--learner=snail", "compare"])
        assert cli._experiment("compare", backend_name="torch").steps == cli.COMPARE_STEPS_BY_LEARNER["snail"]
        cli.FLAGS.unparse_flags()
        cli.FLAGS(["dualmeta", "--learner=lstm", "compare"])
        assert cli._experiment("compare", backend_name="torch").steps == cli.COMPARE_STEPS


def test_support_shuffle_is_by_address():
    tasks = ShuffledSupport(RegressionTasks("sinusoid", shots=6, queries=2, seed=4))
    plain = RegressionTasks("sinusoid", shots=6, queries=2, seed=4)
    order = support_permutation(4, 9, 6)
    assert not np.array_equal(order, np.arange(6))
    np.testing.assert_array_equal(tasks.episode(9).support_x, plain.episode(9).support_x[order])
    np.testing.assert_array_equal(tasks.episode(9).query_x, plain.episode(9).query_x)  # queries untouched
    np.testing.assert_array_equal(tasks.batch(3, 3).support_y[0], tasks.episode(9).support_y)
    framed = frame(tasks.episode(9), None)
    assert framed.support_slots.shape == (1, 6, 1) and not framed.query_slots.any()


@pytest.mark.parametrize("learner", ["lstm", pytest.param("snail", marks=pytest.mark.slow)])  # ~20 s each
def test_train_in_torch_evaluate_in_tf(learner, tmp_path):
    logdir = tmp_path / "run"
    run_cli("train", "--backend=torch", f"--learner={learner}", f"--logdir={logdir}", *TINY, cwd=tmp_path, check=0)
    results = [run_cli("evaluate", f"--backend={b}", f"--logdir={logdir}", "--episodes=5", cwd=tmp_path, check=0)
               .stdout.split(": ", 1)[1] for b in ("torch", "tf")]
    assert results[0] == results[1]
    refused = run_cli("evaluate", "--backend=torch", f"--checkpoint={logdir}", "--tasks=omniglot", "--hidden=4",
                      "--episodes=1", cwd=tmp_path)
    assert_one_line_error(refused, "regression model (no encoder)", "--tasks=sinusoid")
