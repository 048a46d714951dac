"""MAML's meta-gradient against its closed form, in both backends.

For a model linear in its parameters, ``f(x) = X w`` (``X`` = inputs with a column of ones), and the
mean squared error, the support loss has gradient ``g(w) = 2/n X^T (X w - y)`` and constant Hessian
``H = 2/n X^T X``. After ``k`` inner steps ``w_k`` (from ``w_{j+1} = w_j - alpha g(w_j)``), the
second-order meta-gradient of the query loss is ``((I - alpha H)^T)^k grad L_query(w_k)``; first-order
MAML drops the product. Both backends must match the numpy formula to float64 round-off.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from dualmeta.episodes import Episode, stack_episodes

FEATURES, SUPPORT, QUERY, TASKS, ALPHA = 3, 6, 7, 4, 0.05


def _batch(seed=0) -> Episode:
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(TASKS):
        w_task = rng.normal(size=(FEATURES, 1))
        sx, qx = rng.normal(size=(SUPPORT, FEATURES)), rng.normal(size=(QUERY, FEATURES))
        episodes.append(Episode(sx, sx @ w_task + 0.1 * rng.normal(size=(SUPPORT, 1)),
                                qx, qx @ w_task + 0.1 * rng.normal(size=(QUERY, 1))))
    return stack_episodes(episodes)


def _closed_form(weights, batch, steps, first_order):
    w = np.concatenate([weights["layers.0.weight"].reshape(-1), weights["layers.0.bias"]])
    total = np.zeros_like(w)
    for sx, sy, qx, qy in zip(*batch):
        xs = np.hstack([sx, np.ones((len(sx), 1))])
        xq = np.hstack([qx, np.ones((len(qx), 1))])
        hessian = 2.0 / len(xs) * xs.T @ xs
        phi = w.copy()
        for _ in range(steps):
            phi = phi - ALPHA * 2.0 / len(xs) * xs.T @ (xs @ phi - sy[:, 0])
        grad = 2.0 / len(xq) * xq.T @ (xq @ phi - qy[:, 0])
        if not first_order:
            jacobian = np.linalg.matrix_power(np.eye(len(w)) - ALPHA * hessian, steps)
            grad = jacobian.T @ grad
        total += grad / TASKS
    return {"layers.0.weight": total[:FEATURES].reshape(1, FEATURES), "layers.0.bias": total[FEATURES:]}


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("learner", ["MAML", "FirstOrderMAML"])
@pytest.mark.parametrize("backend", ["tf", "torch"])
def test_meta_gradient_matches_closed_form(backend, learner, steps):
    models = importlib.import_module(f"{backend}_meta.models")
    module = importlib.import_module(f"{backend}_meta.{'maml' if learner == 'MAML' else 'fomaml'}")
    model = models.mlp(FEATURES, (), 1, dtype="float64", seed=5)
    maml = getattr(module, learner)(model, inner_lr=ALPHA, inner_steps=steps)
    batch = _batch()
    grads, _ = maml.meta_gradients(batch)
    expected = _closed_form(model.get_weights(), batch, steps, first_order=learner != "MAML")
    for name, value in expected.items():
        np.testing.assert_allclose(grads[name], value, rtol=1e-10, atol=1e-12, err_msg=f"meta_grads/{name}")
    if learner == "MAML":  # the closed forms of the two orders differ: the test can tell them apart
        other = _closed_form(model.get_weights(), batch, steps, first_order=True)
        assert not np.allclose(grads["layers.0.weight"], other["layers.0.weight"], rtol=1e-6)
