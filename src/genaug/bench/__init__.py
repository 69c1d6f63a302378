from .report import load_summary, summarize, write_report
from .run import BenchConfig, run_bench

__all__ = ["BenchConfig", "load_summary", "run_bench", "summarize", "write_report"]
