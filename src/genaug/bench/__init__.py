"""The benchmark harness (`genaug bench`, the demo's runs) and `lanes`, its jobs side by side. Its public names are
imported on first use, so a worker process that only needs `bench.lanes` does not import the training stack."""
from __future__ import annotations

from typing import Any

__all__ = ["BenchConfig", "load_summary", "run_bench", "summarize", "write_report"]
_FROM = {"BenchConfig": "run", "run_bench": "run", "load_summary": "report", "summarize": "report",
         "write_report": "report"}


def __getattr__(name: str) -> Any:
    if name not in _FROM:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
