"""The standard few-shot sets (dualmeta.datasets.miniimagenet, tieredimagenet, cifar100) on tiny fabricated
copies in their real on-disk formats: CSVs + JPEG/PNG folder, pickled arrays, pickled PNG bytes, CIFAR-100
python pickles. Pure numpy / Pillow; no network."""
from __future__ import annotations

import csv
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from dualmeta.datasets import cifar100, miniimagenet, tieredimagenet
from dualmeta.datasets.cifar100 import load_cifar_fs, load_fc100
from dualmeta.datasets.miniimagenet import load_miniimagenet
from dualmeta.datasets.tieredimagenet import load_tieredimagenet

WNIDS = ["n03017168", "n01532829", "n02108089", "n04596742", "n01558993", "n02074367"]  # deliberately unsorted
PER_CLASS = 8


def pixel(c: int, i: int) -> np.ndarray:
    """A known, distinct RGB colour for image ``i`` of class ``c``."""
    return np.array([10 + 30 * c, 5 + 20 * i, 200 - 7 * c - i], dtype=np.uint8)


def solid(c: int, i: int, size: int = 84) -> np.ndarray:
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = pixel(c, i)
    image[0, 0] = (255, 0, 7)  # one odd pixel: checks the (row, column, channel) order
    return image


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def dump(path, obj):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


# ---------------------------------------------------------------------------------------------------------
# mini-ImageNet
# ---------------------------------------------------------------------------------------------------------

def make_mini_csv(root, split="train", per_class=PER_CLASS, wnids=WNIDS):
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / f"{split}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "label"])
        for c, wnid in enumerate(wnids):
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.png"
                Image.fromarray(solid(c, i)).save(root / "images" / name)
                writer.writerow([name, wnid])
    return root


def make_mini_pickle(root, split="train", per_class=PER_CLASS, wnids=WNIDS):
    root.mkdir(parents=True, exist_ok=True)
    rows, class_dict = [], {}
    for c, wnid in enumerate(wnids):
        class_dict[wnid] = list(range(len(rows), len(rows) + per_class))
        rows += [solid(c, i) for i in range(per_class)]
    dump(root / f"mini-imagenet-cache-{split}.pkl", {"image_data": np.stack(rows), "class_dict": class_dict})
    return root


@pytest.mark.parametrize("make", [make_mini_csv, make_mini_pickle], ids=["csv", "pickle"])
def test_miniimagenet_both_forms(tmp_path, make):
    root = make(tmp_path / "mini")
    dataset = load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert dataset.images.shape == (6, PER_CLASS, 84, 84, 3) and dataset.images.dtype == np.float32
    assert list(dataset.names) == sorted(WNIDS)
    c = WNIDS.index(dataset.names[2])  # sorted position 2 is the fabricated class c
    np.testing.assert_array_equal(dataset.images[2, 5, 40, 40], pixel(c, 5).astype(np.float32) / 255)
    np.testing.assert_array_equal(dataset.images[2, 5, 0, 0], np.array([255, 0, 7], np.float32) / 255)
    assert dataset.sources.tolist() == list(range(6)) and not dataset.rotations.any()


def test_miniimagenet_resize_and_grey(tmp_path):
    root = make_mini_pickle(tmp_path / "mini")
    dataset = load_miniimagenet(root, "train", image_size=28, channels=1, cache_dir=tmp_path / "cache")
    assert dataset.images.shape == (6, PER_CLASS, 28, 28, 1)
    c = WNIDS.index(dataset.names[0])
    r, g, b = pixel(c, 3).astype(float)
    assert dataset.images[0, 3, 14, 14, 0] * 255 == pytest.approx((299 * r + 587 * g + 114 * b) / 1000, abs=1)


def test_miniimagenet_cache_hit_and_atomic(tmp_path, monkeypatch):
    root, cache = make_mini_csv(tmp_path / "mini"), tmp_path / "cache"
    first = load_miniimagenet(root, "train", cache_dir=cache)
    assert len(list(cache.glob("miniimagenet-csv-train-84px-3c-*.npz"))) == 1
    assert not [p for p in cache.iterdir() if p.suffix != ".npz"]  # no temporary file left

    def fail(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(miniimagenet, "_decode_csv", fail)
    again = load_miniimagenet(root, "train", cache_dir=cache)
    np.testing.assert_array_equal(first.images, again.images)
    assert again.names == first.names
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache entry
        load_miniimagenet(root, "train", image_size=32, cache_dir=cache)


def test_miniimagenet_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DUALMETA_CACHE_DIR", str(tmp_path / "envcache"))
    load_miniimagenet(make_mini_pickle(tmp_path / "mini"), "train")
    assert len(list((tmp_path / "envcache").glob("miniimagenet-pkl-train-*.npz"))) == 1


def test_miniimagenet_too_few_images(tmp_path):
    root = make_mini_csv(tmp_path / "mini", per_class=3)
    with pytest.raises(ValueError, match=r"^mini-ImageNet class 'n01532829' has 3 images, fewer than the 6 .*"
                                         r"add images or lower --shots/--queries$"):
        load_miniimagenet(root, "train", needed=6, cache_dir=tmp_path / "cache")
    # the same check applies to a cached split
    load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="class 'n01532829' has 3 images"):
        load_miniimagenet(root, "train", needed=4, cache_dir=tmp_path / "cache")


def test_miniimagenet_unreadable_and_missing_image(tmp_path):
    root = make_mini_csv(tmp_path / "mini")
    bad = root / "images" / f"{WNIDS[3]}00000002.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError) as error:
        load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert str(bad) in str(error.value) and "\n" not in str(error.value) and WNIDS[3] in str(error.value)
    bad.unlink()
    with pytest.raises(FileNotFoundError, match=f"{WNIDS[3]}00000002.png, listed in train.csv, does not exist"):
        load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*")), "a failed decode must not leave a cache file"


def test_miniimagenet_missing_files_and_empty_class(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mini-imagenet-cache-val\.pkl.*--data_dir="):
        load_miniimagenet(tmp_path, "val")
    with pytest.raises(ValueError, match="Expected one of"):
        load_miniimagenet(tmp_path, "dev")
    make_mini_csv(tmp_path / "nofolder", per_class=1)
    (tmp_path / "nofolder" / "images").rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=r"image folder .*images; pass --data_dir"):
        load_miniimagenet(tmp_path / "nofolder", "train")
    root = make_mini_pickle(tmp_path / "mini", split="test", per_class=2)
    stored = pickle.loads((root / "mini-imagenet-cache-test.pkl").read_bytes())
    stored["class_dict"]["n09999999"] = []
    dump(root / "mini-imagenet-cache-test.pkl", stored)
    with pytest.raises(ValueError, match=r"^mini-ImageNet class 'n09999999' has no images"):
        load_miniimagenet(root, "test", cache_dir=tmp_path / "cache")


def test_miniimagenet_bad_csv_header(tmp_path):
    root = make_mini_csv(tmp_path / "mini", per_class=1)
    (root / "train.csv").write_text("file,wnid\nx.png,n01532829\n")
    with pytest.raises(ValueError, match=r"train\.csv does not start with the header 'filename,label'"):
        load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")


def test_miniimagenet_bad_pickle(tmp_path):
    (tmp_path / "mini-imagenet-cache-train.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"cannot read the pickle .*mini-imagenet-cache-train\.pkl"):
        load_miniimagenet(tmp_path, "train", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------
# tiered-ImageNet
# ---------------------------------------------------------------------------------------------------------

def make_tiered(root, split="train", counts=(8, 9, 8, 10, 8, 8), names=True, as_arrays=True):
    root.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    rng = np.random.default_rng(0)
    order = [(c, i) for c, n in enumerate(counts) for i in range(n)]
    order = [order[j] for j in rng.permutation(len(order))]  # classes interleaved, as in the release
    for c, i in order:
        data = png_bytes(solid(c, i))
        images.append(np.frombuffer(data, dtype=np.uint8) if as_arrays else data)
        labels.append(c)
    dump(root / f"{split}_images_png.pkl", images)
    stored = {"label_specific": np.array(labels), "label_general": np.zeros(len(labels), np.int64)}
    if names:
        stored["label_specific_str"] = [f"n0{c:07d}" for c in range(len(counts))]
    dump(root / f"{split}_labels.pkl", stored)
    return root, order


def test_tieredimagenet(tmp_path):
    root, order = make_tiered(tmp_path / "tiered")
    dataset = load_tieredimagenet(root, "train", cache_dir=tmp_path / "cache")
    assert dataset.images.shape == (6, 8, 84, 84, 3)  # the smallest class has 8 images
    assert list(dataset.names) == [f"n0{c:07d}" for c in range(6)]
    third = [i for c, i in order if c == 3][2]  # class 3's third image in file order
    np.testing.assert_array_equal(dataset.images[3, 2, 10, 20], pixel(3, third).astype(np.float32) / 255)
    np.testing.assert_array_equal(dataset.images[3, 2, 0, 0], np.array([255, 0, 7], np.float32) / 255)


def test_tieredimagenet_bytes_without_names_and_cache(tmp_path, monkeypatch):
    root, _ = make_tiered(tmp_path / "tiered", split="val", names=False, as_arrays=False)
    cache = tmp_path / "cache"
    first = load_tieredimagenet(root, "val", image_size=21, channels=1, cache_dir=cache)
    assert first.images.shape == (6, 8, 21, 21, 1) and first.names == tuple("012345")
    assert [p.name.split("-")[:4] for p in cache.iterdir()] == [["tieredimagenet", "val", "21px", "1c"]]
    monkeypatch.setattr(tieredimagenet, "_decode", lambda *a: pytest.fail("decoded again although cached"))
    np.testing.assert_array_equal(load_tieredimagenet(root, "val", image_size=21, channels=1,
                                                      cache_dir=cache).images, first.images)


def test_tieredimagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no .*test_images_png\.pkl; pass --data_dir="):
        load_tieredimagenet(tmp_path, "test")
    root, order = make_tiered(tmp_path / "few", counts=(8, 4, 8))
    with pytest.raises(ValueError, match=r"^tiered-ImageNet class 'n00000001' has 4 images, fewer than the 5"):
        load_tieredimagenet(root, "train", needed=5, cache_dir=tmp_path / "cache")
    stored = pickle.loads((root / "train_labels.pkl").read_bytes())
    stored["label_specific_str"].append("n09999999")
    dump(root / "train_labels.pkl", stored)
    with pytest.raises(ValueError, match=r"^tiered-ImageNet class 'n09999999' has no images"):
        load_tieredimagenet(root, "train", cache_dir=tmp_path / "cache")
    root, order = make_tiered(tmp_path / "bad")
    images = pickle.loads((root / "train_images_png.pkl").read_bytes())
    row = next(j for j, (c, i) in enumerate(order) if c == 2 and i == 0)
    images[row] = np.frombuffer(b"broken png", dtype=np.uint8)
    dump(root / "train_images_png.pkl", images)
    with pytest.raises(ValueError, match=rf"^tiered-ImageNet class 'n00000002': cannot read image {row} of "):
        load_tieredimagenet(root, "train", cache_dir=tmp_path / "cache")
    dump(root / "train_images_png.pkl", {"not": "a list"})
    with pytest.raises(ValueError, match=r"is not a sequence of PNG-encoded images"):
        load_tieredimagenet(root, "train", cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------
# CIFAR-FS and FC100
# ---------------------------------------------------------------------------------------------------------

def cifar_pixel(fine: int, i: int, part: int) -> np.ndarray:
    return np.array([fine * 2, 100 + i + 10 * part, 255 - fine], dtype=np.uint8)


def make_cifar(root, per_class=(3, 2), skip=None):
    """All 100 classes with ``per_class`` images in the train and the test pickle (CIFAR-100's real names)."""
    root.mkdir(parents=True, exist_ok=True)
    for part, (name, count) in enumerate(zip(("train", "test"), per_class)):
        rows, fine, coarse = [], [], []
        for i in range(count):
            for f, fine_name in enumerate(cifar100.FINE_NAMES):
                if fine_name == skip:
                    continue
                image = np.empty((32, 32, 3), np.uint8)
                image[:] = cifar_pixel(f, i, part)
                image[0, 1] = (1, 2, 3)
                rows.append(image.transpose(2, 0, 1).reshape(3072))  # R plane, G plane, B plane
                fine.append(f)
                coarse.append(cifar100.COARSE_NAMES.index(cifar100.FINE_TO_COARSE[fine_name]))
        dump(root / name, {b"filenames": [b"x.png"] * len(rows), b"batch_label": name.encode(),
                           b"fine_labels": fine, b"coarse_labels": coarse, b"data": np.stack(rows)})
    dump(root / "meta", {b"fine_label_names": [n.encode() for n in cifar100.FINE_NAMES],
                         b"coarse_label_names": [n.encode() for n in cifar100.COARSE_NAMES]})
    return root


def test_cifar_split_lists():
    fs = cifar100.CIFAR_FS_SPLITS
    assert [len(fs[s]) for s in cifar100.SPLITS] == [64, 16, 20]
    assert sorted(sum(fs.values(), ())) == list(cifar100.FINE_NAMES)  # disjoint and complete
    fc = [cifar100.fc100_classes(s) for s in cifar100.SPLITS]
    assert [len(c) for c in fc] == [60, 20, 20] and sorted(sum(fc, ())) == list(cifar100.FINE_NAMES)
    assert len(cifar100.FINE_NAMES) == 100 and len(cifar100.COARSE_NAMES) == 20
    assert all(len(f) == 5 for f in cifar100.SUPERCLASSES.values())
    assert {cifar100.FINE_TO_COARSE[f] for f in fc[2]} == {"aquatic_mammals", "insects", "medium_mammals", "people"}


def test_cifar_fs_and_fc100(tmp_path):
    root, cache = make_cifar(tmp_path / "cifar-100-python"), tmp_path / "cache"
    for split, classes in zip(cifar100.SPLITS, (64, 16, 20)):
        dataset = load_cifar_fs(root, split, cache_dir=cache)
        assert dataset.images.shape == (classes, 5, 32, 32, 3)
        assert set(dataset.names) == set(cifar100.CIFAR_FS_SPLITS[split])
        assert list(dataset.names) == sorted(dataset.names, key=cifar100.FINE_NAMES.index)
    for split, classes in zip(cifar100.SPLITS, (60, 20, 20)):
        assert load_fc100(root, split, cache_dir=cache).images.shape == (classes, 5, 32, 32, 3)
    test = load_cifar_fs(root, "test", cache_dir=cache)
    assert test.names[0] == "baby"  # fine label 2
    f = cifar100.FINE_NAMES.index(test.names[4])
    np.testing.assert_array_equal(test.images[4, 1, 9, 9], cifar_pixel(f, 1, 0).astype(np.float32) / 255)
    np.testing.assert_array_equal(test.images[4, 4, 9, 9], cifar_pixel(f, 1, 1).astype(np.float32) / 255)
    np.testing.assert_array_equal(test.images[4, 4, 0, 1], np.array([1, 2, 3], np.float32) / 255)
    fc = load_fc100(root, "val", image_size=16, channels=1, cache_dir=cache)
    assert fc.images.shape == (20, 5, 16, 16, 1) and fc.names[0] == "bear"
    assert len(list(cache.glob("*.npz"))) == 7 and not list(cache.glob("*.tmp"))


def test_cifar_cache_hit(tmp_path, monkeypatch):
    root, cache = make_cifar(tmp_path / "c"), tmp_path / "cache"
    first = load_fc100(root, "test", cache_dir=cache)
    monkeypatch.setattr(cifar100, "_decode", lambda *a: pytest.fail("decoded again although cached"))
    np.testing.assert_array_equal(load_fc100(root, "test", cache_dir=cache).images, first.images)


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no CIFAR-100 pickle .*train; pass --data_dir="):
        load_cifar_fs(tmp_path, "train")
    root = make_cifar(tmp_path / "few", per_class=(2, 1))
    with pytest.raises(ValueError, match=r"^CIFAR-FS class 'apple' has 3 images, fewer than the 4 .*--queries$"):
        load_cifar_fs(root, "train", needed=4, cache_dir=tmp_path / "cache")
    root = make_cifar(tmp_path / "skip", per_class=(1, 1), skip="otter")
    with pytest.raises(ValueError, match=r"^FC100 class 'otter' has no images"):
        load_fc100(root, "test", cache_dir=tmp_path / "cache")
    load_fc100(root, "train", cache_dir=tmp_path / "cache")  # other splits are unaffected
    (root / "test").write_bytes(b"\x80\x04truncated")
    with pytest.raises(ValueError, match=r"^CIFAR-FS: cannot read the pickle .*test \(.*\); download it again$"):
        load_cifar_fs(root, "val", cache_dir=tmp_path / "cache")


def test_unreadable_cache_is_rebuilt(tmp_path):
    root, cache = make_mini_pickle(tmp_path / "mini"), tmp_path / "cache"
    first = load_miniimagenet(root, "train", cache_dir=cache)
    (path,) = cache.glob("*.npz")
    path.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unreadable mini-ImageNet cache"):
        again = load_miniimagenet(root, "train", cache_dir=cache)
    np.testing.assert_array_equal(first.images, again.images)


def test_modules_are_listed():
    import dualmeta.datasets as datasets

    for name in ("folder", "miniimagenet", "tieredimagenet", "cifar100"):
        assert name in datasets.__doc__


def test_a_split_larger_than_free_memory_is_refused_before_allocation(tmp_path, monkeypatch):
    import dualmeta.guard

    root = make_mini_pickle(tmp_path / "mini")
    monkeypatch.setattr(dualmeta.guard, "available_bytes", lambda: 1000)
    with pytest.raises(MemoryError, match=r"mini-ImageNet split 'train' needs .* GiB as float32, more than the .* "
                                          r"free; load it with a smaller image_size="):
        load_miniimagenet(root, "train", cache_dir=tmp_path / "cache")


def test_the_experiment_reads_a_standard_set_at_its_own_size_and_colour(tmp_path, monkeypatch):
    from dualmeta.experiment import resolve

    root = tmp_path / "mini"
    for split in ("train", "val", "test"):
        make_mini_pickle(root, split)
    monkeypatch.setenv("DUALMETA_CACHE_DIR", str(tmp_path / "cache"))
    experiment = resolve("torch", "protonet", "miniimagenet", data_dir=str(root), ways=3, shots=1, queries=2,
                         train_ways=3, train_shots=1, train_queries=2)
    assert experiment.model()[1]["in_channels"] == 3 and experiment.model()[1]["image_size"] == 84
    episode = experiment.eval_tasks().episode(0)
    assert episode.support_x.shape == (3, 84, 84, 3) and episode.query_x.shape == (6, 84, 84, 3)
    maml = resolve("torch", "maml", "cifar_fs", data_dir=str(root), shots=5, queries=15)  # no Omniglot 20 limit
    assert maml.model()[1]["in_channels"] == 3 and maml.model()[1]["image_size"] == 32
    with pytest.raises(ValueError, match=r"--tasks=fc100 needs --data_dir=<the folder of its files>"):
        resolve("torch", "protonet", "fc100").eval_tasks()
    with pytest.raises(ValueError, match=r"mini-ImageNet class .* has 8 images, fewer than the 21"):
        resolve("torch", "maml", "miniimagenet", data_dir=str(root), shots=1, queries=20).train_tasks()


@pytest.mark.slow  # three CLI runs (~40 s of CPU)
def test_train_on_fabricated_miniimagenet_and_evaluate_in_the_other_backend(tmp_path):
    import os
    import subprocess
    import sys

    root = tmp_path / "mini"
    for split in ("train", "val", "test"):
        make_mini_pickle(root, split)
    env = dict(os.environ, DUALMETA_CACHE_DIR=str(tmp_path / "cache"))
    args = ["--tasks=miniimagenet", f"--data_dir={root}", "--learner=protonet", "--hidden=4", "--ways=3",
            "--train_ways=3", "--shots=1", "--queries=2", "--train_queries=2", "--steps=2", "--episodes=3"]

    def cli(*extra):
        result = subprocess.run([sys.executable, "-m", "dualmeta", *extra], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip().splitlines()[-1]

    cli("train", "--backend=torch", *args, f"--logdir={tmp_path / 'run'}")
    lines = [cli("evaluate", f"--backend={b}", f"--checkpoint={tmp_path / 'run'}", "--episodes=3",
                 f"--data_dir={root}") for b in ("torch", "tf")]
    assert lines[0].split("accuracy")[1] == lines[1].split("accuracy")[1], lines
