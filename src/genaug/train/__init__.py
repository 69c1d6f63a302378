from ..data.imageset import ImageSet, load_any, load_real, load_synthetic
from .dataset import AugmentedDataset, SyntheticShareSampler
from .models import create_classifier
from .trainer import TrainConfig, evaluate, load_run, train

__all__ = ["AugmentedDataset", "ImageSet", "SyntheticShareSampler", "TrainConfig", "create_classifier", "evaluate",
           "load_any", "load_real", "load_run", "load_synthetic", "train"]
