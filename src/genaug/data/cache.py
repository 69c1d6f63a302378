"""The one on-disk cache: captions, LLM completions, CLIP similarities, subject masks, learned tokens.

Everything lives under `cache_root()` (`GENAUG_CACHE`, default `~/.cache/genaug`), one folder per cache:
`<root>/<name>/<key[:2]>/<key><suffix>`. A key is a content hash of the inputs, the options and the models
(`content_key`; a model by `components.hub.model_key`: a hub id's revision, a local folder's files), so a
changed input or model is a new entry, never a stale one. JSON values and
binary artefacts are written atomically, and an entry being computed is locked (`<key>.lock` beside it), so
two runs that need the same entry compute it once: the second waits, then reads the first's result.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from ..core.files import atomic_path, atomic_write


def cache_root() -> Path:
    return Path(os.environ.get("GENAUG_CACHE", Path.home() / ".cache" / "genaug"))


def content_key(image, *parts) -> str:
    """A hash of an image's pixels (mode, size, bytes) and of JSON-able `parts` (options, model keys), encoded
    as one JSON list: parts are delimited (`1, 10` and `11, 0` are two keys)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    h.update(json.dumps(list(parts), sort_keys=True, default=str).encode())
    return h.hexdigest()


class Cache:
    """`Cache(name)`: JSON values (`get`, `put`, `get_or_put`) and files (`get_or_create`) under one folder."""

    def __init__(self, name: str):
        self.dir = cache_root() / name
        self.hits = self.misses = 0

    def path(self, key: str, suffix: str = ".json") -> Path:
        return self.dir / key[:2] / f"{key}{suffix}"

    def lock(self, key: str) -> FileLock:
        """Held while an entry is computed; flock, so a killed run's lock is released by the OS."""
        path = self.path(key, ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path, thread_local=False)

    def _read(self, key: str):
        path = self.path(key)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def get(self, key: str):
        value = self._read(key)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def put(self, key: str, value: Any) -> None:
        atomic_write(self.path(key), json.dumps(value, ensure_ascii=False))

    def get_or_put(self, key: str, make: Callable[[], Any]) -> Any:
        """The cached value, or `make()` computed once (across processes) and stored."""
        value = self.get(key)
        if value is not None:
            return value
        with self.lock(key):
            value = self._read(key)  # another run may have stored it while we waited
            if value is None:
                value = make()
                self.put(key, value)
        return value

    def get_or_create(self, key: str, suffix: str, make: Callable[[Path], None]) -> Path:
        """The path of the cached file, or of one `make(tmp)` wrote (once, across processes) and moved into place."""
        path = self.path(key, suffix)
        if path.is_file():
            self.hits += 1
            return path
        self.misses += 1
        with self.lock(key):
            if not path.is_file():
                with atomic_path(path) as tmp:
                    make(tmp)
        return path
