from ..data.imageset import ImageSet, load_any, load_real, load_synthetic
from .models import create_classifier
from .trainer import TrainConfig, batch_indices, evaluate, train

__all__ = ["ImageSet", "TrainConfig", "batch_indices", "create_classifier", "evaluate", "load_any",
           "load_real", "load_synthetic", "train"]
