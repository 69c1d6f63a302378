"""The engine's core, shared by every executor: plan a run (validate, build the method, open or resume the
output folder), account for what is already done, derive every seed, and `generate` one batch of outputs.

The executors (`local`, `ray`) sit beside this module and import only it, never each other.
"""
from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ..components.hub import models_dir
from ..core.config import ConfigError, build_config, config_dataclass, config_hash, to_dict
from ..core.log import get_logger
from ..core.records import Example, refusal
from ..core.seeding import derive_seed
from ..core.version import __version__
from ..data.images import InputConfig, Rejected
from ..data.sources import Record, Source
from ..data.writer import OutputDir, synthetic_file_name
from ..methods import create_method, get_method_class

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
    stages: dict[str, Any] | None = None  # what the post-generation stages reported (e.g. DIAGen's weighting)

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
        if self.stages:
            text += "\n" + ", ".join(f"{k}: {v}" for k, v in self.stages.items())
        return text


def _absolute(path: str) -> str:
    """A source file's path, absolute: recorded relative to the working directory it would mean nothing from
    another one (a report, a card, an audit run elsewhere). Paths that name no file (a dataset row) stay."""
    p = Path(path)
    return str(p.absolute()) if not p.is_absolute() and p.is_file() else path


def _versions() -> dict[str, str]:
    import PIL
    import torch
    import torchvision

    return {"genaug": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__), "pillow": PIL.__version__, "numpy": np.__version__}


@dataclass
class Plan:
    """A run made ready: its config, the built method, the source and the opened output folder."""

    run: RunConfig
    method: Any
    source: Source
    input_cfg: InputConfig
    resolved: dict[str, Any]
    outdir: OutputDir
    row_base: dict[str, Any]
    batch_size: int
    prepared: bool = False
    summary: RunSummary | None = None  # the run's summary (set by `pending`): the method's warnings land there

    def prepare(self) -> None:
        """The method's per-dataset work, once, and only when there is something to generate: a rerun of a
        finished run loads no token, caption or prompt. What the method then warns of (its `warnings`, e.g.
        no language model: templates instead) goes into the run summary."""
        if not self.prepared:
            self.method.prepare(self.source)
            self.prepared = True
            if self.summary is not None:
                self.summary.warnings += [w for w in getattr(self.method, "warnings", ())
                                          if w not in self.summary.warnings]

    def pending(self, summary: RunSummary) -> Iterator[tuple[Record, list[tuple[int, int]]]]:
        """Every source record with its missing `(variant, seed)` pairs (the resume accounting every executor
        shares); variants already written are counted in `summary.already_done`."""
        self.summary = summary
        for rec in self.source.records():
            # A record the source already refused (e.g. a duplicate id) is never "done", whatever its id's
            # first occurrence wrote: it is listed as rejected, the same on every run, however far the
            # writer has got (the local executor reads ahead of it).
            todo = [(k, derive_seed(self.run.seed, rec.id, k)) for k in range(self.run.n)
                    if rec.error is not None or not self.outdir.is_done(rec.id, k)]
            summary.already_done += self.run.n - len(todo)
            yield rec, todo


def plan(source: str | Path, out: str | Path, method: str, n: int | None = None, seed: int = 0,
         batch_size: int | None = None, options: dict[str, Any] | None = None, input: dict[str, Any] | None = None,
         models: str | Path | None = None) -> Plan:
    """Validate everything, build the method, open (or resume) the output folder."""
    run = build_config(RunConfig, dict(method=method, n=n, seed=seed, batch_size=batch_size,
                                       options=options or {}, input=input or {},
                                       models=str(models) if models else None), where="run")
    cls = get_method_class(run.method)
    input_cfg = build_config(InputConfig, run.input, where="input")
    src = Source(source, input_cfg)  # a bad source fails before any model is loaded
    if src.kind in ("imagefolder", "hf-imagefolder") and Path(out).resolve().is_relative_to(src.root.resolve()):
        raise ConfigError(f"--out {out} is inside the source folder {source}: the next run would read the generated "
                          "images as a source (a class named after the folder, or the only images). Write elsewhere.")
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
    outdir = OutputDir(out, resolved, IDENTITY_KEYS,
                       defaults={"options": to_dict(cls.Config()), "input": to_dict(InputConfig())})
    row_base = {"method": run.method, "method_version": cls.version, "config_hash": resolved["config_hash"],
                "genaug_version": __version__}
    if resolved["models"]:
        row_base["models"] = resolved["models"]
    return Plan(run, m, src, input_cfg, resolved, outdir, row_base, batch_size)


# An image is blank when, in every channel of its 8-bit pixels, max - min <= BLANK_TOLERANCE: one colour up
# to rounding (a resized black image stays within it; any real image, even a flat-looking photo, has more
# spread). A blank output of a source that is not blank carries no class evidence — typically the safety
# checker's black image or an fp16 VAE overflow (NaN decoded as black) — and is rejected; a source that is
# itself one colour may give one-colour outputs (a flip of a flat image is faithful to it).
BLANK_TOLERANCE = 2


def blank(image) -> str | None:
    """Why `image` is blank, or None when it is not (see BLANK_TOLERANCE)."""
    pixels = np.asarray(image if image.mode in ("RGB", "L") else image.convert("RGB"))
    pixels = pixels.reshape(-1, 1 if pixels.ndim == 2 else pixels.shape[-1])
    lo, hi = pixels.min(axis=0), pixels.max(axis=0)
    if int((hi.astype(int) - lo).max()) > BLANK_TOLERANCE:
        return None
    colour = tuple(int(v) for v in lo) if len(lo) > 1 else int(lo[0])
    return (f"the generated image is blank (every pixel within {BLANK_TOLERANCE} levels of {colour}): no class "
            "evidence to train on. From a diffusion model this usually means the safety checker blacked it out "
            "(safety_checker=false) or fp16 overflowed in decoding (run the model in fp32); from a transform, "
            "that it covered the whole subject (milder settings)")


def generate(m, items: list[tuple[Example, int, int]], row_base: dict[str, Any]
             ) -> tuple[list[tuple[dict[str, Any], Any]], dict[Any, tuple[Example, str]]]:
    """One method call over `items` (example, variant, seed): `([(metadata row, image)], refused)`, where
    `refused` maps the id of every example the method declined (e.g. no subject found) to (example, reason),
    and `(id, variant)` of every output that must not be data — one a component refused (the safety checker
    flagged it: `core.records.refusal`) or a blank one of a source that is not — to (example, reason
    naming the variant).
    Every method's output passes here, on every executor, so none writes a blank or flagged image; the others
    are returned untouched. Shared by every executor, so they write the same rows and the same pixels."""
    drawn, refused = [], {}
    for e, k, s in items:
        if e.id in refused:
            drawn.append(None)
            continue
        try:
            drawn.append({"seed": s, **m.sample_params(e, np.random.default_rng(s), variant=k)})
        except Rejected as err:
            refused[e.id] = (e, str(err))
            drawn.append(None)
    keep = [i for i, item in enumerate(items) if item[0].id not in refused]
    items, params = [items[i] for i in keep], [drawn[i] for i in keep]
    if not items:
        return [], refused
    outputs = m([e for e, _, _ in items], params)
    if len(outputs) != len(items):
        raise RuntimeError(f"method {m.name!r} returned {len(outputs)} images for {len(items)} inputs")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    results = []
    for (ex, k, s), syn in zip(items, outputs):
        why = refusal(syn.image)
        if why is None and (empty := blank(syn.image)) and blank(ex.image) is None:  # flat source: flat is fine
            why = empty
        if why:
            refused[(ex.id, k)] = (ex, f"{m.name} variant {k} (seed {s}): {why}")
            continue
        row = {"file_name": synthetic_file_name(ex.label, ex.id, k), "label": ex.label, "source_id": ex.id,
               "source_path": _absolute(ex.path), "variant": k, "seed": s, **row_base, "params": syn.params,
               "weight": float(syn.weight), "created_at": now}
        if syn.scores:
            row["scores"] = syn.scores
        results.append((row, syn.image))
    return results, refused
