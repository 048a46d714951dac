"""dualmeta's TensorFlow/Keras 3 backend. Mirror of ``torch_meta``: same module names, same public names,
same numbers.

Importing it pins TF32 off (it changes low-order bits on GPUs) and selects Keras' TensorFlow backend.
It never imports torch.
"""
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras as _keras  # noqa: E402
import tensorflow as _tf  # noqa: E402

if _keras.backend.backend() != "tensorflow":
    raise ImportError(f"tf_meta needs Keras' TensorFlow backend; KERAS_BACKEND={_keras.backend.backend()!r}. "
                      "Unset KERAS_BACKEND or set it to 'tensorflow'.")
_tf.config.experimental.enable_tensor_float_32_execution(False)

BACKEND = "tf"
