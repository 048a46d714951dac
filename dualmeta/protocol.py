"""The evaluation protocol: which classes a run trains on, validates on and is tested on (numpy only).

A published figure is honest when nothing the model was trained on, and nothing that chose a setting, saw
the classes it is scored on. This module writes the rule once, for every script that trains and scores:

* **Three disjoint sets of characters.** :func:`omniglot_protocol` returns the training, validation and
  test classes of a split, and checks that no *character* (rotations of one character are one character)
  is in two of them. ``split='vinyals'``: train = the 28 training alphabets (4112 classes with rotations),
  val = the 5 validation alphabets of the Prototypical Networks release (688), test = characters
  1201-1623 (1692). ``split='lake'``: train = Lake's background alphabets less the same 5 validation
  alphabets (25 alphabets, 792 characters), val = those 5 (172), test = the 20 evaluation alphabets (659).
  ``train_on='trainval'`` (vinyals) or ``'background'`` (lake) trains on train and val together, as the
  papers' final runs do; there is then no validation set.
* **Curves, pilots and early stopping use the validation set**; the test episodes are scored once, at
  the end (:data:`ROLES`).
* **Transductive or not**: every row says where batch norm takes its statistics at test
  (:data:`BATCH_NORM_AT_TEST`): the running statistics of training, the support set, or the query set
  itself (transductive: a query's prediction depends on the other queries, as in Finn et al.'s MAML).
* **Lake's 20 one-shot runs** are meant for models trained on Lake's background set. Their images are
  pixel for pixel images of the Omniglot zips, so :func:`lake_run_characters` finds the character of each
  one, and :func:`held_out_lake_runs` keeps only the runs none of whose 40 characters is in the training
  set. Trained on Vinyals train (or trainval), runs 1-8 share characters with training (runs 1-6 wholly);
  runs 9-20 are held out. Trained on Lake's background set, all 20 are.

    >>> from dualmeta import protocol
    >>> from dualmeta.datasets import omniglot as data
    >>> images = data.load_omniglot_images()                                          # doctest: +SKIP
    >>> p = protocol.omniglot_protocol("vinyals", "train", images=images)             # doctest: +SKIP
    >>> runs, kept, dropped = protocol.held_out_lake_runs(p.train, images=images)     # doctest: +SKIP
    >>> kept[0], len(kept), dropped                                                   # doctest: +SKIP
    (9, 12, [1, 2, 3, 4, 5, 6, 7, 8])
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from dualmeta.episodes import ClassDataset, ClassificationTasks, Episode

__all__ = ["ROLES", "BATCH_NORM_AT_TEST", "TEST_NORMS", "check_test_norm", "TRAIN_ON", "Protocol", "omniglot_protocol", "characters", "check_disjoint",
           "characters_drawn", "lake_run_characters", "held_out_lake_runs", "ProtocolError"]

# What each set of classes is for.
ROLES = {
    "train": "meta-training episodes",
    "val": "learning curves, pilot runs, early stopping and recipe choices",
    "test": "the published figure, scored once at the end of a run",
}
# Where batch norm takes its statistics when a test episode is scored (a results row states it).
BATCH_NORM_AT_TEST = {
    "running": "running statistics (not transductive)",
    "support": "support-set statistics (not transductive)",
    "query": "query-set batch statistics (transductive)",
}
TEST_NORMS = ("query", "support")  # what a learner without running statistics may use at test (Learner.test_norm)


def check_test_norm(value: str) -> str:
    """``value`` if it is one of :data:`TEST_NORMS`, else ``ValueError`` naming the accepted values."""
    if value not in TEST_NORMS:
        raise ValueError(f"Expected one of {list(TEST_NORMS)}; received test_norm={value!r}")
    return value


# split -> {train_on: (training subset, validation subset or None)}, test subset
TRAIN_ON = {"vinyals": {"train": ("train", "val"), "trainval": ("trainval", None)},
            "lake": {"train": ("train", "val"), "background": ("background", None)}}
_TEST_SUBSET = {"vinyals": "test", "lake": "evaluation"}


class ProtocolError(ValueError):
    """Two sets of classes that must be disjoint share a character."""


def _character(class_name: str) -> str:
    """``"Alphabet/characterNN/rotDDD"`` -> ``"Alphabet/characterNN"``: rotations are one character."""
    return class_name.rsplit("/rot", 1)[0]


def characters(dataset: ClassDataset) -> set[str]:
    """The characters (``"Alphabet/characterNN"``, rotations folded) of a dataset's classes."""
    if dataset.names is None:
        raise ValueError("Expected a dataset with class names (an Omniglot split); received one without")
    return {_character(name) for name in dataset.names}


def check_disjoint(**datasets: ClassDataset | None) -> None:
    """Raises :class:`ProtocolError` naming the first character that two of ``datasets`` share."""
    named = [(role, characters(d)) for role, d in datasets.items() if d is not None]
    for i, (a, chars_a) in enumerate(named):
        for b, chars_b in named[i + 1:]:
            shared = sorted(chars_a & chars_b)
            if shared:
                raise ProtocolError(f"The {a} and {b} classes share {len(shared)} characters (e.g. "
                                    f"{shared[0]}): a figure scored on {b} would not be held out; use "
                                    "disjoint splits (dualmeta.protocol.omniglot_protocol)")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The classes of one run: ``train``, ``val`` (None when training on train+val) and ``test``."""
    split: str
    train_on: str
    train: ClassDataset
    val: ClassDataset | None
    test: ClassDataset
    subsets: tuple[str, str | None, str]

    def describe(self) -> dict:
        """What a results file records: the split, each role's subset and class/character counts."""
        out = {"split": self.split, "train_on": self.train_on}
        for role, subset, dataset in zip(("train", "val", "test"), self.subsets, (self.train, self.val, self.test)):
            out[role] = None if dataset is None else {
                "subset": subset, "classes": dataset.num_classes, "characters": len(characters(dataset))}
        return out

    def label(self) -> str:
        """``'vinyals train -> val curve -> test'``: one line for a results row."""
        val = f", {self.subsets[1]} curve" if self.val is not None else ", no validation set"
        return f"{self.split} {self.subsets[0]}{val}, {self.subsets[2]}"


def omniglot_protocol(split: str = "vinyals", train_on: str = "train", images=None, data_dir=None,
                      image_size: int = 28, rotations: bool = True) -> Protocol:
    """The training, validation and test classes of an Omniglot split, checked disjoint by character.

    Args:
      split: ``'vinyals'`` or ``'lake'``.
      train_on: ``'train'`` (a validation set is held out) or ``'trainval'`` / ``'background'`` (train
        and val together; no validation set).
      images: loaded :class:`dualmeta.datasets.omniglot.OmniglotImages` (else loaded from ``data_dir``).
      rotations: count the rotations of a training or validation character as classes of their own (the
        Vinyals convention; test classes follow the split's own default: rotated for vinyals, not for lake).
    """
    from dualmeta.datasets import omniglot as data  # local: Pillow and the zip readers only when Omniglot is used

    if split not in TRAIN_ON:
        raise ValueError(f"Expected one of {sorted(TRAIN_ON)}; received split={split!r}")
    if train_on not in TRAIN_ON[split]:
        raise ValueError(f"Expected one of {sorted(TRAIN_ON[split])} for split={split!r}; received "
                         f"train_on={train_on!r}")
    if images is None:
        images = data.load_omniglot_images(data_dir, image_size=image_size)
    train_subset, val_subset = TRAIN_ON[split][train_on]
    test_subset = _TEST_SUBSET[split]
    train = data.omniglot_split(split, train_subset, images=images, rotations=rotations)
    val = None if val_subset is None else data.omniglot_split(split, val_subset, images=images, rotations=rotations)
    test = data.omniglot_split(split, test_subset, images=images)
    check_disjoint(train=train, val=val, test=test)
    return Protocol(split, train_on, train, val, test, (train_subset, val_subset, test_subset))


def characters_drawn(tasks: ClassificationTasks, episodes: int, start: int = 0) -> set[str]:
    """The characters that episodes ``start .. start+episodes-1`` of ``tasks`` draw (rotations folded)."""
    names = tasks.dataset.names
    if names is None:
        raise ValueError("Expected tasks over a dataset with class names; received one without")
    return {_character(names[c]) for i in range(start, start + episodes) for c in tasks.classes(i)}


# ----------------------------------------------------------------------------------------------------
# Lake's one-shot runs
# ----------------------------------------------------------------------------------------------------

def _image_key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.float32).tobytes()


def lake_run_characters(runs: Sequence[Episode], images) -> list[tuple[list[str], list[str]]]:
    """The character of every image of Lake's runs: ``[(support characters, query characters), ...]``.

    Every image of ``all_runs.zip`` is pixel for pixel an image of the Omniglot zips, and both are
    decoded by the same preprocessing, so an image's array identifies its drawing. An image found in no
    character, or in two, raises ``ValueError`` (the runs cannot then be checked against a training set).
    """
    index: dict[bytes, set[int]] = {}
    stack = images.images
    for c in range(stack.shape[0]):
        for d in range(stack.shape[1]):
            index.setdefault(_image_key(stack[c, d]), set()).add(c)
    found = []
    for number, run in enumerate(runs, start=1):
        names = []
        for part, xs in (("support", run.support_x), ("query", run.query_x)):
            chars = []
            for k, x in enumerate(xs):
                owners = index.get(_image_key(x), set())
                if len(owners) != 1:
                    raise ValueError(f"Lake run {number:02d}, {part} image {k + 1}: found in "
                                     f"{len(owners)} Omniglot characters (expected exactly one); the runs "
                                     "and the image zips must come from the same canonical Omniglot, at the "
                                     "same image size")
                chars.append(images.names[next(iter(owners))])
            names.append(chars)
        found.append((names[0], names[1]))
    return found


def held_out_lake_runs(train: ClassDataset | set[str], images=None, data_dir: str | os.PathLike | None = None,
                       image_size: int = 28) -> tuple[list[Episode], list[int], list[int]]:
    """Lake's one-shot runs that share no character with ``train``: ``(episodes, kept, excluded)``.

    ``train``: the training classes, or the set of character names the model has seen. ``kept`` and
    ``excluded`` are run numbers (1-20). A run is kept only if none of its 20 support and 20 query
    characters is a training character.
    """
    from dualmeta.datasets import omniglot as data

    if images is None:
        images = data.load_omniglot_images(data_dir, image_size=image_size)
    runs = data.lake_one_shot_runs(data_dir, image_size=images.image_size)
    trained = set(train) if isinstance(train, (set, frozenset)) else characters(train)
    kept, excluded, episodes = [], [], []
    for number, (run, (support, query)) in enumerate(zip(runs, lake_run_characters(runs, images)), start=1):
        if trained.isdisjoint(support) and trained.isdisjoint(query):
            kept.append(number)
            episodes.append(run)
        else:
            excluded.append(number)
    return episodes, kept, excluded
