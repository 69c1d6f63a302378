from .metrics import cmmd, distance_keys, feature_space, frechet_kernel_distances, prdc_scores, synthetic_metrics

__all__ = ["cmmd", "distance_keys", "feature_space", "frechet_kernel_distances", "prdc_scores", "synthetic_metrics"]
