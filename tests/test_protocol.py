"""dualmeta.protocol: training, validation and test classes disjoint by character, and Lake's one-shot runs
scored only when none of their characters was trained on (checked here by pixels, independently of the
protocol's own bookkeeping)."""
from __future__ import annotations

import numpy as np
import pytest

from dualmeta import protocol
from dualmeta.datasets import omniglot as data
from dualmeta.episodes import ClassificationTasks


@pytest.fixture(scope="module")
def images():
    folder = data.default_data_dir()
    if not all((folder / name).is_file() for name in data.OMNIGLOT_FILES):
        pytest.fail(f"Omniglot data missing in {folder}; set {data.ENV_DATA_DIR}")
    return data.load_omniglot_images(folder, image_size=28)


def _pixel_keys(images, characters: set[str]) -> set[bytes]:
    """The bytes of every drawing of ``characters`` (rotation 0: the runs are unrotated)."""
    return {np.ascontiguousarray(images.images[images.index(name), d]).tobytes()
            for name in characters for d in range(images.images.shape[1])}


@pytest.mark.parametrize("split, train_on", [(s, t) for s in protocol.TRAIN_ON for t in protocol.TRAIN_ON[s]])
def test_protocol_sets_are_disjoint_by_character(images, split, train_on):
    chosen = protocol.omniglot_protocol(split, train_on, images=images)
    train, test = protocol.characters(chosen.train), protocol.characters(chosen.test)
    assert train and test and not train & test
    if chosen.val is None:
        assert train_on in ("trainval", "background")
    else:
        val = protocol.characters(chosen.val)
        assert val and not val & train and not val & test
    # rotations of one character are one character: no rotated copy of a training character is tested
    assert {n.rsplit("/rot", 1)[0] for n in chosen.test.names}.isdisjoint(train)


def test_check_disjoint_names_the_shared_character(images):
    train = data.omniglot_split("vinyals", "trainval", images=images)
    lake_test = data.omniglot_split("lake", "evaluation", images=images)
    with pytest.raises(protocol.ProtocolError, match=r"share 236 characters \(e\.g\. Angelic/character01\)"):
        protocol.check_disjoint(train=train, test=lake_test)


@pytest.mark.parametrize("split, train_on, kept", [
    ("vinyals", "train", list(range(9, 21))), ("vinyals", "trainval", list(range(9, 21))),
    ("lake", "train", list(range(1, 21))), ("lake", "background", list(range(1, 21)))])
def test_lake_evaluation_shares_no_character_with_training(images, split, train_on, kept):
    """The runs a Lake evaluation scores hold no image of a training character, by pixels: a run that did
    would fail here even if the protocol's character table were wrong."""
    chosen = protocol.omniglot_protocol(split, train_on, images=images)
    runs, kept_runs, excluded = protocol.held_out_lake_runs(chosen.train, images=images)
    assert kept_runs == kept and sorted(kept_runs + excluded) == list(range(1, 21))
    trained = _pixel_keys(images, protocol.characters(chosen.train))
    for number, run in zip(kept_runs, runs):
        for x in np.concatenate([run.support_x, run.query_x]):
            assert np.ascontiguousarray(x).tobytes() not in trained, f"run {number} shows a training character"
    # ... and the excluded runs do hold training images (runs 1-6 wholly, 7-8 in 36 of 40)
    all_runs = data.lake_one_shot_runs(image_size=28)
    shown = [sum(np.ascontiguousarray(x).tobytes() in trained for x in np.concatenate([r.support_x, r.query_x]))
             for r in (all_runs[n - 1] for n in excluded)]
    assert shown == ([40] * 6 + [36, 36] if split == "vinyals" else [])


def test_lake_run_characters_are_the_runs_alphabets(images):
    runs = data.lake_one_shot_runs(image_size=28)
    found = protocol.lake_run_characters(runs, images)
    alphabets = [{name.split("/")[0] for name in support + query} for support, query in found]
    assert alphabets[0] == {"Atlantean"} and alphabets[19] == {"Tibetan"}
    # query item k is a drawing of the support class its label names
    for run, (support, query) in zip(runs, found):
        assert [support[label] for label in run.query_y] == query
    with pytest.raises(ValueError, match="found in 0 Omniglot characters"):
        protocol.lake_run_characters([runs[0]._replace(support_x=runs[0].support_x * 0.5)], images)


def test_a_model_trained_on_a_run_alphabet_loses_that_run(images):
    """Sabotage the training set with Tibetan: runs 19-20 drop out."""
    chosen = protocol.omniglot_protocol("lake", "background", images=images)
    tibetan = {name for name in images.names if name.startswith("Tibetan/")}
    _, kept, excluded = protocol.held_out_lake_runs(protocol.characters(chosen.train) | tibetan, images=images)
    assert excluded == [19, 20] and kept == list(range(1, 19))


def test_classes_are_the_classes_an_episode_draws(images):
    dataset = data.omniglot_split("lake", "val", images=images)  # unrotated: images compare as stored
    tasks = ClassificationTasks(dataset, ways=5, shots=1, queries=2, seed=7)
    for i in range(5):
        keys = {np.ascontiguousarray(images.images[dataset.sources[c], d]).tobytes()
                for c in tasks.classes(i) for d in range(20)}
        episode = tasks.episode(i)
        assert all(np.ascontiguousarray(x).tobytes() in keys for x in np.concatenate([episode.support_x,
                                                                                      episode.query_x]))
    assert protocol.characters_drawn(tasks, 5) == {dataset.names[c].rsplit("/rot", 1)[0]
                                                   for i in range(5) for c in tasks.classes(i)}


@pytest.mark.parametrize("split", ["vinyals", "lake"])
def test_the_command_line_validates_on_held_out_characters(images, split):
    """`dualmeta train --tasks=omniglot --split=...`: its training, validation and evaluation episodes come from
    three sets that share no character (a --split=lake run used to validate on its own training classes)."""
    from dualmeta.experiment import resolve

    experiment = resolve("torch", "protonet", "omniglot", split=split)
    sets = {role: protocol.characters(getattr(experiment, f"{role}_tasks")().dataset)
            for role in ("train", "val", "eval")}
    assert all(sets.values())
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["eval"] and not sets["val"] & sets["eval"]


def test_the_backbone_defines_the_experiment_so_resume_compares_it():
    from dualmeta.experiment import resolve

    conv4 = resolve("torch", "protonet", "folder", data_dir="x").defining()
    resnet = resolve("torch", "protonet", "folder", data_dir="x", backbone="resnet12").defining()
    assert (conv4["backbone"], resnet["backbone"]) == ("conv4", "resnet12")
    assert [k for k in conv4 if conv4[k] != resnet[k]] == ["backbone"]
