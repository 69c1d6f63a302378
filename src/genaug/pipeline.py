"""The public `genaug.augment()`: the engine's run (plan, prepare, executor, close), then the
post-generation stages, each run on the finished output folder: the user's filters (`filter=`, see
genaug.scoring.filters) first, then the stages the method names (e.g. DIAGen's weighting, which then
leaves the filtered images out of its per-source average).

A method never opens its output folder and never trains a classifier: it names its stages, and this module,
which sits above both the engine and scoring, runs them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .core.config import ConfigError
from .engine.core import RunSummary, plan


def _stage_runner(name: str):
    if name == "weight":
        from .scoring.weighting import weight_stage

        return weight_stage
    if name == "filter":
        from .scoring.filters import filter_stage

        return filter_stage
    raise ConfigError(f"unknown post-generation stage {name!r}")


def augment(source: str | Path, out: str | Path, method: str, n: int | None = None, seed: int = 0,
            batch_size: int | None = None, options: dict[str, Any] | None = None, input: dict[str, Any] | None = None,
            progress: bool | None = None, models: str | Path | None = None, executor: str = "local",
            filter: dict[str, Any] | None = None, **executor_options: Any) -> RunSummary:
    """Write `n` synthetic variants of every usable image in `source` to `out` (resuming if it exists), then
    run the post-generation stages: `filter` (genaug.scoring.filters.FilterConfig options; judged against
    `source`), then the method's own. `executor="ray"` runs the method in a Ray Data actor pool
    (see `genaug.engine.ray`)."""
    if executor not in ("local", "ray"):
        raise ConfigError(f"unknown executor {executor!r}: local or ray")
    if executor == "local" and executor_options:
        raise ConfigError(f"options {sorted(executor_options)} need --executor ray")
    from .train.transforms import BATCH_TRANSFORMS

    if method in BATCH_TRANSFORMS:
        raise ConfigError(f"{method!r} is a batch-level augmentation applied while training (genaug train "
                          f"augment={method}); it writes no images. Generators: see `genaug methods`.")
    if filter is not None:
        from .core.config import build_config
        from .scoring.filters import FilterConfig

        build_config(FilterConfig, filter, where="filter")  # bad filter options fail before anything is generated
    p = plan(source, out, method, n, seed, batch_size, options, input, models)
    summary = RunSummary(out=Path(out), warnings=list(p.source.warnings))
    t0 = time.perf_counter()
    try:
        if executor == "ray":
            from .engine.ray import run_ray

            run_ray(p, summary, progress=progress, **executor_options)
        else:
            from .engine.local import run_local

            run_local(p, summary, progress=progress)
    except BaseException:  # what was written stays (a rerun resumes); the folder is free for that rerun at once
        p.outdir.release()
        raise
    p.outdir.close()
    reports = {}
    stages = ([("filter", filter)] if filter is not None else []) + list(p.method.stages())
    for name, stage_options in stages:
        reports.update(_stage_runner(name)(Path(out), p.source, **stage_options) or {})
    summary.stages = reports or None
    summary.rejected = p.outdir.n_rejected
    summary.seconds = time.perf_counter() - t0
    return summary
