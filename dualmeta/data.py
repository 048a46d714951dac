"""``dualmeta.data`` is :mod:`dualmeta.datasets.omniglot` under its earlier name (kept so that existing
imports, ``from dualmeta import data``, keep working): the same module object, not a copy."""
import sys

from dualmeta.datasets import omniglot as _omniglot

sys.modules[__name__] = _omniglot
