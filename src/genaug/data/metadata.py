"""The records of a genaug output folder — `metadata.jsonl` (one JSON row per image, Hugging Face's
imagefolder format) and `manifest.parquet` (the same rows, sorted by `file_name`) — read and rewritten here
and nowhere else.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.config import ConfigError
from ..core.files import atomic_path, atomic_write

METADATA = "metadata.jsonl"
MANIFEST = "manifest.parquet"
CONFIG = "config.yaml"
REJECTED = "rejected.jsonl"
FILTERED = "filtered.jsonl"  # rows a filter dropped (genaug.scoring.filters, action=drop): done, not data


def json_default(o: Any):
    """How values that JSON lacks (numpy / torch scalars and arrays, sets, tuples) are recorded."""
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"cannot record {type(o).__name__} in the manifest")


def dumps_row(row: dict[str, Any]) -> str:
    """One metadata row as the line genaug writes (no newline)."""
    return json.dumps(row, ensure_ascii=False, default=json_default)


def is_output_dir(path: str | Path) -> bool:
    """A folder written by `genaug augment` (it holds `metadata.jsonl` and `config.yaml`)."""
    path = Path(path)
    return path.is_dir() and (path / METADATA).is_file() and (path / CONFIG).is_file()


def iter_lines(folder: str | Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """`(line, row)` for every non-blank line; `row` is None where the line is not a JSON object (a line
    torn by a kill mid-write). The writer uses this to resume; everyone else uses `read_rows`."""
    path = Path(folder) / METADATA
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield line, row if isinstance(row, dict) else None


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Every row of `folder/metadata.jsonl`, in file order. A torn or malformed row is an error (a finished
    output folder has none: `genaug augment` repairs them when it resumes)."""
    folder = Path(folder)
    if not (folder / METADATA).is_file():
        raise ConfigError(f"{folder} is not a genaug output folder (no {METADATA})")
    rows = []
    for i, (_, row) in enumerate(iter_lines(folder), 1):
        if row is None or "file_name" not in row or "label" not in row:
            raise ConfigError(f"{folder / METADATA}: row {i} is not a complete record; rerun the `genaug augment` "
                              "command that wrote it to repair the folder")
        rows.append(row)
    return rows


def left_out(row: dict[str, Any]) -> bool:
    """A row that training (and chaining) never draws: weight 0 (a scorer judged it unusable), or removed by a
    filter (`filtered`, genaug.scoring.filters)."""
    return float(row.get("weight", 1.0)) == 0 or bool(row.get("filtered"))


def source_file(row: dict[str, Any], source_root: str | Path | None) -> Path | None:
    """The real image a row was made from, if it can still be read: its `source_path`, else
    `<source>/<source_id>` (`source_root`: the folder's config.yaml `source`; a path recorded relative to
    another working directory, or data that moved)."""
    sid = row.get("source_id")
    for cand in (row.get("source_path"), source_root and sid and Path(source_root) / str(sid)):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


def filtered_keys(folder: str | Path) -> set[tuple[str, int]]:
    """`(source_id, variant)` of every row a filter dropped: a resumed run does not generate them again."""
    keys = set()
    path = Path(folder) / FILTERED
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                keys.add((row["source_id"], int(row["variant"])))
            except (ValueError, KeyError, TypeError):
                continue  # a torn line of a killed filter run: that variant is simply generated again
    return keys


_DIGEST_KEY = b"genaug.metadata_digest"  # in manifest.parquet's schema: the metadata.jsonl it was built from


def metadata_digest(folder: str | Path) -> str:
    """A digest of `folder/metadata.jsonl`'s bytes."""
    import hashlib

    return hashlib.blake2b((Path(folder) / METADATA).read_bytes(), digest_size=16).hexdigest()


def write_manifest_parquet(folder: str | Path, rows: list[dict[str, Any]] | None = None) -> None:
    """`manifest.parquet` = the rows of `metadata.jsonl` (as on disk now), sorted by file_name, written
    atomically, with the digest of that metadata.jsonl in its schema (`manifest_matches`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    rows = sorted(read_rows(folder) if rows is None else rows, key=lambda r: r["file_name"])
    if not rows:
        (folder / MANIFEST).unlink(missing_ok=True)
        return
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           _DIGEST_KEY: metadata_digest(folder).encode()})
    with atomic_path(folder / MANIFEST) as tmp:
        pq.write_table(table, tmp)


def manifest_matches(folder: str | Path) -> bool:
    """`manifest.parquet` was built from `metadata.jsonl` as it is now (not, e.g., before a reweighting that
    was killed between rewriting the one and the other)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        stored = (pq.read_schema(Path(folder) / MANIFEST).metadata or {}).get(_DIGEST_KEY)
        return stored is not None and stored.decode() == metadata_digest(folder)
    except (FileNotFoundError, OSError, pa.ArrowInvalid):
        return False


def rewrite_rows(folder: str | Path, rows: list[dict[str, Any]]) -> None:
    """Replace every row (e.g. new weights), atomically, and rebuild the parquet manifest."""
    atomic_write(Path(folder) / METADATA, "".join(dumps_row(r) + "\n" for r in rows))
    write_manifest_parquet(folder, rows)
