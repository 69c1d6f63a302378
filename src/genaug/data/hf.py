"""Hugging Face `datasets` datasets as sources: a `save_to_disk` folder, a `.parquet` file, or an imagefolder
whose `metadata.jsonl` / `metadata.csv` names each `file_name` (HF's own layout).

`datasets` is imported only when such a source is opened. Listing reads the label column and the image
column's `path` field straight from Arrow, so the image bytes stay on disk (memory-mapped) until one row is
loaded. Labels: a `ClassLabel` column gives its names; otherwise a column named `label` (text, or integers
taken as their decimal text). An `Image` column named `mask`, when present, is the dataset's mask.
"""
from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from pathlib import Path

from ..core.config import ConfigError

SAVED_MARKERS = (("dataset_info.json", "state.json"), ("dataset_dict.json",))
IMAGEFOLDER_METADATA = ("metadata.jsonl", "metadata.csv")


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    return path.is_dir() and any(all((path / f).is_file() for f in files) for files in SAVED_MARKERS)


def is_hf_imagefolder(path: Path) -> bool:
    """A folder whose metadata file (HF imagefolder layout) has a `file_name` column, at its top or in a split
    folder (`train/metadata.jsonl`): without the second look, `train` would pass for a class of an ImageFolder."""
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    return any(_names_files(d) for d in [path, *subdirs])


def _names_files(path: Path) -> bool:
    jsonl, csv_path = (path / f for f in IMAGEFOLDER_METADATA)
    if jsonl.is_file():
        with open(jsonl, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        with contextlib.suppress(json.JSONDecodeError):
            return isinstance(row := json.loads(first), dict) and "file_name" in row
        return False
    if csv_path.is_file():
        with open(csv_path, encoding="utf-8", newline="") as f:
            return "file_name" in (next(csv.reader(f), None) or [])
    return False


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError("reading a Hugging Face dataset needs the `datasets` library: pip install 'genaug[hf]'") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets):
    """genaug is quiet by default: no per-step bars from `datasets` while it builds its Arrow cache."""
    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


class HFDataset:
    """One split of a Hugging Face dataset, with its image, label, mask and id columns resolved."""

    def __init__(self, root: Path, layout: str):  # layout: saved | parquet | imagefolder
        datasets = _datasets()
        with _quiet(datasets):
            try:
                if layout == "saved":
                    ds = datasets.load_from_disk(str(root))
                elif layout == "parquet":
                    ds = datasets.Dataset.from_parquet(str(root))
                else:
                    ds = datasets.load_dataset("imagefolder", data_dir=str(root))
            except (ValueError, FileNotFoundError, OSError) as e:
                raise ConfigError(f"{root}: not readable as a Hugging Face dataset: {e}") from None
        if isinstance(ds, datasets.DatasetDict):
            if len(ds) != 1:
                raise ConfigError(f"{root} holds the splits {sorted(ds)}; give the folder of one split "
                                  f"(e.g. {root / sorted(ds)[0]})")
            ds = next(iter(ds.values()))
        self.root, self.layout, self.ds = root, layout, ds
        feats = ds.features
        images = [c for c, f in feats.items() if isinstance(f, datasets.Image) and c != "mask"]
        if len(images) > 1:
            images = [c for c in images if c in ("image", "img")][:1] or images
        if len(images) != 1:
            raise ConfigError(f"{root}: needs one Image column (found {images or 'none'} among {list(feats)})")
        self.image_col = images[0]
        self.mask_col = "mask" if isinstance(feats.get("mask"), datasets.Image) else None
        self.names: list[str] | None = None
        if "label" in feats:
            self.label_col = "label"
        else:
            class_labels = [c for c, f in feats.items() if isinstance(f, datasets.ClassLabel)]
            if len(class_labels) != 1:
                hint = (f"several ClassLabel columns {class_labels}: rename the one to use to `label`" if class_labels
                        else "a split's metadata file must sit in its folder, e.g. train/metadata.jsonl"
                        if layout == "imagefolder" else f"columns: {list(feats)}")
                raise ConfigError(f"{root}: needs a ClassLabel column or a text column named `label` ({hint})")
            self.label_col = class_labels[0]
        f = feats[self.label_col]
        if isinstance(f, datasets.ClassLabel):
            self.names = list(f.names)
        elif not (isinstance(f, datasets.Value) and (f.dtype in ("string", "large_string") or "int" in f.dtype)):
            raise ConfigError(f"{root}: label column {self.label_col!r} is {f}; it must be a ClassLabel, text or integers")
        self.id_col = "id" if layout != "imagefolder" and isinstance(feats.get("id"), datasets.Value) else None
        self._arrow = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self.ds)

    def _label(self, v) -> str | None:
        if v is None:
            return None
        if self.names is not None:
            return self.names[v] if 0 <= v < len(self.names) else None  # -1: ClassLabel's "no label"
        return str(v)

    def rows(self) -> Iterator[tuple[int, str | None, str | None, str | None, str | None]]:
        """`(index, stored image path, label, id column, stored mask path)` per row, in dataset order; nothing is
        decoded."""
        cols = ([self.image_col, self.label_col] + ([self.id_col] if self.id_col else [])
                + ([self.mask_col] if self.mask_col else []))

        def stored_paths(batch, column):  # only the `path` child of an image struct: bytes never leave Arrow
            return [p for chunk in batch.column(column).chunks for p in chunk.field("path").to_pylist()]

        i = 0
        for batch in self.ds.select_columns(cols).with_format("arrow").iter(batch_size=1000):
            paths = stored_paths(batch, self.image_col)
            labels = batch.column(self.label_col).to_pylist()
            ids = batch.column(self.id_col).to_pylist() if self.id_col else [None] * len(labels)
            masks = stored_paths(batch, self.mask_col) if self.mask_col else [None] * len(labels)
            for path, label, rid, mask in zip(paths, labels, ids, masks):
                yield i, path, self._label(label), None if rid is None else str(rid), mask
                i += 1

    def encoded(self, row: int, column: str) -> bytes | str | None:
        """The stored image of one row: its encoded bytes, else the path of its file, else None."""
        cell = self._arrow[row].column(column)[0].as_py()
        if not cell:
            return None
        return cell.get("bytes") or cell.get("path") or None
