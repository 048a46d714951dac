"""Parity of the model-based learners: the LSTM learner and SNAIL, classification and regression.

Both backends start from the same neutral weights and see the same episodes (support order shuffled by
address, ``dualmeta.sequences.ShuffledSupport``). Compared per learner, task and dtype: the support state
and the query outputs (forward), the loss and the gradient of every parameter, the weights after one
training step, and the losses of a 100-step trajectory. Then: a checkpoint trained in one backend evaluates
alike in the other; queries never see each other (a query's output equals the last output of the sequence
``support, query`` and does not move when the other queries change); the framework defaults the twins pin
(Keras' LSTM gate layout, causal ``Conv1D`` padding, attention scaling and masking) checked against the
frameworks' own layers; bad input refused in one line. Tolerances between the backends come from
``dualmeta.tolerances``; no test overrides them. (The checks within one backend, query isolation and the
frameworks' own layers, are float64 and use 1e-12.)

Slow (``pytest -m slow``): the image trajectories (10-18 s each) and two of the four checkpoint directions.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch  # noqa: F401  (torch before tensorflow, as in conftest)

from dualmeta import weights as neutral
from dualmeta.episodes import ClassDataset, ClassificationTasks, RegressionTasks
from dualmeta.sequences import ShuffledSupport, frame
from dualmeta.tolerances import tolerance
from parity_tests.conftest import assert_quantity_close, record

BACKENDS = ("tf", "torch")
DTYPES = ("float32", "float64")
LEARNERS = {"lstm": ("lstm", "LSTMLearner"), "snail": ("snail", "SNAIL")}
WAYS, SHOTS, QUERIES, IMAGE = 3, 2, 2, 16
SINE_SHOTS, SINE_QUERIES = 5, 4
# float32 image trajectories run the encoder with Softplus (a ReLU kink flipped by round-off changes a step's
# gradient by a finite amount, as for every other learner); everything else is smooth already.
TRAJECTORY_ACTIVATION = {"float32": "softplus", "float64": "relu"}
CASES = [pytest.param(learner, task, dtype, id=f"{learner}-{task}-{dtype}")
         for learner in LEARNERS for task in ("images", "sinusoid") for dtype in DTYPES]
# The image trajectories (conv encoder, 100 steps in each backend) take 10-18 s each on two busy cores: they
# run with `pytest -m slow`; the default run keeps the sinusoid trajectories and every one-step check.
TRAJECTORY_CASES = [pytest.param(*case.values, id=case.id,
                                 marks=[pytest.mark.slow] if case.values[1] == "images" else []) for case in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model_args(learner: str, task: str, activation: str = "relu") -> dict:
    """Tiny models: conv4 of 8 channels on 16x16 images (3 max-pool blocks, 32 features), LSTM of 8 units,
    SNAIL with one TC block of 4 filters (3 layers for 7 steps) and one attention block 4/4."""
    args = dict(hidden=8) if learner == "lstm" else dict(filters=4, keys=(4,), values=(4,))
    if task == "sinusoid":
        return {**args, "ways": None, **({} if learner == "lstm" else {"support_size": SINE_SHOTS})}
    encoder = dict(hidden=8, downsample="maxpool", image_size=IMAGE, blocks=3, track_running_stats=True,
                   activation=activation)
    return {**args, "ways": WAYS, "encoder": encoder, **({} if learner == "lstm" else {"support_size": WAYS * SHOTS})}


def make(backend: str, learner: str, task: str, dtype: str, activation: str = "relu", meta_lr: float = 1e-3,
         **args):
    sequence = importlib.import_module(f"{backend}_meta.sequence")
    module, cls = LEARNERS[learner]
    model = getattr(sequence, learner)(**{**model_args(learner, task, activation), **args}, dtype=dtype, seed=3)
    return getattr(importlib.import_module(f"{backend}_meta.{module}"), cls)(model, meta_lr=meta_lr)


def twins(learner, task, dtype, activation="relu", meta_lr=1e-3, **args) -> dict:
    pair = {b: make(b, learner, task, dtype, activation, meta_lr, **args) for b in BACKENDS}
    pair["tf"].set_weights(pair["torch"].get_weights())  # the same neutral weights (they are already)
    return pair


def tasks(task: str, seed: int = 12):
    if task == "sinusoid":
        return ShuffledSupport(RegressionTasks("sinusoid", shots=SINE_SHOTS, queries=SINE_QUERIES, seed=seed))
    rng = np.random.default_rng(0)  # learnable classes: a smooth template per class plus noise
    templates = rng.random((16, 1, IMAGE, IMAGE)) > 0.5
    images = 1 / (1 + np.exp(-4 * (templates + rng.standard_normal((16, 8, IMAGE, IMAGE)) - 0.5)))
    data = ClassDataset.from_grouped(images.astype(np.float32))
    return ShuffledSupport(ClassificationTasks(data, WAYS, SHOTS, QUERIES, seed=seed))


def _numpy(tensors: dict) -> dict:
    return {n: (t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)) for n, t in tensors.items()}


# --- forward ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("learner, task, dtype", CASES)
def test_support_state_and_query_outputs(learner, task, dtype):
    pair, episode = twins(learner, task, dtype), tasks(task).episode(0)
    states = {b: pair[b].adapt(episode) for b in BACKENDS}
    assert_quantity_close("forward", dtype, _numpy(states["tf"]), _numpy(states["torch"]))
    outputs = {b: pair[b].predict(episode.query_x, states[b]) for b in BACKENDS}
    assert outputs["torch"].shape == ((WAYS * QUERIES, WAYS) if task == "images" else (SINE_QUERIES, 1))
    assert_quantity_close("forward", dtype, {"predict": outputs["tf"]}, {"predict": outputs["torch"]})
    framed = frame(episode, pair["torch"].ways)
    x = np.concatenate([framed.support_x[0], framed.query_x[0, :1]])
    slots = np.concatenate([framed.support_slots[0], framed.query_slots[0, :1]])
    sequences = {b: pair[b].sequence_outputs(x, slots) for b in BACKENDS}
    assert_quantity_close("forward", dtype, {"sequence": sequences["tf"]}, {"sequence": sequences["torch"]})


@pytest.mark.parametrize("learner", LEARNERS)
@pytest.mark.parametrize("task", ("images", "sinusoid"))
@pytest.mark.parametrize("backend", BACKENDS)
def test_queries_do_not_see_each_other(backend, learner, task):
    """A query's output is the last output of the sequence ``support, (x_q, 0)`` read alone, and does not
    change when the other queries change (running batch-norm statistics: the images are embedded one by one)."""
    learner_ = make(backend, learner, task, "float64")
    episode = tasks(task).episode(1)
    state = learner_.adapt(episode)
    outputs = learner_.predict(episode.query_x, state)
    framed = frame(episode, learner_.ways)
    for q in range(len(episode.query_x)):
        x = np.concatenate([framed.support_x[0], framed.query_x[0, q:q + 1]])
        slots = np.concatenate([framed.support_slots[0], framed.query_slots[0, q:q + 1]])
        alone = learner_.sequence_outputs(x, slots)[-1]
        alone = alone[:WAYS] if task == "images" else alone
        np.testing.assert_allclose(outputs[q], alone, rtol=0, atol=1e-12)
    others = episode.query_x.copy()
    others[1:] = np.random.default_rng(7).permutation(others[1:]) + 0.5  # every other query changes
    moved = learner_.predict(others, state)
    assert np.abs(moved[1:] - outputs[1:]).max() > 1e-3, "the changed queries' outputs did not change"
    np.testing.assert_allclose(moved[0], outputs[0], rtol=0, atol=1e-12)
    # ... and the support state does see its examples: another support order changes the state.
    shuffled = episode._replace(support_x=episode.support_x[::-1], support_y=episode.support_y[::-1])
    assert np.abs(learner_.predict(episode.query_x, learner_.adapt(shuffled)) - outputs).max() > 1e-6


# --- loss, gradients, one step ----------------------------------------------------------------------------

@pytest.mark.parametrize("learner, task, dtype", CASES)
def test_loss_gradients_and_one_step(learner, task, dtype):
    pair, batch = twins(learner, task, dtype), tasks(task).batch(0, 2)
    results = {b: pair[b].meta_gradients(batch) for b in BACKENDS}
    grads = {b: results[b][0] for b in BACKENDS}
    assert list(grads["torch"]) == [n for n, t in pair["torch"].model.spec.tensors.items() if t.trainable]
    assert_quantity_close("loss", dtype, {"loss": results["tf"][1]["loss"]}, {"loss": results["torch"][1]["loss"]})
    assert results["tf"][1].get("accuracy") == results["torch"][1].get("accuracy")
    assert_quantity_close("grads", dtype, grads["tf"], grads["torch"])
    zero = [n for n, g in grads["torch"].items() if not np.any(g != 0)]
    assert not zero, f"identically zero gradients: {zero}"
    metrics = {b: pair[b].meta_train_step(batch) for b in BACKENDS}
    assert_quantity_close("loss", dtype, {"loss": metrics["tf"]["loss"]}, {"loss": metrics["torch"]["loss"]})
    assert_quantity_close("meta_step", dtype, pair["tf"].get_weights(), pair["torch"].get_weights())
    assert_quantity_close("meta_step", dtype, pair["tf"].get_optimizer_state(), pair["torch"].get_optimizer_state())


# --- a training trajectory --------------------------------------------------------------------------------

@pytest.mark.parametrize("learner, task, dtype", TRAJECTORY_CASES)
def test_trajectory_100_steps(learner, task, dtype):
    pair, train = twins(learner, task, dtype, activation=TRAJECTORY_ACTIVATION[dtype], meta_lr=3e-3), tasks(task)
    seen = train.take(8)  # the episodes of the first steps: their loss must fall (a no-op step would not)
    before = pair["torch"].evaluate(seen)["loss"]["mean"]
    losses = {b: [] for b in BACKENDS}
    for step in range(100):
        batch = train.batch(step, 2)
        for b in BACKENDS:
            losses[b].append(pair[b].meta_train_step(batch)["loss"])
    tf_losses, torch_losses = np.array(losses["tf"]), np.array(losses["torch"])
    tol, _ = tolerance("trajectory_loss", dtype)
    rel = np.abs(tf_losses - torch_losses) / np.maximum(np.abs(torch_losses), 1e-12)
    record("trajectory_loss", dtype, rel.max())
    worst = int(np.argmax(rel))
    assert rel.max() <= tol, (f"trajectory_loss step {worst}: tf {tf_losses[worst]:.10g} torch "
                              f"{torch_losses[worst]:.10g}: rel {rel[worst]:.3g} > {tol:g}")
    evaluation = {b: pair[b].evaluate(seen) for b in BACKENDS}
    assert_quantity_close("loss", dtype, {"loss": evaluation["tf"]["loss"]["mean"]},
                          {"loss": evaluation["torch"]["loss"]["mean"]})
    after = evaluation["torch"]["loss"]["mean"]
    assert after < before, f"the trajectory did not learn: loss of its first episodes {before:.4f} -> {after:.4f}"


# --- checkpoints across backends --------------------------------------------------------------------------

@pytest.mark.parametrize("learner, source, target", [("lstm", "torch", "tf"), ("snail", "tf", "torch"),
                                                     pytest.param("lstm", "tf", "torch", marks=pytest.mark.slow),
                                                     pytest.param("snail", "torch", "tf", marks=pytest.mark.slow)])
def test_checkpoint_evaluates_alike_in_the_other_backend(learner, source, target, tmp_path):
    trained = make(source, learner, "images", "float32")
    for step in range(8):
        trained.meta_train_step(tasks("images").batch(step, 2))
    path = tmp_path / "weights.safetensors"
    neutral.save_weights(path, trained.get_weights())
    loaded = make(target, learner, "images", "float32")
    loaded.set_weights(neutral.load_weights(path)[0])
    episodes = tasks("images", seed=99).take(6)
    results = {source: trained.evaluate(episodes), target: loaded.evaluate(episodes)}
    assert results["tf"]["accuracy"] == results["torch"]["accuracy"]
    assert_quantity_close("loss", "float32", {"loss": results["tf"]["loss"]["mean"]},
                          {"loss": results["torch"]["loss"]["mean"]})


# --- the framework defaults the twins pin -----------------------------------------------------------------

def test_lstm_gates_match_keras_and_torch_layers():
    """One step (and three) of ``keras.layers.LSTM`` and ``torch.nn.LSTM`` from the same neutral weights equal
    both twins' cells: Keras' kernel is ``weight_ih.T`` with gates i, f, c, o (= torch's i, f, g, o) and one
    bias ``bias_ih + bias_hh``; its defaults (sigmoid recurrent activation, tanh) are those of the cells."""
    import keras
    import tensorflow as tf

    from tf_meta import sequence as tf_seq
    from torch_meta import sequence as torch_seq

    rng = np.random.default_rng(0)
    size, hidden = 3, 4
    w_ih, w_hh = rng.normal(size=(4 * hidden, size)), rng.normal(size=(4 * hidden, hidden))
    b_ih, b_hh = rng.normal(size=4 * hidden), rng.normal(size=4 * hidden)
    x = rng.normal(size=(2, 3, size))
    layer = keras.layers.LSTM(hidden, return_sequences=True, dtype="float64")
    assert (layer.cell.recurrent_activation.__name__, layer.cell.activation.__name__) == ("sigmoid", "tanh")
    assert layer.cell.unit_forget_bias  # an initialiser only: dualmeta initialises from the neutral weights
    layer.build((2, 3, size))
    layer.set_weights([w_ih.T, w_hh.T, b_ih + b_hh])
    keras_out = np.asarray(layer(x))
    reference = torch.nn.LSTM(size, hidden, batch_first=True).double()
    with torch.no_grad():
        for name, value in dict(weight_ih_l0=w_ih, weight_hh_l0=w_hh, bias_ih_l0=b_ih, bias_hh_l0=b_hh).items():
            getattr(reference, name).copy_(torch.as_tensor(value))
        torch_out = reference(torch.as_tensor(x))[0].numpy()
    np.testing.assert_allclose(keras_out, torch_out, rtol=0, atol=1e-12)
    for backend, cell, weights in (
            ("tf", tf_seq.lstm_cell, [tf.constant(w) for w in (w_ih.T, w_hh.T, b_ih, b_hh)]),
            ("torch", torch_seq.lstm_cell, [torch.as_tensor(w) for w in (w_ih, w_hh, b_ih, b_hh)])):
        as_t = tf.constant if backend == "tf" else torch.as_tensor
        h = c = as_t(np.zeros((2, hidden)))
        for t in range(3):
            h, c = cell(as_t(x[:, t]), h, c, *weights)
            np.testing.assert_allclose(np.asarray(h), torch_out[:, t], rtol=0, atol=1e-12,
                                       err_msg=f"{backend} cell, step {t}")
    # A wrong mapping is caught: swapping the forget and cell gates (another gate order) changes the output.
    swapped = np.concatenate(np.split(w_ih, 4)[::-1])
    layer.set_weights([swapped.T, w_hh.T, b_ih + b_hh])
    assert np.abs(np.asarray(layer(x)) - torch_out).max() > 1e-2


@pytest.mark.parametrize("dilation", [1, 2, 4])
def test_causal_conv_matches_keras_causal_conv1d_and_left_padded_torch(dilation):
    """``causal_conv`` = Keras ``Conv1D(padding='causal')`` = torch ``Conv1d`` after left padding by ``dilation``
    (torch's ``padding=`` pads both sides; Keras' ``'same'`` would look into the future)."""
    import keras
    import tensorflow as tf
    import torch.nn.functional as F

    from tf_meta import sequence as tf_seq
    from torch_meta import sequence as torch_seq

    rng = np.random.default_rng(dilation)
    x, w, b = rng.normal(size=(2, 5, 3)), rng.normal(size=(4, 3, 2)), rng.normal(size=4)  # w: neutral (out, in, k)
    layer = keras.layers.Conv1D(4, 2, dilation_rate=dilation, padding="causal", dtype="float64")
    layer.build((2, 5, 3))
    layer.set_weights([np.transpose(w, (2, 1, 0)), b])
    keras_out = np.asarray(layer(x))
    torch_out = F.conv1d(F.pad(torch.as_tensor(x).transpose(1, 2), (dilation, 0)), torch.as_tensor(w),
                         torch.as_tensor(b), dilation=dilation).transpose(1, 2).numpy()
    np.testing.assert_allclose(keras_out, torch_out, rtol=0, atol=1e-12)
    ours = {"tf": np.asarray(tf_seq.causal_conv(tf.constant(x), tf.constant(np.transpose(w, (2, 1, 0))),
                                                tf.constant(b), dilation)),
            "torch": torch_seq.causal_conv(torch.as_tensor(x), torch.as_tensor(w), torch.as_tensor(b),
                                           dilation).numpy()}
    for backend, out in ours.items():
        np.testing.assert_allclose(out, torch_out, rtol=0, atol=1e-12, err_msg=backend)
    same = keras.layers.Conv1D(4, 2, dilation_rate=dilation, padding="same", dtype="float64")
    same.build((2, 5, 3))
    same.set_weights([np.transpose(w, (2, 1, 0)), b])
    assert np.abs(np.asarray(same(x)) - torch_out).max() > 1e-3  # 'same' is not causal


def test_causal_attention_matches_the_frameworks_scaled_dot_product_attention():
    """Scale ``1/sqrt(d_k)`` and the causal mask equal ``keras.ops.dot_product_attention(is_causal=True)`` and
    torch's ``scaled_dot_product_attention(is_causal=True)``; without the mask the first step would see the future."""
    import keras
    import tensorflow as tf
    import torch.nn.functional as F

    from tf_meta import sequence as tf_seq
    from torch_meta import sequence as torch_seq

    rng = np.random.default_rng(1)
    h = rng.normal(size=(2, 6, 5))
    (wq, bq), (wk, _), (wv, bv) = [(rng.normal(size=(n, 5)), rng.normal(size=n)) for n in (4, 4, 3)]
    bk = None  # the twins' keys have no bias (dualmeta.sequences)
    q, k, v = h @ wq.T + bq, h @ wk.T, h @ wv.T + bv
    keras_out = np.asarray(keras.ops.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None],
                                                           is_causal=True))[:, :, 0]
    torch_out = F.scaled_dot_product_attention(*(torch.as_tensor(a) for a in (q, k, v)), is_causal=True).numpy()
    np.testing.assert_allclose(keras_out, torch_out, rtol=0, atol=1e-12)
    def pairs(convert, transpose):
        return [(convert(w.T if transpose else w), None if b is None else convert(b))
                for w, b in ((wq, bq), (wk, bk), (wv, bv))]

    ours = {"tf": np.asarray(tf_seq.causal_attention(tf.constant(h), *pairs(tf.constant, True))),
            "torch": torch_seq.causal_attention(torch.as_tensor(h), *pairs(torch.as_tensor, False)).numpy()}
    for backend, out in ours.items():
        np.testing.assert_allclose(out, torch_out, rtol=0, atol=1e-12, err_msg=backend)
    np.testing.assert_allclose(torch_out[:, 0], v[:, 0], rtol=0, atol=1e-12)  # step 0 sees only itself


# --- bad input --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("learner", LEARNERS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_refused_in_one_line(backend, learner):
    classifier, regressor = make(backend, learner, "images", "float32"), make(backend, learner, "sinusoid", "float32")
    cases = [
        (lambda: classifier.set_weights(regressor.get_weights()), "regression model .*--tasks=sinusoid"),
        (lambda: regressor.set_weights(classifier.get_weights()), "classifier .*--tasks=omniglot"),
        (lambda: classifier.meta_train_step(tasks("sinusoid").batch(0, 2)), "ways=None"),
        (lambda: regressor.evaluate(tasks("images").take(1)), "ways=<the episode's ways>"),
        (lambda: make(backend, learner, "images", "float32", ways=2).evaluate(tasks("images").take(1)),
         r"build the learner with ways >= 3 \(--ways=3\)"),
        (lambda: make(backend, learner, "images", "float32", ways=2).set_weights(classifier.get_weights()),
         "head of 3 outputs.*ways=3"),
    ]
    if learner == "snail":
        small = make(backend, learner, "images", "float32", support_size=4)
        cases.append((lambda: small.adapt(tasks("images").episode(0)), "support_size >= 6"))
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as error:
            call()
        assert "\n" not in str(error.value)
