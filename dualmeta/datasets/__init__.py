"""Few-shot datasets, one module each, all as ``dualmeta.episodes.ClassDataset``.

* :mod:`dualmeta.datasets.omniglot`: Omniglot from Lake et al.'s zips, the Vinyals and Lake splits and Lake's
  one-shot runs (``omniglot_split``, ``lake_one_shot_runs``, ``download_omniglot``; ``dualmeta.data`` is its
  earlier name).
* :mod:`dualmeta.datasets.folder`: your own images, ``root/<split>/<class>/*.png|jpg`` (``load_folder``).
* :mod:`dualmeta.datasets.miniimagenet`: mini-ImageNet, Ravi & Larochelle's CSVs with ``images/``, or the
  pickled 84x84 arrays (``load_miniimagenet``).
* :mod:`dualmeta.datasets.tieredimagenet`: tiered-ImageNet's pickled PNGs and labels (``load_tieredimagenet``).
* :mod:`dualmeta.datasets.cifar100`: CIFAR-FS and FC100 from the CIFAR-100 python pickles (``load_cifar_fs``,
  ``load_fc100``).

All cache their decoded arrays through ``dualmeta.datasets._cache`` (atomically: a temporary file, then
``os.replace``).
"""
