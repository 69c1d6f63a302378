"""`genaug bench`: methods x splits x seeds, budget-matched, resumable; then the report.

Every arm trains the same classifier with the same options on the same split and seed; only the data
differs. Each generator writes its own paper's M synthetic images per real image (the method's `default_n`),
unless `budget: N` gives every generator the same N (a budget-matched comparison); the budget each arm used
is in results.csv, and its generation time next to accuracy. Two more columns judge each generator's images
on their own: `label_agreement`, the share a real-only classifier (the same split and seed's `real` arm)
assigns to their label, and `cas_acc`, the classification accuracy score (Ravuri & Vinyals 2019): a
classifier trained on the synthetic images alone, same options, tested on the real test set (`cas: false`
skips its extra training). A generator that weighs its images and can calibrate on a validation split
(DIAGen's `weight_val`) is given the split's `val.csv` when `splits.val` makes one, as in the paper, unless its
options set `weight_val` or turn weighting off. Training draws synthetic images as
`train.synthetic_prob` says (0.5 of every batch by default, DA-Fusion's and DIAGen's share). Generations and trained runs are cached under the run directory, so a rerun
(or a larger grid) only does what is missing.

    RUN_DIR/config.yaml                     the resolved bench configuration
    RUN_DIR/data/                           built-in datasets exported as files (when used)
    RUN_DIR/splits/<split>/seed-S/train.csv the split files
    RUN_DIR/synthetic/<arm>/<split>/budget-N/seed-S/  genaug augment outputs (+ generation.json)
    RUN_DIR/runs/<arm>/<split>/seed-S[/p-P] genaug train run directories (<arm>-cas: synthetic only)
    RUN_DIR/results.csv                     one row per trained run
    RUN_DIR/report.md, report.html          tables, plots, image grids
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field

from ..core.config import ConfigError, build_config, config_dataclass, config_hash, to_dict
from ..core.files import folder_stamp
from ..data.builtin import BUILTIN, export_builtin
from ..data.metadata import FILTERED, METADATA
from ..data.sources import Record
from ..data.splits import make_splits, split_name
from ..pipeline import augment
from ..core.log import get_logger
from ..methods import get_method_class
from ..core.devices import resolve_device, resolved_precision
from ..train import TrainConfig, evaluate, load_run, load_synthetic, train
from ..train.transforms import BATCH_TRANSFORMS

log = get_logger(__name__)
REAL = "real"


@config_dataclass
class DataSpec:
    train: str  # a path (ImageFolder / manifest), or a built-in dataset: fashion-mnist, digits
    test: str | None = None  # a path, or a built-in name (its test split)
    ood: dict[str, str] = Field(default_factory=dict)  # name -> path
    pool_per_class: int | None = Field(None, ge=1)  # built-in train data: export only this many per class
    test_per_class: int | None = Field(None, ge=1)  # built-in test data: only this many per class


@config_dataclass
class SplitSpec:
    shots: list[int] = Field(default_factory=list)
    fractions: list[float] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    val: int = Field(0, ge=0)


@config_dataclass
class ArmSpec:
    method: str  # "real" (no augmentation), a generator (offline images) or a batch method (online)
    options: dict[str, Any] = Field(default_factory=dict)
    name: str | None = None  # shown in the report; defaults to the method name


@config_dataclass
class BenchConfig:
    data: DataSpec
    splits: SplitSpec = Field(default_factory=SplitSpec)
    methods: list[ArmSpec] = Field(default_factory=list)
    budget: int | None = Field(None, ge=1)  # synthetic images per real image for every generator; None: each its M
    synthetic_probs: list[float] = Field(default_factory=list)  # a sweep of train.synthetic_prob for generators
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig options, shared by every arm
    cas: bool = True  # also train each generator's classifier on its synthetic images alone (the CAS column)


def _resolve_data(spec: DataSpec, root: Path) -> tuple[str, str | None]:
    def builtin(name: str, split: str, per_class: int | None) -> str:
        folder = root / "data" / (f"{name}-{split}" + (f"-{per_class}pc" if per_class else ""))
        return str(export_builtin(name, split, folder, per_class))

    train_src = builtin(spec.train, "train", spec.pool_per_class) if spec.train in BUILTIN else spec.train
    test = spec.test
    if test in BUILTIN:
        test = builtin(test, "test", spec.test_per_class)
    return train_src, test


def _kind(method: str) -> str:
    """`real`, `generator` (a registered method: offline images) or `batch` (CutMix / MixUp while training)."""
    if method == REAL:
        return REAL
    if method in BATCH_TRANSFORMS:
        return "batch"
    get_method_class(method)  # a clear error for an unknown name
    return "generator"


def _arm_name(arm: ArmSpec) -> str:
    return arm.name or arm.method


def _split_requests(spec: SplitSpec) -> list[tuple[int | None, float | None]]:
    reqs = [(k, None) for k in spec.shots] + [(None, f) for f in spec.fractions]
    if not reqs:
        raise ConfigError("bench: give splits.shots and/or splits.fractions")
    return reqs


def arm_budget(arm: ArmSpec, budget: int | None) -> int:
    """Synthetic images per real image of a generator arm: `budget` when given, else the method's own M."""
    return budget or get_method_class(arm.method).default_n


def generation_options(arm: ArmSpec, val: Path | None) -> dict[str, Any]:
    """The arm's method options, plus the split's validation manifest as `weight_val` for a method that weighs
    its images and can calibrate on a validation split (DIAGen): calibrated there, as in the paper, not on a
    slice of the few-shot train split. The arm's own `weight_val`, or weighting turned off, is left alone."""
    options = dict(arm.options)
    cls = get_method_class(arm.method)
    config = getattr(cls, "Config", None)
    if (val is None or "weight_val" in options or config is None
            or "weight_val" not in {f.name for f in dataclasses.fields(config)}):
        return options
    if getattr(build_config(config, options, where=f"bench arm {_arm_name(arm)}"), "weighting", None) == "none":
        return options
    return {**options, "weight_val": str(Path(val).resolve())}


def generate_cached(arm: ArmSpec, split_file: Path, out: Path, budget: int, seed: int, val: Path | None = None,
                    progress: bool | None = False) -> tuple[Path, float]:
    """A cached generation: `genaug augment` resumes, and the first run's seconds are kept (generation.json), so a
    rerun reports what the images cost, not the seconds it took to find them done."""
    record = out / "generation.json"
    summary = augment(split_file, out, method=arm.method, n=budget, seed=seed, options=generation_options(arm, val),
                      progress=progress)
    if record.exists() and summary.generated == 0:
        return out, json.loads(record.read_text())["seconds"]
    record.write_text(json.dumps({"seconds": summary.seconds, "images": summary.generated + summary.already_done}))
    return out, summary.seconds


@torch.no_grad()
def pseudo_label(real_run: Path, pool: Path, out: Path, threshold: float = 0.95,
                 per_class: int | None = None) -> dict[str, Any]:
    """The baseline a generator must beat when it learnt from unlabelled images: the same images used without a
    generator. The real-only classifier of the finished run `real_run` labels every image of `pool` (its own
    labels, if any, are never read for this); those it gives at least `threshold` confidence (FixMatch's 0.95)
    are kept, at most `per_class` per predicted class (most confident first: a matched budget), and written to
    `out` as a manifest (path,label,id,confidence) that `train` adds as the synthetic share. Returns the counts,
    and — only to report how good the labels were — their accuracy against the pool's withheld labels when it
    has them. Reused when `out` was made from the same classifier, pool, threshold and per-class cap."""
    report_path = out.with_suffix(".json")
    inputs = {"model": contents(Path(real_run) / "best.safetensors"), "pool": contents(pool), "threshold": threshold,
              "per_class": per_class}
    if out.is_file() and report_path.is_file():
        report = json.loads(report_path.read_text())
        if report.get("inputs") == inputs:
            return report
    from ..data.imageset import load_real
    from ..data.sources import Source
    from ..data.splits import write_manifest
    from ..train.trainer import predict_logits

    device = resolve_device("auto")
    model, meta = load_run(real_run, device)
    by_id = {r.id: r for r in Source(pool).records() if r.error is None}
    images = load_real(pool, meta["image_size"], "pool")  # shared with fit-flow's read under `shared_loads`
    conf, pred = predict_logits(model, images.images, meta["mean"], meta["std"], device, 512,
                                meta["autocast"]).softmax(1).max(1)
    kept, correct = [], 0
    for c, cls in enumerate(meta["classes"]):
        idx = [int(i) for i in torch.nonzero((pred == c) & (conf >= threshold)).flatten()]
        idx.sort(key=lambda i: (-float(conf[i]), by_id[images.ids[i]].path))
        for i in idx[:per_class]:
            rec = by_id[images.ids[i]]
            kept.append((Record(id=rec.id, path=rec.path, label=cls), float(conf[i])))
            correct += rec.label == cls
    if not kept:
        raise ConfigError(f"pseudo-labelling {pool}: no image reached confidence {threshold:g} "
                          f"(the classifier in {real_run} is never that sure); lower the threshold")
    write_manifest([r for r, _ in kept], out, {"confidence": [f"{c:.4f}" for _, c in kept]})
    labelled = all(r.label is not None for r in by_id.values())
    report = {"pool": str(pool), "pool_images": len(images), "threshold": threshold, "per_class": per_class,
              "kept": len(kept), "per_class_kept": {c: sum(r.label == c for r, _ in kept) for c in meta["classes"]},
              "accuracy_vs_withheld_labels": correct / len(kept) if labelled else None, "inputs": inputs}
    report_path.write_text(json.dumps(report, indent=2))
    return report


def generator_scores(real_run: Path, synthetic: Path, cas_dir: Path | None, val, test, tcfg: dict,
                     progress=None) -> dict[str, float | None]:
    """The columns that judge one generator's images on their own (those training draws: weight > 0, not
    filtered): `label_agreement`, the share the real-only classifier of the finished run `real_run` assigns to
    their label, and (with `cas_dir`) `cas_acc`. None, with a warning, where a column cannot be had: no image
    to draw, or (CAS) a class without any — a classifier that never saw a class is not comparable."""
    out: dict[str, float | None] = {"label_agreement": None, "cas_acc": None}
    device = resolve_device("auto")
    model, meta = load_run(real_run, device)
    images = load_synthetic(synthetic, meta["image_size"])
    if not len(images):
        log.warning("%s holds no image that training draws (all rejected, weight 0 or filtered): no label "
                    "agreement, no CAS", synthetic)
        return out
    out["label_agreement"] = evaluate(model, images, meta["classes"], meta["mean"], meta["std"], device,
                                      dtype=meta["autocast"])["accuracy"]
    missing = sorted(set(meta["classes"]) - set(images.labels))
    if cas_dir is not None and missing:
        log.warning("%s holds no image that training draws of class(es) %s: no CAS", synthetic, missing[:5])
    elif cas_dir is not None:
        cas = train_cached(cas_dir, synthetic, [], val, test, {}, tcfg, row={"arm": "cas"}, progress=progress)
        out["cas_acc"] = cas["test_acc"] if cas["test_acc"] is not None else cas["val_acc"]
    return out


def run_bench(config: dict[str, Any] | BenchConfig, out: str | Path, progress: bool | None = None) -> list[dict]:
    cfg = config if isinstance(config, BenchConfig) else build_config(BenchConfig, config, where="bench")
    base_train = build_config(TrainConfig, cfg.train, where="bench train")
    for arm in cfg.methods:
        _kind(arm.method)  # an unknown method fails now, not after an hour of training
    arms = [ArmSpec(method=REAL)] + [a for a in cfg.methods if a.method != REAL]
    names = [_arm_name(a) for a in arms]
    if len(set(names)) != len(names):
        raise ConfigError(f"bench: arm names must be unique, got {names}; set name: for repeated methods")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    train_src, test = _resolve_data(cfg.data, root)

    rows = []
    for shots, fraction in _split_requests(cfg.splits):
        split = split_name(shots, fraction)
        make_splits(train_src, root / "splits", cfg.splits.seeds, shots=shots, fraction=fraction, val=cfg.splits.val)
        for seed in cfg.splits.seeds:
            sdir = root / "splits" / split / f"seed-{seed}"
            val = sdir / "val.csv" if cfg.splits.val else None
            for arm in arms:
                kind = _kind(arm.method)
                name = _arm_name(arm)
                tcfg = {**to_dict(base_train), "seed": seed}
                synthetic, gen_seconds, probs, budget, scores = [], 0.0, [None], 0, {}
                if kind == "generator":
                    budget = arm_budget(arm, cfg.budget)
                    # a folder per budget: a folder generated at a larger budget holds more images than a
                    # smaller budget's run may draw
                    syn, gen_seconds = generate_cached(arm, sdir / "train.csv", root / "synthetic" / name / split
                                                       / f"budget-{budget}" / f"seed-{seed}", budget, seed, val)
                    synthetic = [syn]
                    probs = cfg.synthetic_probs or [base_train.synthetic_prob]
                    # judged once per generation, whatever the synthetic proportions it is trained at
                    cas_dir = root / "runs" / f"{name}-cas" / split / f"seed-{seed}" if cfg.cas else None
                    scores = generator_scores(root / "runs" / REAL / split / f"seed-{seed}", syn, cas_dir, val, test,
                                              tcfg, progress=progress)
                elif kind == "batch":
                    tcfg.update(augment=arm.method, augment_options=arm.options)
                for p in probs:
                    run_dir = root / "runs" / name / split / f"seed-{seed}"
                    if kind == "generator" and cfg.synthetic_probs:
                        run_dir = run_dir / f"p-{p:g}"
                    tcfg_p = {**tcfg, "synthetic_prob": p if kind == "generator" else tcfg["synthetic_prob"]}
                    share = tcfg_p["synthetic_prob"] if kind == "generator" else None
                    row = train_cached(run_dir, sdir / "train.csv", synthetic, val, test, cfg.data.ood, tcfg_p,
                                       row={"arm": name, "method": arm.method, "kind": kind, "split": split,
                                            "seed": seed, "synthetic_prob": None if share == "pool" else share,
                                            "budget": budget, "generation_seconds": gen_seconds}, progress=progress)
                    rows.append({**row, **scores})
    from .report import write_report, write_results

    write_results(root, rows)
    write_report(root)
    return rows


def contents(src: str | Path | None) -> str | None:
    """A digest of what training reads from `src`, so a cached run is not reused after it changed in place (a
    split rewritten with another validation size, a generator folder given more images, reweighted or
    filtered): a file's bytes; a genaug output folder's rows and filters (metadata.jsonl, filtered.jsonl:
    which images, their labels and weights); any other folder's file names, sizes and modification times.
    Anything else (None, a dataset name) stands for itself."""
    if src is None:
        return None
    p = Path(src)
    h = hashlib.blake2b(digest_size=16)
    if p.is_file():
        h.update(p.read_bytes())
    elif (p / METADATA).is_file():
        for q in (p / METADATA, p / FILTERED):
            h.update(q.read_bytes() if q.is_file() else b"-")
    elif p.is_dir():
        return folder_stamp(p)
    else:
        return str(src)
    return h.hexdigest()


def train_cached(run_dir: Path, real: Path, synthetic: list[Path], val, test, ood: dict, tcfg: dict, row: dict,
                 progress=None) -> dict:
    """`genaug train` once per configuration: a run directory holding the same configuration — the options and
    what every data source holds now (`contents`) — is reused. Returns a results row (`row` plus sizes,
    accuracies and seconds)."""
    # what the run computes in where `precision: auto` leaves it to the machine (bfloat16 with AMX or a GPU)
    precision = resolved_precision(tcfg.get("precision", "float32"), resolve_device(tcfg.get("device")))
    key = config_hash({"tcfg": tcfg, "precision": precision, "real": str(real),
                       "synthetic": [str(s) for s in synthetic], "val": str(val), "test": str(test), "ood": ood,
                       "contents": [contents(x) for x in (real, *synthetic, val, test, *ood.values())]})
    done = run_dir / "bench_row.json"
    if done.exists():
        cached = json.loads(done.read_text())
        if cached.get("key") == key:
            return cached["row"]
    done.unlink(missing_ok=True)  # train() rewrites the folder: a run killed midway must not pass for the old one
    t0 = time.perf_counter()
    r = train(real, run_dir, synthetic=synthetic, val=val, test=test, ood=ood, config=tcfg, progress=progress)
    row = {**row, "n_real": r["n_real"], "n_synthetic": r["n_synthetic"], "synthetic_share": r["synthetic_share"],
           "train_seconds": round(time.perf_counter() - t0, 2), "best_epoch": r["best_epoch"],
           "precision": r["precision"],
           "val_acc": r["val"]["accuracy"] if "val" in r else None,
           "test_acc": r["test"]["accuracy"] if "test" in r else None,
           "test_sic": (r["test"].get("sic") or {}).get("sic") if "test" in r else None,
           **{f"ood_{k}_acc": v["accuracy"] for k, v in r["ood"].items()}, "run_dir": str(run_dir)}
    done.write_text(json.dumps({"key": key, "row": row}))
    return row
