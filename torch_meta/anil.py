"""ANIL, "almost no inner loop" (Raghu et al. 2020), PyTorch side. Mirror of ``tf_meta/anil.py``.

MAML whose inner loop adapts only the classifier (``head.*``); the body is learned by the outer loop
alone. Arguments as :class:`torch_meta.maml.MAML`; the model needs a classifier (``num_classes``).

References: Raghu, Raghu, Bengio, Vinyals. Rapid Learning or Feature Reuse? ICLR 2020.
"""
from __future__ import annotations

from torch_meta.maml import MAML

__all__ = ["ANIL"]


# --8<-- [start:learner]
class ANIL(MAML):
    """MAML with an inner loop on the head only."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        if not any(n.startswith("head.") for n, _ in model.named_parameters()):
            raise ValueError("ANIL adapts the classifier only, and this model has none; "
                             "build it with num_classes=<ways>")

    def adapted_names(self) -> list[str]:
        return [n for n, _ in self.model.named_parameters() if n.startswith("head.")]
# --8<-- [end:learner]
