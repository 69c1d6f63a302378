"""Few-shot (K per class) and low-data (fraction) splits, stratified, written as CSV manifests.

A split depends only on the dataset's ids, labels and the seed — not on listing order or machine — so
two users with the same data get the same files. Layout:

    SPLITS/split.yaml                     what was asked and what came out
    SPLITS/<shots-K | fraction-F>/seed-S/train.csv   path,label,id  (paths relative to the CSV)
    SPLITS/<...>/seed-S/val.csv           N per class from the images not in train (with --val N)
    SPLITS/<...>/seed-S/rest.csv          every other listed image of each class: the natural test set

`per_class_order` is genaug's one seeded per-class split; `choose`, the weighting hold-out and the built-in
exports' per-class subsets all slice it.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

from ..core.config import ConfigError
from ..core.files import atomic_path
from ..core.log import get_logger
from ..core.seeding import derive_seed
from .sources import Record, Source

T = TypeVar("T")
log = get_logger(__name__)


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


def per_class_order(items: Iterable[T], label: Callable[[T], str], key: Callable[[T], Any], seed: int,
                    salt: str = "split") -> dict[str, list[T]]:
    """`{label: its items in a seeded order}`, classes in label order. A class's items are sorted by `key`,
    then permuted by an RNG seeded from (seed, "salt/label"): the order depends only on keys, labels and the
    seed — not on listing order, nor on which other classes exist. Callers take slices of it; `salt` keeps
    unrelated splits of the same data (few-shot picks, the weighting hold-out) independent."""
    classes: dict[str, list[T]] = {}
    for it in items:
        classes.setdefault(label(it), []).append(it)
    out = {}
    for name in sorted(classes):
        members = sorted(classes[name], key=key)
        order = np.random.default_rng(derive_seed(seed, f"{salt}/{name}", 0)).permutation(len(members))
        out[name] = [members[i] for i in order]
    return out


def _by_class(records: list[Record], seed: int = 0) -> dict[str, list[Record]]:
    return per_class_order((r for r in records if r.error is None), lambda r: r.label, lambda r: r.id, seed)


def partition(records: list[Record], seed: int, shots: int | None = None, fraction: float | None = None,
              val: int = 0) -> tuple[list[Record], list[Record], list[Record]]:
    """`(train, val, rest)`: per class, in `per_class_order`, the first K (or max(1, round(F * n))) go to
    train, the next `val` to validation, all the others to rest. Records with a listing error are in none."""
    _check_request(shots, fraction, val)
    train, held, rest = [], [], []
    for label, rs in _by_class(records, seed).items():
        k = shots if shots is not None else max(1, round(fraction * len(rs)))
        if k + val > len(rs):
            raise ConfigError(f"class {label!r} has {len(rs)} images: too few for {k} train + {val} val")
        train += rs[:k]
        held += rs[k:k + val]
        rest += rs[k + val:]
    return train, held, rest


def choose(records: list[Record], seed: int, shots: int | None = None, fraction: float | None = None,
           val: int = 0) -> tuple[list[Record], list[Record]]:
    """`(train, val)` records of `partition`."""
    return partition(records, seed, shots=shots, fraction=fraction, val=val)[:2]


def _relative(path: str | None, manifest: Path) -> str:
    """`path` relative to the manifest's folder, as a manifest writes it ("" for none)."""
    return "" if not path else Path(os.path.relpath(Path(path).resolve(), manifest.parent.resolve())).as_posix()


def write_manifest(records: list[Record], path: Path, columns: dict[str, list] | None = None) -> Path:
    """`path,label,id` (paths relative to the manifest), plus any extra `columns` (one value per record)."""
    columns = columns or {}
    if any(r.row is not None for r in records):  # a manifest names files; these images live in Arrow
        raise ConfigError("a split manifest lists image files; a Hugging Face dataset's rows are not files "
                          "(split it with `datasets`, e.g. Dataset.train_test_split, or export it as an imagefolder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "id", *columns])
        for i, r in enumerate(records):
            w.writerow([_relative(r.path, path), r.label, r.id, *(v[i] for v in columns.values())])
    return path


def make_splits(src: str | Path, out: str | Path, seeds: list[int], shots: int | None = None,
                fraction: float | None = None, val: int = 0) -> list[Path]:
    """Write one train (and val) manifest per seed, and the rest of every class; returns the train manifests."""
    _check_request(shots, fraction, val)
    records = list(Source(src).records())
    usable = [r for r in records if r.error is None]
    duplicates = sorted({r.error for r in records if r.error and r.error.startswith("duplicate id")})
    if duplicates:  # which of two images with one id is kept would depend on the listing order
        raise ConfigError(f"{src}: {len(duplicates)} duplicate id(s), e.g. {duplicates[0]}: give every image its "
                          f"own id (a split keeps one image per id)")
    if not usable:
        reasons = sorted({r.error for r in records if r.error})
        raise ConfigError(f"{src} lists no usable image ({len(records)} record(s) skipped"
                          + (f", e.g. {reasons[0]}" if reasons else "") + ")")
    skipped = len(records) - len(usable)
    if skipped:
        log.warning("%s: %d record(s) skipped, e.g. %s", src, skipped, next(r.error for r in records if r.error))
    out = Path(out)
    name = split_name(shots, fraction)
    masks = any(r.mask_path for r in usable)

    def write(recs: list[Record], path: Path) -> Path:  # the masks travel with their images
        return write_manifest(recs, path, {"mask": [_relative(r.mask_path, path) for r in recs]} if masks else None)

    written, counts = [], {}
    for seed in seeds:
        train, held, rest = partition(records, seed, shots=shots, fraction=fraction, val=val)
        d = out / name / f"seed-{seed}"
        written.append(write(train, d / "train.csv"))
        if val:
            write(held, d / "val.csv")
        else:
            (d / "val.csv").unlink(missing_ok=True)  # an earlier split's, overlapping this one's rest
        write(rest, d / "rest.csv")  # written even when empty, so "no test images" is visible
        counts[f"seed-{seed}"] = {"train": len(train), "val": len(held), "rest": len(rest)}
    meta_path = out / "split.yaml"
    meta = yaml.safe_load(meta_path.read_text()) if meta_path.exists() else {}
    meta = meta or {}
    meta.setdefault("splits", {})[name] = {"source": str(Path(src).resolve()), "shots": shots, "fraction": fraction,
                                           "val_per_class": val, "seeds": list(seeds), "counts": counts,
                                           "files": ["train.csv"] + (["val.csv"] if val else []) + ["rest.csv"],
                                           "classes": len(_by_class(records))}
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return written

