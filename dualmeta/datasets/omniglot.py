"""Omniglot for few-shot learning (pure numpy / Pillow / stdlib; never imports tensorflow or torch).

``dualmeta.data``, the earlier name of this module, is the same module object.

Files (in the *data dir*, see :func:`default_data_dir`), exactly as distributed by Lake et al. (2015):

* ``images_background.zip``: ``images_background/<Alphabet>/characterNN/IIII_DD.png`` (30 alphabets,
  964 characters), ``images_evaluation.zip``: the same under ``images_evaluation/`` (20 alphabets, 659
  characters). ``IIII`` is the global character id (0001-1623), ``DD`` the drawing (01-20); every PNG is
  105x105, 1-bit, white background and black ink.
* ``all_runs.zip``: Lake's 20 one-shot runs, ``runNN/training/classYY.png`` (the support set),
  ``runNN/test/itemXX.png`` (the queries) and ``runNN/class_labels.txt``.

Preprocessing (the same for every image, in :func:`load_omniglot_images` and :func:`lake_one_shot_runs`):
the PNG is decoded with Pillow and inverted so that ink is 1.0 and background 0.0; when ``image_size``
is not 105 it is resized with Pillow's BILINEAR filter applied to the *float* (mode ``"F"``) image.
Pillow widens the bilinear (triangle) kernel by the downscaling factor, so 105 -> 28 averages each output
pixel over about 7.5 input pixels (anti-aliased), never overshoots (values stay in [0, 1], unlike
LANCZOS ringing) and keeps float precision (no rounding to 8 bits). Arrays are float32 NHWC with one
channel.

Decoded arrays are cached in an ``.npz`` file (see :func:`load_omniglot_images`), so only the first
load of a given image size decodes the 32,460 PNGs.

Splits (:func:`omniglot_split`) return :class:`dualmeta.episodes.ClassDataset` objects that share one
image array; rotated copies of a character count as new classes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import io
import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import PIL
from PIL import Image

from dualmeta.datasets._cache import ENV_CACHE_DIR, default_cache_dir
from dualmeta.datasets._cache import read_npz as _read_npz, write_npz as _write_npz
from dualmeta.episodes import ClassDataset, Episode, check_positive

__all__ = [
    "ENV_DATA_DIR", "ENV_CACHE_DIR", "DEFAULT_URL", "KNOWN_SHA256", "OMNIGLOT_FILES", "SPLITS",
    "OmniglotImages", "default_data_dir", "default_cache_dir", "load_omniglot_images", "omniglot_split",
    "split_from_file", "lake_one_shot_runs", "download_omniglot",
]

_log = logging.getLogger(__name__)

ENV_DATA_DIR = "DUALMETA_DATA_DIR"

BACKGROUND_ZIP = "images_background.zip"
EVALUATION_ZIP = "images_evaluation.zip"
RUNS_ZIP = "all_runs.zip"
OMNIGLOT_FILES = (BACKGROUND_ZIP, EVALUATION_ZIP, RUNS_ZIP)

NATIVE_SIZE = 105  # every Omniglot PNG is 105x105
DRAWINGS = 20  # drawings (examples) per character

# Where each file lives below a base URL (the layout of github.com/brendenlake/omniglot/python/).
_REMOTE_PATHS = {
    BACKGROUND_ZIP: BACKGROUND_ZIP,
    EVALUATION_ZIP: EVALUATION_ZIP,
    RUNS_ZIP: "one-shot-classification/all_runs.zip",
}
DEFAULT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"

_OFFICIAL_SHA256 = {
    # Official files (sizes 9,464,212 / 6,462,886 / 352,787 bytes). The sums of the two image zips are
    # those recorded by tensorflow_datasets for these URLs; all_runs.zip is byte-identical to the copy in
    # the project's shared data folder. Note that the image zips in that shared folder were re-encoded
    # (same pixels, different bytes: sha256 628b1970... and a004722e...), so they do NOT match these sums.
    BACKGROUND_ZIP: "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    EVALUATION_ZIP: "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    RUNS_ZIP: "437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",
}
# Expected sha256 per base URL (a URL not listed here gets only the zip-layout check).
KNOWN_SHA256: dict[str, dict[str, str]] = {
    DEFAULT_URL: _OFFICIAL_SHA256,
    "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/": _OFFICIAL_SHA256,
}

_FIX_HINT = ("pass the folder holding images_background.zip, images_evaluation.zip and all_runs.zip "
             f"with the --data_dir flag or the {ENV_DATA_DIR} environment variable, or download the "
             "files with dualmeta.datasets.omniglot.download_omniglot(data_dir)")
_REDOWNLOAD_HINT = ("the file is damaged or not the Omniglot file: delete it and download it again with "
                    "dualmeta.datasets.omniglot.download_omniglot(data_dir, overwrite=True)")

_IMAGE_ENTRY = re.compile(r"(?P<top>[^/]+)/(?P<alphabet>[^/]+)/character(?P<number>\d\d)/"
                          r"(?P<id>\d{4})_(?P<drawing>\d\d)\.png")
_RUN_ENTRY = re.compile(r"run(?P<run>\d\d)/(?:(?P<kind>training|test)/(?:class|item)(?P<n>\d\d)\.png"
                        r"|(?P<labels>class_labels\.txt))")
_LABEL_LINE = re.compile(r"run(?P<run>\d\d)/test/item(?P<item>\d\d)\.png\s+"
                         r"run(?P<run2>\d\d)/training/class(?P<cls>\d\d)\.png")
_CACHE_FORMAT = 1
_RESAMPLE = "pillow-bilinear-float"
_MEMORY: dict[tuple, "OmniglotImages"] = {}  # in-process memo: splits of one run share one image array


# ----------------------------------------------------------------------------------------------------
# Locations
# ----------------------------------------------------------------------------------------------------

def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The Omniglot data folder.

    In order: ``data_dir`` when given; else ``$DUALMETA_DATA_DIR`` when set; else ``<repo>/../shared/data/
    omniglot`` when that folder exists (``<repo>`` is the folder holding the ``dualmeta`` package); else
    ``~/.cache/dualmeta/omniglot``. The folder need not exist (loaders raise ``FileNotFoundError``).
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    shared = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
    if shared.is_dir():
        return shared
    return Path.home() / ".cache" / "dualmeta" / "omniglot"


def _require_file(data_dir: Path, name: str) -> Path:
    path = data_dir / name
    if not path.is_file():
        where = "does not exist" if not data_dir.is_dir() else f"has no {name}"
        raise FileNotFoundError(f"Omniglot file {path} not found: the data folder {data_dir} {where}. "
                                f"To fix it, {_FIX_HINT}.")
    return path


# ----------------------------------------------------------------------------------------------------
# Zip reading and validation
# ----------------------------------------------------------------------------------------------------

def _is_corruption(err: BaseException) -> bool:
    """True for errors of a damaged zip; False for a missing or unreadable (permissions) file."""
    return not isinstance(err, OSError) or type(err) is OSError


def _open_zip(path: Path) -> zipfile.ZipFile:
    """Opens a zip, turning a truncated or corrupt file into a ``ValueError`` that names it."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        if not _is_corruption(err):
            raise
        raise ValueError(f"{path} is not a readable zip file ({type(err).__name__}: {err}); "
                         f"{_REDOWNLOAD_HINT}") from err


def _read_entry(zf: zipfile.ZipFile, path: Path, entry: str) -> bytes:
    try:
        return zf.read(entry)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        if not _is_corruption(err):
            raise
        raise ValueError(f"{path}: entry {entry} cannot be read ({type(err).__name__}: {err}); "
                         f"{_REDOWNLOAD_HINT}") from err


def _is_ignorable(entry: str) -> bool:
    """Directory entries and the metadata some zip tools add (``__MACOSX/``, dot files)."""
    return (entry.endswith("/") or entry.startswith("__MACOSX/")
            or entry.rsplit("/", 1)[-1].startswith("."))


@dataclasses.dataclass(frozen=True)
class _Character:
    alphabet: str
    number: int
    id: int
    entries: tuple[str, ...]  # the 20 drawings' entry names, ordered by drawing number

    @property
    def name(self) -> str:
        return f"{self.alphabet}/character{self.number:02d}"


def _index_images_zip(zf: zipfile.ZipFile, path: Path, top: str) -> list[_Character]:
    """Validates the layout ``top/<Alphabet>/characterNN/IIII_DD.png`` and lists the characters, ordered
    by alphabet name then character number. Reads only the zip directory (no image is decoded)."""
    layout = f"{top}/<Alphabet>/characterNN/IIII_DD.png"
    drawings: dict[tuple[str, int], dict[int, str]] = {}
    ids: dict[tuple[str, int], int] = {}
    for entry in zf.namelist():
        if _is_ignorable(entry):
            continue
        match = _IMAGE_ENTRY.fullmatch(entry)
        if match is None or match["top"] != top:
            raise ValueError(f"{path}: entry {entry!r} does not match the expected layout {layout} "
                             f"(e.g. {top}/Latin/character01/0683_01.png); {_REDOWNLOAD_HINT}")
        key = (match["alphabet"], int(match["number"]))
        char_id, drawing = int(match["id"]), int(match["drawing"])
        if ids.setdefault(key, char_id) != char_id:
            raise ValueError(f"{path}: {key[0]}/character{key[1]:02d} mixes character ids "
                             f"{ids[key]:04d} and {char_id:04d} (entry {entry}); {_REDOWNLOAD_HINT}")
        drawings.setdefault(key, {})[drawing] = entry
    if not drawings:
        raise ValueError(f"{path} holds no image; expected the layout {layout}; {_REDOWNLOAD_HINT}")
    characters = []
    for key in sorted(drawings):
        found = drawings[key]
        if sorted(found) != list(range(1, DRAWINGS + 1)):
            raise ValueError(f"{path}: {key[0]}/character{key[1]:02d} has {len(found)} drawings "
                             f"(numbers {sorted(found)}); expected exactly {DRAWINGS}, numbered 01-20; "
                             f"{_REDOWNLOAD_HINT}")
        characters.append(_Character(key[0], key[1], ids[key], tuple(found[d] for d in sorted(found))))
    return characters


def _decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> (105, 105) float32 ink image (ink 1.0, background 0.0)."""
    try:
        image = Image.open(io.BytesIO(data))
        size = image.size
        if size != (NATIVE_SIZE, NATIVE_SIZE):
            raise ValueError(f"{where}: image is {size[0]}x{size[1]} pixels; every Omniglot image must "
                             f"be {NATIVE_SIZE}x{NATIVE_SIZE}; {_REDOWNLOAD_HINT}")
        if image.mode == "1":  # white (True) background, black (False) ink
            return np.logical_not(np.asarray(image)).astype(np.float32)
        gray = np.asarray(image.convert("L"), dtype=np.float32)
        return 1.0 - gray / 255.0
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{where}: not a readable PNG ({type(err).__name__}: {err}); "
                         f"{_REDOWNLOAD_HINT}") from err


def _resize(ink: np.ndarray, image_size: int) -> np.ndarray:
    """(105, 105) float32 -> (S, S) float32 with Pillow BILINEAR on the float image (see module doc)."""
    if image_size == ink.shape[0]:
        return ink
    resized = Image.fromarray(ink).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _load_png(zf: zipfile.ZipFile, path: Path, entry: str, image_size: int) -> np.ndarray:
    return _resize(_decode_png(_read_entry(zf, path, entry), f"{path}:{entry}"), image_size)


# ----------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class OmniglotImages:
    """Every Omniglot character, background characters first.

    Attributes:
      images: ``(characters, 20, S, S, 1)`` float32 in [0, 1] (ink 1.0), read-only; ordered background
        then evaluation, each by alphabet name then character number; drawing ``d`` at index ``d-1``.
      names: ``"Alphabet/characterNN"`` per character.
      ids: global character id per character (``IIII`` of the file names, 1..1623).
      background: bool mask, True for the characters of ``images_background.zip`` (the first 964).
    """
    images: np.ndarray
    names: tuple[str, ...]
    ids: np.ndarray
    background: np.ndarray

    @property
    def num_characters(self) -> int:
        return len(self.names)

    @property
    def num_background(self) -> int:
        return int(self.background.sum())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    @property
    def alphabets(self) -> list[str]:
        """Alphabet names in storage order (background alphabets first)."""
        return list(dict.fromkeys(name.split("/")[0] for name in self.names))

    def index(self, name: str) -> int:
        """Position of character ``"Alphabet/characterNN"`` in :attr:`images`."""
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = {n: i for i, n in enumerate(self.names)}
            object.__setattr__(self, "_lookup", lookup)
        if name not in lookup:
            raise KeyError(f"No Omniglot character {name!r}; expected a name like 'Latin/character01'")
        return lookup[name]


def load_omniglot_images(data_dir: str | os.PathLike | None = None, image_size: int = 28,
                         cache_dir: str | os.PathLike | None = None, cache: bool = True) -> OmniglotImages:
    """Loads (decodes, inverts and resizes) every image of ``images_background.zip`` and
    ``images_evaluation.zip``.

    Args:
      data_dir: the folder holding the zips (default: :func:`default_data_dir`).
      image_size: side of the square output images; 105 keeps the native resolution.
      cache_dir: folder of the ``.npz`` cache (default: :func:`default_cache_dir`).
      cache: read and write the ``.npz`` cache. The cache file is keyed by the image size, the zips'
        sizes and modification times, the Pillow version and the preprocessing, and written atomically
        (a temporary file in the same folder, then ``os.replace``). Loads of the same files in one
        process also share one array.

    Raises:
      FileNotFoundError: a zip is missing.
      ValueError: a zip is truncated or corrupt, does not follow the Omniglot layout, holds a character
        without exactly 20 drawings or an image that is not 105x105.
    """
    check_positive(image_size=image_size)
    image_size = int(image_size)
    data_dir = default_data_dir(data_dir)
    paths = [_require_file(data_dir, BACKGROUND_ZIP), _require_file(data_dir, EVALUATION_ZIP)]
    stats = [path.stat() for path in paths]
    key_fields = {
        "format": _CACHE_FORMAT, "image_size": image_size, "resample": _RESAMPLE,
        "pillow": PIL.__version__,
        "files": [[path.name, stat.st_size, stat.st_mtime_ns] for path, stat in zip(paths, stats)],
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()
    memo_key = (str(data_dir.resolve()), key)
    if cache and memo_key in _MEMORY:
        return _MEMORY[memo_key]

    cache_path = default_cache_dir(cache_dir) / f"omniglot-{image_size}px-{key[:16]}.npz"
    record = _read_cache(cache_path, key) if cache else None
    if record is None:
        record = _decode_all(paths, image_size)
        if cache:
            _write_cache(cache_path, key, record)
    if cache:
        _MEMORY[memo_key] = record
    return record


def _decode_all(paths: Sequence[Path], image_size: int) -> OmniglotImages:
    """Validates both zips' layout (before decoding anything), then decodes every image."""
    zips, characters, background = [], [], []
    try:
        for path, top, is_background in ((paths[0], "images_background", True),
                                         (paths[1], "images_evaluation", False)):
            zf = _open_zip(path)
            zips.append(zf)
            found = _index_images_zip(zf, path, top)
            characters += [(zf, path, char) for char in found]
            background += [is_background] * len(found)
        ids = np.array([char.id for _, _, char in characters], dtype=np.int64)
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"Character id {unique[counts > 1][0]:04d} occurs in more than one folder of "
                             f"{paths[0]} and {paths[1]}; {_REDOWNLOAD_HINT}")
        images = np.empty((len(characters), DRAWINGS, image_size, image_size, 1), dtype=np.float32)
        for c, (zf, path, char) in enumerate(characters):
            for d, entry in enumerate(char.entries):
                images[c, d, :, :, 0] = _load_png(zf, path, entry, image_size)
    finally:
        for zf in zips:
            zf.close()
    images.setflags(write=False)
    return OmniglotImages(images, tuple(char.name for _, _, char in characters), ids,
                          np.array(background, dtype=bool))


def _read_cache(path: Path, key: str) -> OmniglotImages | None:
    """The cached record, or None when absent, stale or unreadable (then it is rebuilt)."""
    return _read_npz(path, key, _parse_omniglot_cache, what="Omniglot", source="the zips", stacklevel=4)


def _parse_omniglot_cache(stored) -> OmniglotImages:
    shape = tuple(int(n) for n in stored["shape"])
    if bool(stored["binary"]):  # 0/1 images are stored as bits
        images = np.unpackbits(stored["images"], count=int(np.prod(shape)))
        images = images.reshape(shape).astype(np.float32)
    else:
        images = stored["images"].reshape(shape)
    names = tuple(str(name) for name in stored["names"])
    ids, background = stored["ids"].astype(np.int64), stored["background"].astype(bool)
    if not (len(names) == len(ids) == len(background) == shape[0]):
        raise ValueError("inconsistent lengths")
    images.setflags(write=False)
    return OmniglotImages(images, names, ids, background)


def _write_cache(path: Path, key: str, record: OmniglotImages) -> None:
    """Writes the cache atomically; a failure (read-only folder, full disk) only warns."""
    images = record.images
    binary = bool(np.all((images == 0.0) | (images == 1.0)))
    stored = np.packbits(images.astype(bool), axis=None) if binary else images
    _write_npz(path, key, dict(shape=np.array(images.shape, dtype=np.int64), binary=np.array(binary),
                               images=stored, names=np.array(record.names), ids=record.ids,
                               background=record.background),
               what="Omniglot", source="zips", stacklevel=4)


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------

# Vinyals et al. (2016): the first 1200 characters by global id (all 964 background characters and
# evaluation ids 965-1200, i.e. Angelic ... Glagolitic and Gurmukhi/character01-41) are for meta-training,
# the other 423 (ids 1201-1623) for testing. The validation split of the Prototypical Networks release
# (Snell et al. 2017) holds out five background alphabets. The alphabet orders below reproduce the order
# of the reference lists (splits/vinyals/*.txt): within an alphabet characters go by number, each followed
# by its rotations 0, 90, 180, 270 degrees; the test list goes by global id.
_VINYALS_LAST_TRAIN_ID = 1200
_VINYALS_TRAIN_ALPHABETS = (
    "Angelic", "Grantha", "N_Ko", "Aurek-Besh", "Japanese_(hiragana)", "Malay_(Jawi_-_Arabic)",
    "Asomtavruli_(Georgian)", "Sanskrit", "Ojibwe_(Canadian_Aboriginal_Syllabics)", "Korean", "Arcadian",
    "Greek", "Alphabet_of_the_Magi", "Blackfoot_(Canadian_Aboriginal_Syllabics)", "Futurama", "Gurmukhi",
    "Tagalog", "Anglo-Saxon_Futhorc", "Braille", "Cyrillic", "Burmese_(Myanmar)", "Avesta", "Gujarati",
    "Ge_ez", "Syriac_(Estrangelo)", "Atlantean", "Japanese_(katakana)", "Balinese", "Atemayar_Qelisayer",
    "Glagolitic", "Tifinagh", "Latin", "Inuktitut_(Canadian_Aboriginal_Syllabics)",
)
_VINYALS_VAL_ALPHABETS = ("Hebrew", "Mkhedruli_(Georgian)", "Armenian", "Early_Aramaic", "Bengali")
_NUM_OMNIGLOT_CHARACTERS = 1623

SPLITS: dict[str, tuple[str, ...]] = {
    "vinyals": ("train", "val", "trainval", "test"),
    "lake": ("background", "train", "val", "evaluation", "test"),
}
_DEFAULT_SUBSET = {"vinyals": "train", "lake": "background"}


def _is_split_file(split) -> bool:
    if isinstance(split, os.PathLike):
        return True
    return isinstance(split, str) and (split.endswith(".txt") or "/" in split or os.sep in split)


def omniglot_split(split: str | os.PathLike = "vinyals", subset: str | None = None,
                   data_dir: str | os.PathLike | None = None, image_size: int = 28,
                   rotations: bool | None = None, cache_dir: str | os.PathLike | None = None,
                   images: OmniglotImages | None = None) -> ClassDataset:
    """A standard Omniglot split as a :class:`~dualmeta.episodes.ClassDataset`.

    Args:
      split: ``'vinyals'`` (Vinyals et al. 2016, with the Prototypical Networks validation alphabets),
        ``'lake'`` (Lake et al. 2015: background vs evaluation alphabets), or the path of a split file
        (see :func:`split_from_file`; then ``subset`` must be None).
      subset: vinyals: ``'train'`` (4112 classes with rotations), ``'val'`` (688), ``'trainval'`` (4800),
        ``'test'`` (1692); lake: ``'background'`` (964 characters, Lake's training set), ``'train'`` (the
        background less the 5 Vinyals validation alphabets: 792 characters), ``'val'`` (those 5
        alphabets: 172), ``'evaluation'``/``'test'`` (659). Default: ``'train'`` / ``'background'``.
      rotations: count the 90/180/270 degree rotations of every character as classes of their own;
        default True for vinyals, False for lake.
      images: an already loaded :class:`OmniglotImages` (else :func:`load_omniglot_images` with
        ``data_dir``, ``image_size`` and ``cache_dir``).

    The dataset's ``images`` is the shared array of all characters, ``sources`` indexes it, ``rotations``
    holds quarter turns and ``names`` reads ``"Alphabet/characterNN/rotDDD"``.
    """
    if _is_split_file(split):
        if subset is not None:
            raise ValueError(f"A split file defines its classes itself; received subset={subset!r} with "
                             f"split={str(split)!r}: leave subset out")
        return split_from_file(split, data_dir=data_dir, image_size=image_size, cache_dir=cache_dir,
                               images=images)
    if split not in SPLITS:
        raise ValueError(f"Expected one of {sorted(SPLITS)}; received split={split!r} "
                         "(or pass the path of a split file)")
    subset = _DEFAULT_SUBSET[split] if subset is None else subset
    if subset not in SPLITS[split]:
        raise ValueError(f"Expected one of {sorted(SPLITS[split])}; received subset={subset!r} "
                         f"for split={split!r}")
    if rotations is not None and not isinstance(rotations, (bool, np.bool_)):
        raise ValueError(f"Expected rotations to be True, False or None; received rotations={rotations!r}")
    rotate = (split == "vinyals") if rotations is None else bool(rotations)
    if images is None:
        images = load_omniglot_images(data_dir, image_size=image_size, cache_dir=cache_dir)
    if split == "lake":
        keep = images.background if subset in ("background", "train", "val") else ~images.background
        if subset in ("train", "val"):  # Lake's background set less / only the Vinyals validation alphabets
            alphabet_of = np.array([name.split("/")[0] for name in images.names])
            held_out = np.isin(alphabet_of, _VINYALS_VAL_ALPHABETS)
            keep = keep & (held_out if subset == "val" else ~held_out)
        characters = np.flatnonzero(keep)
    else:
        characters = _vinyals_characters(images, subset)
    return _class_dataset(images, characters, rotate)


def _vinyals_characters(images: OmniglotImages, subset: str) -> np.ndarray:
    """Indices (into ``images``) of the characters of a Vinyals subset, in the reference order."""
    ids = images.ids
    if images.num_characters != _NUM_OMNIGLOT_CHARACTERS or \
            set(ids.tolist()) != set(range(1, _NUM_OMNIGLOT_CHARACTERS + 1)):
        raise ValueError(f"The Vinyals split is defined on the full Omniglot ({_NUM_OMNIGLOT_CHARACTERS} "
                         f"characters with ids 0001-1623); the data holds {images.num_characters} "
                         f"characters. {_FIX_HINT[0].upper()}{_FIX_HINT[1:]}")
    if subset == "test":
        test = np.flatnonzero(ids > _VINYALS_LAST_TRAIN_ID)
        return test[np.argsort(ids[test], kind="stable")]
    alphabets = {"train": _VINYALS_TRAIN_ALPHABETS, "val": _VINYALS_VAL_ALPHABETS,
                 "trainval": _VINYALS_TRAIN_ALPHABETS + _VINYALS_VAL_ALPHABETS}[subset]
    alphabet_of = np.array([name.split("/")[0] for name in images.names])
    in_trainval = ids <= _VINYALS_LAST_TRAIN_ID
    listed = np.isin(alphabet_of, _VINYALS_TRAIN_ALPHABETS + _VINYALS_VAL_ALPHABETS)
    if (in_trainval & ~listed).any():  # only for data that is not the canonical Omniglot
        stray = images.names[int(np.flatnonzero(in_trainval & ~listed)[0])]
        raise ValueError(f"Character {stray} has an id <= 1200 but its alphabet is not in the Vinyals "
                         f"train/val alphabets: the data is not the canonical Omniglot; {_REDOWNLOAD_HINT}")
    # ``images`` stores an alphabet's characters by number, so a stable selection keeps that order.
    return np.concatenate([np.flatnonzero((alphabet_of == a) & in_trainval) for a in alphabets])


def _class_dataset(images: OmniglotImages, characters: np.ndarray, rotate: bool,
                   turns: np.ndarray | None = None) -> ClassDataset:
    characters = np.asarray(characters, dtype=np.int64)
    if turns is None:
        if rotate:
            sources, turns = np.repeat(characters, 4), np.tile(np.arange(4, dtype=np.int64), len(characters))
        else:
            sources, turns = characters, np.zeros(len(characters), dtype=np.int64)
    else:
        sources = characters
    names = tuple(f"{images.names[s]}/rot{90 * int(k):03d}" for s, k in zip(sources, turns))
    return ClassDataset(images.images, sources, np.asarray(turns, dtype=np.int64), names)


def split_from_file(path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                    image_size: int = 28, cache_dir: str | os.PathLike | None = None,
                    images: OmniglotImages | None = None) -> ClassDataset:
    """A split read from a text file, one class a line, in the file's order.

    A line is ``"Alphabet/characterNN/rotDDD"`` (DDD = 000, 090, 180 or 270 degrees,
    counter-clockwise) or ``"Alphabet/characterNN"`` (no rotation), as in the Prototypical Networks split
    files. Blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Split file {path} not found; expected a text file with one "
                                f"'Alphabet/characterNN/rotDDD' a line, or split='vinyals' or 'lake'")
    entries, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([^/]+/character\d\d)(?:/rot(000|090|180|270))?", line)
        if match is None:
            raise ValueError(f"{path}:{number}: expected 'Alphabet/characterNN/rotDDD' with DDD one of "
                             f"000, 090, 180, 270; received {line!r}")
        if line in seen:
            raise ValueError(f"{path}:{number}: class {line!r} is listed twice (first at line {seen[line]})")
        seen[line] = number
        entries.append((number, match[1], int(match[2] or 0) // 90))
    if not entries:
        raise ValueError(f"{path} lists no class; expected one 'Alphabet/characterNN/rotDDD' a line")
    if images is None:
        images = load_omniglot_images(data_dir, image_size=image_size, cache_dir=cache_dir)
    sources = []
    for number, name, _ in entries:
        try:
            sources.append(images.index(name))
        except KeyError:
            raise ValueError(f"{path}:{number}: no character {name!r} in the Omniglot data") from None
    return _class_dataset(images, np.array(sources), rotate=False,
                          turns=np.array([turns for _, _, turns in entries], dtype=np.int64))


# ----------------------------------------------------------------------------------------------------
# Lake's one-shot runs
# ----------------------------------------------------------------------------------------------------

def lake_one_shot_runs(data_dir: str | os.PathLike | None = None, image_size: int = 28) -> list[Episode]:
    """Lake et al.'s 20 one-shot classification runs from ``all_runs.zip``, one :class:`Episode` each.

    Run ``NN``: support = ``runNN/training/class01..20.png`` with labels 0..19 (``classYY`` -> ``YY-1``),
    query = ``runNN/test/item01..20.png`` in item order, labelled from ``runNN/class_labels.txt``
    (``"runNN/test/itemXX.png runNN/training/classYY.png"``). Images are preprocessed as in
    :func:`load_omniglot_images`; Lake's protocol is 20-way 1-shot.
    """
    check_positive(image_size=image_size)
    path = _require_file(default_data_dir(data_dir), RUNS_ZIP)
    with _open_zip(path) as zf:
        runs = _index_runs_zip(zf, path)
        episodes = []
        for run in sorted(runs):
            classes, items = runs[run]["training"], runs[run]["test"]
            labels = _parse_class_labels(_read_entry(zf, path, f"run{run:02d}/class_labels.txt"),
                                         path, run, classes, items)
            support = np.stack([_load_png(zf, path, classes[n], image_size) for n in sorted(classes)])
            query = np.stack([_load_png(zf, path, items[n], image_size) for n in sorted(items)])
            episodes.append(Episode(support[..., None], np.arange(len(classes), dtype=np.int64),
                                    query[..., None], labels))
    return episodes


def _index_runs_zip(zf: zipfile.ZipFile, path: Path) -> dict[int, dict[str, dict[int, str]]]:
    """Validates the layout of ``all_runs.zip``: ``{run: {'training': {n: entry}, 'test': {...}}}``."""
    layout = "runNN/training/classYY.png, runNN/test/itemXX.png and runNN/class_labels.txt"
    runs: dict[int, dict] = {}
    for entry in zf.namelist():
        if _is_ignorable(entry):
            continue
        match = _RUN_ENTRY.fullmatch(entry)
        if match is None:
            raise ValueError(f"{path}: entry {entry!r} does not match the expected layout {layout}; "
                             f"{_REDOWNLOAD_HINT}")
        run = runs.setdefault(int(match["run"]), {"training": {}, "test": {}, "labels": False})
        if match["labels"]:
            run["labels"] = True
        else:
            run[match["kind"]][int(match["n"])] = entry
    if not runs:
        raise ValueError(f"{path} holds no run; expected the layout {layout}; {_REDOWNLOAD_HINT}")
    for number, run in runs.items():
        for kind in ("training", "test"):
            if not run[kind] or sorted(run[kind]) != list(range(1, len(run[kind]) + 1)):
                raise ValueError(f"{path}: run{number:02d}/{kind} holds images {sorted(run[kind])}; expected "
                                 f"consecutive numbers from 01; {_REDOWNLOAD_HINT}")
        if not run["labels"]:
            raise ValueError(f"{path}: run{number:02d}/class_labels.txt is missing; {_REDOWNLOAD_HINT}")
    return {number: {"training": run["training"], "test": run["test"]} for number, run in runs.items()}


def _parse_class_labels(text: bytes, path: Path, run: int, classes: Mapping[int, str],
                        items: Mapping[int, str]) -> np.ndarray:
    """Query labels (``classYY`` -> ``YY - 1``) in item order, from one run's ``class_labels.txt``."""
    where = f"{path}:run{run:02d}/class_labels.txt"
    labels: dict[int, int] = {}
    for number, line in enumerate(text.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        match = _LABEL_LINE.fullmatch(line.strip())
        if match is None or int(match["run"]) != run or int(match["run2"]) != run:
            raise ValueError(f"{where}:{number}: expected 'run{run:02d}/test/itemXX.png "
                             f"run{run:02d}/training/classYY.png'; received {line.strip()!r}")
        item, cls = int(match["item"]), int(match["cls"])
        if item not in items or cls not in classes or item in labels:
            raise ValueError(f"{where}:{number}: item{item:02d} or class{cls:02d} does not exist, or the "
                             f"item is labelled twice; {_REDOWNLOAD_HINT}")
        labels[item] = cls - 1
    if sorted(labels) != sorted(items):
        raise ValueError(f"{where}: labels items {sorted(labels)}; expected every item 01-{len(items):02d}")
    return np.array([labels[n] for n in sorted(items)], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------

def download_omniglot(data_dir: str | os.PathLike | None = None, base_url: str = DEFAULT_URL,
                      files: Sequence[str] = OMNIGLOT_FILES,
                      sha256: Mapping[str, str | None] | None = None, overwrite: bool = False,
                      timeout: float = 60.0) -> Path:
    """Downloads the Omniglot zips into ``data_dir`` (default: :func:`default_data_dir`) and returns it.

    ``images_background.zip`` and ``images_evaluation.zip`` are fetched from ``base_url`` and
    ``all_runs.zip`` from ``base_url + 'one-shot-classification/'`` (the layout of
    github.com/brendenlake/omniglot). Each file is streamed into a temporary file in ``data_dir``,
    checked, then renamed into place, so an interrupted or failed download never leaves a partial file.

    Checks: the sha256 in ``sha256[name]`` when given (``None`` there skips the check), else the one
    :data:`KNOWN_SHA256` lists for ``base_url``; then that the file is a zip with the Omniglot layout.
    Existing files are kept unless ``overwrite``.

    Raises:
      ValueError: unknown file name, checksum mismatch or a download that is not the expected zip.
      OSError: the URL cannot be fetched.
    """
    unknown = [name for name in files if name not in _REMOTE_PATHS]
    if unknown or isinstance(files, str):
        raise ValueError(f"Expected file names among {list(OMNIGLOT_FILES)}; received files={files!r}")
    if not base_url.endswith("/"):
        base_url += "/"
    expected = dict(KNOWN_SHA256.get(base_url, {}))
    if sha256 is not None:
        expected.update(sha256)
    data_dir = default_data_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = data_dir / name
        if target.exists() and not overwrite:
            _log.info("Keeping the existing %s", target)
            continue
        _download_one(base_url + _REMOTE_PATHS[name], target, expected.get(name), timeout)
    return data_dir


def _download_one(url: str, target: Path, sha256: str | None, timeout: float) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        digest = hashlib.sha256()
        _log.info("Downloading %s to %s", url, target)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                expected_size, received = response.headers.get("Content-Length"), 0
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
            if expected_size is not None and received != int(expected_size):
                raise ConnectionError(f"received {received} of {expected_size} bytes")
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
            raise OSError(f"Could not download {url}: {err}") from err
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ValueError(f"Checksum mismatch for {url}: sha256 {digest.hexdigest()}, expected {sha256}; "
                             "nothing was saved. Retry, or pass sha256={name: None} to skip the check "
                             "for a trusted mirror")
        _check_download(Path(tmp), target.name, url)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _check_download(path: Path, name: str, url: str) -> None:
    """A downloaded file must be a zip with the layout of ``name``."""
    try:
        with _open_zip(path) as zf:
            if zf.testzip() is not None:
                raise zipfile.BadZipFile("a member fails its CRC check")
            if name == RUNS_ZIP:
                _index_runs_zip(zf, path)
            else:
                _index_images_zip(zf, path, name[: -len(".zip")])
    except (ValueError, zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(f"The download from {url} is not a valid {name}: {err}") from err
