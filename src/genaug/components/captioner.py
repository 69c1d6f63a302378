"""BLIP captions (transformers): beam search and nucleus sampling, n of each, cached on disk.

Default: `Salesforce/blip-image-captioning-base` at a pinned revision. Captions of an image are keyed by
a hash of its pixels, the model and the options, so a rerun never captions the same image twice. Nucleus
sampling is seeded from the pixels and the sampling options alone — not from where the model was loaded from
(a hub id, or a `--models` folder that differs between machines): the same image and weights get the same
captions on any machine, from any path, in any batch.
"""
from __future__ import annotations

import hashlib
import json

import torch
from PIL import Image

from ..core.devices import model_dtype, resolve_device
from ..data.cache import Cache, content_key
from .hub import load_pretrained, local_override, model_key

BLIP_MODEL = "Salesforce/blip-image-captioning-base"
BLIP_REVISION = "82a37760796d32b1411fe092ab5d4e227313294b"


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
        self.model_key = model_key(model, self.revision)
        self.cache = Cache("captions")

    @staticmethod
    def _clean(text: str) -> str:
        return " ".join(text.replace("\n", " ").split())[:200]

    @torch.no_grad()
    def captions(self, image: Image.Image, n_beam: int = 10, n_nucleus: int = 10, top_p: float = 0.9) -> list[str]:
        """`n_beam` beam-search captions then `n_nucleus` nucleus-sampled ones (duplicates kept out)."""
        key = content_key(image, self.model_key, n_beam, n_nucleus, top_p, self.max_new_tokens)
        return self.cache.get_or_put(key, lambda: self._generate(image, n_beam, n_nucleus, top_p))

    def _generate(self, image: Image.Image, n_beam: int, n_nucleus: int, top_p: float) -> list[str]:
        px = self.processor(images=image.convert("RGB"), return_tensors="pt").pixel_values.to(self.device,
                                                                                            self.model.dtype)
        out = []
        if n_beam:
            ids = self.model.generate(pixel_values=px, num_beams=max(n_beam, 2), num_return_sequences=n_beam,
                                      max_new_tokens=self.max_new_tokens)
            out += self.processor.batch_decode(ids, skip_special_tokens=True)
        if n_nucleus:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(_nucleus_seed(image, n_nucleus, top_p, self.max_new_tokens))
                ids = self.model.generate(pixel_values=px, do_sample=True, top_p=top_p, top_k=0,
                                          num_return_sequences=n_nucleus, max_new_tokens=self.max_new_tokens)
            out += self.processor.batch_decode(ids, skip_special_tokens=True)
        return list(dict.fromkeys(c for c in map(self._clean, out) if c))


def _nucleus_seed(image: Image.Image, *numbers) -> int:
    """The seed of an image's nucleus sampling: its pixels and the sampling options (numbers), hashed as genaug
    always has (kept byte for byte, so captions, and SGID's images, do not change between versions)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    for n in numbers:
        h.update(json.dumps(n).encode())
    return int(h.hexdigest()[:15], 16)
