"""Real Guidance (He et al., "Is synthetic data from generative models ready for image recognition?",
ICLR 2023), as DA-Fusion re-implements it with Stable Diffusion: SDEdit / img2img from the real image with
the prompt "a photo of a {label}"."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from ..components.diffusion import SD15_MODEL, PipelineOptions
from ..core.config import ConfigError, config_dataclass
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method


@register_method("real_guidance")
class RealGuidance(Method):
    version = "2"  # 2: prompts encoded one at a time (batch-independent)
    description = "Real Guidance (He et al. 2023): Stable Diffusion img2img from the real image, 'a photo of a {label}'"
    paper = ("He et al., Is synthetic data from generative models ready for image recognition? "
             "(ICLR 2023, arXiv 2210.07574)")
    default_batch_size = 8

    @config_dataclass
    class Config(PipelineOptions):
        model: str = SD15_MODEL  # hub id or local directory of a diffusers checkpoint
        revision: str | None = None  # None: the pinned revision of the default model
        prompt: str = "a photo of a {label}"
        negative_prompt: str = ""
        strength: float = Field(0.5, gt=0, le=1)  # DA-Fusion's Real Guidance setting
        guidance_scale: float = Field(7.5, ge=0)
        steps: int = Field(50, ge=1)

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if int(c.steps * c.strength) < 1:
            raise ConfigError(f"real_guidance: steps x strength must be at least 1 (got {c.steps} x {c.strength})")
        self.sd = c.diffusion(c.model, c.revision)

    def models(self) -> dict[str, dict[str, str]]:
        return self.sd.models()

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        return {"prompt": c.prompt.replace("{label}", example.label), "negative_prompt": c.negative_prompt,
                "strength": c.strength, "guidance_scale": c.guidance_scale, "steps": c.steps}

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        images = self.sd.img2img([ex.image for ex in batch], [p["prompt"] for p in params],
                                 [p["seed"] for p in params], strength=c.strength, guidance_scale=c.guidance_scale,
                                 steps=c.steps, negative_prompt=c.negative_prompt)
        return [Synthetic(image=im, label=ex.label, source_id=ex.id, params=self.recorded(p))
                for im, ex, p in zip(images, batch, params)]
