"""First-order MAML, TensorFlow side. Mirror of ``torch_meta/fomaml.py``.

MAML with the inner gradients treated as constants: the meta-gradient is the query-loss gradient at the
adapted weights, ``grad_theta L_query(phi_k) ~= grad_phi L_query(phi_k)``. Cheaper (no second
derivatives) and, per Finn et al. 2017, nearly as accurate. Arguments as :class:`tf_meta.maml.MAML`
without ``first_order``.

References: Finn, Abbeel, Levine, ICML 2017, section 5.2.
"""
from __future__ import annotations

from tf_meta.maml import MAML

__all__ = ["FirstOrderMAML"]


# --8<-- [start:learner]
class FirstOrderMAML(MAML):
    """MAML with ``first_order=True``."""

    def __init__(self, model, inner_lr: float = 0.4, inner_steps: int = 1, test_inner_steps: int | None = None,
                 meta_lr: float = 1e-3, inner_reduction: str = "mean", meta_optimizer: str = "adam"):
        super().__init__(model, inner_lr, inner_steps, test_inner_steps, first_order=True, meta_lr=meta_lr,
                         inner_reduction=inner_reduction, meta_optimizer=meta_optimizer)
# --8<-- [end:learner]
