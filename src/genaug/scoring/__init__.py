# `audit_synthetic`, not `audit`: the name `genaug.scoring.audit` stays the module.
from .audit import audit as audit_synthetic
from .metrics import cmmd, distance_keys, feature_space, frechet_kernel_distances, prdc_scores, synthetic_metrics

__all__ = ["audit_synthetic", "cmmd", "distance_keys", "feature_space", "frechet_kernel_distances", "prdc_scores", "synthetic_metrics"]
