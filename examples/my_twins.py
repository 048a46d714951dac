"""Twins for the "Your own model" docs page and ``dualmeta check-model``.

``tiny`` is a user's own backbone in ten lines; ``mismatched`` adds a GELU whose two backend versions are
not the same function (PyTorch's exact erf form, TensorFlow's tanh approximation): the check names it.
"""

from dualmeta import twins as T


def tiny(ways: int = 5):
    return T.Description("tiny", input_shape=(12, 12, 1), layers=(
        T.Conv2d("conv", 1, 4, kernel=3, stride=2, padding=1),
        T.BatchNorm("norm", 4),
        T.Activation("leaky_relu", slope=0.1),
        T.MaxPool(2),
        T.Flatten(),
        T.Dense("head", 4 * 3 * 3, ways),
    ))


def gelu_torch(x):
    import torch.nn.functional as F
    return F.gelu(x)  # exact: x * Phi(x)


def gelu_tf(x):
    import tensorflow as tf
    return tf.nn.gelu(x, approximate=True)  # the tanh approximation: not the same function


def mismatched(ways: int = 5):
    layers = list(tiny(ways).layers)
    layers[2] = T.Function("gelu", torch="examples.my_twins:gelu_torch", tf="examples.my_twins:gelu_tf")
    return T.Description("mismatched", (12, 12, 1), tuple(layers))


# --8<-- [start:small]
def small(num_classes=None, in_channels=1, image_size=28):
    """A backbone for ``python -m dualmeta train --model=examples.my_twins:small``: the command line passes the
    episode's ways as ``num_classes`` (``None`` for the metric learners, which need no classifier) and the
    task's image shape."""
    size = (image_size - 1) // 2 + 1  # after the stride-2 convolution
    layers = [T.Conv2d("conv", in_channels, 8, kernel=3, stride=2, padding=1), T.BatchNorm("norm", 8),
              T.Activation("relu"), T.MaxPool(2), T.Flatten()]
    if num_classes is not None:
        layers.append(T.Dense("head", 8 * (size // 2) ** 2, num_classes))
    return T.Description("small", (image_size, image_size, in_channels), tuple(layers))
# --8<-- [end:small]
