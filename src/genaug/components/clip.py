"""CLIP (transformers): image-text and image-image similarity, batched.

Default: `openai/clip-vit-large-patch14` (the model torchmetrics' CLIPScore defaults to), pinned revision.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.devices import model_dtype, resolve_device
from .hub import load_pretrained, local_override

DEFAULT_MODEL = "openai/clip-vit-large-patch14"
DEFAULT_REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"


class Clip:
    def __init__(self, model: str = DEFAULT_MODEL, revision: str | None = None, device=None, batch_size: int = 32):
        """`revision=None`: the pinned revision for the default model, the hub's main for any other."""
        from transformers import CLIPModel, CLIPProcessor

        model = local_override("clip", model)
        local_or_default = revision or (DEFAULT_REVISION if model == DEFAULT_MODEL else None)
        self.device = resolve_device(device)
        dtype = model_dtype(self.device)
        self.model = load_pretrained(CLIPModel, model, local_or_default, role="clip", dtype=dtype).to(self.device)
        self.model.eval()
        self.processor = load_pretrained(CLIPProcessor, model, local_or_default, role="clip", weights=False)
        self.id, self.revision, self.batch_size = model, local_or_default, batch_size

    @torch.no_grad()
    def image_embeds(self, images: Sequence) -> torch.Tensor:
        """L2-normalised projected image embeddings `(N, D)` of PIL images."""
        out = []
        for i in range(0, len(images), self.batch_size):
            px = self.processor(images=list(images[i:i + self.batch_size]), return_tensors="pt").pixel_values
            feats = self.model.get_image_features(pixel_values=px.to(self.device, self.model.dtype))
            out.append(getattr(feats, "pooler_output", feats).float().cpu())  # transformers 5 returns a ModelOutput
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.processor(text=list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True)
            feats = self.model.get_text_features(input_ids=tok.input_ids.to(self.device),
                                                 attention_mask=tok.attention_mask.to(self.device))
            out.append(getattr(feats, "pooler_output", feats).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)

    def image_text_similarity(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its own text, `(N,)`."""
        return (self.image_embeds(images) * self.text_embeds(texts)).sum(-1)

    def image_image_similarity(self, a: Sequence, b: Sequence) -> torch.Tensor:
        return (self.image_embeds(a) * self.image_embeds(b)).sum(-1)

    @property
    def image_size(self) -> int:
        """The vision tower's input size, px: load images at it, so they are not resized twice."""
        return int(self.model.config.vision_config.image_size)

    def as_feature_extractor(self) -> nn.Module:
        """uint8 `(N, 3, H, W)` images -> L2-normalised image embeddings, as an extractor (`num_features`, `name`,
        `size`) for `scoring.metrics.extract`."""
        return _ClipFeatures(self)

    def clip_score(self, images: torch.Tensor, texts: Sequence[str], batch_size: int = 64) -> float:
        """CLIPScore (Hessel et al. 2021) of uint8 images `(N, 3, H, W)` against their texts, via torchmetrics:
        the mean over pairs of 100 * max(cos(image, text), 0)."""
        from torchmetrics.multimodal.clip_score import CLIPScore

        metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(self.model), self.processor))
        for i in range(0, len(images), batch_size):
            metric.update(list(images[i:i + batch_size]), list(texts[i:i + batch_size]))
        return float(metric.compute())


class _TensorFeatures(nn.Module):
    """torchmetrics 1.9's CLIPScore expects `get_*_features` to return tensors; transformers 5 returns a
    ModelOutput (fixed upstream after 1.9: Lightning-AI/torchmetrics#3408). This view returns the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values):
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.model.dtype))
        return getattr(out, "pooler_output", out).float()

    def get_text_features(self, input_ids, attention_mask=None):
        out = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, "pooler_output", out).float()


class _ClipFeatures(nn.Module):
    """uint8 `(N, 3, H, W)` images -> CLIP image embeddings, for the synthetic-data metrics."""

    def __init__(self, clip: Clip):
        super().__init__()
        self.clip = clip
        self.num_features = clip.model.config.projection_dim
        self.name = f"clip:{clip.id}"
        self.size = clip.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2.functional import to_pil_image

        return self.clip.image_embeds([to_pil_image(im) for im in x])
