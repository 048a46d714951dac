"""Your own images: ``root/<class>/*.png|jpg`` as a :class:`dualmeta.episodes.ClassDataset`.

Class splits come from sub-folders (``root/train/<class>/``, ``root/val/...``, ``root/test/...``) or from list
files (``root/train.txt`` with one class folder name per line, the folders in ``root``). Images of any size
are resized to ``image_size`` x ``image_size`` (bilinear) and converted to grey (``channels=1``) or RGB
(``channels=3``), as float32 in [0, 1]. Every class keeps its first ``per_class`` images in name order
(default: as many as the smallest class has), since episodes need the same count per class.

Bad input fails with one line naming the class: an empty class folder, an unreadable image, fewer images
than ``needed`` (shots + queries).
"""
from __future__ import annotations

import os

import numpy as np

from dualmeta.episodes import ClassDataset

__all__ = ["IMAGE_EXTENSIONS", "SPLITS", "class_folders", "load_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
SPLITS = ("train", "val", "test")


def class_folders(root: str, split: str) -> list[tuple[str, str]]:
    """``(class name, folder)`` of a split, from ``root/<split>/`` or from ``root/<split>.txt``."""
    if split not in SPLITS:
        raise ValueError(f"Expected one of {list(SPLITS)}; received split={split!r}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"No image folder at {root!r}; pass --data_dir=<folder with train/val/test>")
    sub, listing = os.path.join(root, split), os.path.join(root, f"{split}.txt")
    if os.path.isdir(sub):
        names = sorted(n for n in os.listdir(sub) if os.path.isdir(os.path.join(sub, n)))
        return [(n, os.path.join(sub, n)) for n in names]
    if os.path.isfile(listing):
        with open(listing) as handle:
            names = [line.strip() for line in handle if line.strip() and not line.startswith("#")]
        missing = [n for n in names if not os.path.isdir(os.path.join(root, n))]
        if missing:
            raise ValueError(f"{listing} lists class {missing[0]!r}, which is not a folder in {root}")
        return [(n, os.path.join(root, n)) for n in names]
    raise ValueError(f"{root!r} has neither a {split}/ sub-folder nor a {split}.txt list of class folders; "
                     "make one of the two")


def _decode(path: str, image_size: int, channels: int, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # local: keeps `import dualmeta` light

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB").resize((image_size, image_size),
                                                                          Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"class {name!r}: cannot read image {path} ({type(error).__name__}); "
                         "remove or replace the file") from None
    return array.reshape(image_size, image_size, channels)


def load_folder(root: str, split: str = "train", image_size: int = 28, channels: int = 1,
                needed: int | None = None, per_class: int | None = None) -> ClassDataset:
    """The classes of ``split`` under ``root`` as a ``ClassDataset`` (no rotations)."""
    if channels not in (1, 3):
        raise ValueError(f"Expected channels 1 (grey) or 3 (RGB); received channels={channels!r}")
    folders = class_folders(root, split)
    if not folders:
        raise ValueError(f"{root!r} split {split!r} has no class folders; put each class's images in its own folder")
    files = {}
    for name, folder in folders:
        found = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not found:
            raise ValueError(f"class {name!r}: no images in {folder} (expected {'/'.join(IMAGE_EXTENSIONS)}); "
                             "fill it or remove it")
        if needed is not None and len(found) < needed:
            raise ValueError(f"class {name!r} has {len(found)} images, fewer than the {needed} an episode needs "
                             f"(shots + queries); add images or lower --shots/--queries")
        files[name] = [os.path.join(folder, f) for f in found]
    count = per_class or min(len(f) for f in files.values())
    images = np.stack([np.stack([_decode(p, image_size, channels, name) for p in paths[:count]])
                       for name, paths in files.items()])
    classes = len(files)
    return ClassDataset(images=images, sources=np.arange(classes), rotations=np.zeros(classes, dtype=np.int64),
                        names=tuple(files))
