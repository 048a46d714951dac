"""DropBlock (``dualmeta.twins.DropBlock``): masks drawn in numpy by address, placed in ResNet-12, refused where
no learner draws them. Parity of the two backends with the masks is in ``parity_tests/test_twins.py``."""
from __future__ import annotations

import numpy as np
import pytest

from dualmeta import experiment as exp
from dualmeta import twins as T


def _all_zero_squares(mask: np.ndarray, block: int) -> np.ndarray:
    """True where the ``block`` x ``block`` square with that top-left corner is entirely zero (N, H', W', C)."""
    n, h, w, c = mask.shape
    zero = mask == 0
    found = np.ones((n, h - block + 1, w - block + 1, c), dtype=bool)
    for i in range(block):
        for j in range(block):
            found &= zero[:, i:i + h - block + 1, j:j + w - block + 1, :]
    return found


@pytest.mark.parametrize("block", [1, 3, 5])
def test_a_mask_drops_whole_blocks_about_rate_of_the_units_and_keeps_the_mean(block):
    rng = np.random.default_rng(0)
    mask = T.dropblock_mask(rng, (64, 21, 21, 16), rate=0.1, block=block)
    dropped = mask == 0
    assert 0.08 < dropped.mean() < 0.11, dropped.mean()
    kept = np.unique(mask[~dropped])
    assert kept.size == 1 and np.isclose(kept[0], mask.size / (~dropped).sum())  # one scale: units / kept
    assert np.isclose(mask.mean(), 1.0)
    # every dropped unit lies in an all-zero block x block square (the zeros are a union of whole blocks)
    squares = _all_zero_squares(mask, block)
    covered = np.zeros_like(dropped)
    for i in range(block):
        for j in range(block):
            covered[:, i:i + squares.shape[1], j:j + squares.shape[2], :] |= squares
    assert np.array_equal(covered, dropped)


def test_a_block_wider_than_the_map_is_cut_to_it_and_rate_zero_keeps_everything():
    mask = T.dropblock_mask(np.random.default_rng(1), (400, 3, 3, 2), rate=0.5, block=5)
    per_map = (mask == 0).reshape(400, 9, 2).all(axis=1) | (mask != 0).reshape(400, 9, 2).all(axis=1)
    assert per_map.all()  # a 3x3 block covers the 3x3 map: all of it or nothing
    assert 0.35 < (mask == 0).mean() < 0.65
    assert np.array_equal(T.dropblock_mask(np.random.default_rng(1), (2, 4, 4, 1), 0.0, 2), np.ones((2, 4, 4, 1)))


def test_resnet12_puts_dropblock_after_each_pool_as_metaoptnet_does():
    description = T.resnet12(channels=(4, 4, 8, 8), image_size=32, drop_rate=0.1, drop_block=3)
    found = [(layer.name, layer.block, shape) for layer, shape in T.drop_layers(description)]
    assert found == [("blocks.0.drop", 1, (16, 16, 4)), ("blocks.1.drop", 1, (8, 8, 4)),
                     ("blocks.2.drop", 3, (4, 4, 8)), ("blocks.3.drop", 3, (2, 2, 8))]
    assert description.spec().config["drop_rate"] == 0.1
    plain = T.resnet12(channels=(4, 4, 8, 8), image_size=32)
    assert "drop_rate" not in plain.spec().config and T.drop_layers(plain) == []  # old checkpoints' config
    assert list(description.spec().tensors) == list(plain.spec().tensors)  # DropBlock has no weights


def test_masks_are_a_pure_function_of_seed_step_and_task():
    description = T.resnet12(channels=(4, 4, 8, 8), image_size=16, drop_rate=0.3, drop_block=2)
    a = T.drop_masks(description, tasks=2, images=6, seed=0, step=7)
    b = T.drop_masks(description, tasks=2, images=6, seed=0, step=7)
    assert set(a) == {f"blocks.{i}.drop" for i in range(4)}
    assert all(a[k].shape == (2, 6) + shape for k, shape in
               zip(a, [(8, 8, 4), (4, 4, 4), (2, 2, 8), (1, 1, 8)]))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    for other in (dict(seed=1, step=7), dict(seed=0, step=8)):
        c = T.drop_masks(description, tasks=2, images=6, **other)
        assert not np.array_equal(a["blocks.0.drop"], c["blocks.0.drop"]), other
    assert not np.array_equal(a["blocks.0.drop"][0], a["blocks.0.drop"][1])  # tasks differ
    assert T.drop_masks(T.resnet12(channels=(4, 4, 8, 8), image_size=16), 2, 6, 0, 7) == {}


def test_bad_dropblock_settings_get_one_line_errors():
    with pytest.raises(ValueError, match="drop_rate"):
        T.resnet12(drop_rate=1.5)
    with pytest.raises(ValueError, match="before Flatten"):
        T.drop_layers(T.Description("bad", (8, 8, 1), (T.Conv2d("c", 1, 2), T.Flatten(), T.DropBlock("d", 0.1))))
    with pytest.raises(ValueError, match="rate in"):
        T.Description("bad", (8, 8, 1), (T.Conv2d("c", 1, 2), T.DropBlock("d", 2.0))).spec()
    for given, match in ((dict(learner="maml", backbone="resnet12"), "drop it for --model=resnet12 --learner=maml"),
                         (dict(learner="protonet"), "drop it for --model=conv4"),
                         (dict(learner="protonet", backbone="resnet12", drop_rate=1.0), "0 <= --drop_rate < 1"),
                         (dict(learner="baseline"), "drop it for --learner=baseline")):
        with pytest.raises(ValueError, match=match):
            exp.resolve("torch", tasks="omniglot", **{"drop_rate": 0.1, **given})
    e = exp.resolve("torch", tasks="omniglot", learner="protonet", backbone="resnet12", drop_rate=0.1)
    assert e.model()[1]["drop_rate"] == 0.1


def test_a_learner_that_draws_no_masks_refuses_a_dropping_twin():
    torch_models = pytest.importorskip("torch_meta.models")
    from torch_meta.maml import MAML
    from torch_meta.protonet import ProtoNet
    model = torch_models.resnet12(channels=(2, 2, 4, 4), image_size=16, num_classes=3, drop_rate=0.1)
    with pytest.raises(ValueError, match="does not draw DropBlock masks"):
        MAML(model)
    assert ProtoNet(torch_models.resnet12(channels=(2, 2, 4, 4), image_size=16, drop_rate=0.1)).drop_seed == 0
