"""Twin models agree: one table of models x dtypes, compared on the same neutral weights and inputs.

For every case: forward outputs, the loss (cross-entropy mean for classifiers, MSE otherwise), first-order
gradients w.r.t. every parameter (by neutral name) and w.r.t. the input, and the second-order gradient of
``sum(first-order grads ** 2)`` w.r.t. the parameters (what MAML's meta-gradient needs; it catches Keras'
``BatchNormalization``, whose variance stops the gradient through the mean). Then the weight format: exact
round trips between the backends and through safetensors files, a model trained in one backend and loaded
in the other, and the errors of ``set_weights`` / ``load_weights``.

Tolerances come from ``docs/tolerances.md`` (``parity_tests.tolerances``); no test overrides them.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tensorflow as tf

import tf_meta.models as tf_models
import torch_meta.models as torch_models
from dualmeta import weights as neutral
from parity_tests.conftest import Twins, assert_all_close, assert_close, keras_to_neutral, max_difference, tf_to_numpy
from parity_tests.tolerances import tolerance

DTYPES = ("float32", "float64")


class Case(NamedTuple):
    builder: str
    config: dict
    batch: int


# Small widths keep the suite fast; `conv4_default` is the real Omniglot backbone (hidden 64, 28x28).
CASES = {
    "mlp_sine": Case("mlp", dict(in_features=1, hidden=(40, 40), out_features=1), 10),
    "mlp_sizes": Case("mlp", dict(in_features=3, hidden=(16, 8, 12), out_features=4), 7),
    "conv4_stride_flatten": Case("conv4", dict(in_channels=1, hidden=8, num_classes=5, downsample="stride",
                                               head="flatten", image_size=28), 5),
    "conv4_maxpool_flatten": Case("conv4", dict(in_channels=3, hidden=8, num_classes=5, downsample="maxpool",
                                                head="flatten", image_size=32), 4),
    "conv4_mean_head": Case("conv4", dict(in_channels=1, hidden=16, num_classes=4, downsample="stride",
                                          head="mean", image_size=21), 6),
    "conv4_embedding": Case("conv4", dict(in_channels=3, hidden=16, num_classes=None, downsample="maxpool",
                                          head="flatten", image_size=28), 6),
    "conv4_running_stats": Case("conv4", dict(in_channels=1, hidden=8, num_classes=5, downsample="stride",
                                              head="flatten", image_size=28, track_running_stats=True), 5),
    "conv4_default": Case("conv4", dict(num_classes=5), 5),
}
RUNNING_STATS_CASES = [name for name, case in CASES.items() if case.config.get("track_running_stats")]


def _classifier(twins: Twins) -> bool:
    return twins.spec.name == "conv4" and twins.spec.config["num_classes"] is not None


def _output_quantity(twins: Twins) -> str:
    return "embeddings" if twins.spec.name == "conv4" and not _classifier(twins) else "forward"


@functools.lru_cache(maxsize=None)
def twins_for(case: str, dtype: str) -> Twins:
    c = CASES[case]
    return Twins(c.builder, dtype, seed=0, **c.config)


@functools.lru_cache(maxsize=None)
def batch_for(case: str, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and targets: class labels for classifiers, real targets (MSE) otherwise."""
    twins = twins_for(case, dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((CASES[case].batch,) + twins.example_shape).astype(dtype)
    if _classifier(twins):
        y = rng.integers(0, twins.spec.config["num_classes"], size=len(x)).astype(np.int64)
    else:
        with torch.no_grad():  # a pure call: leaves running statistics alone
            width = torch_models.functional_call(twins.torch, dict(twins.torch.named_parameters()),
                                                 torch.from_numpy(x)).shape[1]
        y = rng.standard_normal((len(x), width)).astype(dtype)
    return x, y


def _tf_loss(twins, outputs, y):
    if _classifier(twins):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=outputs))
    return tf.reduce_mean(tf.square(outputs - y))


def _torch_loss(twins, outputs, y):
    if _classifier(twins):
        return F.cross_entropy(outputs, y)
    return F.mse_loss(outputs, y)


class Result(NamedTuple):
    outputs: np.ndarray
    loss: float
    grads: dict  # neutral name -> neutral-layout gradient, plus "input"
    second_order: dict  # neutral name -> d/dparam sum(first-order grads ** 2)


def _trainable(twins: Twins) -> list[str]:
    return [name for name, tensor in twins.spec.tensors.items() if tensor.trainable]


@functools.lru_cache(maxsize=None)
def tf_result(case: str, dtype: str) -> Result:
    twins, (x, y) = twins_for(case, dtype), batch_for(case, dtype)
    names = _trainable(twins)
    variables = twins.tf.neutral_variables()
    params = {name: tf.convert_to_tensor(variables[name]) for name in names}
    x_t, y_t = tf.constant(x), tf.constant(y)
    with tf.GradientTape() as outer:
        outer.watch(list(params.values()))
        with tf.GradientTape() as inner:
            inner.watch(list(params.values()) + [x_t])
            outputs = tf_models.functional_call(twins.tf, params, x_t, training=True)
            loss = _tf_loss(twins, outputs, y_t)
        grads = inner.gradient(loss, [params[n] for n in names] + [x_t])
        penalty = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads[:-1]])
    second = outer.gradient(penalty, [params[n] for n in names])
    return Result(
        tf_to_numpy(outputs), float(loss),
        {**{n: keras_to_neutral(twins.spec, n, g) for n, g in zip(names, grads)}, "input": tf_to_numpy(grads[-1])},
        {n: keras_to_neutral(twins.spec, n, g) for n, g in zip(names, second)})


@functools.lru_cache(maxsize=None)
def torch_result(case: str, dtype: str) -> Result:
    twins, (x, y) = twins_for(case, dtype), batch_for(case, dtype)
    names = _trainable(twins)
    named = dict(twins.torch.named_parameters())
    params = {name: named[name].detach().clone().requires_grad_(True) for name in names}
    x_t = torch.from_numpy(x).requires_grad_(True)
    outputs = torch_models.functional_call(twins.torch, params, x_t, training=True)
    loss = _torch_loss(twins, outputs, torch.from_numpy(y))
    grads = torch.autograd.grad(loss, [params[n] for n in names] + [x_t], create_graph=True)
    penalty = sum(g.square().sum() for g in grads[:-1])
    second = torch.autograd.grad(penalty, [params[n] for n in names])
    detach = lambda t: t.detach().numpy()  # noqa: E731
    return Result(detach(outputs), float(loss.detach()), {**{n: detach(g) for n, g in zip(names, grads[:-1])},
                                                 "input": detach(grads[-1])},
                  {n: detach(g) for n, g in zip(names, second)})


CASE_DTYPES = [pytest.param(case, dtype, id=f"{case}-{dtype}") for case in CASES for dtype in DTYPES]
CONV_CASE_DTYPES = [p for p in CASE_DTYPES if CASES[p.values[0]].builder == "conv4"]


# --- Numbers: forward, loss, gradients ---------------------------------------------------------------------

@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_forward(case, dtype):
    twins = twins_for(case, dtype)
    quantity = _output_quantity(twins)
    assert_close(f"{quantity}/{case}", tf_result(case, dtype).outputs, torch_result(case, dtype).outputs,
                 tolerance(quantity, dtype))


@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_loss(case, dtype):
    assert_close(f"loss/{case}", tf_result(case, dtype).loss, torch_result(case, dtype).loss,
                 tolerance("loss", dtype))


@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_param_grads(case, dtype):
    tf_grads, torch_grads = tf_result(case, dtype).grads, torch_result(case, dtype).grads
    names = _trainable(twins_for(case, dtype))
    assert_all_close("grads", {n: tf_grads[n] for n in names}, {n: torch_grads[n] for n in names},
                tolerance("grads", dtype))


@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_input_grads(case, dtype):
    assert_close("grads/input", tf_result(case, dtype).grads["input"], torch_result(case, dtype).grads["input"],
                 tolerance("grads", dtype))


@pytest.mark.parametrize("case, dtype", CONV_CASE_DTYPES)
def test_second_order_grads(case, dtype):
    assert_all_close("second_order_grads", tf_result(case, dtype).second_order, torch_result(case, dtype).second_order,
                tolerance("second_order_grads", dtype))


@pytest.mark.parametrize("case", RUNNING_STATS_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_running_stats(case, dtype):
    """Training-mode forwards update the running statistics alike; eval mode then uses them alike."""
    c = CASES[case]
    twins = Twins(c.builder, dtype, seed=3, **c.config)  # fresh: this test changes the buffers
    rng = np.random.default_rng(2)
    twins.torch.train()
    for step in range(2):
        x = (rng.standard_normal((c.batch,) + twins.example_shape) * (1 + step)).astype(dtype)
        twins.tf(tf.constant(x), training=True)
        with torch.no_grad():
            twins.torch(torch.from_numpy(x))
    tf_weights, torch_weights = twins.tf.get_weights(), twins.torch.get_weights()
    buffers = [n for n, t in twins.spec.tensors.items() if not t.trainable]
    assert buffers
    for name in buffers:
        assert not np.array_equal(torch_weights[name], twins.weights[name]), f"{name} was not updated"
    assert_all_close("running_stats", {n: tf_weights[n] for n in buffers}, {n: torch_weights[n] for n in buffers},
                tolerance("running_stats", dtype))
    x = rng.standard_normal((3,) + twins.example_shape).astype(dtype)
    twins.torch.eval()
    with torch.no_grad():
        torch_out = twins.torch(torch.from_numpy(x)).numpy()
    assert_close(f"forward/{case}/eval", twins.tf(tf.constant(x), training=False), torch_out,
                 tolerance("forward", dtype))


# --- The weight format --------------------------------------------------------------------------------------

def _random_weights(spec: neutral.ModelSpec, dtype: str, seed: int) -> dict[str, np.ndarray]:
    """Neutral weights with every tensor random (norm scales and running variances positive)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, tensor in spec.tensors.items():
        value = rng.standard_normal(tensor.shape)
        if tensor.kind in ("norm_weight", "running_var"):
            value = np.abs(value) + 0.5
        out[name] = value.astype(dtype)
    return out


@pytest.mark.parametrize("case, dtype", CASE_DTYPES)
def test_round_trip_is_exact(case, dtype):
    """torch -> neutral -> tf -> neutral -> torch is bitwise exact, names, order, dtype and all."""
    twins = twins_for(case, dtype)
    original = _random_weights(twins.spec, dtype, seed=11)
    c = CASES[case]
    torch_model = getattr(torch_models, c.builder)(dtype=dtype, init="native", **c.config)
    torch_model.set_weights(original)
    from_torch = torch_model.get_weights()
    tf_model = getattr(tf_models, c.builder)(dtype=dtype, init="native", **c.config)
    tf_model.set_weights(from_torch)
    from_tf = tf_model.get_weights()
    back = getattr(torch_models, c.builder)(dtype=dtype, init="native", **c.config)
    back.set_weights(from_tf)
    for stage, weights in (("torch.get_weights", from_torch), ("tf.get_weights", from_tf),
                           ("torch.get_weights after tf", back.get_weights())):
        assert list(weights) == list(twins.spec.tensors), f"{stage}: names or order differ from the spec"
        for name, value in original.items():
            assert weights[name].dtype == value.dtype, f"{stage}/{name}: dtype {weights[name].dtype} != {dtype}"
            assert weights[name].shape == value.shape, f"{stage}/{name}: shape {weights[name].shape} != {value.shape}"
            assert np.array_equal(weights[name], value), \
                f"{stage}/{name}: not bitwise equal (max|diff| {max_difference(weights[name], value):.3g})"


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_load_is_exact(tmp_path, dtype):
    twins = twins_for("conv4_running_stats", dtype)
    weights = _random_weights(twins.spec, dtype, seed=5)
    path = tmp_path / "model.safetensors"
    neutral.save_weights(path, weights, metadata={"config": {"hidden": 8}, "step": 3})
    loaded, metadata = neutral.load_weights(path)
    assert metadata == {"config": {"hidden": 8}, "step": 3}
    assert sorted(loaded) == sorted(weights)
    for name, value in weights.items():
        assert loaded[name].dtype == value.dtype and np.array_equal(loaded[name], value), name


def _sgd_tf(model, batches, loss_fn, lr):
    for x, y in batches:
        with tf.GradientTape() as tape:
            loss = loss_fn(model(tf.constant(x), training=True), tf.constant(y))
        grads = tape.gradient(loss, model.trainable_variables)
        for variable, grad in zip(model.trainable_variables, grads):
            variable.assign_sub(lr * grad)


def _sgd_torch(model, batches, loss_fn, lr):
    model.train()
    for x, y in batches:
        model.zero_grad()
        loss_fn(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter -= lr * parameter.grad


def _outputs(backend: str, model, x: np.ndarray) -> np.ndarray:
    if backend == "tf":
        return tf_to_numpy(model(tf.constant(x), training=False))
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("case", ["mlp_sizes", "conv4_running_stats"])
@pytest.mark.parametrize("trained_in", ["tf", "torch"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_trained_model_transfers(tmp_path, case, trained_in, dtype):
    """A few SGD steps in one backend, saved, loaded in the other: same weights, same outputs."""
    c = CASES[case]
    twins = Twins(c.builder, dtype, seed=7, **c.config)
    rng = np.random.default_rng(4)
    classifier = _classifier(twins)
    batches = []
    for _ in range(3):
        x = rng.standard_normal((c.batch,) + twins.example_shape).astype(dtype)
        y = (rng.integers(0, twins.spec.config["num_classes"], size=c.batch).astype(np.int64) if classifier
             else rng.standard_normal((c.batch, twins.spec.config["out_features"])).astype(dtype))
        batches.append((x, y))
    source = twins.tf if trained_in == "tf" else twins.torch
    if trained_in == "tf":
        _sgd_tf(source, batches, lambda o, y: _tf_loss(twins, o, y), lr=0.1)
    else:
        _sgd_torch(source, batches, lambda o, y: _torch_loss(twins, o, y), lr=0.1)
    trained = source.get_weights()
    assert any(not np.array_equal(trained[n], twins.weights[n]) for n in trained), "training changed nothing"
    path = tmp_path / "trained.safetensors"
    neutral.save_weights(path, trained)
    other_backend = "torch" if trained_in == "tf" else "tf"
    other = getattr(torch_models if other_backend == "torch" else tf_models, c.builder)(
        dtype=dtype, init="native", **c.config)
    other.set_weights(neutral.load_weights(path)[0])
    for name, value in other.get_weights().items():
        assert np.array_equal(value, trained[name]), f"{name}: changed on the way {trained_in} -> {other_backend}"
    x = rng.standard_normal((4,) + twins.example_shape).astype(dtype)
    outs = {trained_in: _outputs(trained_in, source, x), other_backend: _outputs(other_backend, other, x)}
    assert_close(f"forward/{case}/trained in {trained_in}", outs["tf"], outs["torch"], tolerance("forward", dtype))


# --- Errors -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["tf", "torch"])
def test_set_weights_errors_name_the_tensor(backend):
    twins = twins_for("conv4_running_stats", "float32")
    model = twins.tf if backend == "tf" else twins.torch
    good = dict(twins.weights)
    missing = {k: v for k, v in good.items() if k != "blocks.1.norm.running_var"}
    with pytest.raises(ValueError, match=r"missing \['blocks\.1\.norm\.running_var'\]"):
        model.set_weights(missing)
    with pytest.raises(ValueError, match=r"unexpected \['blocks\.9\.conv\.weight'\]"):
        model.set_weights({**good, "blocks.9.conv.weight": good["blocks.0.conv.weight"]})
    wrong = {**good, "head.weight": good["head.weight"].T.copy()}
    with pytest.raises(ValueError, match=r"'head\.weight' has shape \(32, 5\)"):
        model.set_weights(wrong)
    conv = {**good, "blocks.2.conv.weight": np.transpose(good["blocks.2.conv.weight"], (2, 3, 1, 0)).copy()}
    with pytest.raises(ValueError, match=r"'blocks\.2\.conv\.weight' has shape \(3, 3, 8, 8\)"):
        model.set_weights(conv)  # a Keras-layout kernel passed as neutral
    for name, value in model.get_weights().items():
        assert np.array_equal(value, good[name]), f"{name}: get_weights() differs from the weights set before"


def test_load_weights_rejects_garbage(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all, definitely not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        neutral.load_weights(path)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        neutral.load_weights(empty)


def test_tolerance_table_is_complete():
    """Every quantity the parity tests use has a float32 and a float64 row in docs/tolerances.md."""
    from parity_tests import tolerances
    for quantity in tolerances.REQUIRED_QUANTITIES:
        for dtype in DTYPES:
            assert tolerance(quantity, dtype).value > 0
    assert tolerance("forward", "float32").kind == "abs" and tolerance("grads", "float32").kind == "rel"


def test_published_table_agrees_with_dualmeta_tolerances():
    """``dualmeta.tolerances`` (used by ``dualmeta compare``) and the page the tests read say the same."""
    code = pytest.importorskip("dualmeta.tolerances")
    from parity_tests import tolerances
    problems = []
    for quantity, by_dtype in code.TOLERANCES.items():
        for dtype, (value, kind) in by_dtype.items():
            published = tolerances.TABLE.get((quantity, dtype))
            if published is None:
                problems.append(f"{quantity}/{dtype}: in dualmeta.tolerances, missing from docs/tolerances.md")
            elif (published.value, published.kind) != (value, kind):
                problems.append(f"{quantity}/{dtype}: dualmeta.tolerances {value:g} {kind}, "
                                f"docs/tolerances.md {published.value:g} {published.kind}")
    if getattr(code, "REL_FLOOR", tolerances.REL_FLOOR) != tolerances.REL_FLOOR:
        problems.append(f"REL_FLOOR: dualmeta.tolerances {code.REL_FLOOR:g}, docs/tolerances.md "
                        f"{tolerances.REL_FLOOR:g}")
    assert not problems, "the two tolerance tables disagree:\n" + "\n".join(problems)


def test_tolerance_table_parser_fails_loudly(tmp_path):
    from parity_tests import tolerances
    with open(tolerances.TABLE_PATH, encoding="utf-8") as handle:
        page = handle.read()
    lacking = tmp_path / "lacking.md"
    lacking.write_text("\n".join(line for line in page.splitlines() if not line.startswith("| distances ")))
    with pytest.raises(ValueError, match=r"lacks rows for \['distances'\]"):
        tolerances.load_table(str(lacking))
    garbled = tmp_path / "garbled.md"
    garbled.write_text(page.replace("| forward | abs | 1e-5 |", "| forward | absolute | 1e-5 |"))
    with pytest.raises(ValueError, match="expected kind in"):
        tolerances.load_table(str(garbled))
    with pytest.raises(KeyError, match="no row 'no_such_quantity'"):
        tolerance("no_such_quantity", "float32")
