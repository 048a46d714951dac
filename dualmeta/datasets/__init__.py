"""Few-shot datasets beyond Omniglot, one module each, all as ``dualmeta.episodes.ClassDataset``."""
