"""Labels are data, never paths: a label becomes a folder name only through `label_folder`."""
from __future__ import annotations

import hashlib
import re
import unicodedata

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_MAX_BYTES = 80


def label_folder(label: str) -> str:
    """A folder name for `label` that cannot leave the output directory and never collides.

    Letters of any script, digits, spaces and harmless punctuation are kept. Path separators, control
    characters and characters Windows forbids become "_"; leading dots and spaces are stripped; reserved
    device names are prefixed. When the result differs from the label, a short hash of the original label
    is appended, so two labels that sanitise alike ("a/b", "a_b") still get distinct folders.
    """
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"label must be a non-empty string, got {label!r}")
    name = unicodedata.normalize("NFC", label)
    name = _UNSAFE.sub("_", name).strip(" .")
    name = re.sub(r"\s+", " ", name)
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        name = "_" + name
    name = name.encode("utf-8")[:_MAX_BYTES].decode("utf-8", "ignore").rstrip(" .") or "_"
    if name != label:
        digest = hashlib.blake2b(label.encode("utf-8"), digest_size=4).hexdigest()
        name = f"{name}-{digest}"
    return name
