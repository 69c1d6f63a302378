"""Source datasets, streamed: an ImageFolder directory, or a CSV / JSONL manifest (`path,label[,mask][,id]`).

`records()` yields one `Record` per candidate image without opening it, so a rerun can skip finished
images without decoding them; `load_example` turns a record into a validated `Example`.
"""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..core.config import ConfigError
from ..core.log import get_logger
from ..core.records import Example
from .images import InputConfig, Rejected, is_image_name, load_image, load_mask

log = get_logger(__name__)
MANIFEST_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl"}


@dataclass
class Record:
    id: str
    path: str
    label: str | None
    mask_path: str | None = None
    error: str | None = None  # a problem found while listing (e.g. a manifest row without a label)


class Source:
    """A dataset of labelled images on disk."""

    def __init__(self, src: str | Path):
        self.root = Path(src)
        if self.root.is_dir():
            self.kind = "imagefolder"
        elif self.root.is_file() and self.root.suffix.lower() in MANIFEST_SUFFIXES:
            self.kind = MANIFEST_SUFFIXES[self.root.suffix.lower()]
            self.base = self.root.parent
        elif not self.root.exists():
            raise ConfigError(f"source not found: {self.root}")
        else:
            raise ConfigError(
                f"source {self.root} is neither a directory (ImageFolder: one sub-folder per class) "
                "nor a .csv / .jsonl manifest with columns path,label"
            )
        self.warnings: list[str] = []
        if self.kind == "imagefolder":
            self._check_imagefolder()
        elif self.kind == "csv":
            with open(self.root, encoding="utf-8", newline="") as f:
                missing = {"path", "label"} - set(csv.DictReader(f).fieldnames or [])
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
        seen: set[str] = set()
        for line_no, row in self._manifest_rows():
            rec = self._manifest_record(line_no, row)
            if rec.error is None and rec.id in seen:
                rec.error = f"duplicate id {rec.id!r} (manifest line {line_no})"
            seen.add(rec.id)
            yield rec

    def _manifest_rows(self) -> Iterator[tuple[int, dict | None]]:
        with open(self.root, encoding="utf-8", newline="") as f:
            if self.kind == "csv":
                reader = csv.DictReader(f)
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


def load_example(rec: Record, cfg: InputConfig) -> Example:
    if rec.error:
        raise Rejected(rec.error)
    image, alpha = load_image(rec.path, cfg)
    mask = load_mask(rec.mask_path, image.size, cfg) if rec.mask_path else alpha
    return Example(id=rec.id, image=image, label=rec.label, path=rec.path, mask=mask)
