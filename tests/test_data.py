"""Tests of dualmeta.datasets.omniglot (Omniglot loading, splits, Lake runs, download) and of Omniglot episodes.

The real data is found with ``dualmeta.datasets.omniglot.default_data_dir()`` (honours ``DUALMETA_DATA_DIR``); the
tests FAIL when it is missing. The decoded images are loaded once per session through the default
cache (``DUALMETA_CACHE_DIR`` or ``~/.cache/dualmeta``): the first run decodes the zips (a few seconds),
later runs read the cache. Error paths use small synthetic zips written to ``tmp_path``.
"""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dualmeta.datasets import omniglot as data
from dualmeta.episodes import ClassDataset, ClassificationTasks

REPO_ROOT = Path(__file__).resolve().parent.parent
SPLIT_DIR_NAME = Path("splits") / "vinyals"
VINYALS_SIZES = {"train": 4112, "val": 688, "trainval": 4800, "test": 1692}


# ----------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real Omniglot folder; the tests fail (not skip) without it."""
    path = data.default_data_dir()
    missing = [name for name in data.OMNIGLOT_FILES if not (path / name).is_file()]
    if missing:
        pytest.fail(f"Omniglot data missing in {path} ({missing}); set {data.ENV_DATA_DIR} or run "
                    "dualmeta.datasets.omniglot.download_omniglot(data_dir)")
    return path


@pytest.fixture(scope="session")
def omniglot(data_dir) -> data.OmniglotImages:
    """All 1623 characters at 28x28, decoded once (then cached on disk by the loader)."""
    return data.load_omniglot_images(data_dir, image_size=28)


@pytest.fixture(scope="session")
def vinyals_train(omniglot) -> ClassDataset:
    return data.omniglot_split("vinyals", "train", images=omniglot)


def reference_split(data_dir: Path, subset: str) -> list[str]:
    path = data_dir / SPLIT_DIR_NAME / f"{subset}.txt"
    assert path.is_file(), f"reference split file {path} missing"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def png_bytes(size: int = 105, seed: int = 0, mode: str = "1") -> bytes:
    """A small distinct 1-bit PNG: white background with a black block placed by ``seed``."""
    pixels = np.ones((size, size), dtype=bool)
    row, col = (seed * 7) % (size - 10), (seed * 13) % (size - 10)
    pixels[row:row + 10, col:col + 10] = False
    image = Image.fromarray(pixels).convert(mode) if mode != "1" else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_images_zip(path: Path, top: str, characters: dict[tuple[str, int], int], drawings: int = 20,
                     size: int = 105, extra: dict[str, bytes] | None = None) -> Path:
    """A zip in the Omniglot layout ``top/Alphabet/characterNN/IIII_DD.png``."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/", b"")
        for (alphabet, number), char_id in characters.items():
            for drawing in range(1, drawings + 1):
                zf.writestr(f"{top}/{alphabet}/character{number:02d}/{char_id:04d}_{drawing:02d}.png",
                            png_bytes(size, seed=char_id * 20 + drawing))
        for name, content in (extra or {}).items():
            zf.writestr(name, content)
    return path


def write_runs_zip(path: Path, runs: int = 2, ways: int = 3) -> Path:
    """A small ``all_runs.zip``: item ``n`` of run ``r`` belongs to class ``(n + r) % ways + 1``."""
    with zipfile.ZipFile(path, "w") as zf:
        for run in range(1, runs + 1):
            lines = []
            for n in range(1, ways + 1):
                zf.writestr(f"run{run:02d}/training/class{n:02d}.png", png_bytes(seed=100 * run + n))
                zf.writestr(f"run{run:02d}/test/item{n:02d}.png", png_bytes(seed=100 * run + 50 + n))
                lines.append(f"run{run:02d}/test/item{n:02d}.png run{run:02d}/training/"
                             f"class{(n + run) % ways + 1:02d}.png")
            zf.writestr(f"run{run:02d}/class_labels.txt", "\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake_dir(tmp_path) -> Path:
    """A tiny valid data folder: 2+1 background and 2 evaluation characters, and 2 runs."""
    folder = tmp_path / "omniglot"
    folder.mkdir()
    write_images_zip(folder / data.BACKGROUND_ZIP, "images_background",
                     {("Beta", 1): 3, ("Alpha", 2): 2, ("Alpha", 1): 1})
    write_images_zip(folder / data.EVALUATION_ZIP, "images_evaluation", {("Gamma", 1): 4, ("Gamma", 2): 5})
    write_runs_zip(folder / data.RUNS_ZIP)
    return folder


def episode_hash(episode) -> str:
    digest = hashlib.sha256()
    for part in episode:
        digest.update(str(part.dtype).encode() + str(part.shape).encode())
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))


# ----------------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------------

def test_default_data_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "from_env"))
    assert data.default_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.default_data_dir() == tmp_path / "from_env"
    monkeypatch.delenv(data.ENV_DATA_DIR)
    shared = REPO_ROOT.parent / "shared" / "data" / "omniglot"
    expected = shared if shared.is_dir() else Path.home() / ".cache" / "dualmeta" / "omniglot"
    assert data.default_data_dir() == expected


def test_default_cache_dir_order(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_CACHE_DIR, str(tmp_path))
    assert data.default_cache_dir() == tmp_path
    assert data.default_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(data.ENV_CACHE_DIR)
    assert data.default_cache_dir() == Path.home() / ".cache" / "dualmeta"


# ----------------------------------------------------------------------------------------------------
# The real data
# ----------------------------------------------------------------------------------------------------

def test_counts(omniglot):
    assert omniglot.images.shape == (1623, 20, 28, 28, 1)
    assert omniglot.images.dtype == np.float32
    assert omniglot.num_background == 964 and int((~omniglot.background).sum()) == 659
    assert omniglot.background[:964].all() and not omniglot.background[964:].any()
    alphabets = omniglot.alphabets
    background_alphabets = {n.split("/")[0] for n, b in zip(omniglot.names, omniglot.background) if b}
    assert len(alphabets) == 50 and len(background_alphabets) == 30
    assert sorted(omniglot.ids.tolist()) == list(range(1, 1624))
    assert len(set(omniglot.names)) == 1623
    assert 0.0 <= omniglot.images.min() and omniglot.images.max() <= 1.0
    assert not omniglot.images.flags.writeable


def test_order_background_first_then_alphabet_then_number(omniglot):
    keys = [(not b, name.split("/")[0], int(name[-2:])) for name, b in zip(omniglot.names, omniglot.background)]
    assert keys == sorted(keys)
    assert omniglot.names[0] == "Alphabet_of_the_Magi/character01" and omniglot.ids[0] == 709
    assert omniglot.names[-1] == "ULOG/character26" and omniglot.ids[-1] == 1623


def test_preprocessing_inverts_and_resizes_with_bilinear(omniglot, data_dir):
    index = omniglot.index("Latin/character01")
    with zipfile.ZipFile(data_dir / data.BACKGROUND_ZIP) as zf:
        entry = [n for n in zf.namelist() if n.startswith("images_background/Latin/character01/")
                 and n.endswith("_03.png")][0]
        image = Image.open(io.BytesIO(zf.read(entry)))
    assert image.mode == "1" and image.size == (105, 105)
    ink = 1.0 - np.asarray(image, dtype=np.float32)  # white background -> 0, black ink -> 1
    assert 0.0 < ink.mean() < 0.5  # strokes are a minority of pixels
    expected = np.asarray(Image.fromarray(ink).resize((28, 28), Image.Resampling.BILINEAR), np.float32)
    np.testing.assert_array_equal(omniglot.images[index, 2, :, :, 0], np.clip(expected, 0, 1))
    assert omniglot.images.mean() < 0.2  # mostly background (0.0)


def test_cached_load_is_fast_and_identical(omniglot, data_dir, monkeypatch):
    monkeypatch.setattr(data, "_MEMORY", {})  # bypass the in-process memo, keep the disk cache
    monkeypatch.setattr(data, "_decode_png", lambda *a: pytest.fail("the cache was not used"))
    start = time.perf_counter()
    again = data.load_omniglot_images(data_dir, image_size=28)
    elapsed = time.perf_counter() - start
    assert again is not omniglot
    np.testing.assert_array_equal(again.images, omniglot.images)
    assert again.names == omniglot.names
    assert elapsed < 5.0, f"cached load took {elapsed:.2f} s"  # typically ~0.3 s


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("subset", sorted(VINYALS_SIZES))
def test_vinyals_split_equals_reference_list(omniglot, data_dir, subset):
    dataset = data.omniglot_split("vinyals", subset, images=omniglot)
    assert dataset.num_classes == VINYALS_SIZES[subset]
    assert list(dataset.names) == reference_split(data_dir, subset)  # same classes, same order
    assert dataset.images is omniglot.images  # one shared array
    for name, source, turns in zip(dataset.names, dataset.sources, dataset.rotations):
        assert name == f"{omniglot.names[source]}/rot{90 * turns:03d}"


def test_vinyals_rule_by_global_id(omniglot):
    """trainval = the first 1200 characters by global id, test = the other 423, val = 5 alphabets."""
    def ids(subset):
        return omniglot.ids[data.omniglot_split("vinyals", subset, images=omniglot, rotations=False).sources]
    assert sorted(ids("trainval")) == list(range(1, 1201))
    assert ids("test").tolist() == list(range(1201, 1624))
    assert sorted(np.concatenate([ids("train"), ids("val")])) == list(range(1, 1201))
    val_alphabets = {omniglot.names[i].split("/")[0]
                     for i in data.omniglot_split("vinyals", "val", images=omniglot).sources}
    assert len(val_alphabets) == 5
    assert data.omniglot_split("vinyals", "test", images=omniglot, rotations=False).num_classes == 423


def test_vinyals_split_from_the_reference_files(omniglot, data_dir):
    for subset in ("val", "test"):
        path = data_dir / SPLIT_DIR_NAME / f"{subset}.txt"
        from_file = data.omniglot_split(path, images=omniglot)
        named = data.omniglot_split("vinyals", subset, images=omniglot)
        assert from_file.names == named.names
        np.testing.assert_array_equal(from_file.sources, named.sources)
        np.testing.assert_array_equal(from_file.rotations, named.rotations)


def test_lake_split(omniglot):
    for subset, count in (("background", 964), ("train", 792), ("val", 172), ("evaluation", 659), ("test", 659)):
        dataset = data.omniglot_split("lake", subset, images=omniglot)
        assert dataset.num_classes == count
        assert not dataset.rotations.any()
        assert all(name.endswith("/rot000") for name in dataset.names)
    background = data.omniglot_split("lake", "background", images=omniglot).sources
    assert background.tolist() == list(range(964))
    train, val = (data.omniglot_split("lake", subset, images=omniglot).sources for subset in ("train", "val"))
    assert sorted(train.tolist() + val.tolist()) == list(range(964))  # the val alphabets are held out of train
    assert {omniglot.names[i].split("/")[0] for i in val} == {
        "Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali"}
    rotated = data.omniglot_split("lake", "test", images=omniglot, rotations=True)
    assert rotated.num_classes == 4 * 659
    assert rotated.rotations[:4].tolist() == [0, 1, 2, 3]


def test_split_file_format(omniglot, tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("# my split\nLatin/character02/rot090\n\nGreek/character01\n")
    dataset = data.split_from_file(path, images=omniglot)
    assert dataset.names == ("Latin/character02/rot090", "Greek/character01/rot000")
    assert dataset.sources.tolist() == [omniglot.index("Latin/character02"), omniglot.index("Greek/character01")]
    assert dataset.rotations.tolist() == [1, 0]
    for text, message in (("Latin/character02/rot045\n", "rotDDD"), ("Latin/char2\n", "rotDDD"),
                          ("Latin/character02\nLatin/character02\n", "listed twice"),
                          ("Latin/character99\n", "no character"), ("# nothing\n", "no class")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            data.split_from_file(path, images=omniglot)
    with pytest.raises(FileNotFoundError, match="Split file"):
        data.split_from_file(tmp_path / "absent.txt", images=omniglot)
    with pytest.raises(ValueError, match="subset"):
        data.omniglot_split(path, subset="train", images=omniglot)


# ----------------------------------------------------------------------------------------------------
# Lake's one-shot runs
# ----------------------------------------------------------------------------------------------------

def parse_class_labels_independently(data_dir: Path) -> dict[int, list[int]]:
    """run -> query labels (0-based class of item01..item20), read straight from the zip."""
    labels = {}
    with zipfile.ZipFile(data_dir / data.RUNS_ZIP) as zf:
        for run in range(1, 21):
            pairs = {}
            for line in zf.read(f"run{run:02d}/class_labels.txt").decode().split("\n"):
                if line.strip():
                    item, cls = line.split()
                    pairs[int(item[-6:-4])] = int(cls[-6:-4]) - 1
            labels[run] = [pairs[n] for n in range(1, 21)]
    return labels


def test_lake_one_shot_runs(data_dir):
    runs = data.lake_one_shot_runs(data_dir, image_size=28)
    assert len(runs) == 20
    expected = parse_class_labels_independently(data_dir)
    for run, episode in enumerate(runs, start=1):
        assert episode.support_x.shape == (20, 28, 28, 1) and episode.query_x.shape == (20, 28, 28, 1)
        assert episode.support_x.dtype == np.float32
        assert episode.support_y.tolist() == list(range(20))  # 20-way 1-shot
        assert episode.query_y.dtype == np.int64
        assert episode.query_y.tolist() == expected[run]
        assert sorted(episode.query_y.tolist()) == list(range(20))


def test_lake_runs_pixels_at_native_size(data_dir):
    runs = data.lake_one_shot_runs(data_dir, image_size=105)
    with zipfile.ZipFile(data_dir / data.RUNS_ZIP) as zf:
        for run, kind, n, array in ((1, "training/class", 1, runs[0].support_x[0]),
                                    (20, "training/class", 20, runs[19].support_x[19]),
                                    (7, "test/item", 13, runs[6].query_x[12])):
            image = Image.open(io.BytesIO(zf.read(f"run{run:02d}/{kind}{n:02d}.png")))
            np.testing.assert_array_equal(array[..., 0], ~np.asarray(image))


# ----------------------------------------------------------------------------------------------------
# Episodes on real Omniglot
# ----------------------------------------------------------------------------------------------------

def test_episode_determinism_by_address(vinyals_train, data_dir):
    make = functools.partial(ClassificationTasks, vinyals_train, ways=5, shots=1, queries=15, seed=3)
    first = make().episode(7)
    tasks = make()
    for index in range(1000):
        if index != 7:
            tasks.episode(index)
    after = tasks.episode(7)
    for a, b in zip(first, after):
        np.testing.assert_array_equal(a, b)
    code = (
        "import hashlib, numpy as np\n"
        "from dualmeta.datasets import omniglot as data\n"
        "from dualmeta.episodes import ClassificationTasks\n"
        f"ds = data.omniglot_split('vinyals', 'train', data_dir={str(data_dir)!r})\n"
        "ep = ClassificationTasks(ds, ways=5, shots=1, queries=15, seed=3).episode(7)\n"
        "h = hashlib.sha256()\n"
        "for p in ep:\n"
        "    h.update(str(p.dtype).encode() + str(p.shape).encode())\n"
        "    h.update(np.ascontiguousarray(p).tobytes())\n"
        "print(h.hexdigest())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=subprocess_env(), cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == episode_hash(first)
    assert episode_hash(make(seed=4).episode(7)) != episode_hash(first)


def decode_coded(images: np.ndarray) -> np.ndarray:
    """(N, 2, 2, 1) coded images -> (N, 3) rows (source, quarter turns, example); see below."""
    template = np.zeros((2, 2), dtype=np.int64)
    template[0, 0] = 1
    position_to_turns = {tuple(np.argwhere(np.rot90(template, k))[0]): k for k in range(4)}
    flat = images[..., 0].reshape(len(images), -1)
    codes = flat.max(axis=1).astype(np.int64) - 1
    turns = [position_to_turns[divmod(int(i), 2)] for i in flat.argmax(axis=1)]
    return np.stack([codes // 20, np.array(turns), codes % 20], axis=1)


def test_support_query_disjoint_labels_and_rotations(omniglot, vinyals_train):
    """Every image replaced by a 2x2 code (pixel (0, 0) = 1 + source*20 + example, so a rotation moves
    it): with the same seed the episode draws the same examples, which can then be read back."""
    coded_images = np.zeros((1623, 20, 2, 2, 1), dtype=np.float32)
    coded_images[:, :, 0, 0, 0] = np.arange(1, 1623 * 20 + 1).reshape(1623, 20)
    coded = ClassDataset(coded_images, vinyals_train.sources, vinyals_train.rotations)
    ways, shots, queries = 20, 3, 4
    real = ClassificationTasks(vinyals_train, ways, shots, queries, seed=11)
    ids = ClassificationTasks(coded, ways, shots, queries, seed=11)
    classes = set(zip(vinyals_train.sources.tolist(), vinyals_train.rotations.tolist()))
    orders = set()
    for index in range(25):
        episode, coded_episode = real.episode(index), ids.episode(index)
        support, query = decode_coded(coded_episode.support_x), decode_coded(coded_episode.query_x)
        support_set, query_set = set(map(tuple, support.tolist())), set(map(tuple, query.tolist()))
        assert not support_set & query_set  # no example of a class in both support and query
        assert len(support_set) == ways * shots and len(query_set) == ways * queries
        # labels are a permutation of 0..ways-1, each class shots/queries times, class by class
        for labels, per in ((episode.support_y, shots), (episode.query_y, queries)):
            assert sorted(labels[::per].tolist()) == list(range(ways))
            assert (labels.reshape(ways, per) == labels[::per, None]).all()
        np.testing.assert_array_equal(episode.support_y, coded_episode.support_y)
        orders.add(tuple(episode.support_y[::shots].tolist()))
        # every label stands for one (source, rotation) class of the split, in support and query alike
        label_class = {}
        for rows, labels in ((support, episode.support_y), (query, episode.query_y)):
            for (source, turns, _), label in zip(rows.tolist(), labels.tolist()):
                assert (source, turns) in classes
                assert label_class.setdefault(label, (source, turns)) == (source, turns)
        assert len(set(label_class.values())) == ways
        # the real images are the drawn examples, rotated by their class's quarter turns
        for x, (source, turns, example) in zip(np.concatenate([episode.support_x, episode.query_x]),
                                               np.concatenate([support, query]).tolist()):
            np.testing.assert_array_equal(x, np.rot90(omniglot.images[source, example], turns, axes=(0, 1)))
    assert len(orders) == 25  # the relabelling varies between episodes


def test_rotated_class_is_rot90_of_source(omniglot, vinyals_train):
    for turns in (1, 2, 3):
        c = int(np.flatnonzero(vinyals_train.rotations == turns)[5])
        source = int(vinyals_train.sources[c])
        assert vinyals_train.names[c] == f"{omniglot.names[source]}/rot{90 * turns:03d}"
        # a dataset of that one class: an episode holds all 20 drawings (19 support, 1 query)
        single = ClassDataset(vinyals_train.images, vinyals_train.sources[[c]], vinyals_train.rotations[[c]])
        episode = ClassificationTasks(single, ways=1, shots=19, queries=1, seed=turns).episode(0)
        drawn = np.concatenate([episode.support_x, episode.query_x])
        expected = np.rot90(omniglot.images[source], turns, axes=(1, 2))  # (20, H, W, 1)
        assert not np.array_equal(expected, omniglot.images[source])
        assert sorted(x.tobytes() for x in drawn) == sorted(np.ascontiguousarray(x).tobytes() for x in expected)


# ----------------------------------------------------------------------------------------------------
# The cache (synthetic zips)
# ----------------------------------------------------------------------------------------------------

def test_cache_written_atomically_and_reused(fake_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = data.load_omniglot_images(fake_dir, image_size=105, cache_dir=cache)
    assert first.names == ("Alpha/character01", "Alpha/character02", "Beta/character01",
                           "Gamma/character01", "Gamma/character02")
    assert first.ids.tolist() == [1, 2, 3, 4, 5] and first.background.tolist() == [True] * 3 + [False] * 2
    assert first.images.shape == (5, 20, 105, 105, 1)
    assert set(np.unique(first.images)) == {0.0, 1.0}
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and re.fullmatch(r"omniglot-105px-[0-9a-f]{16}\.npz", files[0])  # no temp left
    monkeypatch.setattr(data, "_MEMORY", {})
    monkeypatch.setattr(data, "_decode_png", lambda *a: pytest.fail("the cache was not used"))
    second = data.load_omniglot_images(fake_dir, image_size=105, cache_dir=cache)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.names == first.names and second.ids.tolist() == first.ids.tolist()
    monkeypatch.undo()
    # another size has its own entry; a changed zip misses the cache
    small = data.load_omniglot_images(fake_dir, image_size=14, cache_dir=cache)
    assert small.images.shape == (5, 20, 14, 14, 1) and 0 < small.images.max() <= 1
    os.utime(fake_dir / data.EVALUATION_ZIP, ns=(1, 1))
    monkeypatch.setattr(data, "_MEMORY", {})
    decoded = []
    original = data._decode_png
    monkeypatch.setattr(data, "_decode_png", lambda *a: decoded.append(1) or original(*a))
    data.load_omniglot_images(fake_dir, image_size=105, cache_dir=cache)
    assert decoded and len(list(cache.glob("*.npz"))) == 3
    assert not list(cache.glob("*.tmp"))


def test_unreadable_cache_is_rebuilt(fake_dir, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    data.load_omniglot_images(fake_dir, image_size=28, cache_dir=cache)
    (path,) = cache.glob("*.npz")
    path.write_bytes(b"garbage")
    monkeypatch.setattr(data, "_MEMORY", {})
    with pytest.warns(RuntimeWarning, match="unreadable Omniglot cache"):
        again = data.load_omniglot_images(fake_dir, image_size=28, cache_dir=cache)
    assert again.images.shape == (5, 20, 28, 28, 1)


def test_lake_split_and_runs_on_synthetic_data(fake_dir, tmp_path):
    images = data.load_omniglot_images(fake_dir, image_size=28, cache=False)
    assert data.omniglot_split("lake", "train", images=images).num_classes == 3
    assert data.omniglot_split("lake", "test", images=images).num_classes == 2
    with pytest.raises(ValueError, match="full Omniglot"):
        data.omniglot_split("vinyals", "train", images=images)
    runs = data.lake_one_shot_runs(fake_dir, image_size=28)
    assert len(runs) == 2
    assert runs[0].support_y.tolist() == [0, 1, 2]
    assert runs[0].query_y.tolist() == [2, 0, 1] and runs[1].query_y.tolist() == [0, 1, 2]


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------

def test_episode_count_errors(vinyals_train, omniglot):
    lake_test = data.omniglot_split("lake", "test", images=omniglot)
    with pytest.raises(ValueError, match="ways=700 is larger than the 659 classes"):
        ClassificationTasks(lake_test, ways=700, shots=1, queries=1)
    with pytest.raises(ValueError, match="exceeds the 20 examples per class"):
        ClassificationTasks(vinyals_train, ways=5, shots=5, queries=16)
    for counts, name in (({"ways": 0}, "ways"), ({"shots": -1}, "shots"), ({"queries": 0}, "queries"),
                         ({"ways": 2.5}, "ways"), ({"shots": True}, "shots")):
        kwargs = {"ways": 5, "shots": 1, "queries": 1, **counts}
        with pytest.raises(ValueError, match=f"Expected {name} to be a positive integer"):
            ClassificationTasks(vinyals_train, **kwargs)


def test_unknown_split_names_raise_before_loading(monkeypatch):
    monkeypatch.setattr(data, "load_omniglot_images", lambda *a, **k: pytest.fail("loaded data"))
    with pytest.raises(ValueError, match=re.escape("Expected one of ['lake', 'vinyals']; received split='vinyal'")):
        data.omniglot_split("vinyal", "train")
    with pytest.raises(ValueError, match=re.escape(
            "Expected one of ['test', 'train', 'trainval', 'val']; received subset='valid'")):
        data.omniglot_split("vinyals", "valid")
    with pytest.raises(ValueError, match=re.escape("received subset='trainval' for split='lake'")):
        data.omniglot_split("lake", "trainval")
    with pytest.raises(ValueError, match="rotations"):
        data.omniglot_split("lake", "train", rotations=4)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="image_size"):
        data.load_omniglot_images(image_size=0)


def test_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "nowhere"))
    for call in (lambda: data.load_omniglot_images(), lambda: data.omniglot_split("lake", "train"),
                 lambda: data.lake_one_shot_runs()):
        with pytest.raises(FileNotFoundError) as info:
            call()
        message = str(info.value)
        for hint in ("--data_dir", "DUALMETA_DATA_DIR", "dualmeta.datasets.omniglot.download_omniglot(data_dir)",
                     str(tmp_path / "nowhere")):
            assert hint in message


def test_missing_one_file(fake_dir):
    (fake_dir / data.EVALUATION_ZIP).unlink()
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip"):
        data.load_omniglot_images(fake_dir, cache=False)


def test_truncated_zip(data_dir, fake_dir):
    real = (data_dir / data.BACKGROUND_ZIP).read_bytes()
    (fake_dir / data.BACKGROUND_ZIP).write_bytes(real[: len(real) // 2])
    with pytest.raises(ValueError, match=r"images_background\.zip is not a readable zip file.*download"):
        data.load_omniglot_images(fake_dir, cache=False)
    runs = (data_dir / data.RUNS_ZIP).read_bytes()
    (fake_dir / data.RUNS_ZIP).write_bytes(runs[:-1000])
    with pytest.raises(ValueError, match=r"all_runs\.zip is not a readable zip file"):
        data.lake_one_shot_runs(fake_dir)


def test_corrupt_member(fake_dir):
    path = fake_dir / data.EVALUATION_ZIP
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = [i for i in zf.infolist() if i.filename.endswith("0005_07.png")][0]
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + 40: start + 48] = b"\xff" * 8  # damage the stored PNG bytes
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"images_evaluation\.zip.*0005_07\.png.*download"):
        data.load_omniglot_images(fake_dir, cache=False)


def test_wrong_layout(fake_dir):
    write_images_zip(fake_dir / data.BACKGROUND_ZIP, "images_background", {("Alpha", 1): 1},
                     extra={"images_background/Alpha/readme.txt": b"hi"})
    with pytest.raises(ValueError, match=re.escape("images_background/<Alphabet>/characterNN/IIII_DD.png")):
        data.load_omniglot_images(fake_dir, cache=False)
    # the evaluation images zipped under the background folder name
    write_images_zip(fake_dir / data.BACKGROUND_ZIP, "images_evaluation", {("Alpha", 1): 1})
    with pytest.raises(ValueError, match="does not match the expected layout"):
        data.load_omniglot_images(fake_dir, cache=False)
    # macOS metadata is tolerated
    write_images_zip(fake_dir / data.BACKGROUND_ZIP, "images_background", {("Alpha", 1): 1},
                     extra={"__MACOSX/images_background/._x": b"", "images_background/.DS_Store": b""})
    assert data.load_omniglot_images(fake_dir, cache=False).num_characters == 3
    with zipfile.ZipFile(fake_dir / data.RUNS_ZIP, "a") as zf:
        zf.writestr("run01/extra/item01.png", png_bytes())
    with pytest.raises(ValueError, match="runNN/training/classYY.png"):
        data.lake_one_shot_runs(fake_dir)


def test_wrong_drawing_count(fake_dir):
    write_images_zip(fake_dir / data.BACKGROUND_ZIP, "images_background", {("Alpha", 1): 1}, drawings=19)
    with pytest.raises(ValueError, match="Alpha/character01 has 19 drawings.*exactly 20"):
        data.load_omniglot_images(fake_dir, cache=False)


def test_wrong_image_size(fake_dir):
    write_images_zip(fake_dir / data.EVALUATION_ZIP, "images_evaluation", {("Gamma", 1): 4}, size=100)
    with pytest.raises(ValueError, match=r"images_evaluation\.zip:images_evaluation/Gamma/character01/"
                                         r"0004_01\.png: image is 100x100 pixels.*105x105"):
        data.load_omniglot_images(fake_dir, cache=False)


def test_not_a_png(fake_dir):
    with zipfile.ZipFile(fake_dir / data.EVALUATION_ZIP, "w") as zf:
        for d in range(1, 21):
            zf.writestr(f"images_evaluation/Gamma/character01/0004_{d:02d}.png", b"not a png")
    with pytest.raises(ValueError, match="not a readable PNG"):
        data.load_omniglot_images(fake_dir, cache=False)


def test_bad_class_labels(fake_dir):
    with zipfile.ZipFile(fake_dir / data.RUNS_ZIP, "w") as zf:
        for n in (1, 2):
            zf.writestr(f"run01/training/class{n:02d}.png", png_bytes(seed=n))
            zf.writestr(f"run01/test/item{n:02d}.png", png_bytes(seed=n))
        zf.writestr("run01/class_labels.txt", "run01/test/item01.png run01/training/class02.png\n")
    with pytest.raises(ValueError, match="labels items"):
        data.lake_one_shot_runs(fake_dir)


# ----------------------------------------------------------------------------------------------------
# Download (localhost only)
# ----------------------------------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files; below ``/short/`` it announces 100,000 bytes, sends 10 and hangs up."""

    def do_GET(self):
        if self.path.startswith("/short/"):
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"PK\x03\x04 cut")
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def served(fake_dir, tmp_path):
    """Serves a folder laid out like github.com/brendenlake/omniglot/python/ on localhost."""
    root = tmp_path / "served"
    (root / "one-shot-classification").mkdir(parents=True)
    shutil.copy(fake_dir / data.BACKGROUND_ZIP, root)
    shutil.copy(fake_dir / data.EVALUATION_ZIP, root)
    shutil.copy(fake_dir / data.RUNS_ZIP, root / "one-shot-classification")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_from_localhost(served, tmp_path):
    root, url = served
    sums = {data.BACKGROUND_ZIP: sha(root / data.BACKGROUND_ZIP), data.EVALUATION_ZIP: None,
            data.RUNS_ZIP: sha(root / "one-shot-classification" / data.RUNS_ZIP)}
    target = tmp_path / "downloaded"
    assert data.download_omniglot(target, base_url=url, sha256=sums) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(data.OMNIGLOT_FILES)  # no temp files
    assert (target / data.BACKGROUND_ZIP).read_bytes() == (root / data.BACKGROUND_ZIP).read_bytes()
    assert data.load_omniglot_images(target, cache=False).num_characters == 5
    assert len(data.lake_one_shot_runs(target)) == 2
    # existing files are kept unless overwrite=True
    (root / data.BACKGROUND_ZIP).write_bytes(b"changed")
    data.download_omniglot(target, base_url=url, sha256={data.BACKGROUND_ZIP: None})
    assert (target / data.BACKGROUND_ZIP).stat().st_size > 100


def test_download_checksum_mismatch_leaves_nothing(served, tmp_path):
    _, url = served
    target = tmp_path / "downloaded"
    with pytest.raises(ValueError, match="Checksum mismatch"):
        data.download_omniglot(target, base_url=url, files=[data.BACKGROUND_ZIP],
                               sha256={data.BACKGROUND_ZIP: "0" * 64})
    assert list(target.iterdir()) == []


def test_download_rejects_bad_content_and_missing_files(served, tmp_path):
    root, url = served
    target = tmp_path / "downloaded"
    (root / data.EVALUATION_ZIP).write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a valid images_evaluation.zip"):
        data.download_omniglot(target, base_url=url, files=[data.EVALUATION_ZIP],
                               sha256={data.EVALUATION_ZIP: None})
    # a zip with the wrong layout (the background zip served as the evaluation zip)
    shutil.copy(root / data.BACKGROUND_ZIP, root / data.EVALUATION_ZIP)
    with pytest.raises(ValueError, match="expected layout images_evaluation/"):
        data.download_omniglot(target, base_url=url, files=[data.EVALUATION_ZIP],
                               sha256={data.EVALUATION_ZIP: None})
    (root / "one-shot-classification" / data.RUNS_ZIP).unlink()
    with pytest.raises(OSError, match="Could not download"):
        data.download_omniglot(target, base_url=url, files=[data.RUNS_ZIP], sha256={data.RUNS_ZIP: None})
    assert list(target.iterdir()) == []
    with pytest.raises(ValueError, match="Expected file names"):
        data.download_omniglot(target, base_url=url, files=["images.zip"])


def test_interrupted_download_leaves_nothing(served, tmp_path):
    _, url = served
    target = tmp_path / "downloaded"
    with pytest.raises(OSError, match="Could not download"):
        data.download_omniglot(target, base_url=url + "short/", files=[data.BACKGROUND_ZIP],
                               sha256={data.BACKGROUND_ZIP: None})
    assert list(target.iterdir()) == []


def test_known_checksums_apply_to_the_official_url():
    assert set(data.KNOWN_SHA256[data.DEFAULT_URL]) == set(data.OMNIGLOT_FILES)
    assert all(re.fullmatch(r"[0-9a-f]{64}", s) for s in data.KNOWN_SHA256[data.DEFAULT_URL].values())


def test_inner_batches_are_class_balanced_windows():
    from dualmeta.episodes import inner_batches
    labels = np.repeat(np.array([3, 1, 0, 4, 2]), 10)  # 5-way 10-shot, class by class as the episodes
    batches = inner_batches(labels, 10, 5)
    assert batches.shape == (5, 10)
    assert sorted(batches.ravel()) == list(range(50))  # five steps: one epoch, each example once
    for b in batches:
        assert sorted(labels[b]) == sorted(np.repeat(np.arange(5), 2))  # two of every class
    assert inner_batches(labels, None, 5) is None and inner_batches(labels, 50, 5) is None
    wrapped = inner_batches(np.zeros((5, 1), np.float32), 3, 3)  # regression: the given order, wrapping
    assert wrapped.tolist() == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]
    with pytest.raises(ValueError, match="batch_size"):
        inner_batches(labels, 0, 5)


def test_the_earlier_module_name_is_the_same_module():
    import dualmeta.data as earlier
    from dualmeta.data import omniglot_split

    assert earlier is data and omniglot_split is data.omniglot_split
