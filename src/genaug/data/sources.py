"""Source datasets, streamed: an ImageFolder directory, a CSV / JSONL manifest (`path,label[,mask][,id]`),
a genaug output folder (labels from its `metadata.jsonl`, byte for byte), or a Hugging Face dataset (a
`save_to_disk` folder, a `.parquet` file, an imagefolder with metadata; see `hf.py`).

`records()` yields one `Record` per candidate image without opening it, so a rerun can skip finished
images without decoding them; `Source.load` turns a record into a validated `Example`.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

from ..core.config import ConfigError
from ..core.log import get_logger
from ..core.records import Example
from .hf import HFDataset, is_hf_imagefolder, is_saved_dataset
from .images import InputConfig, Rejected, background_rgb, is_image_name, load_image, load_mask
from .metadata import is_output_dir, left_out, read_rows

log = get_logger(__name__)
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class Record:
    id: str
    path: str
    label: str | None
    mask_path: str | None = None
    error: str | None = None  # a problem found while listing (e.g. a manifest row without a label)
    row: int | None = None  # index in a Hugging Face dataset whose images live in Arrow, not in files


def _csv_reader(f) -> csv.DictReader:
    """A manifest's rows by column name; names are read without surrounding spaces (`path, label`)."""
    reader = csv.DictReader(f)
    if reader.fieldnames:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return reader


class Source:
    """A dataset of labelled images on disk. `input_cfg` is how `load` checks images unless told otherwise."""

    def __init__(self, src: str | Path, input_cfg: InputConfig | None = None):
        self.root = Path(src)
        self.input_cfg = input_cfg or InputConfig()
        self.hf: HFDataset | None = None
        if self.root.is_dir():
            # genaug's own output first: it is also an HF imagefolder, but its rows carry ids and weights
            self.kind = ("genaug-output" if is_output_dir(self.root) else "hf-saved" if is_saved_dataset(self.root)
                         else "hf-imagefolder" if is_hf_imagefolder(self.root) else "imagefolder")
        elif self.root.is_file() and self.root.suffix.lower() == ".parquet":
            self.kind = "hf-parquet"
        elif self.root.is_file() and self.root.suffix.lower() in MANIFEST_SUFFIXES:
            self.kind = MANIFEST_SUFFIXES[self.root.suffix.lower()]
            self.base = self.root.parent
        elif not self.root.exists():
            raise ConfigError(f"source not found: {self.root}")
        else:
            raise ConfigError(
                f"source {self.root} is neither a directory (ImageFolder, genaug output, Hugging Face dataset) "
                "nor a .csv / .jsonl manifest with columns path,label, nor a .parquet dataset"
            )
        self.warnings: list[str] = []
        if self.kind.startswith("hf-"):
            self.hf = HFDataset(self.root, self.kind[3:])
        elif self.kind == "genaug-output":
            read_rows(self.root)  # a torn or incomplete folder fails here, before any model is loaded
        elif self.kind == "imagefolder":
            self._check_imagefolder()
        elif self.kind == "csv":
            with open(self.root, encoding="utf-8-sig", newline="") as f:
                missing = {"path", "label"} - set(_csv_reader(f).fieldnames or [])
            if missing:
                raise ConfigError(f"manifest {self.root} lacks column(s) {sorted(missing)}; it needs path,label[,mask][,id]")

    # ---- listing -------------------------------------------------------------------------------
    def _class_dirs(self) -> list[os.DirEntry]:
        with os.scandir(self.root) as it:
            return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)

    def _check_imagefolder(self) -> None:
        classes = self._class_dirs()
        if not classes:
            raise ConfigError(f"{self.root} has no class sub-folders (ImageFolder layout: {self.root}/<label>/<image>)")
        for d in classes:
            if next(self._walk_images(Path(d.path)), None) is None:
                msg = f"class folder {d.name!r} has no images"
                self.warnings.append(msg)
                log.warning(msg)

    @staticmethod
    def _walk_images(folder: Path) -> Iterator[Path]:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # hidden folders are ignored
            for name in sorted(filenames):
                if is_image_name(name):  # hidden files and non-image files (README, .DS_Store) are ignored
                    yield Path(dirpath) / name

    def records(self) -> Iterator[Record]:
        if self.kind == "imagefolder":
            for d in self._class_dirs():
                for p in self._walk_images(Path(d.path)):
                    yield Record(id=p.relative_to(self.root).as_posix(), path=str(p), label=d.name)
            return
        if self.kind == "genaug-output":
            yield from self._output_records()
            return
        seen: set[str] = set()
        rows = self._hf_records() if self.hf is not None else (
            (f"manifest line {n}", self._manifest_record(n, row)) for n, row in self._manifest_rows())
        for where, rec in rows:
            if rec.error is None and rec.id in seen:
                rec.error = f"duplicate id {rec.id!r} ({where})"
            seen.add(rec.id)
            yield rec

    def _output_records(self) -> Iterator[Record]:
        """A genaug output folder: the label is the row's own (`T-shirt/top`, not its folder `T-shirt_top-…`),
        the id its `file_name`. Rows of weight 0, and rows a filter removed (`filtered`), are left out: a
        scorer judged them unusable, and training leaves them out too."""
        for r in read_rows(self.root):
            if left_out(r):
                continue
            name = str(r["file_name"])
            label = r["label"]
            yield Record(id=name, path=str(self.root / name), label=label if isinstance(label, str) and label else None,
                         error=None if isinstance(label, str) and label else f"{name}: row has no label")

    def _hf_records(self) -> Iterator[tuple[str, Record]]:
        """Files of an HF imagefolder keep their path as id (as an ImageFolder's do); rows whose image lives
        in Arrow get the `id` column, else their index, and a `DATASET#index` path for messages."""
        for i, path, label, rid, mask in self.hf.rows():
            if self.hf.layout == "imagefolder" and path:  # files (the mask too, when the row names one)
                p = Path(path)
                rec = Record(id=p.relative_to(self.root.resolve()).as_posix() if p.is_relative_to(self.root.resolve())
                             else p.as_posix(), path=path, label=label, mask_path=mask)
            else:
                rec = Record(id=rid if rid is not None else str(i), path=f"{self.root}#{i}", label=label, row=i)
            if not label:
                rec.error = f"row {i} has no label"
            yield f"row {i}", rec

    def _manifest_rows(self) -> Iterator[tuple[int, dict | None]]:
        with open(self.root, encoding="utf-8-sig", newline="") as f:  # -sig: a BOM (Excel's CSV) is not data
            if self.kind == "csv":
                reader = _csv_reader(f)
                for row in reader:
                    yield reader.line_num, row
                return
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield line_no, row if isinstance(row, dict) else None

    def _manifest_record(self, line_no: int, row: dict | None) -> Record:
        if row is None:
            return Record(id=f"line-{line_no}", path=f"{self.root}:{line_no}", label=None,
                          error=f"manifest line {line_no} is not a JSON object")
        raw_path = str(row.get("path") or "").strip()
        if "\\" in raw_path and "/" not in raw_path and not (self.base / raw_path).exists():
            raw_path = PureWindowsPath(raw_path).as_posix()  # a manifest written on Windows: 6\000017.png
        label = row.get("label")
        label = str(label).strip() if label is not None else ""
        rid = str(row.get("id") or raw_path).strip()
        if not raw_path:
            return Record(id=rid or f"line-{line_no}", path=f"{self.root}:{line_no}", label=label or None,
                          error=f"manifest line {line_no} has no path")
        path = Path(raw_path)
        path = path if path.is_absolute() else self.base / path
        mask = str(row.get("mask") or "").strip() or None
        if mask is not None and not Path(mask).is_absolute():
            mask = str(self.base / mask)
        rec = Record(id=Path(rid).as_posix() if rid == raw_path else rid, path=str(path), label=label or None,
                     mask_path=mask)
        if not label:
            rec.error = f"manifest line {line_no} has no label"
        return rec

    def count(self) -> int:
        """Number of candidate images (a listing pass; nothing is decoded)."""
        return sum(1 for _ in self.records())

    def load(self, rec: Record, cfg: InputConfig | None = None) -> Example:
        """The validated `Example` of one of this source's records (any kind), or `Rejected`."""
        cfg = cfg or self.input_cfg
        if rec.row is None:
            return load_example(rec, cfg)
        if rec.error:
            raise Rejected(rec.error)
        data = self.hf.encoded(rec.row, self.hf.image_col)
        if data is None:
            raise Rejected(f"row {rec.row} has no image")
        image, alpha = load_image(data, cfg)
        mask = self.hf.encoded(rec.row, self.hf.mask_col) if self.hf.mask_col else None
        matte = background_rgb(cfg.background) if mask is None and alpha is not None else None
        mask = load_mask(mask, image.size, cfg) if mask is not None else alpha
        return Example(id=rec.id, image=image, label=rec.label, path=rec.path, mask=mask, matte=matte)


def load_example(rec: Record, cfg: InputConfig) -> Example:
    """A record backed by files (every kind but an HF dataset's Arrow rows: use `Source.load` for those)."""
    if rec.row is not None:
        raise ValueError(f"record {rec.id!r} is a row of a Hugging Face dataset: load it with Source.load")
    if rec.error:
        raise Rejected(rec.error)
    image, alpha = load_image(rec.path, cfg)
    mask = load_mask(rec.mask_path, image.size, cfg) if rec.mask_path else alpha
    matte = background_rgb(cfg.background) if not rec.mask_path and alpha is not None else None
    return Example(id=rec.id, image=image, label=rec.label, path=rec.path, mask=mask, matte=matte)
