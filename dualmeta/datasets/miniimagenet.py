"""mini-ImageNet (Vinyals et al. 2016; the class split of Ravi & Larochelle 2017) as a ``ClassDataset``.

100 ImageNet classes, 600 images each: 64 classes for ``train``, 16 for ``val``, 20 for ``test``.
Two on-disk forms are read, whichever ``root`` holds (the CSV form is tried first):

* Ravi & Larochelle's CSVs with an image folder: ``root/train.csv``, ``root/val.csv``, ``root/test.csv``
  (header ``filename,label``; ``label`` is the ImageNet wnid, e.g. ``n01532829``) and the images in
  ``root/images/<filename>`` (any size; resized to ``image_size``).
* The pickled 84x84 arrays: ``root/mini-imagenet-cache-train.pkl`` (and ``-val``, ``-test``), each a
  dict with ``image_data`` (``(N, 84, 84, 3)`` uint8) and ``class_dict`` (``{wnid: [row indices]}``).

Classes are sorted by wnid; within a class images keep the CSV (or index) order and every class keeps its
first ``per_class`` images (as many as its smallest class has). Images are resized with Pillow's BILINEAR
filter when ``image_size`` is not their size, converted to grey for ``channels=1``, and returned as
float32 in [0, 1]. Decoded splits are cached (see :mod:`dualmeta.datasets._cache`).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from dualmeta.datasets._cache import load_cached, load_pickle, to_uint8
from dualmeta.episodes import ClassDataset

__all__ = ["SPLITS", "load_miniimagenet"]

SPLITS = ("train", "val", "test")
_LABEL = "mini-ImageNet"


def _pickle_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def load_miniimagenet(root: str | os.PathLike, split: str = "train", image_size: int = 84, channels: int = 3,
                      needed: int | None = None, cache_dir: str | os.PathLike | None = None,
                      cache: bool = True) -> ClassDataset:
    """The classes of ``split`` (``"train"``, ``"val"`` or ``"test"``) of the mini-ImageNet in ``root``.

    ``needed``: shots + queries; a class with fewer images fails with a one-line ``ValueError`` naming it.
    ``cache_dir``: folder of the decoded-array cache (default :func:`dualmeta.datasets.omniglot.default_cache_dir`).
    """
    if split not in SPLITS:
        raise ValueError(f"Expected one of {list(SPLITS)}; received split={split!r}")
    root = Path(root).expanduser()
    listing, images_dir, pickled = root / f"{split}.csv", root / "images", root / _pickle_name(split)
    if listing.is_file():
        if not images_dir.is_dir():
            raise FileNotFoundError(f"{_LABEL}: {listing} is there but not the image folder {images_dir}; "
                                    f"pass --data_dir=<folder holding {split}.csv and images/>")
        return load_cached("miniimagenet-csv", _LABEL, split, image_size, channels, [listing, images_dir],
                           lambda check: _decode_csv(listing, images_dir, image_size, channels, check),
                           needed, cache_dir, cache)
    if pickled.is_file():
        return load_cached("miniimagenet-pkl", _LABEL, split, image_size, channels, [pickled],
                           lambda check: _decode_pickle(pickled, image_size, channels, check),
                           needed, cache_dir, cache)
    raise FileNotFoundError(f"{_LABEL}: found neither {listing} (with images/) nor {pickled}; pass "
                            f"--data_dir=<folder holding {split}.csv and images/, or {_pickle_name(split)}>")


def _read_csv(listing: Path) -> dict[str, list[str]]:
    """``{wnid: [file names]}`` of a Ravi-Larochelle CSV, wnids sorted, files in CSV order."""
    files: dict[str, list[str]] = {}
    with open(listing, newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["filename", "label"]:
            raise ValueError(f"{_LABEL}: {listing} does not start with the header 'filename,label'; "
                             "use the Ravi-Larochelle split CSVs")
        for number, row in enumerate(rows, start=2):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise ValueError(f"{_LABEL}: line {number} of {listing} is not 'filename,label'; fix or remove it")
            files.setdefault(row[1].strip(), []).append(row[0].strip())
    if not files:
        raise ValueError(f"{_LABEL}: {listing} lists no images; use the Ravi-Larochelle split CSVs")
    return dict(sorted(files.items()))


def _decode_csv(listing: Path, images_dir: Path, image_size: int, channels: int, check):
    files = _read_csv(listing)
    names = list(files)
    counts = [len(f) for f in files.values()]
    check(names, counts)
    per_class = min(counts)
    images = np.empty((len(names), per_class, image_size, image_size, channels), dtype=np.uint8)
    for c, (name, found) in enumerate(files.items()):
        for i, filename in enumerate(found[:per_class]):
            images[c, i] = _decode_file(images_dir / filename, image_size, channels, name, listing.name)
    return images, names, counts


def _decode_file(path: Path, image_size: int, channels: int, name: str, listed_in: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # local: keeps `import dualmeta` light

    if not path.is_file():
        raise FileNotFoundError(f"{_LABEL} class {name!r}: {path}, listed in {listed_in}, does not exist; "
                                "put the image there or pass the right --data_dir")
    try:
        with Image.open(path) as image:
            return to_uint8(image, image_size, channels)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{_LABEL} class {name!r}: cannot read image {path} ({type(error).__name__}); "
                         "replace the file") from None


def _decode_pickle(path: Path, image_size: int, channels: int, check):
    stored = load_pickle(path, _LABEL)
    if not isinstance(stored, dict) or "image_data" not in stored or "class_dict" not in stored:
        raise ValueError(f"{_LABEL}: {path} is not a dict with 'image_data' and 'class_dict'; "
                         "use the mini-imagenet-cache pickles")
    data, class_dict = np.asarray(stored["image_data"]), stored["class_dict"]
    if data.ndim != 4 or data.shape[-1] != 3 or data.dtype != np.uint8:
        raise ValueError(f"{_LABEL}: image_data of {path} has shape {data.shape} and dtype {data.dtype}; "
                         "expected (N, 84, 84, 3) uint8")
    classes = {str(k.decode() if isinstance(k, bytes) else k): [int(i) for i in v]
               for k, v in class_dict.items()}
    classes = dict(sorted(classes.items()))
    names, counts = list(classes), [len(v) for v in classes.values()]
    check(names, counts)
    for name, rows in classes.items():
        bad = [i for i in rows if not 0 <= i < len(data)]
        if bad:
            raise ValueError(f"{_LABEL} class {name!r}: row {bad[0]} of class_dict in {path} is outside "
                             f"image_data (N={len(data)}); download the pickle again")
    per_class = min(counts)
    images = np.empty((len(names), per_class, image_size, image_size, channels), dtype=np.uint8)
    for c, rows in enumerate(classes.values()):
        for i, row in enumerate(rows[:per_class]):
            images[c, i] = to_uint8(data[row], image_size, channels)
    return images, names, counts
