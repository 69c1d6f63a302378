"""The output directory: images, `metadata.jsonl` (HF imagefolder), `manifest.parquet`, `config.yaml`,
`rejected.jsonl` — written so that a run killed at any moment and rerun ends exactly complete.

Order of writes for one image: PNG to `.genaug-tmp/`, rename into place, then append its metadata row.
On open, a torn last row is dropped and rows without their file are forgotten; on close, PNGs without a
row (a kill between rename and append) are removed, the parquet manifest is rebuilt from the rows.

One writer per folder: opening takes an exclusive lock (`.genaug.lock`, flock: the OS drops it when the
process dies, so a killed run never blocks the next) before anything is read or written; a second run
stops at once with a message naming the run that holds it (`.genaug-run.json`: pid, host, start, command).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from ..core.config import ABSENT, ConfigError, differences, shown_differences
from ..core.log import get_logger
from ..core.files import atomic_write
from .labels import label_folder
from .metadata import (CONFIG, METADATA, REJECTED, dumps_row, filtered_keys, iter_lines, manifest_matches,
                       write_manifest_parquet)

log = get_logger(__name__)
TMP_DIR = ".genaug-tmp"
LOCK = ".genaug.lock"
RUN_INFO = ".genaug-run.json"
_OUR_PNG = re.compile(r"_[0-9a-f]{8}_v\d+\.png$")


def synthetic_file_name(label: str, source_id: str, variant: int) -> str:
    """`<label folder>/<source stem>_<hash of source id>_v<k>.png` — stable, unique, safe."""
    stem = re.sub(r"[^\w\-]+", "_", Path(source_id).stem, flags=re.UNICODE).strip("_")[:40] or "img"
    digest = hashlib.blake2b(source_id.encode("utf-8"), digest_size=4).hexdigest()
    return f"{label_folder(label)}/{stem}_{digest}_v{variant}.png"


def encode_png(image) -> bytes:
    """The PNG bytes genaug writes for an image (every executor encodes the same way)."""
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def lock_folder(root: Path) -> FileLock:
    """The exclusive, non-blocking lock of an output folder, with who holds it written beside it."""
    lock = FileLock(root / LOCK, thread_local=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        raise ConfigError(f"{root} is being written by another genaug run ({_holder(root)}); wait for it to "
                          "finish, or use another output folder") from None
    atomic_write(root / RUN_INFO, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])}))
    return lock


def unlock_folder(root: Path, lock: FileLock) -> None:
    """Let the next run in. The lock file stays: unlinking a flock file lets two runs lock two different files."""
    (root / RUN_INFO).unlink(missing_ok=True)
    lock.release(force=True)


@contextlib.contextmanager
def folder_locked(root: str | Path) -> Iterator[None]:
    """The folder lock for a writer other than `OutputDir`, e.g. re-weighting a finished folder's rows."""
    lock = lock_folder(Path(root))
    try:
        yield
    finally:
        unlock_folder(Path(root), lock)


def _holder(root: Path, wait: float = 2.0) -> str:
    """Who holds the lock. Its details are written just after it takes the lock: a run refused in between
    waits up to `wait` seconds for them, so the message names the holder."""
    deadline = time.monotonic() + wait
    while True:
        try:
            info = json.loads((root / RUN_INFO).read_text(encoding="utf-8"))
            return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() >= deadline:
                return "it has only just started"
            time.sleep(0.05)


class OutputDir:
    def __init__(self, root: str | Path, config: dict[str, Any], identity_keys: Iterable[str],
                 defaults: dict[str, Any] | None = None):
        """`defaults`: the settings' default values (`{"options": {...}}`): a setting the folder's config lacks
        (a later genaug added it) that is at its default now does not stop a resume — adding an option keeps the
        old behaviour as its default; a change of behaviour is a method version, compared like any setting."""
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root} exists and is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = lock_folder(self.root)  # before anything is read: another run may be mid-write
        try:
            self._check_same_run(config, tuple(identity_keys), defaults or {})
            self.tmp = self.root / TMP_DIR
            shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of a killed run
            self.tmp.mkdir()
            atomic_write(self.root / CONFIG, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
            self.done, rows_dropped = self._load_rows()
            self.filtered = filtered_keys(self.root)  # dropped by a filter: done, never generated again
            self._meta = open(self.root / METADATA, "a", encoding="utf-8")
            self._rejected_tmp = open(self.tmp / REJECTED, "w", encoding="utf-8")
        except BaseException:
            self.release()
            raise
        self.n_rejected = 0
        self._rejected_seen: set[tuple[str, str]] = set()
        self._changed = rows_dropped or not manifest_matches(self.root)

    # ---- resume --------------------------------------------------------------------------------
    def _check_same_run(self, config: dict[str, Any], keys: tuple[str, ...], defaults: dict[str, Any]) -> None:
        path = self.root / CONFIG
        if not path.exists():
            if (self.root / METADATA).exists():
                raise ConfigError(f"{self.root} holds {METADATA} but no {CONFIG}; it was not written by genaug augment")
            return
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        def default(dotted: str) -> Any:
            node: Any = defaults
            for part in dotted.split("."):
                node = node.get(part, ABSENT) if isinstance(node, dict) else ABSENT
            return node

        differ = [(k, a, b) for key in keys for k, a, b in differences(key, old.get(key, ABSENT), config.get(key, ABSENT))
                  if not (a is ABSENT and b is not ABSENT and default(k) == b)]
        if differ:
            details = shown_differences(differ)
            hint = ""
            if any(a is ABSENT for _, a, _ in differ):
                made_by = (old.get("versions") or {}).get("genaug")
                hint = (f" A setting absent there is one a later genaug added: the folder was made by genaug "
                        f"{made_by or 'of another version'}; finish it with that version, or start a new --out.")
            raise ConfigError(
                f"{self.root} already holds output made with other settings ({details}). "
                f"Use another --out, or the same settings to resume.{hint}"
            )

    def _load_rows(self) -> tuple[dict[tuple[str, int], str], bool]:
        path = self.root / METADATA
        done: dict[tuple[str, int], str] = {}
        if not path.exists():
            return done, False
        kept, dropped, unended = [], 0, False
        for line, row in iter_lines(self.root):
            try:
                key = (row["source_id"], int(row["variant"]))
                ok = key not in done and (self.root / row["file_name"]).is_file()
            except (KeyError, TypeError, ValueError):
                ok = False  # a row torn by a kill mid-write
            if ok:
                done[key] = row["file_name"]
                unended |= not line.endswith("\n")  # cut after its "}" (or rewritten without one)
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
        if dropped:
            log.info("dropped %d incomplete metadata row(s) from an interrupted run", dropped)
        if dropped or unended:  # the next row must start on a line of its own
            atomic_write(path, "".join(kept))
        return done, dropped > 0

    def is_done(self, source_id: str, variant: int) -> bool:
        return (source_id, variant) in self.done or (source_id, variant) in self.filtered

    # ---- writing -------------------------------------------------------------------------------
    def write(self, image, row: dict[str, Any]) -> None:
        """One image (a PIL image, or PNG bytes from `encode_png`) and its metadata row."""
        final = self.root / row["file_name"]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{uuid.uuid4().hex}.png"
        tmp.write_bytes(image if isinstance(image, bytes) else encode_png(image))
        os.replace(tmp, final)
        self._meta.write(dumps_row(row) + "\n")
        self._meta.flush()
        self.done[(row["source_id"], int(row["variant"]))] = row["file_name"]
        self._changed = True

    def reject(self, path: str, source_id: str, reason: str) -> bool:
        """List a refused source (or one refused variant: its reason names it) once; False if already listed
        (a source's variants may come in several batches)."""
        if (source_id, reason) in self._rejected_seen:
            return False
        self._rejected_seen.add((source_id, reason))
        self.n_rejected += 1
        self._rejected_tmp.write(json.dumps({"path": path, "id": source_id, "reason": reason}, ensure_ascii=False) + "\n")
        return True

    def sync(self) -> None:
        """Make the rows written so far durable (called once per batch, not per image)."""
        self._meta.flush()
        os.fsync(self._meta.fileno())

    def close(self) -> None:
        self.sync()
        self._meta.close()
        self._rejected_tmp.close()
        os.replace(self.tmp / REJECTED, self.root / REJECTED)
        self._remove_orphans()
        if self._changed:  # a rerun that wrote nothing leaves the manifest as it is
            self._write_manifest()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.release()

    def release(self) -> None:
        """Let the next run in (close does it; idempotent). After a failure the rows written so far are made
        durable first: the next run resumes from them."""
        for f in (getattr(self, "_meta", None), getattr(self, "_rejected_tmp", None)):
            if f is not None and not f.closed:
                f.close()
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None and lock.is_locked:
            unlock_folder(self.root, lock)

    def __del__(self):  # a run that failed in this process (no close) must not block the next one in it
        self.release()

    def _remove_orphans(self) -> None:
        known = set(self.done.values())
        for d in self.root.iterdir():
            if d.is_dir() and not d.name.startswith("."):
                for p in d.iterdir():
                    rel = f"{d.name}/{p.name}"
                    if _OUR_PNG.search(p.name) and rel not in known:
                        p.unlink()

    def _write_manifest(self) -> None:
        write_manifest_parquet(self.root)
