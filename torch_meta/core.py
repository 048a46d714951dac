"""Machinery every PyTorch learner shares: tensors, losses, the meta-optimiser, the learner interface.

Mirror of ``tf_meta/core.py``. The optimisers are written out here (not ``torch.optim``) so that both
backends run the same formula: Adam as in PyTorch (eps added to the bias-corrected sqrt(v)), eps=1e-8.
Keras' Adam differs twice: its default eps is 1e-7, and it adds eps to the uncorrected sqrt(v).

Devices: a learner follows its model. Move the model first (``models.conv4(...).to("cuda")``), then build
the learner: every tensor it creates (episode tensors, learner tensors such as Meta-SGD's rates, the
optimiser state, adapted weights) goes to the device of the model's parameters, and numpy results come
back through ``.cpu()``. A model moved after the learner was built is refused with the fix.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from dualmeta.allocator import keep_freed_memory
from dualmeta.episodes import Episode
from dualmeta.twins import check_drops
from dualmeta.metrics import summarize
from dualmeta.protocol import TEST_NORMS, check_test_norm
from dualmeta.weights import check_weights

__all__ = ["OPTIMIZERS", "INNER_REDUCTIONS", "TEST_NORMS", "Optimizer", "Learner", "as_tensor", "task_loss",
           "task_accuracy", "is_classification"]

OPTIMIZERS = ("adam", "sgd")
INNER_REDUCTIONS = ("mean", "sum_per_shot")
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8  # PyTorch's default; Keras' is 1e-7. Passed explicitly in both backends.


def as_tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A numpy array as a tensor: floating arrays in the learner's dtype, integer labels as int64."""
    array = np.asarray(array)
    if np.issubdtype(array.dtype, np.integer):
        return torch.as_tensor(array, dtype=torch.int64)
    return torch.as_tensor(array, dtype=dtype)


def _model_device(model: torch.nn.Module) -> torch.device:
    """The one device holding every parameter and buffer of ``model``."""
    devices = {str(t.device) for t in (*model.parameters(), *model.buffers())}
    if len(devices) != 1:
        raise ValueError(f"Expected every parameter and buffer of the model on one device; received "
                         f"{sorted(devices)}: move the whole model with model.to(device)")
    return next(model.parameters()).device


def is_classification(targets) -> bool:
    """Integer targets mean classification (cross-entropy), floating targets regression (MSE)."""
    return not torch.is_floating_point(targets)


def task_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy for integer targets, mean squared error for floating ones."""
    if is_classification(targets):
        return F.cross_entropy(outputs, targets)
    return (outputs - targets).square().mean()


def task_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=-1) == targets).to(outputs.dtype).mean()


class Optimizer:
    """The meta-optimiser: ``'adam'`` (PyTorch's formula, eps=1e-8) or plain ``'sgd'``, on named tensors.

    Adam, step ``t``: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], name: str = "adam", lr: float = 1e-3):
        if name not in OPTIMIZERS:
            raise ValueError(f"Expected one of {list(OPTIMIZERS)}; received meta_optimizer={name!r}")
        self.params, self.name, self.lr, self.eps, self.t = dict(params), name, lr, ADAM_EPS, 0
        self.m = {n: torch.zeros_like(p) for n, p in self.params.items()} if name == "adam" else {}
        self.v = {n: torch.zeros_like(p) for n, p in self.params.items()} if name == "adam" else {}

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr = float(value)

    @torch.no_grad()
    def apply(self, grads: Mapping[str, torch.Tensor]) -> None:
        self.t += 1
        if self.name == "sgd":
            for n, p in self.params.items():
                p.sub_(self.lr * grads[n])
            return
        b1, b2 = ADAM_BETAS
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        for n, p in self.params.items():
            g = grads[n]
            self.m[n].mul_(b1).add_((1 - b1) * g)
            self.v[n].mul_(b2).add_((1 - b2) * g * g)
            p.sub_(self.lr * (self.m[n] / c1) / ((self.v[n] / c2).sqrt() + self.eps))

    def get_state(self) -> dict[str, np.ndarray]:
        """Neutral state: ``step`` and, for Adam, ``m.<name>``/``v.<name>`` in the neutral layout."""
        state = {"step": np.asarray(self.t, dtype=np.int64)}
        for prefix, slots in (("m.", self.m), ("v.", self.v)):
            state.update({prefix + n: s.detach().cpu().numpy().copy() for n, s in slots.items()})
        return state

    def set_state(self, state: Mapping[str, np.ndarray]) -> None:
        expected = {"step": ()}
        for prefix, slots in (("m.", self.m), ("v.", self.v)):
            expected.update({prefix + n: tuple(s.shape) for n, s in slots.items()})
        check_weights(expected, state, what="optimizer state")
        self.t = int(state["step"])
        with torch.no_grad():
            for prefix, slots in (("m.", self.m), ("v.", self.v)):
                for n, s in slots.items():
                    s.copy_(torch.as_tensor(np.asarray(state[prefix + n])))  # copy_ crosses devices


class Learner:
    """The interface every learner shares, identical in both backends.

    * ``adapt(episode, steps=None)`` -> adapted weights (a dict of tensors) for ``predict``;
    * ``predict(x, weights=None)`` -> numpy outputs (logits or regression values);
    * ``meta_train_step(batch)`` -> ``{"loss": float, "accuracy": float}`` (accuracy for classification);
    * ``evaluate(episodes, steps=None)`` -> ``{"loss": {"mean", "ci95", "n"}, "accuracy": {...}}``;
    * ``get_weights()`` / ``set_weights(d)`` in the neutral format (model tensors plus learner tensors);
    * ``get_optimizer_state()`` / ``set_optimizer_state(d)`` for checkpoints.

    ``test_norm`` says where batch norm takes its statistics when a model without running statistics
    scores a query set (``evaluate``): ``'query'`` (default) from the query set itself, as Finn et al.'s
    code does - transductive, a query's prediction depends on the other queries; ``'support'`` from the
    support set (the adapted weights run on support and queries together, the statistics come from the
    support rows) - each query is classified from the support set and itself alone. Models that track
    running statistics use those at test whatever ``test_norm`` says.

    A learner whose ``draws_drop_masks`` is true hands a twin's DropBlock layers their masks in training
    (``dualmeta.twins.drop_masks``, by address); the others refuse a twin that drops.
    """

    draws_drop_masks = False

    def __init__(self, model: torch.nn.Module, meta_lr: float = 1e-3, meta_optimizer: str = "adam"):
        keep_freed_memory()  # no page faults for the step's feature maps (dualmeta.allocator)
        if not self.draws_drop_masks:
            check_drops(model, type(self).__name__)
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self._device = _model_device(model)
        self.extra: dict[str, torch.Tensor] = {}  # learner tensors (e.g. Meta-SGD's rates), neutral names
        self.meta_lr, self.meta_optimizer = meta_lr, meta_optimizer
        self._optimizer = None
        self.test_norm = "query"

    @property
    def test_norm(self) -> str:
        return self._test_norm

    @test_norm.setter
    def test_norm(self, value: str) -> None:
        self._test_norm = check_test_norm(value)

    # -- parameters ---------------------------------------------------------------------------------
    def model_parameters(self) -> dict[str, torch.Tensor]:
        """The model's trainable parameters by neutral name."""
        return dict(self.model.named_parameters())

    def parameters(self) -> dict[str, torch.Tensor]:
        """Every tensor the meta-optimiser updates, by neutral name."""
        return {**self.model_parameters(), **self.extra}

    def kinds(self) -> dict[str, str]:
        """The layout kind (``'conv'``, ``'dense'``, ...) of every tensor, by neutral name."""
        kinds = {n: t.kind for n, t in self.model.spec.tensors.items()}
        return {**kinds, **{n: kinds[n.split(".", 1)[1]] for n in self.extra if n.split(".", 1)[1] in kinds}}

    @property
    def optimizer(self) -> Optimizer:
        if self._optimizer is None:
            self._optimizer = Optimizer(self.parameters(), self.meta_optimizer, self.meta_lr)
        return self._optimizer

    def to_neutral(self, name: str, value) -> np.ndarray:
        """A tensor of this learner in the neutral layout (PyTorch's layout is the neutral one: a copy)."""
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        return np.ascontiguousarray(value).copy()

    def get_weights(self) -> dict[str, np.ndarray]:
        weights = self.model.get_weights()
        weights.update({n: t.detach().cpu().numpy().copy() for n, t in self.extra.items()})
        return weights

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        extra_shapes = {n: tuple(t.shape) for n, t in self.extra.items()}
        model_shapes = {n: t.shape for n, t in self.model.spec.tensors.items()}
        check_weights({**model_shapes, **extra_shapes}, weights)
        self.model.set_weights({n: weights[n] for n in model_shapes})
        with torch.no_grad():
            for n, t in self.extra.items():
                t.copy_(torch.as_tensor(np.asarray(weights[n])))  # copy_ crosses devices

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        return self.optimizer.get_state()

    def set_optimizer_state(self, state: Mapping[str, np.ndarray]) -> None:
        self.optimizer.set_state(state)

    # -- episodes -----------------------------------------------------------------------------------
    def _as_tensor(self, array: np.ndarray) -> torch.Tensor:
        """``as_tensor`` on the learner's device (that of the model's parameters)."""
        device = next(self.model.parameters()).device
        if device != self._device:
            raise ValueError(f"The model is on {device}, but this learner was built for {self._device} (its "
                             "optimiser state and learner tensors live there); move the model with "
                             "model.to(device) before building the learner")
        return as_tensor(array, self.dtype).to(self._device)

    def _tensors(self, episode: Episode) -> tuple[torch.Tensor, ...]:
        return tuple(self._as_tensor(a) for a in episode)

    def predict(self, x: np.ndarray, weights: Mapping[str, torch.Tensor] | None = None) -> np.ndarray:
        """Outputs of the model (with ``weights`` from ``adapt`` if given) on numpy inputs.

        Inference mode: batch norm uses running statistics if the model tracks them, else batch statistics.
        """
        from torch_meta.models import functional_call
        weights = dict(self.model.named_parameters()) if weights is None else weights
        with torch.no_grad():
            out = functional_call(self.model, weights, self._as_tensor(x), training=False)
        return out.cpu().numpy()

    def _episode_metrics(self, episode: Episode, steps: int | None) -> dict[str, float]:
        """Loss (and accuracy) on the query set after adapting on the support set."""
        weights = self.adapt(episode, steps)
        from torch_meta.models import functional_call
        sx, _, qx, qy = self._tensors(episode)
        with torch.no_grad():
            if self.test_norm == "support":  # statistics of the support rows, applied to the queries
                out = functional_call(self.model, weights, torch.cat([sx, qx]), training=False,
                                      stats_rows=len(sx))[len(sx):]
            else:
                out = functional_call(self.model, weights, qx, training=False)
            metrics = {"loss": float(task_loss(out, qy))}
            if is_classification(qy):
                metrics["accuracy"] = float(task_accuracy(out, qy))
        return metrics

    def adapt(self, episode: Episode, steps: int | None = None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, episodes: Iterable[Episode], steps: int | None = None) -> dict[str, dict[str, float]]:
        """Mean query loss (and accuracy) with 95% confidence intervals over ``episodes``."""
        per_episode: dict[str, list[float]] = {}
        for episode in episodes:
            for name, value in self._episode_metrics(episode, steps).items():
                per_episode.setdefault(name, []).append(value)
        if not per_episode:
            raise ValueError("evaluate needs at least one episode; received none")
        return summarize(per_episode)

    def meta_train_step(self, batch: Episode) -> dict[str, float]:
        raise NotImplementedError

    # -- the two halves of a meta-training step (``distributed`` sums the first over workers) ----------
    def _step_gradients(self, batch: Episode):
        """``(gradients by name, metrics)`` of ``meta_train_step`` on ``batch`` (mean over its tasks), with its
        side effects (e.g. running statistics) but without the update."""
        raise NotImplementedError

    def _apply_gradients(self, grads) -> None:
        """The update of ``meta_train_step`` from the gradients of ``_step_gradients``."""
        self.optimizer.apply(grads)
