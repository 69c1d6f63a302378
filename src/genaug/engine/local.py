"""The local executor: stream the source, generate the missing (image, variant) pairs in batches, write.

Memory holds one batch of images plus the set of finished (source id, variant) keys — never the dataset.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from tqdm.auto import tqdm

from .. import __version__
from ..components.hub import models_dir
from ..config import ConfigError, build_config, config_dataclass, config_hash, to_dict
from ..data.images import InputConfig, Rejected
from ..data.sources import Source, load_example
from ..data.writer import OutputDir, synthetic_file_name
from ..logging import get_logger
from ..registry import create_method, get_method_class
from ..seeding import derive_seed
from ..types import Example

log = get_logger(__name__)
# Changing any of these changes which images a run makes, so a directory refuses to resume under others.
IDENTITY_KEYS = ("method", "method_version", "options", "seed", "input")


@config_dataclass
class RunConfig:
    """Everything `genaug augment` takes; a YAML `--config` file holds the same keys."""

    method: str
    n: int | None = Field(None, ge=1)  # variants per source image; None: the method's default_n
    seed: int = 0
    batch_size: int | None = Field(None, ge=1)  # None: the method's own default_batch_size
    options: dict[str, Any] = Field(default_factory=dict)  # the method's Config overrides
    input: dict[str, Any] = Field(default_factory=dict)  # InputConfig overrides
    models: str | None = None  # a folder of local models: components load from <models>/<component>


@dataclass
class RunSummary:
    out: Path
    sources: int = 0
    generated: int = 0
    already_done: int = 0
    rejected: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    finished: dict[str, Any] | None = None  # what the method's finish step reported (e.g. DIAGen's weighting)

    def __str__(self) -> str:
        parts = [f"wrote {self.generated} image(s) to {self.out}"]
        if self.already_done:
            parts.append(f"{self.already_done} already present")
        parts.append(f"{self.sources} source image(s) read")
        if self.rejected:
            parts.append(f"{self.rejected} rejected (see {self.out / 'rejected.jsonl'})")
        if self.warnings:
            parts.append(f"{len(self.warnings)} warning(s): " + "; ".join(self.warnings))
        text = ", ".join(parts) + f" in {self.seconds:.1f} s"
        if self.finished:
            text += "\n" + ", ".join(f"{k}: {v}" for k, v in self.finished.items())
        return text


def _versions() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    return {"genaug": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "pillow": PIL.__version__, "numpy": np.__version__}


def augment(source: str | Path, out: str | Path, method: str, n: int | None = None, seed: int = 0, batch_size: int | None = None,
            options: dict[str, Any] | None = None, input: dict[str, Any] | None = None,
            progress: bool | None = None, models: str | Path | None = None) -> RunSummary:
    """Write `n` synthetic variants of every usable image in `source` to `out` (resuming if it exists)."""
    run = build_config(RunConfig, dict(method=method, n=n, seed=seed, batch_size=batch_size,
                                       options=options or {}, input=input or {},
                                       models=str(models) if models else None), where="run")
    cls = get_method_class(run.method)
    if cls.kind != "generator":
        raise ConfigError(f"{run.method!r} is a batch-level augmentation applied while training; it writes no images. "
                          f"Generators: see `genaug methods`.")
    input_cfg = build_config(InputConfig, run.input, where="input")
    src = Source(source)  # a bad source fails before any model is loaded
    with models_dir(run.models):
        m = create_method(run.method, run.options)
    batch_size = run.batch_size or cls.default_batch_size
    run.n = run.n or cls.default_n

    resolved = {
        "method": run.method, "method_version": cls.version, "options": to_dict(m.config), "seed": run.seed,
        "input": to_dict(input_cfg), "n": run.n, "batch_size": batch_size,
        "source": str(Path(source).resolve()), "source_kind": src.kind, "models": m.models(),
        "models_dir": run.models,
        "versions": _versions(),
    }
    resolved["config_hash"] = config_hash({k: resolved[k] for k in IDENTITY_KEYS})
    outdir = OutputDir(out, resolved, IDENTITY_KEYS)
    summary = RunSummary(out=Path(out), warnings=list(src.warnings))
    row_base = {"method": run.method, "method_version": cls.version, "config_hash": resolved["config_hash"],
                "genaug_version": __version__}
    if resolved["models"]:
        row_base["models"] = resolved["models"]
    t0 = time.perf_counter()
    m.prepare(src)

    total = src.count() * run.n
    # progress=None: a bar when stderr is a terminal (tqdm's own rule); True / False force it.
    bar = tqdm(total=total, desc=f"genaug {run.method}", unit="img", dynamic_ncols=True,
               disable=None if progress is None else not progress)
    pending: list[tuple[Example, int, int]] = []

    def flush() -> None:
        if not pending:
            return
        examples = [e for e, _, _ in pending]
        params = [{"seed": s, **m.sample_params(e, np.random.default_rng(s))} for e, _, s in pending]
        outputs = m(examples, params)
        if len(outputs) != len(pending):
            raise RuntimeError(f"method {run.method!r} returned {len(outputs)} images for {len(pending)} inputs")
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for (ex, k, s), syn in zip(pending, outputs):
            row = {"file_name": synthetic_file_name(ex.label, ex.id, k), "label": ex.label, "source_id": ex.id,
                   "source_path": ex.path, "variant": k, "seed": s, **row_base, "params": syn.params,
                   "weight": float(syn.weight), "created_at": now}
            if syn.scores:
                row["scores"] = syn.scores
            outdir.write(syn.image, row)
        outdir.sync()
        summary.generated += len(pending)
        bar.update(len(pending))
        pending.clear()

    try:
        for rec in src.records():
            todo = [k for k in range(run.n) if not outdir.is_done(rec.id, k)]
            summary.already_done += run.n - len(todo)
            if len(todo) < run.n:
                bar.update(run.n - len(todo))
            if not todo:
                summary.sources += 1
                continue
            try:
                ex = load_example(rec, input_cfg)
            except Rejected as e:
                outdir.reject(rec.path, rec.id, str(e))
                bar.total -= len(todo)
                continue
            summary.sources += 1
            for k in todo:
                pending.append((ex, k, derive_seed(run.seed, ex.id, k)))
                if len(pending) >= batch_size:
                    flush()
        flush()
    finally:
        bar.close()
    outdir.close()
    summary.finished = m.finish(Path(out), src)
    summary.rejected = outdir.n_rejected
    summary.seconds = time.perf_counter() - t0
    return summary
