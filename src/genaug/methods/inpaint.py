"""Object-centric inpainting (Shivashankar & Miller, *Semantic Data Augmentation with Generative Models*,
section 3.3 and the mask ablation): regenerate the background, the subject, or the whole image with a
Stable Diffusion inpainting pipeline, guided by the subject mask.

- The subject mask comes from the dataset (manifest `mask` column or alpha), else GroundingDINO → SAM
  (`genaug.components.segment`), as in `aga`.
- It is dilated by `dilation` pixels first (at the source image's resolution), so the subject is wholly
  inside it: `dilation_kind=radius` grows by a Euclidean distance (every pixel within 16 px of the
  subject), `window` applies a square maximum filter of that width (DA-Fusion's `maximum_filter(size=16)`,
  i.e. ±8 px).
- `mode=foreground` repaints the dilated subject; `background` repaints everything outside it (the
  dilated foreground mask, inverted, as in the paper); `both` repaints the whole image (the paper's
  "augments the whole image").
- `strength` unset: 1.0 for `foreground` / `background` (the region is regenerated), 0.5 for `both` (and for
  an image without a subject repainted whole under `on_missing=whole_image`): the whole image masked at 1.0
  starts from pure noise and is plain text-to-image, nothing of the source survives; the paper inserts the
  source SDEdit-style (its eq. 10) and compares against DA-Fusion / Real Guidance at t0 = 0.5. An explicit
  `strength=1.0` with the whole image repainted is honoured, with a warning in the run summary.
- `composite=true` (default) pastes the untouched pixels back from the source, so everything outside the
  repainted region is exactly the source (the VAE round trip would otherwise alter it slightly).
- The prompt is "a photo of a {label}"; with `tokens_from` set to a base model (e.g. SD 1.5), the class
  tokens learned by textual inversion (DA-Fusion's, shared cache) are loaded into the inpainting pipeline
  and the prompt uses them ("a photo of a {token}").
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import Field

from ..components.diffusion import SD15_INPAINT_MODEL, PipelineOptions, text_encoders
from ..components.segment import MaskOptions, dilate, to_bool
from ..components.textual_inversion import TextualInversionOptions, token_vectors
from ..core.config import ConfigError, config_dataclass
from ..data.images import Rejected
from .registry import register_method
from ..core.records import Example, Synthetic, refusal, refuse
from .base import Method


# the whole image repainted SDEdit-style (the paper's eq. 10) at DA-Fusion's / Real Guidance's t0, which the
# paper compares against: 1.0 would start from pure noise and keep nothing of the source
BOTH_STRENGTH = 0.5


@register_method("inpaint")
class Inpaint(Method):
    description = "Object-centric inpainting (Shivashankar & Miller): SD inpainting of background, subject or both"
    paper = "Shivashankar & Miller, Semantic Data Augmentation with Generative Models (section 3.3, mask ablation)"
    default_batch_size = 8
    version = "2"  # 2: a foreground whose grown subject covers the whole image is repainted as `both` (strength)

    @config_dataclass
    class Config(PipelineOptions, MaskOptions, TextualInversionOptions):
        model: str = SD15_INPAINT_MODEL
        revision: str | None = None
        mode: Literal["background", "foreground", "both"] = "background"
        dilation: int = Field(16, ge=0)  # pixels, at the source image's resolution
        dilation_kind: Literal["radius", "window"] = "radius"
        prompt: str = "a photo of a {label}"  # {label}, or {token} with tokens_from
        negative_prompt: str = ""
        strength: float | None = Field(None, gt=0, le=1)  # None: 1.0 for foreground/background, 0.5 for both
        guidance_scale: float = Field(7.5, ge=0)
        steps: int = Field(50, ge=1)
        composite: bool = True
        tokens_from: str | None = None  # a base model whose textual-inversion class tokens the prompt uses
        tokens_revision: str | None = None

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        # with tokens, "{label}" in the prompt means the class's token
        self.prompt = c.prompt.replace("{label}", "{token}") if c.tokens_from else c.prompt
        if "{token}" in self.prompt and not c.tokens_from:
            raise ConfigError("inpaint: a prompt with {token} needs tokens_from (the base model of the tokens)")
        whole = c.mode == "both" or c.on_missing == "whole_image"  # may repaint a whole image
        for strength in {self.strength(c.mode), *([self.strength("both")] if whole or c.mode == "foreground" else [])}:
            if int(c.steps * strength) < 1:
                raise ConfigError(f"inpaint: steps x strength must be at least 1 (got {c.steps} x {strength})")
        self.warnings: list[str] = []
        if whole and self.strength("both") == 1.0:
            which = "mode=both" if c.mode == "both" else "on_missing=whole_image (images without a subject)"
            self.warnings.append(f"inpaint: {which} at strength 1.0 repaints the whole image from pure noise: "
                                 f"text-to-image, nothing of the source kept (leave strength unset for "
                                 f"{BOTH_STRENGTH}, or set one below 1)")
        self.sd = c.diffusion(c.model, c.revision, task="inpaint")
        self.masker = c.masker(c.device)
        self.tokens: dict[str, str] = {}
        # the base model of the tokens, loaded now: models resolve against --models while the method is built
        # only lends its tokens, never generates: none of the sampling options (scheduler, eta, DeepCache,
        # compile, LoRA) apply to it, whatever its own scheduler takes
        self.base = (c.diffusion(c.tokens_from, c.tokens_revision, scheduler=None, safety_checker=False, lora=None,
                                 lora_revision=None, lora_scale=1.0, eta=None, deepcache_interval=1, compile=False)
                     if c.tokens_from else None)

    def models(self) -> dict[str, dict[str, str]]:
        out = self.sd.models()
        if self.base is not None:
            out["tokens_from"] = {"id": self.base.id, "revision": self.base.revision or "local"}
        if self.config.masks == "auto":
            out |= self.masker.describe()
        return out

    def prepare(self, source) -> None:
        """With `tokens_from`: learn (or load from the cache) a token per class on the base model, and load
        the same vectors into the inpainting pipeline's text encoder(s)."""
        c = self.config
        if not c.tokens_from:
            return
        base = self.base
        self.tokens = c.class_tokens(base, source)
        encoders = text_encoders(self.sd.pipe)
        for token in self.tokens.values():
            if token in self.sd.pipe.tokenizer.get_vocab():
                continue
            vectors = token_vectors(base.pipe, token)
            if set(vectors) != set(encoders):
                raise ConfigError(f"inpaint: tokens_from {base.id} has other text encoders than {self.sd.id}")
            for name, (tok, te) in encoders.items():
                if vectors[name].shape[-1] != te.get_input_embeddings().weight.shape[-1]:
                    raise ConfigError(f"inpaint: tokens_from {base.id} has another text-embedding size than "
                                      f"{self.sd.id}")
                self.sd.pipe.load_textual_inversion({token: vectors[name]}, token=token, tokenizer=tok,
                                                    text_encoder=te)

    def strength(self, mode: str) -> float:
        """The strength an image repainted in `mode` gets: the configured one, else the mode's default."""
        if self.config.strength is not None:
            return self.config.strength
        return BOTH_STRENGTH if mode == "both" else 1.0

    def subject(self, example: Example) -> tuple[Image.Image | None, dict[str, Any]]:
        return self.config.subject(self.masker, example)

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        mask, info = self.subject(example)
        mode = c.mode
        if mask is None:
            if c.on_missing == "reject":
                raise Rejected(f"inpaint: no subject: {info.get('reason', 'the mask is empty')}")
            info, mode = {**info, "mask_source": "whole_image"}, "both"
        if c.tokens_from and example.label not in self.tokens:
            raise ConfigError(f"inpaint: no token for class {example.label!r}; prepare(source) learns them")
        prompt = self.prompt.replace("{label}", example.label).replace("{token}", self.tokens.get(example.label, ""))
        p = {**{k: v for k, v in info.items() if k != "reason"}, "mode": mode, "dilation": c.dilation,
             "dilation_kind": c.dilation_kind, "prompt": prompt, "strength": self.strength(mode),
             "guidance_scale": c.guidance_scale, "steps": c.steps}
        region = self.repaint_mask(example, p, mask)
        if not region.any():
            raise Rejected(f"inpaint: nothing to repaint in mode {mode}: the subject dilated by {c.dilation} px "
                           f"covers the whole image (lower dilation or use another mode)")
        if mode == "foreground" and region.all():  # the grown subject is the whole image: repainted as `both`
            p.update(mode="both", mode_asked="foreground", strength=self.strength("both"))
        return p

    def repaint_mask(self, example: Example, p: dict[str, Any], mask: Image.Image | None = None) -> np.ndarray:
        """Where the image is regenerated (bool, source size)."""
        if p["mode"] == "both":
            return np.ones(example.image.size[::-1], bool)
        subject = to_bool(mask if mask is not None else self.subject(example)[0])
        grown = dilate(subject, p["dilation"], p["dilation_kind"])
        return grown if p["mode"] == "foreground" else ~grown

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        regions = [self.repaint_mask(ex, p) for ex, p in zip(batch, params)]
        masks = [Image.fromarray(r.astype(np.uint8) * 255, "L") for r in regions]
        images: list[Image.Image | None] = [None] * len(batch)
        for strength in sorted({p["strength"] for p in params}):  # one pipeline call per strength (per mode)
            idx = [i for i, p in enumerate(params) if p["strength"] == strength]
            made = self.sd.inpaint([batch[i].image for i in idx], [masks[i] for i in idx],
                                   [params[i]["prompt"] for i in idx], [params[i]["seed"] for i in idx],
                                   strength=strength, guidance_scale=c.guidance_scale, steps=c.steps,
                                   negative_prompt=c.negative_prompt)
            for i, im in zip(idx, made):
                images[i] = im
        out = []
        for ex, p, im, region in zip(batch, params, images, regions):
            if c.composite:  # a flagged (black) repaint stays refused, though the kept pixels are not blank
                im = refuse(Image.fromarray(np.where(region[..., None], np.asarray(im.convert("RGB")),
                                                     np.asarray(ex.image.convert("RGB")))), refusal(im))
            out.append(Synthetic(image=im, label=ex.label, source_id=ex.id,
                                 params=self.recorded(p, repainted_fraction=round(float(region.mean()), 6))))
        return out
