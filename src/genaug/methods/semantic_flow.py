"""Semantic data augmentation with a flow-matching generator (Shivashankar & Miller, section 3).

Modes, each drawn per output image:
- `latent` (3.1): z = invert(x) (ODE from t = 1 back to 0), z' = z + delta * N(0, I), x' = generate(z').
- `sdedit` (3.2, eq. 10 on the flow path): x_t0 = (1 - (1 - sigma_min) t0) eps + t0 x, then the ODE from
  t0 to 1. Here t0 is how much of the image is kept: 0 = pure noise, 1 = the image itself.
- `compose` (3.4): k augmentations D_0 .. D_{k-1}; D_i inverts the image to t = i/k, adds noise scaled
  like the path's own noise there, delta * (1 - (1 - sigma_min) t) * N(0, I), and integrates back to 1.
  One D_i per output, drawn with probabilities `p` (uniform by default). D_0 is `latent`; larger i make
  lower-level changes.
The generator (`model=`) is a `genaug fit-flow` directory, or a pretrained text-conditioned rectified-flow
pipeline from diffusers (SD3 family; a hub id or a local directory), which then works in its VAE latent
space with the prompt `prompt` made from the label (see `genaug.flow.pipeline`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ..core.config import ConfigError, config_dataclass, range_option, values_option
from ..core.devices import resolve_device
from ..flow.model import take
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method


@register_method("semantic_flow")
class SemanticFlow(Method):
    description = "Flow-matching inversion + latent perturbation / SDEdit / composition (Shivashankar & Miller)"
    paper = "Shivashankar & Miller, Semantic Data Augmentation with Generative Models (section 3)"
    version = "1"
    default_batch_size = 128  # images are grouped by start time, then run in fixed micro-batches: keep groups full

    @config_dataclass
    class Config:
        model: str = ""  # a genaug fit-flow directory, or a diffusers rectified-flow pipeline (hub id or directory)
        revision: str | None = None  # pipeline: the hub revision to pin
        prompt: str = "a photo of a {label}"  # pipeline: the text condition
        negative_prompt: str = ""  # pipeline: for classifier-free guidance
        resolution: int | None = None  # pipeline: working size (default: the pipeline's native size)
        mode: Literal["latent", "sdedit", "compose"] = "latent"
        delta: range_option(ge=0) = (0.3, 0.6)  # latent / compose: perturbation scale, uniform in this range
        renormalize: bool = False  # latent: (z + delta eps) / sqrt(1 + delta^2), keeping z' on the N(0, I) prior
        t0: values_option(ge=0, lt=1) = (0.3, 0.4, 0.5)  # sdedit: insertion times, one drawn per image
        k: int = Field(4, ge=1)  # compose: number of augmentations D_i at t = i/k
        p: values_option(ge=0, le=1) | None = None  # compose: probability of each D_i (uniform when unset)
        steps: int = Field(20, ge=1)  # ODE steps over the whole [0, 1] interval (a part of it gets its share)
        solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
        guidance: float = Field(1.0, ge=0)  # classifier-free guidance when generating (1 = none)
        device: str = "auto"

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if not c.model:  # with --models DIR: its fit-flow model (DIR/flow), else its SD3 pipeline (DIR/sd3)
            from ..components.hub import component_dir

            local = component_dir("flow") or component_dir("sd3")
            c.model = str(local) if local else ""
        if not c.model:
            raise ConfigError("semantic_flow needs model=DIR: a generator trained with `genaug fit-flow` "
                              "(or --models DIR holding flow/ or sd3/)")
        if c.p is not None and (len(c.p) != c.k or abs(sum(c.p) - 1) > 1e-6):
            raise ConfigError(f"semantic_flow: p must hold k={c.k} probabilities summing to 1, got {c.p}")
        from ..flow.model import FLOW_CONFIG, FlowModel

        self.device = device = resolve_device(c.device)
        self.is_pipeline = not (Path(c.model) / FLOW_CONFIG).is_file()
        if self.is_pipeline and not (Path(c.model).is_dir() and (Path(c.model) / "model_index.json").is_file()) \
                and Path(c.model).exists():
            raise ConfigError(f"{c.model} is not a genaug flow model (no {FLOW_CONFIG}) nor a diffusers pipeline "
                              "(no model_index.json); train one with genaug fit-flow")
        if self.is_pipeline:
            from ..flow.pipeline import PipelineFlow

            self.flow = PipelineFlow(c.model, c.revision, c.prompt, c.negative_prompt, c.resolution, device)
        else:
            self.flow = FlowModel.from_pretrained(c.model, device=device)

    def models(self) -> dict[str, dict[str, str]]:
        if self.is_pipeline:
            return {"pipeline": {"id": self.config.model, "revision": self.config.revision or
                                 ("local" if Path(self.config.model).is_dir() else "main")}}
        weights = Path(self.config.model) / "unet" / "diffusion_pytorch_model.safetensors"
        digest = hashlib.blake2b(weights.read_bytes(), digest_size=8).hexdigest() if weights.is_file() else "unknown"
        return {"flow": {"id": str(Path(self.config.model).resolve()), "revision": f"sha:{digest}"}}

    def prepare(self, source) -> None:
        unknown = self.flow.unknown_labels({r.label for r in source.records() if r.label})
        if unknown:
            raise ConfigError(f"semantic_flow: the model {self.config.model} knows no class {unknown[:5]}; "
                              f"it was trained on {self.flow.spec.classes[:10]}")

    def sample_params(self, example: Example, rng: np.random.Generator) -> dict[str, Any]:
        c = self.config
        if c.mode == "sdedit":
            return {"mode": "sdedit", "t": float(c.t0[rng.integers(len(c.t0))])}
        delta = round(float(rng.uniform(*c.delta)), 6)
        if c.mode == "latent":
            return {"mode": "latent", "t": 0.0, "delta": delta}
        i = int(rng.choice(c.k, p=c.p))
        return {"mode": "compose", "aug_index": i, "t": i / c.k, "delta": delta}

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c, flow = self.config, self.flow
        x = flow.encode_images([ex.image for ex in batch])
        cond = flow.condition([ex.label for ex in batch])
        eps = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(p["seed"]))
                           for p in params]).to(x.device, x.dtype)
        out = torch.empty_like(x)
        # One ODE solve per distinct start time; every image keeps its own noise, so grouping changes nothing.
        for t in sorted({p["t"] for p in params}):
            rows = torch.tensor([p["t"] == t for p in params], device=x.device)
            xs, cs, es = x[rows], take(cond, rows), eps[rows]
            if c.mode == "sdedit":
                start = flow.noise_at(xs, es, t)
            else:
                deltas = torch.tensor([p["delta"] for p, r in zip(params, rows.tolist()) if r],
                                      device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
                start = flow.invert(xs, cs, steps=c.steps, solver=c.solver,
                                    t_to=t) + deltas * (1 - (1 - flow.sigma_min) * t) * es
                if c.mode == "latent" and c.renormalize:
                    start = start / torch.sqrt(1 + deltas ** 2)
            out[rows] = flow.generate(start, cs, steps=c.steps,
                                      solver=c.solver, t_from=t, guidance=c.guidance)
        images = flow.decode_images(out, [ex.image.size for ex in batch])
        return [Synthetic(image=im, label=ex.label, source_id=ex.id, params=self.recorded(p))
                for im, ex, p in zip(images, batch, params)]
