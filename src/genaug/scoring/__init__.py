from .metrics import fid_kid, prdc_scores, synthetic_metrics

__all__ = ["fid_kid", "prdc_scores", "synthetic_metrics"]
