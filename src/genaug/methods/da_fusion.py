"""DA-Fusion (Trabucco et al., "Effective Data Augmentation With Diffusion Models", ICLR 2024): a
textual-inversion token per class learned from that class's images, then Stable Diffusion img2img from
each real image with "a photo of a <token>", the insertion strength drawn per image from a set."""
from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from ..components.diffusion import SD15_MODEL, PipelineOptions
from ..components.textual_inversion import TextualInversionOptions
from ..core.config import ConfigError, config_dataclass, values_option
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method


@register_method("da_fusion")
class DAFusion(Method):
    version = "3"  # 2: prompts encoded one at a time (batch-independent); 3: DA-Fusion's TI recipe ("the", lr 2e-3)
    description = "DA-Fusion (Trabucco et al. 2024): textual-inversion class tokens + SD img2img at random strength"
    paper = "Trabucco et al., Effective Data Augmentation With Diffusion Models (ICLR 2024, arXiv 2302.07944)"
    default_batch_size = 8
    default_n = 10  # the paper's M

    @config_dataclass
    class Config(PipelineOptions, TextualInversionOptions):
        model: str = SD15_MODEL
        revision: str | None = None
        prompt: str = "a photo of a {token}"
        strengths: values_option(gt=0, le=1) = (0.25, 0.5, 0.75, 1.0)  # DA-Fusion's randomised insertion t0
        guidance_scale: float = Field(7.5, ge=0)
        steps: int = Field(50, ge=4)

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if "{token}" not in c.prompt:
            raise ConfigError("da_fusion: prompt must contain {token}")
        short = [s for s in c.strengths if int(c.steps * s) < 1]
        if short:  # now, not after the classes' tokens have trained
            raise ConfigError(f"{self.name}: steps x strength must be at least 1 (got {c.steps} x {short[0]}): "
                              "more steps, or larger strengths")
        self.sd = c.diffusion(c.model, c.revision)
        self.tokens: dict[str, str] = {}

    def models(self) -> dict[str, dict[str, str]]:
        return self.sd.models()

    def prepare(self, source) -> None:
        """Learn (or load from the cache) one token per class from that class's images."""
        self.tokens = self.config.class_tokens(self.sd, source)

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        c = self.config
        if example.label not in self.tokens:
            raise ConfigError(f"da_fusion: no token for class {example.label!r}; prepare(source) learns them")
        strength = float(c.strengths[rng.integers(len(c.strengths))])
        return {"prompt": c.prompt.format(token=self.tokens[example.label]), "token": self.tokens[example.label],
                "strength": strength, "guidance_scale": c.guidance_scale, "steps": c.steps}

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c = self.config
        images: list = [None] * len(batch)
        for s in sorted({p["strength"] for p in params}):  # one pipeline call per strength
            rows = [i for i, p in enumerate(params) if p["strength"] == s]
            outs = self.sd.img2img([batch[i].image for i in rows], [params[i]["prompt"] for i in rows],
                           [params[i]["seed"] for i in rows], strength=s, guidance_scale=c.guidance_scale,
                           steps=c.steps)
            for i, im in zip(rows, outs):
                images[i] = im
        return [Synthetic(image=im, label=ex.label, source_id=ex.id, params=self.recorded(p))
                for im, ex, p in zip(images, batch, params)]
