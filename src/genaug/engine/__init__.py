from .core import Plan, RunConfig, RunSummary, generate, plan

__all__ = ["Plan", "RunConfig", "RunSummary", "generate", "plan"]
