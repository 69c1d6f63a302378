"""BLIP captions (transformers): beam search and nucleus sampling, n of each, cached on disk.

Default: `Salesforce/blip-image-captioning-base` at a pinned revision. Captions of an image are keyed by
a hash of its pixels, the model and the options, so a rerun never captions the same image twice. Nucleus
sampling is seeded from that key: the same image gets the same captions on any machine and in any batch.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import torch
from PIL import Image

from ..core.devices import model_dtype, resolve_device
from .hub import load_pretrained, local_override

BLIP_MODEL = "Salesforce/blip-image-captioning-base"
BLIP_REVISION = "82a37760796d32b1411fe092ab5d4e227313294b"


def cache_root() -> Path:
    return Path(os.environ.get("GENAUG_CACHE", Path.home() / ".cache" / "genaug"))


def image_key(image: Image.Image, *parts) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


class JsonCache:
    """One small JSON file per key under `GENAUG_CACHE/<name>/`, written atomically."""

    def __init__(self, name: str):
        self.dir = cache_root() / name
        self.hits = self.misses = 0

    def get(self, key: str):
        path = self.dir / key[:2] / f"{key}.json"
        if path.is_file():
            self.hits += 1
            return json.loads(path.read_text(encoding="utf-8"))
        self.misses += 1
        return None

    def put(self, key: str, value) -> None:
        path = self.dir / key[:2] / f"{key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


class Captioner:
    def __init__(self, model: str = BLIP_MODEL, revision: str | None = None, device=None, max_new_tokens: int = 30):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.device = resolve_device(device)
        model = local_override("blip", model)
        self.id = model
        self.revision = revision or (BLIP_REVISION if model == BLIP_MODEL else None)
        dtype = model_dtype(self.device)
        self.model = load_pretrained(BlipForConditionalGeneration, model, self.revision, role="captioner",
                                     dtype=dtype).to(self.device).eval()
        self.processor = load_pretrained(BlipProcessor, model, self.revision, role="captioner", weights=False)
        self.max_new_tokens = max_new_tokens
        self.cache = JsonCache("captions")

    @staticmethod
    def _clean(text: str) -> str:
        return " ".join(text.replace("\n", " ").split())[:200]

    @torch.no_grad()
    def captions(self, image: Image.Image, n_beam: int = 10, n_nucleus: int = 10, top_p: float = 0.9) -> list[str]:
        """`n_beam` beam-search captions then `n_nucleus` nucleus-sampled ones (duplicates kept out)."""
        key = image_key(image, self.id, self.revision, n_beam, n_nucleus, top_p, self.max_new_tokens)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        px = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values.to(self.device,
                                                                                            self.model.dtype)
        out = []
        if n_beam:
            ids = self.model.generate(pixel_values=px, num_beams=max(n_beam, 2), num_return_sequences=n_beam,
                                      max_new_tokens=self.max_new_tokens)
            out += self.processor.batch_decode(ids, skip_special_tokens=True)
        if n_nucleus:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(key[:15], 16))
                ids = self.model.generate(pixel_values=px, do_sample=True, top_p=top_p, top_k=0,
                                          num_return_sequences=n_nucleus, max_new_tokens=self.max_new_tokens)
            out += self.processor.batch_decode(ids, skip_special_tokens=True)
        captions = list(dict.fromkeys(c for c in map(self._clean, out) if c))
        self.cache.put(key, captions)
        return captions
