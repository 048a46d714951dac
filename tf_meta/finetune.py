"""The fine-tuning baseline ("pretrained" in Finn et al. 2017), TensorFlow side. Mirror of ``torch_meta/finetune.py``.

Training is plain supervised learning on the query sets of the meta-batch at the current weights (no
inner loop: MAML with zero training inner steps); at test time the weights are fine-tuned with
``test_inner_steps`` steps of SGD on the support set, as MAML adapts. The baseline every meta-learner
must beat: on the sinusoid, Finn et al. report 2.41 / 2.23 / 2.19 MSE after 1 / 5 / 10 steps for it,
against 0.67 / 0.38 / 0.35 for MAML.

Arguments: ``model``, ``inner_lr=0.01`` (fine-tuning rate), ``test_inner_steps=10``, ``meta_lr=1e-3``,
``meta_optimizer='adam'``.

References: Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks.
ICML 2017, section 5.1.
"""
from __future__ import annotations

from tf_meta.maml import MAML

__all__ = ["FineTune"]


# --8<-- [start:learner]
class FineTune(MAML):
    """Supervised pretraining on all tasks, then SGD fine-tuning on each test task's support set."""

    def __init__(self, model, inner_lr: float = 0.01, test_inner_steps: int = 10, meta_lr: float = 1e-3,
                 meta_optimizer: str = "adam"):
        super().__init__(model, inner_lr, inner_steps=0, test_inner_steps=test_inner_steps, first_order=True,
                         meta_lr=meta_lr, meta_optimizer=meta_optimizer)
# --8<-- [end:learner]
