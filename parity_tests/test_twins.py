"""Twins from a neutral description (``dualmeta.twins``): the built-ins unchanged, ResNet-12 in parity.

* ``mlp`` and ``conv4`` are descriptions: they list the same tensors as ``dualmeta.weights``, the builders
  ``models.mlp`` / ``models.conv4`` give bit-identical outputs and gradients to ``models.build`` of the
  description, and a checkpoint written by the hand-written twins they replaced (``data/old_conv4.safetensors``,
  made with main at 45c92d3) loads and gives its recorded outputs. TensorFlow's MAML and ProtoNet
  meta-gradients equal, bit for bit, those of the hand-written conv4 (``handwritten_conv4.py``).
* ResNet-12 (a tiny variant by default: channels 4-4-8-8 on 16x16 images; the real size is slow-marked):
  forward, gradients and second order agree in float32 and float64 (``dualmeta.checkmodel``), and so do one
  MAML and one ProtoNet meta-step, and three ProtoNet training steps with DropBlock (masks by address).
* ``check-model`` passes a user's twin (``examples/my_twins.py:tiny``) and fails a mismatched one, naming
  the layer.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import torch

import tf_meta.models as tf_models
import torch_meta.models as torch_models
from dualmeta import checkmodel, episodes, twins, weights as neutral
from parity_tests.conftest import assert_all_close
from parity_tests.tolerances import tolerance

DATA = os.path.join(os.path.dirname(__file__), "data")
DTYPES = ("float32", "float64")
BUILTINS = {
    "mlp": ("mlp", dict(in_features=3, hidden=(8, 6), out_features=2), (5, 3)),
    "conv4_stride": ("conv4", dict(in_channels=1, hidden=4, num_classes=3, image_size=12), (4, 12, 12, 1)),
    "conv4_maxpool_mean_stats": ("conv4", dict(in_channels=3, hidden=4, num_classes=None, downsample="maxpool",
                                               head="mean", image_size=16, track_running_stats=True), (4, 16, 16, 3)),
}
TINY_RESNET = dict(in_channels=3, channels=(4, 4, 8, 8), num_classes=3, image_size=16)


@pytest.mark.parametrize("case", sorted(BUILTINS))
def test_builtin_descriptions_list_the_same_tensors(case):
    name, config, _ = BUILTINS[case]
    assert getattr(twins, name)(**config).spec() == getattr(neutral, f"{name}_spec")(**config)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(BUILTINS))
def test_builtin_descriptions_are_bit_identical(case, dtype):
    name, config, shape = BUILTINS[case]
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    old, new = getattr(torch_models, name)(**config, dtype=dtype), torch_models.build(getattr(twins, name)(**config), dtype)
    outs = [m(torch.as_tensor(x)) for m in (old, new)]
    grads = [torch.autograd.grad(o.square().sum(), list(m.parameters())) for o, m in zip(outs, (old, new))]
    assert torch.equal(outs[0], outs[1]) and all(torch.equal(a, b) for a, b in zip(*grads))
    old, new = getattr(tf_models, name)(**config, dtype=dtype), tf_models.build(getattr(twins, name)(**config), dtype)
    with tf.GradientTape(persistent=True) as tape:
        outs = [m(tf.constant(x), training=True) for m in (old, new)]
        losses = [tf.reduce_sum(tf.square(o)) for o in outs]
    grads = [tape.gradient(loss, [v for v in m.neutral_variables().values() if v.trainable])
             for loss, m in zip(losses, (old, new))]
    assert np.array_equal(outs[0], outs[1]) and all(np.array_equal(a, b) for a, b in zip(*grads))


# The hand-written TF conv4 and the description's twin summed some conv-kernel meta-gradients in another
# order (one ulp) while the twin inlined its convolutions: at this size (record_revision's) that showed.
@pytest.mark.parametrize("learner", ["maml", "protonet"])
def test_description_conv4_matches_the_hand_written_one_bit_for_bit(learner):
    from dualmeta import backend as chooser
    from parity_tests import handwritten_conv4
    from parity_tests.record_revision import _episodes
    metric = learner == "protonet"
    config = dict(in_channels=1, hidden=64, num_classes=None if metric else 5, downsample="maxpool" if metric
                  else "stride", head="flatten" if metric else "mean", track_running_stats=metric)
    batch = _episodes("float32", 5, 1, 15)
    grads = [chooser.learner_class("tf", learner)(model).meta_gradients(batch)[0]
             for model in (handwritten_conv4.conv4(**config), tf_models.conv4(**config))]
    differ = [n for n in grads[0] if not np.array_equal(grads[0][n], grads[1][n])]
    assert not differ, f"not bit-identical to the hand-written conv4: {differ}"


def test_an_old_checkpoint_loads_into_the_description_twins():
    """The old checkpoint loads into the description twins, built by ``build`` and by ``conv4`` alike (bit for
    bit). Against the outputs the hand-written twins recorded on the machine that wrote the file, they agree to
    the float64 forward tolerance: another CPU may take another vector path through a reduction. Measured
    2026-12-03: batch norm's batch statistics came out 8.9e-16 off, for the hand-written twin as well."""
    weights, metadata = neutral.load_weights(os.path.join(DATA, "old_conv4.safetensors"))
    recorded = np.load(os.path.join(DATA, "old_conv4_outputs.npz"))
    config = metadata["model"]["config"]
    tol = tolerance("forward", "float64")
    model, hand_written = torch_models.build(twins.conv4(**config), "float64"), torch_models.conv4(**config,
                                                                                                   dtype="float64")
    x = torch.as_tensor(recorded["x"])
    for mode in ("eval", "train"):
        outputs = []
        for m in (model, hand_written):
            m.set_weights(weights)
            m.train(mode == "train")
            outputs.append(m(x).detach().numpy())
        assert np.array_equal(outputs[0], outputs[1]), mode
        assert np.max(np.abs(outputs[0] - recorded[mode])) <= tol.value, mode
    keras_model = tf_models.build(twins.conv4(**config), "float64")
    keras_model.set_weights(weights)
    assert np.max(np.abs(keras_model(tf.constant(recorded["x"]), training=False).numpy() - recorded["eval"])) <= tol.value


@pytest.mark.parametrize("dtype, track", [("float32", False), ("float64", False), ("float64", True)])
def test_resnet12_forward_gradients_second_order(dtype, track):
    # batch 8: batch norm over the 1x1 maps of the last tiny block amplifies float32 round-off at batch 4
    finding = checkmodel.check(twins.resnet12(**TINY_RESNET, track_running_stats=track), dtype=dtype, batch=8)
    assert finding.ok, finding


# float32 at the real size (84x84, 64-640 channels, batch 2), measured 2026-12-02: blocks.0.norm2's output is
# 1.3e-5 off (abs) against the table's 1e-5 -- float32 round-off of a 576-term convolution normalised to unit
# scale, not a layout bug (float64 agrees to 1e-10). Kept visible as an xfail rather than a loosened tolerance.
@pytest.mark.slow
@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.xfail(
    reason="float32 round-off of batch norm after the first 3x3 conv: 1.3e-5 > 1e-5 abs", strict=False)), "float64"])
def test_resnet12_real_size(dtype):
    finding = checkmodel.check(twins.resnet12(num_classes=5), dtype=dtype, batch=2)
    assert finding.ok, finding


def _step(backend: str, learner: str, dtype: str, batch):
    from dualmeta import backend as chooser
    config = dict(TINY_RESNET, num_classes=3 if learner == "maml" else None)
    cls = chooser.learner_class(backend, learner)
    models = torch_models if backend == "torch" else tf_models
    learner_obj = cls(models.resnet12(**config, dtype=dtype))
    grads = learner_obj.meta_gradients(batch)[0]
    return grads


# Time budget: a MAML step through ResNet-12 takes ~20 s of TF tracing (float64) and ~35 s (float32), so MAML
# and float32 are slow-marked; the default run keeps ProtoNet float64, and check-model's second-order
# gradient (one MAML inner step) above covers MAML's meta-gradient through ResNet-12 by default.
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize("learner", [pytest.param("maml", marks=pytest.mark.slow), "protonet"])
def test_resnet12_meta_step(learner, dtype):
    rng = np.random.default_rng(3)
    images = rng.standard_normal((3, 3, 16, 16, 3)).astype(dtype)  # 3 classes x 3 images
    labels = np.repeat(np.arange(3), 3)
    flat = images.reshape(9, 16, 16, 3)
    support, query = [0, 3, 6], [1, 4, 7, 2, 5, 8]
    ep = episodes.Episode(flat[support], labels[support], flat[query], labels[query])
    batch = episodes.stack_episodes([ep, ep])
    tf_grads, torch_grads = (_step(b, learner, dtype, batch) for b in ("tf", "torch"))
    assert_all_close(f"{learner}/meta_grads", tf_grads, torch_grads, tolerance("meta_grads", dtype))


def _tiny_batch(dtype: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    flat = rng.standard_normal((9, 16, 16, 3)).astype(dtype)  # 3 classes x 3 images
    labels = np.repeat(np.arange(3), 3)
    support, query = [0, 3, 6], [1, 4, 7, 2, 5, 8]
    return episodes.stack_episodes([episodes.Episode(flat[support], labels[support], flat[query], labels[query])] * 2)


# DropBlock's masks are drawn in numpy by address (dualmeta.twins.drop_masks: seed, step, task), so both backends
# drop the same units. ProtoNet with running statistics (as --model=resnet12 builds it), three training steps.
@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
def test_resnet12_dropblock_protonet_steps(dtype):
    from dualmeta import backend as chooser
    config = dict(TINY_RESNET, num_classes=None, track_running_stats=True, drop_block=2)
    learners = {}
    for backend, models in (("tf", tf_models), ("torch", torch_models)):
        for rate in (0.3, 0.0):
            learners[backend, rate] = chooser.learner_class(backend, "protonet")(
                models.resnet12(**config, drop_rate=rate, dtype=dtype))
    for step in range(3):
        batch = _tiny_batch(dtype, seed=step)
        metrics = {key: learner.meta_train_step(batch) for key, learner in learners.items()}
        assert_all_close(f"dropblock/step{step}/loss", {"loss": np.float64(metrics["tf", 0.3]["loss"])},
                         {"loss": np.float64(metrics["torch", 0.3]["loss"])}, tolerance("loss", dtype))
        assert_all_close(f"dropblock/step{step}/weights", learners["tf", 0.3].get_weights(),
                         learners["torch", 0.3].get_weights(), tolerance("meta_step", dtype))
    assert metrics["torch", 0.3]["loss"] != metrics["torch", 0.0]["loss"]  # the masks were applied
    # evaluation drops nothing: the dropping twin scores like a plain twin holding the same weights
    plain = learners["torch", 0.0]
    plain.set_weights(learners["torch", 0.3].get_weights())
    episode = episodes.Episode(*(part[0] for part in _tiny_batch(dtype, seed=9)))
    for backend in ("tf", "torch"):
        assert learners[backend, 0.3].evaluate([episode])["loss"]["mean"] == pytest.approx(
            plain.evaluate([episode])["loss"]["mean"], rel=tolerance("loss", dtype).value)


def test_check_model_passes_a_user_twin_and_names_the_mismatched_layer():
    ok, text = checkmodel.report("examples.my_twins:tiny")
    assert ok, text
    ok, text = checkmodel.report("examples.my_twins:mismatched", dtypes=("float64",))
    assert not ok and "'gelu'" in text, text
