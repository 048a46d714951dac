"""Pretraining data, written once in numpy: class batches, augmented views, masks, and the test-time heads' inputs.

The transfer learners (``baseline``, ``baseline_pp``) and the self-supervised ones (``simclr``, ``mae``)
train on minibatches of single images instead of episodes. Every batch here is a pure function of its
address ``(seed, index)`` (``dualmeta.episodes.episode_rng``), like the episodes: both backends see the
same images, views and masks bit for bit (they are computed once, in numpy), and a run resumed at step
``s`` draws batch ``s`` exactly as the uninterrupted run did. The task sets below have the
``batch(index, size)`` method the training loop (``dualmeta.train``) calls.

* :class:`ClassBatches` -> :class:`ClassBatch` ``(x, y)``: ``size`` images drawn uniformly (with
  replacement) from all examples of all training classes, ``y`` the global class id (rotations count as
  classes: 4112 in the Vinyals train split).
* :class:`ViewBatches` -> :class:`ViewPair` ``(view_a, view_b)``: two random augmentations of each drawn
  image (:func:`augment`); no label is part of the batch, so none can reach the learner.
* :class:`MaskedBatches` -> :class:`MaskedImages` ``(x, mask)``: images and a mask hiding ``mask_ratio``
  of their ``patch x patch`` cells (1 = hidden); no label either.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dualmeta.episodes import ClassDataset, _rotate, episode_rng

__all__ = ["check_class_ids", "ClassBatch", "ViewPair", "MaskedImages", "ClassBatches", "ViewBatches", "MaskedBatches", "augment",
           "patch_mask", "check_mask_ratio", "check_support_classes", "classifier_init", "feature_size",
           "head_batches", "check_views", "stack_views", "check_masked", "HEADS", "HEAD_STEPS", "HEAD_BATCH", "HEAD_LR", "HEAD_MOMENTUM", "VIEW_SALT", "MASK_SALT"]

HEADS = ("prototype", "linear", "finetune")
HEAD_STEPS, HEAD_BATCH, HEAD_LR, HEAD_MOMENTUM = 100, 4, 0.01, 0.9  # Chen et al. 2019: SGD+momentum, batch 4
VIEW_SALT, MASK_SALT = 7_919, 104_729  # the augmentation / mask stream of batch i is episode_rng(seed + salt, i)


class ClassBatch(NamedTuple):
    x: np.ndarray  # (N, H, W, C) float32
    y: np.ndarray  # (N,) int64 global class ids


class ViewPair(NamedTuple):
    view_a: np.ndarray  # (N, H, W, C): first augmentation of each image
    view_b: np.ndarray  # (N, H, W, C): second augmentation


class MaskedImages(NamedTuple):
    x: np.ndarray  # (N, H, W, C) the whole images (the targets)
    mask: np.ndarray  # (N, H, W, 1) 1.0 where hidden, 0.0 where shown


class ClassBatches:
    """Minibatches of ``(image, global class id)`` over every class of ``dataset``, addressed by ``(seed, index)``."""

    def __init__(self, dataset: ClassDataset, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def _draw(self, index: int, size: int) -> ClassBatch:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"Expected a positive batch size; received {size!r}")
        rng = episode_rng(self.seed, index)
        data = self.dataset
        classes = rng.integers(0, data.num_classes, size=size)
        examples = rng.integers(0, data.examples_per_class, size=size)
        x = np.stack([_rotate(data.images[data.sources[c], e], int(data.rotations[c]))
                      for c, e in zip(classes, examples)]).astype(np.float32)
        return ClassBatch(np.ascontiguousarray(x), classes.astype(np.int64))

    def batch(self, index: int, size: int) -> ClassBatch:
        return self._draw(index, size)


class ViewBatches(ClassBatches):
    """Two augmented views of each image of ``ClassBatches(dataset, seed).batch(index, size)``; labels dropped."""

    def __init__(self, dataset: ClassDataset, seed: int = 0, min_scale: float = 0.6, max_degrees: float = 10.0):
        super().__init__(dataset, seed)
        self.min_scale, self.max_degrees = check_augmentation(min_scale, max_degrees)

    def batch(self, index: int, size: int) -> ViewPair:
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size < 2:
            raise ValueError(f"SimCLR contrasts each image with the others of its batch: a batch of {size} has no "
                             "negatives; use a batch size of at least 2 (--meta_batch_size=2 or more; 256 is usual)")
        x = self._draw(index, size).x
        rng = episode_rng(self.seed + VIEW_SALT, index)
        return ViewPair(augment(x, rng, self.min_scale, self.max_degrees),
                        augment(x, rng, self.min_scale, self.max_degrees))


class MaskedBatches(ClassBatches):
    """Images of ``ClassBatches(dataset, seed).batch(index, size)`` with a random mask each; labels dropped."""

    def __init__(self, dataset: ClassDataset, seed: int = 0, mask_ratio: float = 0.75, patch: int = 4):
        super().__init__(dataset, seed)
        self.mask_ratio, self.patch = check_mask_ratio(mask_ratio), int(patch)
        size = dataset.image_shape[0]
        if self.patch < 1 or size % self.patch:
            raise ValueError(f"Expected a patch size dividing the image size {size}; received patch={patch}")

    def batch(self, index: int, size: int) -> MaskedImages:
        x = self._draw(index, size).x
        rng = episode_rng(self.seed + MASK_SALT, index)
        return MaskedImages(x, patch_mask(x.shape, self.mask_ratio, self.patch, rng))


def check_class_ids(y, num_classes: int) -> None:
    """Class ids of a training batch (numpy, checked before any device sees them) within the classifier."""
    y = np.asarray(y)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"Expected class ids in 0..{num_classes - 1}; received {int(y.min())} to "
                         f"{int(y.max())}: build the learner with num_classes = the training classes")


def check_augmentation(min_scale, max_degrees) -> tuple[float, float]:
    """``(min_scale, max_degrees)`` as floats; ``ValueError`` in one line unless ``0 < min_scale <= 1`` and
    ``0 <= max_degrees < inf`` (the views of :func:`augment`)."""
    min_scale, max_degrees = float(min_scale), float(max_degrees)
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"Expected a crop area fraction 0 < min_scale <= 1 (0.6 by default; 1: no crop); "
                         f"received min_scale={min_scale}")
    if not 0.0 <= max_degrees < float("inf"):
        raise ValueError(f"Expected a rotation bound max_degrees >= 0 in degrees (10 by default; 0: none); "
                         f"received max_degrees={max_degrees}")
    return min_scale, max_degrees


def check_mask_ratio(mask_ratio) -> float:
    if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0 < mask_ratio < 1:
        raise ValueError(f"Expected a mask ratio strictly between 0 and 1 (the fraction of each image hidden; "
                         f"0.75 is the default); received mask_ratio={mask_ratio!r}")
    return float(mask_ratio)


def patch_mask(shape, mask_ratio: float, patch: int, rng: np.random.Generator) -> np.ndarray:
    """``(N, H, W, 1)`` float32 masks, each hiding ``round(ratio * cells)`` of the ``patch x patch`` cells
    (at least one, and at least one shown)."""
    n, h, w = shape[0], shape[1], shape[2]
    rows, cols = h // patch, w // patch
    cells = rows * cols
    hidden = min(max(1, int(round(check_mask_ratio(mask_ratio) * cells))), cells - 1)
    masks = np.zeros((n, cells), dtype=np.float32)
    for i in range(n):
        masks[i, rng.permutation(cells)[:hidden]] = 1.0
    grid = masks.reshape(n, rows, cols)
    return np.ascontiguousarray(np.kron(grid, np.ones((1, patch, patch), dtype=np.float32))[..., None])


def augment(x: np.ndarray, rng: np.random.Generator, min_scale: float = 0.6, max_degrees: float = 10.0) -> np.ndarray:
    """Random resized crop and a small rotation of NHWC images, by bilinear sampling (zeros outside).

    Per image: a crop side ``s ~ U(sqrt(min_scale), 1)`` of the image side, centred at a uniform point
    that keeps the crop inside, resized back to the full size, rotated by ``U(-max_degrees, max_degrees)``.
    """
    n, h, w, c = x.shape
    params = np.empty((n, 4))
    for i in range(n):  # per image, in this order: side, centre (x, y), angle
        side = rng.uniform(np.sqrt(min_scale), 1.0)
        cx, cy = rng.uniform(-(1 - side) / 2, (1 - side) / 2, size=2)
        params[i] = side, cx, cy, np.deg2rad(rng.uniform(-max_degrees, max_degrees))
    ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    u, v = xs / w - 0.5, ys / h - 0.5  # output coordinates in [-0.5, 0.5]
    side, cx, cy, angle = (params[:, k, None, None] for k in range(4))
    cos, sin = np.cos(angle), np.sin(angle)
    su, sv = side * (cos * u - sin * v) + cx, side * (sin * u + cos * v) + cy
    return _bilinear(x, (sv + 0.5) * h - 0.5, (su + 0.5) * w - 0.5)


def _bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear samples of NHWC ``images`` at ``(N, H, W)`` fractional pixel positions; zeros outside."""
    n, h, w, _ = images.shape
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    padded = np.pad(images.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    index = np.arange(n)[:, None, None]

    def at(r, c):
        return padded[index, np.clip(r + 1, 0, h + 1), np.clip(c + 1, 0, w + 1)]
    value = (at(r0, c0) * (1 - fr) * (1 - fc) + at(r0, c0 + 1) * (1 - fr) * fc
             + at(r0 + 1, c0) * fr * (1 - fc) + at(r0 + 1, c0 + 1) * fr * fc)
    return value.astype(np.float32)


def check_support_classes(support_y) -> int:
    """The number of ways of an episode's support labels; raises unless they cover ``0..ways-1``."""
    labels = np.asarray(support_y)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Expected integer support labels of shape (shots*ways,); received dtype {labels.dtype} "
                         f"and shape {labels.shape}")
    ways = int(labels.max()) + 1
    missing = sorted(set(range(ways)) - set(labels.tolist()))
    if missing or labels.min() < 0:
        raise ValueError(f"A head is fitted on the support set, which has no example of class(es) {missing} of "
                         f"0..{ways - 1}; give every class at least one support example")
    return ways


def classifier_init(classes: int, features: int, seed: int, dtype: str = "float32") -> dict[str, np.ndarray]:
    """A classifier ``(classes, features)`` weight and ``(classes,)`` bias, uniform in ``+-1/sqrt(features)``
    (PyTorch's ``nn.Linear`` rule), drawn from ``seed``: the same numbers in both backends."""
    rng = np.random.default_rng([int(seed), 31_337])
    bound = 1.0 / np.sqrt(features)
    return {"weight": rng.uniform(-bound, bound, (classes, features)).astype(dtype),
            "bias": rng.uniform(-bound, bound, (classes,)).astype(dtype)}


def feature_size(config: dict) -> int:
    """The feature width of a head-less conv4 built from ``config`` (``dualmeta.weights.conv4_spec``)."""
    if config.get("head", "flatten") == "mean":
        return int(config["hidden"])
    size = int(config.get("image_size", 28))
    for _ in range(int(config.get("blocks", 4))):
        size = size // 2 if config.get("downsample", "stride") == "maxpool" else (size - 1) // 2 + 1
    return int(config["hidden"]) * size * size


def head_batches(support: int, steps: int = HEAD_STEPS, batch: int = HEAD_BATCH, seed: int = 0) -> np.ndarray:
    """``(steps, batch)`` support indices of the head's SGD steps: consecutive seeded permutations of the support
    set (epochs), cut into steps of ``min(batch, support)`` indices; a step that spans two epochs may repeat one."""
    rng = np.random.default_rng([int(seed), 271_828])
    take = min(batch, support)
    order = []
    while len(order) < steps * take:
        order.extend(rng.permutation(support).tolist())
    return np.asarray(order[:steps * take], dtype=np.int64).reshape(steps, take)


def check_views(batch) -> None:
    """Refuses a SimCLR batch that is not a :class:`ViewPair` (e.g. one carrying labels) or has one image."""
    if not isinstance(batch, ViewPair):
        raise ValueError(f"SimCLR trains without labels on two views per image: expected a ViewPair (from "
                         f"dualmeta.pretrain.ViewBatches); received {type(batch).__name__}")
    a, b = np.asarray(batch.view_a), np.asarray(batch.view_b)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"Expected two view arrays of one shape (N, H, W, C); received {a.shape} and {b.shape}")
    if a.shape[0] < 2:
        raise ValueError(f"SimCLR contrasts each image with the others of its batch: a batch of {a.shape[0]} has "
                         "no negatives; use a batch size of at least 2 (--meta_batch_size=2 or more; 256 is usual)")


def stack_views(batch: ViewPair) -> np.ndarray:
    """``(2N, H, W, C)``: the first views, then the second views (view ``i`` pairs with ``i + N``)."""
    return np.concatenate([np.asarray(batch.view_a), np.asarray(batch.view_b)])


def check_masked(batch) -> None:
    """Refuses a masked-autoencoder batch that is not :class:`MaskedImages` or hides nothing."""
    if not isinstance(batch, MaskedImages):
        raise ValueError(f"The masked autoencoder trains without labels on masked images: expected MaskedImages "
                         f"(from dualmeta.pretrain.MaskedBatches); received {type(batch).__name__}")
    x, mask = np.asarray(batch.x), np.asarray(batch.mask)
    if mask.shape != x.shape[:3] + (1,):
        raise ValueError(f"Expected a mask of shape {x.shape[:3] + (1,)}; received {mask.shape}")
    if not mask.any():
        raise ValueError("The mask hides no pixel, so there is nothing to reconstruct; use a mask ratio in (0, 1)")
