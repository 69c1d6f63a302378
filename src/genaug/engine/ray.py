"""The Ray Data executor: the method runs as a callable class in an actor pool (models loaded once per
actor), the driver streams the results into the same output folder the local executor writes.

- The driver plans the run exactly as the local executor does (same config, same identity check, same
  resume: only (source, variant) pairs missing from `metadata.jsonl` are sent), runs the method's
  `prepare` once when there is work (textual inversion, prompts… land in `GENAUG_CACHE`, where the actors find them),
  and derives every seed. Rows travel as (record, variant, seed).
- With GPU workers, three stages, streamed by Ray Data, so the GPUs never wait for decoding or encoding: CPU
  actors decode the sources (`SourceDecoder`); each generation actor builds the method once and calls the
  executor-independent `generate` (the same code the local executor calls: same params, same pixels, same
  rows); CPU tasks PNG-encode the images with the writer's own encoder (`encode_images`), so files are
  byte-identical. The CPU stages ask for a fraction of a CPU each (`_CPU_STAGE`): they run beside the
  workers, on the cycles a GPU worker's process leaves idle. On CPU-only workers the actor does all three
  itself (measured: separate stages' processes only compete for the same cores, 1.6x slower at 2 workers
  on 2 cores).
- The driver writes each result as it arrives (PNG, then its row, synced per batch), so a run killed at
  any moment, driver or workers, loses at most the batches in flight; a rerun sends only what is missing.
  `preserve_order` keeps `metadata.jsonl` in source order, as locally.

On a cluster, `GENAUG_CACHE` and the output folder must be on storage every node sees (the driver writes
the outputs; actors read the sources and the cache).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import warnings
from unittest import mock
from typing import Any

from tqdm.auto import tqdm

from ..core.config import ConfigError
from ..core.log import bar_disabled, get_logger
from ..data.metadata import dumps_row

log = get_logger(__name__)
# Environment the actors need to behave like the driver (offline mode, caches, verbosity).
_FORWARD_ENV = ("GENAUG_CACHE", "GENAUG_VERBOSITY", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "TORCH_HOME", "RAY_DATA_LOG_LEVEL",
                "RAY_BACKEND_LOG_LEVEL")
_QUIET_ENV = {"RAY_DATA_LOG_LEVEL": "ERROR", "RAY_BACKEND_LOG_LEVEL": "error"}


def parse_workers(workers: int | str | tuple[int, int] | None) -> tuple[int, int]:
    """`N` (a fixed pool) or `MIN,MAX` (autoscaling) → (min, max)."""
    if workers is None:
        return 1, 1
    if isinstance(workers, int):
        lo = hi = workers
    elif isinstance(workers, (tuple, list)):
        lo, hi = (int(x) for x in workers)
    else:
        try:
            parts = [int(x) for x in str(workers).split(",")]
        except ValueError:
            raise ConfigError(f"--workers takes N or MIN,MAX, got {workers!r}") from None
        if len(parts) not in (1, 2):
            raise ConfigError(f"--workers takes N or MIN,MAX, got {workers!r}")
        lo, hi = parts[0], parts[-1]
    if lo < 1 or hi < lo:
        raise ConfigError(f"--workers needs 1 <= MIN <= MAX, got {workers!r}")
    return lo, hi


_CPU_STAGE = 0.25  # CPUs each decoding actor and encoding task asks for: they fit beside the workers


def _enter(cwd: str | None) -> None:
    """Work in the driver's directory `cwd` (when this machine has it): the sources' paths are as the user gave
    them, relative to it, and Ray's workers keep the directory they were started in (where `ray start` ran, or
    the driver's before it moved)."""
    if cwd and os.path.isdir(cwd):
        os.chdir(cwd)


class SourceDecoder:
    """The sources of a batch of (record, variant, seed) rows, decoded once per source and batch: each row's
    `Example`, or None and (on its source's first row in the batch) the reason it was refused, which the
    driver lists once in `rejected.jsonl`. Called as a Ray stage (CPU actors), the examples travel pickled:
    Ray Data would turn a column of objects into arrays."""

    def __init__(self, source: str, input_cfg: dict[str, Any], cwd: str | None = None):
        from ..core.config import build_config
        from ..data.images import InputConfig
        from ..data.sources import Source

        _enter(cwd)
        self.input_cfg = build_config(InputConfig, input_cfg, where="input")
        self.source = Source(source, self.input_cfg)

    def decode(self, batch: dict) -> list[tuple[Any, int, int, str]]:
        """(example or None, variant, seed, refusal row as JSON or "") for each row of `batch`."""
        from ..data.images import Rejected
        from ..data.sources import Record

        out = []
        loaded: dict[tuple, Any] = {}
        for i in range(len(batch["id"])):
            # a record is its id, path, row and the source's verdict: a duplicate id is another record (refused)
            key = tuple(str(batch[k][i]) for k in ("id", "path", "row", "error"))
            rid, reason = key[0], ""
            if key not in loaded:
                row = int(batch["row"][i])
                rec = Record(id=rid, path=str(batch["path"][i]), label=str(batch["label"][i]),
                             mask_path=str(batch["mask_path"][i]) or None, error=str(batch["error"][i]) or None,
                             row=row if row >= 0 else None)
                try:
                    loaded[key] = self.source.load(rec, self.input_cfg)
                except Rejected as e:
                    loaded[key] = None
                    reason = dumps_row({"path": rec.path, "id": rid, "reason": str(e), "unreadable": True})
            out.append((loaded[key], int(batch["variant"][i]), int(batch["seed"][i]), reason))
        return out

    def __call__(self, batch: dict) -> dict[str, list]:
        rows = self.decode(batch)
        return {"example": [b"" if e is None else pickle.dumps(e) for e, _, _, _ in rows],
                "variant": [v for _, v, _, _ in rows], "seed": [s for _, _, s, _ in rows],
                "refused": [r for _, _, _, r in rows]}


class GenaugWorker:
    """One generation actor: the method built once; `__call__` turns a batch of rows into results (kind,
    metadata row as JSON, image). With `stages`, it takes the decoded examples of the `SourceDecoder` stage and
    hands pickled images to the `encode_images` stage; without, it decodes and PNG-encodes itself (CPU-only
    runs, where the extra stages' processes only compete for the same cores)."""

    def __init__(self, method: str, options: dict[str, Any], models: str | None, source: str,
                 input_cfg: dict[str, Any], row_base: dict[str, Any], threads: int | None = None,
                 stages: bool = True, cwd: str | None = None):
        import torch

        from ..components.hub import models_dir
        from ..core.config import build_config
        from ..data.images import InputConfig
        from ..data.sources import Source
        from ..methods import create_method

        _enter(cwd)
        if threads:
            torch.set_num_threads(threads)  # actors are reused processes: set it explicitly
        with models_dir(models):
            self.method = create_method(method, options)
        self.method.prepare(Source(source, build_config(InputConfig, input_cfg, where="input")))  # cache hits
        self.row_base = row_base
        self.decoder = None if stages else SourceDecoder(source, input_cfg, cwd)

    def __call__(self, batch: dict) -> dict[str, list]:
        from ..data.writer import encode_png
        from .core import generate

        if self.decoder is not None:
            rows = self.decoder.decode(batch)
        else:
            rows = [(pickle.loads(e) if len(e) else None, int(v), int(s), str(r))
                    for e, v, s, r in zip(batch["example"], batch["variant"], batch["seed"], batch["refused"])]
        out: list[tuple[str, str, Any]] = [("reject", refused, None) for _, _, _, refused in rows if refused]
        results, refused_now = generate(self.method, [(e, v, s) for e, v, s, _ in rows if e is not None],
                                        self.row_base)
        out += [("reject", dumps_row({"path": e.path, "id": e.id, "reason": reason}), None)
                for e, reason in refused_now.values()]
        out += [("image", dumps_row(row), image) for row, image in results]
        columns = {"kind": [k for k, _, _ in out], "row": [r for _, r, _ in out]}
        if self.decoder is not None:
            return columns | {"png": [b"" if im is None else encode_png(im) for _, _, im in out]}
        return columns | {"image": [b"" if im is None else pickle.dumps(im) for _, _, im in out]}


def encode_images(batch: dict) -> dict[str, list]:
    """CPU stage: each image PNG-encoded with the writer's own encoder (same bytes as the local executor)."""
    from ..data.writer import encode_png

    return {"kind": list(batch["kind"]), "row": list(batch["row"]),
            "png": [encode_png(pickle.loads(im)) if kind == "image" else b""
                    for kind, im in zip(batch["kind"], batch["image"])]}


def _init_ray(ray, address: str | None, workers: int, cpus_per_worker: float, stages: bool) -> None:
    """Start (or join) Ray unless this process already did; actors get the environment they need. A local Ray
    has a logical CPU more than the workers take when CPU stages run beside them."""
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in _FORWARD_ENV if k in os.environ}
    cpus = max(int(workers * cpus_per_worker) + (1 if stages else 0), os.cpu_count() or 1)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": env} if env else None,
             **({} if address else {"num_cpus": cpus}))


def run_ray(p, summary, progress: bool | None = None, ray_address: str | None = None,
            workers: int | str | tuple[int, int] | None = None, num_gpus_per_worker: float = 0.0,
            num_cpus_per_worker: float = 1.0, stages: bool | None = None) -> None:
    """Generate every missing (source, variant) of plan `p` on a Ray Data actor pool; write as results come.
    `stages`: decode and encode in CPU stages beside the workers (None: when the workers have GPUs)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray Data: pip install 'genaug[ray]'") from None
    lo, hi = parse_workers(workers)
    if num_gpus_per_worker < 0 or num_cpus_per_worker <= 0:
        raise ConfigError("--num-gpus-per-worker must be >= 0 and CPUs per worker > 0")
    run, outdir = p.run, p.outdir

    rows = []
    for rec, todo in p.pending(summary):
        summary.sources += 1
        rows += [{"id": rec.id, "path": rec.path, "label": rec.label or "", "mask_path": rec.mask_path or "",
                  "error": rec.error or "", "row": -1 if rec.row is None else rec.row,  # -1: a file
                  "variant": k, "seed": s} for k, s in todo]
    if not rows:
        return
    p.prepare()  # once, on the driver: its caches are what the actors' own prepare finds
    stages = num_gpus_per_worker > 0 if stages is None else stages

    # Ray Data's per-run notes and Ray core's C++ notes: genaug reports progress itself. Quiet by default (a
    # user's own setting wins), in the processes Ray starts and while Ray Data sets up its logging; the
    # user's environment is left as it was.
    quiet = {k: v for k, v in _QUIET_ENV.items() if k not in os.environ}
    with mock.patch.dict(os.environ, quiet):
        import ray.data  # noqa: F401 - configures its logging from the environment on import
        _init_ray(ray, ray_address, hi, num_cpus_per_worker, stages)
    # This run's settings on a copy of Ray Data's context, current only for the run: the user's own Ray Data
    # code in this process keeps its settings.
    ctx = ray.data.DataContext.get_current().copy()
    ctx.execution_options.preserve_order = True  # metadata.jsonl in source order, as the local executor
    ctx.enable_progress_bars = False  # genaug's own bar below
    with ray.data.DataContext.current(ctx):
        threads = max(1, int(num_cpus_per_worker))
        batches = -(-len(rows) // p.batch_size)
        source = str(p.source.root.resolve())
        ds = ray.data.from_items(rows, override_num_blocks=min(batches, max(hi, min(batches, 4 * hi))))
        if stages:
            ds = ds.map_batches(SourceDecoder, batch_size=p.batch_size, batch_format="numpy", num_cpus=_CPU_STAGE,
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=hi),
                                fn_constructor_kwargs=dict(source=source, input_cfg=run.input, cwd=os.getcwd()))
        ds = ds.map_batches(
            GenaugWorker, batch_size=p.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(
                min_size=lo, max_size=hi), num_gpus=num_gpus_per_worker or None, num_cpus=num_cpus_per_worker,
            # the options as the driver resolved and recorded them (config.yaml): an actor on another machine builds
            # the method the run recorded, never its own reading of a setting such as precision=auto
            fn_constructor_kwargs=dict(method=run.method, options=p.resolved["options"], models=run.models,
                                       source=source, input_cfg=run.input, row_base=p.row_base, threads=threads,
                                       stages=stages, cwd=os.getcwd()))
        if stages:
            ds = ds.map_batches(encode_images, batch_size=None, batch_format="numpy", num_cpus=_CPU_STAGE)
        bar = tqdm(total=len(rows), desc=f"genaug {run.method} (ray x{hi})", unit="img", dynamic_ncols=True,
                   disable=bar_disabled(progress))
        with bar, warnings.catch_warnings():  # the bar closes and the filter ends with the run
            warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")  # few blocks: fine
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for kind, row_json, png in zip(batch["kind"], batch["row"], batch["png"]):
                    row = json.loads(str(row_json))
                    if kind == "image":
                        outdir.write(bytes(png), row)
                        summary.generated += 1
                        bar.update(1)
                    elif outdir.reject(row["path"], row["id"], row["reason"]):  # listed once, however many batches
                        summary.sources -= bool(row.get("unreadable"))  # as locally: sources read = images loaded
                outdir.sync()
