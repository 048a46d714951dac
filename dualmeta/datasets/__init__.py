"""Few-shot datasets beyond Omniglot, one module each, all as ``dualmeta.episodes.ClassDataset``.

* :mod:`dualmeta.datasets.folder`: your own images, ``root/<split>/<class>/*.png|jpg`` (``load_folder``).
* :mod:`dualmeta.datasets.miniimagenet`: mini-ImageNet, Ravi & Larochelle's CSVs with ``images/``, or the
  pickled 84x84 arrays (``load_miniimagenet``).
* :mod:`dualmeta.datasets.tieredimagenet`: tiered-ImageNet's pickled PNGs and labels (``load_tieredimagenet``).
* :mod:`dualmeta.datasets.cifar100`: CIFAR-FS and FC100 from the CIFAR-100 python pickles (``load_cifar_fs``,
  ``load_fc100``).

The standard sets cache their decoded arrays (``dualmeta.datasets._cache``, atomically, as Omniglot's).
"""
