"""Framework-neutral episode generation (pure numpy).

An *episode* (a task) is a small labelled support set to adapt on and a query set to be scored on.
Both backends are fed by the generators in this module, so they see identical arrays.

Determinism by address
----------------------
Episode ``i`` of a task set with seed ``s`` is a pure function of ``(s, i)``: it is drawn from
``numpy.random.Generator(PCG64(SeedSequence([s, i])))``, never from a shared stream. Sampling episode 7
first, after a thousand others, or in another process gives the same arrays. Meta-batch ``b`` of size
``B`` holds episodes ``b*B ... b*B + B - 1``, so a resumed run continues with exactly the batches an
uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

__all__ = [
    "Episode", "stack_episodes", "episode_rng", "ClassDataset", "ClassificationTasks",
    "TaskFamily", "FAMILIES", "RegressionTasks", "check_positive", "inner_batches",
]


class Episode(NamedTuple):
    """One task, or a stacked meta-batch of tasks (then every array has a leading task axis).

    Classification: ``*_x`` images NHWC float32 in [0, 1]; ``*_y`` int64 labels in ``0..ways-1``.
    Regression: ``*_x`` and ``*_y`` float32 of shape ``(points, features)``.
    """
    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


def stack_episodes(episodes: Sequence[Episode]) -> Episode:
    """Stacks episodes of equal shapes into one meta-batch with a leading task axis."""
    if not episodes:
        raise ValueError("stack_episodes needs at least one episode; received an empty sequence")
    return Episode(*(np.stack(parts) for parts in zip(*episodes)))


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of episode ``index`` of the task set seeded ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError(f"Expected a non-negative seed and index; received seed={seed}, index={index}")
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))


def inner_batches(labels: np.ndarray, batch_size: int | None, steps: int) -> np.ndarray | None:
    """Which support examples each inner step trains on: ``(steps, batch_size)`` indices, or ``None`` (all).

    Reptile's inner loop takes minibatches of the support set (Nichol et al. 2018), so that its steps see
    different examples of the task. Both backends take the indices from here, so they train on the same
    minibatches. The support examples are put in "shot-major" order (the first example of every class,
    then the second of every class, ...; for regression targets, the given order) and step ``i`` takes the
    window ``i*batch_size ... (i+1)*batch_size - 1`` of that order, wrapping around: with 5 ways, 10 shots
    and minibatches of 10, five steps are one epoch and every minibatch holds two examples of each class.

    ``labels``: one task's support labels (``support_y``); ``batch_size=None`` or ``>= len(labels)``: every
    step takes the whole support set.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if batch_size is None or batch_size >= n:
        return None
    check_positive(batch_size=batch_size)
    order = np.arange(n)
    if labels.ndim == 1 and labels.dtype.kind in "iu":  # rank of each example within its class, then position
        rank = np.zeros(n, np.int64)
        for label in np.unique(labels):
            members = labels == label
            rank[members] = np.arange(members.sum())
        order = np.lexsort((order, rank))
    windows = np.arange(steps)[:, None] * batch_size + np.arange(batch_size)[None, :]
    return order[windows % n].astype(np.int64)


def check_positive(**counts: int) -> None:
    """Raises ``ValueError`` naming the first count that is not a positive integer."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"Expected {name} to be a positive integer; received {name}={value!r}")


class _TaskSet:
    """Addressable task sets: ``episode(i)``, ``batch(b, size)``, ``take(n)``."""
    seed: int

    def episode(self, index: int) -> Episode:  # pragma: no cover - abstract
        raise NotImplementedError

    def batch(self, index: int, size: int) -> Episode:
        """Meta-batch ``index``: episodes ``index*size ... index*size+size-1`` stacked."""
        check_positive(meta_batch_size=size)
        return stack_episodes([self.episode(index * size + j) for j in range(size)])

    def take(self, count: int, start: int = 0) -> list[Episode]:
        """Episodes ``start ... start+count-1`` (a fixed evaluation set when the seed is fixed)."""
        check_positive(episodes=count)
        return [self.episode(start + j) for j in range(count)]

    def __iter__(self) -> Iterator[Episode]:
        index = 0
        while True:
            yield self.episode(index)
            index += 1


# ----------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class ClassDataset:
    """Images grouped by class, with optional rotated copies of a class counted as new classes.

    Attributes:
      images: ``(num_sources, per_class, H, W, C)`` float32 in [0, 1]; every source class has the same
        number of examples.
      sources: ``(num_classes,)`` index into ``images`` for every class.
      rotations: ``(num_classes,)`` quarter turns (0..3, counter-clockwise) applied to that class's images.
      names: optional ``num_classes`` readable class names.
    """
    images: np.ndarray
    sources: np.ndarray
    rotations: np.ndarray
    names: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.images.ndim != 5:
            raise ValueError("Expected images of shape (num_sources, per_class, H, W, C); "
                             f"received shape {self.images.shape}")
        if self.sources.shape != self.rotations.shape or self.sources.ndim != 1:
            raise ValueError("Expected sources and rotations of equal shape (num_classes,); received "
                             f"{self.sources.shape} and {self.rotations.shape}")
        if self.names is not None and len(self.names) != len(self.sources):
            raise ValueError(f"Expected {len(self.sources)} class names; received {len(self.names)}")

    @classmethod
    def from_grouped(cls, images: np.ndarray, rotate: bool = False, names: Sequence[str] | None = None):
        """From ``(num_classes, per_class, H, W[, C])`` images; ``rotate`` adds 90/180/270° classes."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim == 4:
            images = images[..., None]
        n = images.shape[0]
        if rotate:
            sources = np.repeat(np.arange(n), 4)
            rotations = np.tile(np.arange(4), n)
            if names is not None:
                names = [f"{name}/rot{90 * k:03d}" for name in names for k in range(4)]
        else:
            sources, rotations = np.arange(n), np.zeros(n, dtype=np.int64)
        return cls(images, sources.astype(np.int64), rotations.astype(np.int64),
                   None if names is None else tuple(names))

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, rotate: bool = False):
        """From flat ``x`` (N, H, W[, C]) and integer labels ``y`` (N,); every label needs equal counts."""
        x, y = np.asarray(x), np.asarray(y)
        if len(x) != len(y):
            raise ValueError(f"Expected as many labels as images; received {len(y)} labels, {len(x)} images")
        labels, counts = np.unique(y, return_counts=True)
        if counts.min() != counts.max():
            raise ValueError("Expected the same number of examples in every class; received between "
                             f"{counts.min()} and {counts.max()}: subsample to {counts.min()} per class")
        order = np.argsort(y, kind="stable")
        grouped = x[order].reshape((len(labels), counts[0]) + x.shape[1:])
        return cls.from_grouped(grouped, rotate=rotate, names=[str(label) for label in labels])

    @property
    def num_classes(self) -> int:
        return len(self.sources)

    @property
    def examples_per_class(self) -> int:
        return self.images.shape[1]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])


def _rotate(images: np.ndarray, quarter_turns: int) -> np.ndarray:
    return np.rot90(images, k=quarter_turns, axes=(-3, -2)) if quarter_turns else images


class ClassificationTasks(_TaskSet):
    """N-way K-shot Q-query classification episodes from a :class:`ClassDataset`.

    Each episode draws ``ways`` distinct classes, then ``shots + queries`` distinct examples of each
    (support and query never share an example), and gives the classes labels ``0..ways-1`` in a random
    order. Support and query are ordered class by class (label ``j`` of the support set is
    ``support_y[j*shots:(j+1)*shots]``) after the random relabelling.

    Example:
      >>> import numpy as np
      >>> data = ClassDataset.from_grouped(np.random.rand(10, 6, 4, 4))
      >>> tasks = ClassificationTasks(data, ways=5, shots=1, queries=2, seed=0)
      >>> tasks.episode(7).support_x.shape
      (5, 4, 4, 1)
    """

    def __init__(self, dataset: ClassDataset, ways: int, shots: int, queries: int, seed: int = 0):
        check_positive(ways=ways, shots=shots, queries=queries)
        if ways > dataset.num_classes:
            raise ValueError(f"ways={ways} is larger than the {dataset.num_classes} classes available; "
                             f"use --ways <= {dataset.num_classes} or a split with more classes")
        if shots + queries > dataset.examples_per_class:
            raise ValueError(f"shots + queries = {shots} + {queries} exceeds the {dataset.examples_per_class} "
                             f"examples per class; use shots + queries <= {dataset.examples_per_class}")
        self.dataset, self.ways, self.shots, self.queries, self.seed = dataset, ways, shots, queries, int(seed)

    def classes(self, index: int) -> np.ndarray:
        """The dataset classes (indices into ``dataset.sources``) that episode ``index`` draws, in order."""
        return episode_rng(self.seed, index).choice(self.dataset.num_classes, size=self.ways, replace=False)

    def episode(self, index: int) -> Episode:
        data, ways, shots, queries = self.dataset, self.ways, self.shots, self.queries
        rng = episode_rng(self.seed, index)
        classes = rng.choice(data.num_classes, size=ways, replace=False)  # = self.classes(index)
        per_class = data.examples_per_class
        examples = np.stack([rng.choice(per_class, size=shots + queries, replace=False) for _ in range(ways)])
        images = data.images[data.sources[classes][:, None], examples]  # (ways, shots+queries, H, W, C)
        rotations = data.rotations[classes]
        for k in (1, 2, 3):  # rotate all classes with the same quarter turns at once
            rotated = rotations == k
            if rotated.any():
                images[rotated] = _rotate(images[rotated], k)
        labels = rng.permutation(ways).astype(np.int64)  # class j gets label labels[j]
        shape = data.image_shape
        support_x = np.ascontiguousarray(images[:, :shots].reshape((ways * shots,) + shape))
        query_x = np.ascontiguousarray(images[:, shots:].reshape((ways * queries,) + shape))
        return Episode(support_x, np.repeat(labels, shots), query_x, np.repeat(labels, queries))


# ----------------------------------------------------------------------------------------------------
# Regression
# ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """A family of 1-D regression tasks: ``sample(rng) -> params`` and ``fn(x, params) -> y``."""
    name: str
    sample: Callable[[np.random.Generator], tuple[float, ...]]
    fn: Callable[[np.ndarray, tuple[float, ...]], np.ndarray]
    x_range: tuple[float, float] = (-5.0, 5.0)


def _sinusoid(rng):
    return rng.uniform(0.1, 5.0), rng.uniform(0.0, math.pi)


FAMILIES: dict[str, TaskFamily] = {
    # Finn et al. 2017: amplitude U[0.1, 5], phase U[0, pi], x U[-5, 5].
    "sinusoid": TaskFamily("sinusoid", _sinusoid, lambda x, p: p[0] * np.sin(x - p[1])),
    # Teaching families: a line and a parabola with random coefficients.
    "linear": TaskFamily("linear", lambda rng: (rng.uniform(-3, 3), rng.uniform(-3, 3)),
                         lambda x, p: p[0] * x + p[1]),
    "quadratic": TaskFamily("quadratic", lambda rng: tuple(rng.uniform(-1, 1, size=3)),
                            lambda x, p: p[0] * x ** 2 + p[1] * x + p[2]),
}


class RegressionTasks(_TaskSet):
    """K-shot regression episodes from a task family (``'sinusoid'``, ``'linear'``, ``'quadratic'`` or a
    :class:`TaskFamily`). Arrays are float32 of shape ``(points, 1)``.

    ``params(i)`` gives the task parameters of episode ``i`` (amplitude and phase for the sinusoid), and
    ``targets(i, x)`` evaluates task ``i`` on any inputs, for plots.
    """

    def __init__(self, family: str | TaskFamily = "sinusoid", shots: int = 10, queries: int = 10,
                 seed: int = 0):
        if isinstance(family, str):
            if family not in FAMILIES:
                raise ValueError(f"Expected one of {sorted(FAMILIES)}; received family={family!r}")
            family = FAMILIES[family]
        check_positive(shots=shots, queries=queries)
        self.family, self.shots, self.queries, self.seed = family, shots, queries, int(seed)

    def params(self, index: int) -> tuple[float, ...]:
        return self.family.sample(episode_rng(self.seed, index))

    def targets(self, index: int, x: np.ndarray) -> np.ndarray:
        return self.family.fn(np.asarray(x, dtype=np.float64), self.params(index)).astype(np.float32)

    def episode(self, index: int) -> Episode:
        rng = episode_rng(self.seed, index)
        params = self.family.sample(rng)
        low, high = self.family.x_range
        x = rng.uniform(low, high, size=(self.shots + self.queries, 1))
        y = self.family.fn(x, params)
        x, y = x.astype(np.float32), y.astype(np.float32)
        k = self.shots
        return Episode(x[:k], y[:k], x[k:], y[k:])
