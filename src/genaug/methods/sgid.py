"""SGID: Semantic-Guided Generative Image Augmentation (Li, Xu, Wang, arXiv 2302.02070), following the
re-implementation report in shared/papers:

1. BLIP writes `n_beam` beam-search and `n_nucleus` nucleus-sampled captions of the image (cached);
2. CLIP picks the caption most similar to the image (similarity s*, cached);
3. prompt "<caption>. A picture of <label>" with weights caption 0.9 / label 1.5 (compel);
4. guidance scale from s* through the guidance mapping: default the report's f(s) = -4 s^2 + 2 s + 1, which
   gives only 1.0-1.25 for any similarity (1.24 at s = 0.3, 1.17 at 0.4: nearly unguided) and falls for
   s > 0.25, against the report's stated intent ("higher similarity scores result in higher guidance
   scales"); `guidance_mapping=linear` is that intent: s in `similarity_range` maps linearly (clamped) onto
   `guidance_range`;
5. Stable Diffusion img2img at noise (strength) 0.3; small images are upscaled to the model's size first.
Optional filter (the report's suggestion): each output's CLIP image-image similarity to its source is
scored, and outputs below `min_similarity` get weight 0 (kept on disk with their score, never drawn in
training).
"""
from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from ..components.captioner import BLIP_MODEL, Captioner
from ..components.clip import Clip
from ..components.diffusion import SD15_MODEL, PipelineOptions
from ..components.hub import local_override, model_key
from ..core.config import ConfigError, config_dataclass, range_option
from ..data.cache import Cache, content_key
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method

CLIP_B32 = "openai/clip-vit-base-patch32"
CLIP_B32_REVISION = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"
_COMPEL_SYNTAX = re.compile(r"[()\[\]+\-\\]")  # compel's weighting syntax, and its escape character


def sgid_quadratic(s: float) -> float:
    """The report's guidance mapping f(s*) = -4 s*^2 + 2 s* + 1."""
    return -4 * s * s + 2 * s + 1


def linear_guidance(s: float, similarity_range: tuple[float, float], guidance_range: tuple[float, float]) -> float:
    """The report's intent, higher similarity -> higher guidance: s in [s_lo, s_hi] maps linearly onto
    [g_lo, g_hi], clamped outside it."""
    (s_lo, s_hi), (g_lo, g_hi) = similarity_range, guidance_range
    t = 1.0 if s_hi == s_lo else (s - s_lo) / (s_hi - s_lo)
    return g_lo + (g_hi - g_lo) * min(max(t, 0.0), 1.0)


@register_method("sgid")
class SGID(Method):
    description = "SGID (Li et al. 2023): BLIP captions, CLIP picks one, weighted prompt, guided SD img2img at 0.3"
    paper = ("Li, Xu, Wang, Semantic-Guided Generative Image Augmentation Method with Diffusion Models for Image "
             "Classification (arXiv 2302.02070), via a course re-implementation report")
    default_batch_size = 8

    @config_dataclass
    class Config(PipelineOptions):
        model: str = SD15_MODEL
        revision: str | None = None
        captioner: str = BLIP_MODEL
        captioner_revision: str | None = None
        clip: str = CLIP_B32  # the report's CLIP
        clip_revision: str | None = None
        n_beam: int = Field(10, ge=0)
        n_nucleus: int = Field(10, ge=0)
        top_p: float = Field(0.9, gt=0, le=1)
        label_weight: float = Field(1.5, gt=0)
        caption_weight: float = Field(0.9, gt=0)
        guidance_mapping: Literal["sgid_quadratic", "linear", "constant"] = "sgid_quadratic"
        guidance_scale: float = Field(7.5, ge=0)  # used by guidance_mapping=constant
        # guidance_mapping=linear: CLIP (B/32) caption similarity s* in similarity_range -> guidance in guidance_range
        similarity_range: range_option(ge=-1, le=1) = (0.2, 0.4)  # typical image-caption cosines of CLIP B/32
        guidance_range: range_option(ge=0) = (5.0, 10.0)  # around SD's usual 7.5
        strength: float = Field(0.3, gt=0, le=1)  # the report's noise rate
        steps: int = Field(50, ge=1)
        min_similarity: float | None = None  # filter: outputs less CLIP-similar to their source get weight 0
        micro_batch: int = 1  # one image per pipeline call: every image has its own guidance scale

        @field_validator("micro_batch")
        @classmethod
        def _one_image_per_call(cls, v: int) -> int:
            if v != 1:
                raise ValueError("sgid runs one image per pipeline call (each image has its own guidance scale): "
                                 "leave micro_batch at 1")
            return v

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if c.n_beam + c.n_nucleus < 1:
            raise ConfigError("sgid: n_beam + n_nucleus must be at least 1")
        if int(c.steps * c.strength) < 1:
            raise ConfigError(f"sgid: steps x strength must be at least 1 (got {c.steps} x {c.strength})")
        self.sd = c.diffusion(c.model, c.revision)  # micro_batch 1: every image has its own guidance scale
        self.captioner = Captioner(c.captioner, c.captioner_revision, c.device)
        clip = local_override("clip", c.clip)  # the pinned revision only for the hub's B/32 itself
        self.clip = Clip(clip, c.clip_revision or (CLIP_B32_REVISION if clip == CLIP_B32 else None), c.device)
        self.similarities = Cache("sgid-clip")
        self.clip_key = model_key(self.clip.id, self.clip.revision)
        from compel import CompelForSD, CompelForSDXL

        self.compel = (CompelForSDXL if self.sd.is_xl else CompelForSD)(self.sd.pipe)
        self._embeds: dict[str, dict[str, torch.Tensor]] = {}

    def models(self) -> dict[str, dict[str, str]]:
        return {**self.sd.models(),
                "captioner": {"id": self.captioner.id, "revision": self.captioner.revision or "local"},
                "clip": {"id": self.clip.id, "revision": self.clip.revision or "local"}}

    def best_caption(self, image) -> tuple[str, float]:
        c = self.config
        captions = self.captioner.captions(image, c.n_beam, c.n_nucleus, c.top_p)
        key = content_key(image, self.clip_key, captions)

        def best() -> list:
            sims = self.clip.image_text_similarity([image] * len(captions), captions).tolist()
            i = int(np.argmax(sims))
            return [captions[i], round(float(sims[i]), 6)]

        caption, similarity = self.similarities.get_or_put(key, best)
        return caption, similarity

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        caption, sim = self.best_caption(example.image)
        mapping: dict[str, Any] = {"guidance_mapping": c.guidance_mapping}
        if c.guidance_mapping == "sgid_quadratic":
            guidance = sgid_quadratic(sim)
        elif c.guidance_mapping == "linear":
            guidance = linear_guidance(sim, c.similarity_range, c.guidance_range)
            mapping |= {"similarity_range": list(c.similarity_range), "guidance_range": list(c.guidance_range)}
        else:
            guidance = c.guidance_scale
        caption_text = " ".join(_COMPEL_SYNTAX.sub(" ", caption).split())
        label_text = " ".join(_COMPEL_SYNTAX.sub(" ", example.label).split())
        weighted = f"({caption_text}){c.caption_weight:g} (A picture of {label_text}){c.label_weight:g}"
        # diffusers applies no classifier-free guidance at a scale <= 1 (the conditional prediction alone, as at
        # 1): the scale recorded is the one applied; a mapped value below 1 is kept beside it
        below = {"guidance_mapped": round(float(guidance), 6)} if guidance < 1 else {}
        return {"caption": caption, "similarity": sim, "prompt": f"{caption}. A picture of {example.label}",
                "weighted_prompt": weighted, **mapping, "guidance_scale": round(max(float(guidance), 1.0), 6),
                **below, "strength": c.strength, "steps": c.steps}

    def _prompt_embeds(self, weighted: str) -> dict[str, torch.Tensor]:
        """compel's conditioning of one prompt, alone (cached): it never depends on the batch."""
        if weighted not in self._embeds:
            cond = self.compel(weighted, negative_prompt="")
            embeds = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": cond.negative_embeds}
            if cond.pooled_embeds is not None:  # SDXL
                embeds |= {"pooled_prompt_embeds": cond.pooled_embeds,
                           "negative_pooled_prompt_embeds": cond.negative_pooled_embeds}
                if self.sd.pipe.config.get("force_zeros_for_empty_prompt"):  # SDXL base: "" is zeros, as in
                    for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):  # its own pipeline
                        embeds[k] = torch.zeros_like(embeds[k])
            self._embeds[weighted] = embeds
        return self._embeds[weighted]

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        out = []
        for ex, p in zip(batch, params):
            image = self.sd.img2img([ex.image], None, [p["seed"]], strength=c.strength,
                                    guidance_scale=p["guidance_scale"], steps=c.steps,
                                    embeds=[self._prompt_embeds(p["weighted_prompt"])])[0]
            sim = float(self.clip.image_image_similarity([ex.image], [image])[0])
            weight = 0.0 if c.min_similarity is not None and sim < c.min_similarity else 1.0
            out.append(Synthetic(image=image, label=ex.label, source_id=ex.id, params=self.recorded(p),
                                 scores={"clip_source_similarity": round(sim, 6)}, weight=weight))
        return out
