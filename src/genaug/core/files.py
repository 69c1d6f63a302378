"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never half of one.

The data goes to a unique temporary name in the same folder (same file system), then `os.replace` moves it
into place, which is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """`with atomic_path(p) as tmp: write(tmp)` — `tmp` becomes `p` when the block ends without an error
    (and is removed when it raises). Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return Path(path)


def folder_stamp(folder: str | Path) -> str:
    """A digest of a folder's file names (relative), sizes and modification times: changes when any file is
    added, removed, rewritten or resized, without reading the files (a model folder can hold gigabytes). The
    same folder copied elsewhere with its times kept (`cp -p`, `shutil.copytree`) has the same stamp."""
    import hashlib

    root = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    for q in sorted(x for x in root.rglob("*") if x.is_file()):
        st = q.stat()
        h.update(f"{q.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
