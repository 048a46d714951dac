"""dualmeta: meta-learning with twin TensorFlow/Keras and PyTorch backends that give the same numbers.

This package is framework-neutral: it never imports tensorflow or torch (only ``dualmeta.backend`` does,
when asked for a backend by name).
"""
from dualmeta.episodes import (ClassDataset, ClassificationTasks, Episode, RegressionTasks,
                               episode_rng, stack_episodes)
from dualmeta.metrics import accuracy, mean_ci95

__version__ = "0.1.0"

__all__ = ["ClassDataset", "ClassificationTasks", "Episode", "RegressionTasks", "episode_rng",
           "stack_episodes", "accuracy", "mean_ci95", "__version__"]
