"""tiered-ImageNet (Ren et al. 2018) in the form of its authors' release, as a ``ClassDataset``.

608 ImageNet classes in 34 categories; the class split is that of the release (351 ``train``, 97 ``val``,
160 ``test`` classes). Files in ``root``, for each split:

* ``<split>_images_png.pkl``: a pickled sequence of PNG-encoded images (``bytes`` or 1-D uint8 arrays),
  84x84 RGB in the release;
* ``<split>_labels.pkl``: a pickled dict with ``label_specific`` (the class index of every image) and,
  when present, ``label_specific_str`` (the class names, indexed by ``label_specific``).

The PNGs are decoded with Pillow; classes are in ``label_specific`` order (named by
``label_specific_str``, else by their index), images in file order, and every class keeps its first
``per_class`` images (as many as the smallest class has). Images are resized with Pillow's BILINEAR filter
when ``image_size`` is not 84, converted to grey for ``channels=1``, and returned as float32 in [0, 1].
Decoded splits are cached (see :mod:`dualmeta.datasets._cache`). The whole ``train`` split at 84x84 RGB
holds 351 x 732 images: about 22 GB as float32.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from dualmeta.datasets._cache import load_cached, load_pickle, to_uint8
from dualmeta.episodes import ClassDataset

__all__ = ["SPLITS", "load_tieredimagenet"]

SPLITS = ("train", "val", "test")
_LABEL = "tiered-ImageNet"


def load_tieredimagenet(root: str | os.PathLike, split: str = "train", image_size: int = 84, channels: int = 3,
                        needed: int | None = None, cache_dir: str | os.PathLike | None = None,
                        cache: bool = True) -> ClassDataset:
    """The classes of ``split`` (``"train"``, ``"val"`` or ``"test"``) of the tiered-ImageNet in ``root``.

    ``needed``: shots + queries; a class with fewer images fails with a one-line ``ValueError`` naming it.
    ``cache_dir``: folder of the decoded-array cache (default :func:`dualmeta.datasets.omniglot.default_cache_dir`).
    """
    if split not in SPLITS:
        raise ValueError(f"Expected one of {list(SPLITS)}; received split={split!r}")
    root = Path(root).expanduser()
    pngs, labels = root / f"{split}_images_png.pkl", root / f"{split}_labels.pkl"
    for path in (pngs, labels):
        if not path.is_file():
            raise FileNotFoundError(f"{_LABEL}: no {path}; pass --data_dir=<folder holding "
                                    f"{pngs.name} and {labels.name}>")
    return load_cached("tieredimagenet", _LABEL, split, image_size, channels, [pngs, labels],
                       lambda check: _decode(pngs, labels, image_size, channels, check), needed, cache_dir, cache)


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _read_labels(path: Path) -> tuple[np.ndarray, list[str] | None]:
    stored = load_pickle(path, _LABEL)
    if isinstance(stored, dict):
        stored = {_text(k): v for k, v in stored.items()}
    if not isinstance(stored, dict) or "label_specific" not in stored:
        raise ValueError(f"{_LABEL}: {path} is not a dict with 'label_specific'; use the release's labels pickle")
    labels = np.asarray(stored["label_specific"])
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or (labels < 0).any():
        raise ValueError(f"{_LABEL}: label_specific of {path} is not one non-negative integer per image")
    names = stored.get("label_specific_str")
    return labels.astype(np.int64), None if names is None else [_text(n) for n in names]


def _decode(pngs: Path, labels_path: Path, image_size: int, channels: int, check):
    labels, names = _read_labels(labels_path)
    classes = (int(labels.max()) + 1 if len(labels) else 0) if names is None else len(names)
    if names is not None and len(labels) and labels.max() >= classes:
        raise ValueError(f"{_LABEL}: {labels_path} has label {int(labels.max())} but only {classes} "
                         "label_specific_str names; download it again")
    names = names if names is not None else [str(i) for i in range(classes)]
    members = [np.flatnonzero(labels == c) for c in range(classes)]
    counts = [len(m) for m in members]
    if not names:
        raise ValueError(f"{_LABEL}: {labels_path} holds no labels; download it again")
    check(names, counts)
    encoded = load_pickle(pngs, _LABEL)
    if not hasattr(encoded, "__len__") or isinstance(encoded, (bytes, dict)):
        raise ValueError(f"{_LABEL}: {pngs} is not a sequence of PNG-encoded images; use the release's pickle")
    if len(encoded) != len(labels):
        raise ValueError(f"{_LABEL}: {pngs} holds {len(encoded)} images but {labels_path} {len(labels)} labels; "
                         "use the two files of one split")
    per_class = min(counts)
    images = np.empty((classes, per_class, image_size, image_size, channels), dtype=np.uint8)
    for c, rows in enumerate(members):
        for i, row in enumerate(rows[:per_class]):
            images[c, i] = _decode_png(encoded[row], image_size, channels, names[c], int(row), pngs)
    return images, names, counts


def _decode_png(data, image_size: int, channels: int, name: str, row: int, pngs: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # local: keeps `import dualmeta` light

    try:
        raw = data if isinstance(data, bytes) else np.asarray(data, dtype=np.uint8).tobytes()
        with Image.open(io.BytesIO(raw)) as image:
            return to_uint8(image, image_size, channels)
    except (UnidentifiedImageError, OSError, ValueError, TypeError) as error:
        raise ValueError(f"{_LABEL} class {name!r}: cannot read image {row} of {pngs} ({type(error).__name__}); "
                         "download the file again") from None
