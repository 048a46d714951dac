"""dualmeta's PyTorch backend. Mirror of ``tf_meta``: same module names, same public names, same numbers.

Importing it pins TF32 off (it changes low-order bits on GPUs). It never imports tensorflow.
"""
import torch as _torch

_torch.backends.cuda.matmul.allow_tf32 = False
_torch.backends.cudnn.allow_tf32 = False

BACKEND = "torch"
