"""Seeds derived from content, never from order: variant k of source `id` gets the same seed on any
machine, in any batch, on any executor."""
from __future__ import annotations

import hashlib


def derive_seed(global_seed: int, source_id: str, variant: int) -> int:
    """A 63-bit seed from (global seed, source id, variant) — fits int64 columns and torch generators."""
    h = hashlib.blake2b(f"{int(global_seed)}\x00{source_id}\x00{int(variant)}".encode("utf-8"), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)
