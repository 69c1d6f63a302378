"""Few-shot (K per class) and low-data (fraction) splits, stratified, written as CSV manifests.

A split depends only on the dataset's ids, labels and the seed — not on listing order or machine — so
two users with the same data get the same files. Layout:

    SPLITS/split.yaml                     what was asked and what came out
    SPLITS/<shots-K | fraction-F>/seed-S/train.csv   path,label,id  (paths relative to the CSV)
    SPLITS/<...>/seed-S/val.csv           N per class from the images not in train (with --val N)
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import yaml

from ..core.config import ConfigError
from ..core.seeding import derive_seed
from .sources import Record, Source


def split_name(shots: int | None, fraction: float | None) -> str:
    return f"shots-{shots}" if shots is not None else f"fraction-{fraction:g}"


def _check_request(shots: int | None, fraction: float | None, val: int) -> None:
    if (shots is None) == (fraction is None):
        raise ConfigError("give exactly one of --shots K or --fraction F")
    if shots is not None and shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {shots}")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {fraction}")
    if val < 0:
        raise ConfigError(f"--val must be >= 0, got {val}")


def _by_class(records: list[Record]) -> dict[str, list[Record]]:
    classes: dict[str, list[Record]] = {}
    for r in records:
        if r.error is None:
            classes.setdefault(r.label, []).append(r)
    for rs in classes.values():
        rs.sort(key=lambda r: r.id)
    return dict(sorted(classes.items()))


def choose(records: list[Record], seed: int, shots: int | None = None, fraction: float | None = None,
           val: int = 0) -> tuple[list[Record], list[Record]]:
    """`(train, val)` records: per class, a seeded permutation of its ids; the first K (or
    max(1, round(F * n))) go to train, the next `val` to validation."""
    _check_request(shots, fraction, val)
    train, held = [], []
    for label, rs in _by_class(records).items():
        order = np.random.default_rng(derive_seed(seed, f"split/{label}", 0)).permutation(len(rs))
        k = shots if shots is not None else max(1, round(fraction * len(rs)))
        if k + val > len(rs):
            raise ConfigError(f"class {label!r} has {len(rs)} images: too few for {k} train + {val} val")
        train += [rs[i] for i in order[:k]]
        held += [rs[i] for i in order[k:k + val]]
    return train, held


def write_manifest(records: list[Record], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "id"])
        for r in records:
            w.writerow([Path(os.path.relpath(Path(r.path).resolve(), path.parent.resolve())).as_posix(), r.label, r.id])
    os.replace(tmp, path)
    return path


def make_splits(src: str | Path, out: str | Path, seeds: list[int], shots: int | None = None,
                fraction: float | None = None, val: int = 0) -> list[Path]:
    """Write one train (and val) manifest per seed; returns the train manifests."""
    _check_request(shots, fraction, val)
    records = list(Source(src).records())
    out = Path(out)
    name = split_name(shots, fraction)
    written, counts = [], {}
    for seed in seeds:
        train, held = choose(records, seed, shots=shots, fraction=fraction, val=val)
        d = out / name / f"seed-{seed}"
        written.append(write_manifest(train, d / "train.csv"))
        if val:
            write_manifest(held, d / "val.csv")
        counts[f"seed-{seed}"] = {"train": len(train), "val": len(held)}
    meta_path = out / "split.yaml"
    meta = yaml.safe_load(meta_path.read_text()) if meta_path.exists() else {}
    meta = meta or {}
    meta.setdefault("splits", {})[name] = {"source": str(Path(src).resolve()), "shots": shots, "fraction": fraction,
                                           "val_per_class": val, "seeds": list(seeds), "counts": counts,
                                           "classes": len(_by_class(records))}
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return written

