from .local import RunConfig, RunSummary, augment

__all__ = ["RunConfig", "RunSummary", "augment"]
