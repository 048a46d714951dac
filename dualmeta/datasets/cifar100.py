"""CIFAR-FS and FC100: few-shot splits of CIFAR-100's 100 fine classes, as ``ClassDataset`` objects.

Both read the CIFAR-100 "python version" (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
in ``root``: the pickles ``train`` (50,000 images), ``test`` (10,000) and ``meta``. Each data pickle holds
``b"data"`` ((N, 3072) uint8: the red, green and blue 32x32 planes of each image, row by row),
``b"fine_labels"`` and ``b"coarse_labels"``; ``meta`` holds ``b"fine_label_names"`` and
``b"coarse_label_names"``. Both few-shot sets pool the train and test pickles, so every class has 600
images (the ``train`` pickle's 500 first, then the ``test`` pickle's 100).

Class splits (the names are CIFAR-100's):

* CIFAR-FS (Bertinetto et al., "Meta-learning with differentiable closed-form solvers", ICLR 2019):
  64 ``train``, 16 ``val`` and 20 ``test`` fine classes, chosen at random. The lists below are those of
  the split files distributed with Torchmeta (github.com/tristandeleu/pytorch-meta,
  ``torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json``), which follow Bertinetto et
  al.'s release. Checked against those three files on 2026-12-03: the same 64 / 16 / 20 classes.
* FC100 (Oreshkin et al., "TADAM: Task dependent adaptive metric for improved few-shot learning",
  NeurIPS 2018): split by superclass, 12 ``train`` / 4 ``val`` / 4 ``test`` coarse classes, i.e. 60 / 20 /
  20 fine classes. Superclass indices {1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19} / {8, 11, 13, 16} /
  {0, 7, 12, 14}, as in the TADAM code (github.com/ElementAI/TADAM) and Torchmeta's
  ``cifar100/fc100/*.json`` (checked on 2026-12-03: the same superclasses, by name).

:data:`SUPERCLASSES` (the 20 coarse classes and their 5 fine classes each) is CIFAR-100's class table from
the dataset's description page; :data:`FINE_NAMES` and :data:`COARSE_NAMES` are in label order
(alphabetical, as in ``meta``).

Classes are in fine-label order. Images are resized with Pillow's BILINEAR filter when ``image_size`` is
not 32, converted to grey for ``channels=1``, and returned as float32 in [0, 1]. Decoded splits are cached
(see :mod:`dualmeta.datasets._cache`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dualmeta.datasets._cache import load_cached, load_pickle, to_uint8
from dualmeta.episodes import ClassDataset

__all__ = ["SPLITS", "SUPERCLASSES", "FINE_NAMES", "COARSE_NAMES", "FINE_TO_COARSE", "CIFAR_FS_SPLITS",
           "FC100_SUPERCLASS_SPLITS", "fc100_classes", "load_cifar_fs", "load_fc100"]

SPLITS = ("train", "val", "test")

SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
COARSE_NAMES: tuple[str, ...] = tuple(sorted(SUPERCLASSES))
FINE_NAMES: tuple[str, ...] = tuple(sorted(f for fines in SUPERCLASSES.values() for f in fines))
FINE_TO_COARSE: dict[str, str] = {f: c for c, fines in SUPERCLASSES.items() for f in fines}

CIFAR_FS_SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "dolphin", "seal", "aquarium_fish", "ray", "trout", "orchid", "sunflower", "tulip", "bottle", "bowl",
        "can", "cup", "plate", "apple", "mushroom", "orange", "pear", "clock", "keyboard", "chair", "couch",
        "bee", "caterpillar", "cockroach", "bear", "lion", "tiger", "wolf", "bridge", "castle", "house",
        "road", "skyscraper", "cloud", "forest", "mountain", "elephant", "kangaroo", "porcupine", "possum",
        "raccoon", "skunk", "lobster", "spider", "boy", "girl", "dinosaur", "lizard", "snake", "turtle",
        "hamster", "mouse", "rabbit", "shrew", "squirrel", "oak_tree", "palm_tree", "pine_tree",
        "willow_tree", "bus", "train", "lawn_mower", "streetcar", "tank",
    ),
    "val": (
        "beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea", "camel",
        "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor",
    ),
    "test": (
        "whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
        "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket",
    ),
}

FC100_SUPERCLASS_SPLITS: dict[str, tuple[int, ...]] = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}

_FILES = ("train", "test", "meta")


def fc100_classes(split: str) -> tuple[str, ...]:
    """The fine classes of FC100's ``split``, in label order."""
    coarse = {COARSE_NAMES[i] for i in FC100_SUPERCLASS_SPLITS[_check_split(split)]}
    return tuple(f for f in FINE_NAMES if FINE_TO_COARSE[f] in coarse)


def load_cifar_fs(root: str | os.PathLike, split: str = "train", image_size: int = 32, channels: int = 3,
                  needed: int | None = None, cache_dir: str | os.PathLike | None = None,
                  cache: bool = True) -> ClassDataset:
    """CIFAR-FS's ``split`` (``"train"``, ``"val"`` or ``"test"``) from the CIFAR-100 pickles in ``root``."""
    classes = CIFAR_FS_SPLITS[_check_split(split)]
    return _load("cifar_fs", "CIFAR-FS", root, split, sorted(classes, key=FINE_NAMES.index), image_size,
                 channels, needed, cache_dir, cache)


def load_fc100(root: str | os.PathLike, split: str = "train", image_size: int = 32, channels: int = 3,
               needed: int | None = None, cache_dir: str | os.PathLike | None = None,
               cache: bool = True) -> ClassDataset:
    """FC100's ``split`` (``"train"``, ``"val"`` or ``"test"``) from the CIFAR-100 pickles in ``root``."""
    return _load("fc100", "FC100", root, split, fc100_classes(split), image_size, channels, needed,
                 cache_dir, cache)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"Expected one of {list(SPLITS)}; received split={split!r}")
    return split


def _load(dataset, label, root, split, classes, image_size, channels, needed, cache_dir, cache) -> ClassDataset:
    root = Path(root).expanduser()
    paths = [root / name for name in _FILES]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{label}: no CIFAR-100 pickle {path}; pass --data_dir=<the "
                                    "cifar-100-python folder holding train, test and meta>")
    return load_cached(dataset, label, split, image_size, channels, paths,
                       lambda check: _decode(label, paths, classes, image_size, channels, check),
                       needed, cache_dir, cache)


def _names(meta: dict, key: bytes, path: Path, label: str) -> list[str]:
    if key not in meta:
        raise ValueError(f"{label}: {path} has no {key!r}; use the CIFAR-100 python version's meta file")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _read_data(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    stored = load_pickle(path, label)
    if not isinstance(stored, dict) or b"data" not in stored or b"fine_labels" not in stored:
        raise ValueError(f"{label}: {path} is not a CIFAR-100 data pickle (no b'data' and b'fine_labels'); "
                         "use the CIFAR-100 python version")
    data, fine = np.asarray(stored[b"data"]), np.asarray(stored[b"fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(fine):
        raise ValueError(f"{label}: b'data' of {path} has shape {data.shape} and dtype {data.dtype}, expected "
                         f"({len(fine)}, 3072) uint8; use the CIFAR-100 python version")
    return data, fine


def _decode(label, paths, classes, image_size, channels, check):
    train, test, meta_path = paths
    fine_names = _names(load_pickle(meta_path, label), b"fine_label_names", meta_path, label)
    missing = [c for c in classes if c not in fine_names]
    if missing:
        raise ValueError(f"{label}: class {missing[0]!r} is not among the fine_label_names of {meta_path}; "
                         "use the CIFAR-100 meta file")
    parts = [_read_data(train, label), _read_data(test, label)]
    data = np.concatenate([d for d, _ in parts])
    fine = np.concatenate([f for _, f in parts])
    members = [np.flatnonzero(fine == fine_names.index(c)) for c in classes]
    counts = [len(m) for m in members]
    check(list(classes), counts)
    per_class = min(counts)
    images = np.empty((len(classes), per_class, image_size, image_size, channels), dtype=np.uint8)
    for c, rows in enumerate(members):
        for i, row in enumerate(rows[:per_class]):
            pixels = data[row].reshape(3, 32, 32).transpose(1, 2, 0)
            images[c, i] = to_uint8(pixels, image_size, channels)
    return images, list(classes), counts
