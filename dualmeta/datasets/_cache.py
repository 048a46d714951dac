"""What the standard-set loaders share: the decoded-array cache, the per-class checks, pickles and resizing.

Decoding (PNG/JPEG files, pickled arrays) is the slow part of loading a standard set, so each loader
decodes a split once to ``uint8`` arrays and caches them in ``<cache_dir>/<dataset>-<split>-<size>px-
<channels>c-<key>.npz``, written atomically by the helpers that Omniglot's cache uses too
(:func:`write_npz`: a temporary file in the same folder, then ``os.replace``). The key
covers the dataset, split, image size, channels, the source files' names, sizes and modification times,
the Pillow version and the cache format, so editing the source files makes a new cache file. (For the
mini-ImageNet image folder, the key covers the CSV and the ``images/`` folder itself, not every image:
after replacing an image in place, delete the cache file.)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from dualmeta.episodes import ClassDataset

__all__ = ["CACHE_FORMAT", "ENV_CACHE_DIR", "default_cache_dir", "read_npz", "write_npz", "Decoded", "load_cached",
           "check_counts", "check_memory", "load_pickle", "to_uint8"]

CACHE_FORMAT = 1
ENV_CACHE_DIR = "DUALMETA_CACHE_DIR"

# images: (classes, per_class, size, size, channels) uint8; names: one per class; counts: the number of
# images each class has in the source (per_class is their minimum).
Decoded = tuple[np.ndarray, Sequence[str], Sequence[int]]


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded arrays are cached: ``cache_dir``, else ``$DUALMETA_CACHE_DIR``, else ``~/.cache/dualmeta``."""
    if cache_dir is not None and str(cache_dir) != "":
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    return Path.home() / ".cache" / "dualmeta"


def read_npz(path: Path, key: str, parse, what: str, source: str, stacklevel: int = 3):
    """``parse(stored)`` of the ``.npz`` cache at ``path`` whose ``key`` entry is ``key``; None when the
    file is absent or stale, and also (with a warning) when it is unreadable or ``parse`` raises, so that
    the caller decodes ``source`` again. Shared by every loader of ``dualmeta.datasets``."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["key"]) != key:
                return None
            return parse(stored)
    except Exception as err:  # noqa: BLE001 - any unreadable cache is simply rebuilt
        warnings.warn(f"Ignoring the unreadable {what} cache {path} ({type(err).__name__}: {err}); "
                      f"decoding {source} again", RuntimeWarning, stacklevel=stacklevel)
        return None


def write_npz(path: Path, key: str, arrays: Mapping[str, np.ndarray], what: str, source: str,
              stacklevel: int = 3) -> None:
    """Writes ``arrays`` and ``key`` to the ``.npz`` file ``path`` atomically (a temporary file in the same
    folder, then ``os.replace``); a failure (read-only folder, full disk) only warns and leaves no file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(f"Could not write the {what} cache {path} ({err}); the next load decodes the "
                      f"{source} again (set {ENV_CACHE_DIR} to a writable folder)", RuntimeWarning,
                      stacklevel=stacklevel)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def check_counts(label: str, names: Sequence[str], counts: Sequence[int], needed: int | None) -> None:
    """One-line ``ValueError`` naming the first empty class, or the first with fewer than ``needed`` images."""
    for name, count in zip(names, counts):
        if count == 0:
            raise ValueError(f"{label} class {name!r} has no images; remove it from the split or add its images")
    if needed is not None:
        for name, count in zip(names, counts):
            if count < needed:
                raise ValueError(f"{label} class {name!r} has {count} images, fewer than the {needed} an episode "
                                 "needs (shots + queries); add images or lower --shots/--queries")


def check_memory(label: str, split: str, needed_bytes: int) -> None:
    """One-line ``MemoryError`` when the float32 split would not fit in the memory the machine has free
    (``MemAvailable``), before it is allocated: a whole split is held as float32 for the episodes."""
    from dualmeta.guard import available_bytes

    free = available_bytes()
    if free is not None and needed_bytes > free:
        raise MemoryError(f"{label} split {split!r} needs {needed_bytes / 2**30:.1f} GiB as float32, more than the "
                          f"{free / 2**30:.1f} GiB free; load it with a smaller image_size= or on a machine "
                          "with more memory")


def load_pickle(path: Path, label: str):
    """The object pickled in ``path`` (Python 3 pickles, or Python 2 ones read as latin-1)."""
    try:
        with open(path, "rb") as handle:
            try:
                return pickle.load(handle)
            except UnicodeDecodeError:  # a Python 2 pickle of numpy arrays
                handle.seek(0)
                return pickle.load(handle, encoding="latin1")
    except Exception as error:  # noqa: BLE001 - any unreadable pickle gets the same one-line message
        raise ValueError(f"{label}: cannot read the pickle {path} ({type(error).__name__}); "
                         "download it again") from None


def to_uint8(image, image_size: int, channels: int) -> np.ndarray:
    """A PIL image or an ``(H, W, 3)`` uint8 array as ``(image_size, image_size, channels)`` uint8, resized
    with Pillow's BILINEAR filter and converted to grey (``channels=1``, Pillow's ``"L"``) or RGB."""
    from PIL import Image  # local: keeps `import dualmeta` light

    if isinstance(image, np.ndarray):
        if image.shape == (image_size, image_size, 3) and channels == 3 and image.dtype == np.uint8:
            return image
        image = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, channels)


def _check_shape(image_size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise ValueError(f"Expected channels 1 (grey) or 3 (RGB); received channels={channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size <= 0:
        raise ValueError(f"Expected image_size to be a positive integer; received image_size={image_size!r}")


def load_cached(dataset: str, label: str, split: str, image_size: int, channels: int,
                sources: Sequence[Path], decode: Callable[[Callable], Decoded], needed: int | None = None,
                cache_dir: str | os.PathLike | None = None, cache: bool = True) -> ClassDataset:
    """The split as a :class:`ClassDataset`, from the cache or from ``decode(check)``.

    ``decode`` gets ``check(names, counts)`` and must call it as soon as it knows the classes' image
    counts (before decoding pixels), so that a class with too few images fails fast; a cached split is
    checked against its stored counts.
    """
    from PIL import __version__ as pillow_version

    _check_shape(image_size, channels)
    image_size = int(image_size)

    def check(names, counts):
        check_counts(label, names, counts, needed)

    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in sources]
    key_fields = {"format": CACHE_FORMAT, "dataset": dataset, "split": split, "image_size": image_size,
                  "channels": channels, "pillow": pillow_version, "files": stats}
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
    path = default_cache_dir(cache_dir) / f"{dataset}-{split}-{image_size}px-{channels}c-{key[:16]}.npz"

    def parse(stored):
        images, names, counts = stored["images"], tuple(str(n) for n in stored["names"]), stored["counts"]
        if images.dtype != np.uint8 or not images.shape[0] == len(names) == len(counts):
            raise ValueError("inconsistent arrays")
        return images, names, [int(c) for c in counts]

    record = read_npz(path, key, parse, what=label, source="the source files", stacklevel=4) if cache else None
    if record is None:
        images, names, counts = decode(check)
        record = np.asarray(images, dtype=np.uint8), tuple(names), [int(c) for c in counts]
        if cache:
            write_npz(path, key, dict(images=record[0], names=np.array(record[1]),
                                      counts=np.array(record[2], dtype=np.int64)),
                      what=label, source="source files", stacklevel=4)
    images, names, counts = record
    check(names, counts)
    check_memory(label, split, images.size * 4)
    classes = len(names)
    return ClassDataset(images=images.astype(np.float32) / np.float32(255.0), sources=np.arange(classes),
                        rotations=np.zeros(classes, dtype=np.int64), names=names)
