"""Semantic data augmentation with a flow-matching generator (Shivashankar & Miller, section 3).

Modes, each drawn per output image:
- `latent` (3.1): z = invert(x) (ODE from t = 1 back to 0), z' = z + delta * N(0, I), x' = generate(z').
- `sdedit` (3.2, eq. 10 on the flow path): x_t0 = (1 - (1 - sigma_min) t0) eps + t0 x, then the ODE from
  t0 to 1. Here t0 is how much of the image is kept: 0 = pure noise, 1 = the image itself.
- `compose` (3.4): k augmentations D_0 .. D_{k-1}; D_i inverts the image to t = i/k, adds noise scaled
  like the path's own noise there, delta * (1 - (1 - sigma_min) t) * N(0, I), and integrates back to 1.
  One D_i per output, drawn with probabilities `p` (uniform by default). D_0 is `latent`; larger i make
  lower-level changes.
The generator is a `genaug fit-flow` model directory (`model=DIR`).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from PIL import Image

from ..config import ConfigError, config_dataclass
from ..registry import register_method
from ..types import Example, Synthetic
from .base import Method


@register_method("semantic_flow")
class SemanticFlow(Method):
    description = "Flow-matching inversion + latent perturbation / SDEdit / composition (Shivashankar & Miller)"
    version = "1"

    @config_dataclass
    class Config:
        model: str = ""  # a genaug fit-flow model directory
        mode: Literal["latent", "sdedit", "compose"] = "latent"
        delta: tuple[float, float] = (0.3, 0.6)  # latent / compose: perturbation scale, uniform in this range
        renormalize: bool = False  # latent: (z + delta eps) / sqrt(1 + delta^2), keeping z' on the N(0, I) prior
        t0: tuple[float, ...] = (0.3, 0.4, 0.5)  # sdedit: insertion times, one drawn per image
        k: int = Field(4, ge=1)  # compose: number of augmentations D_i at t = i/k
        p: tuple[float, ...] | None = None  # compose: probability of each D_i (uniform when unset)
        steps: int = Field(20, ge=1)  # ODE steps over the whole [0, 1] interval
        solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
        guidance: float = Field(1.0, ge=0)  # classifier-free guidance when generating (1 = none)
        device: str = "auto"

    def __init__(self, config, components=None):
        super().__init__(config, components)
        c = self.config
        if not c.model:
            raise ConfigError("semantic_flow needs model=DIR: a generator trained with `genaug fit-flow`")
        if c.delta[0] > c.delta[1] or c.delta[0] < 0:
            raise ConfigError(f"semantic_flow: delta must be a range [low, high] with 0 <= low <= high, got {c.delta}")
        if not c.t0 or not all(0 <= t < 1 for t in c.t0):
            raise ConfigError(f"semantic_flow: t0 values must be in [0, 1), got {c.t0}")
        if c.p is not None and (len(c.p) != c.k or abs(sum(c.p) - 1) > 1e-6 or min(c.p) < 0):
            raise ConfigError(f"semantic_flow: p must hold k={c.k} probabilities summing to 1, got {c.p}")
        from ..flow.model import FlowModel

        device = ("cuda" if torch.cuda.is_available() else "cpu") if c.device == "auto" else c.device
        self.flow = FlowModel.from_pretrained(c.model, device=device)
        self.device = torch.device(device)
        self.index = {name: i for i, name in enumerate(self.flow.spec.classes)}

    def models(self) -> dict[str, dict[str, str]]:
        weights = Path(self.config.model) / "unet" / "diffusion_pytorch_model.safetensors"
        digest = hashlib.blake2b(weights.read_bytes(), digest_size=8).hexdigest() if weights.is_file() else "unknown"
        return {"flow": {"id": str(Path(self.config.model).resolve()), "revision": f"sha:{digest}"}}

    def prepare(self, source) -> None:
        unknown = sorted({r.label for r in source.records() if r.label and r.label not in self.index})
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

    # ---- pixels <-> model space ------------------------------------------------------------------
    def _to_model(self, image: Image.Image) -> torch.Tensor:
        spec = self.flow.spec
        im = image.convert("L" if spec.channels == 1 else "RGB").resize((spec.image_size, spec.image_size),
                                                                        Image.BILINEAR)
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32).copy())
        arr = arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)
        return arr / 127.5 - 1

    @staticmethod
    def _to_image(x: torch.Tensor, size: tuple[int, int]) -> Image.Image:
        arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        im = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)).convert("RGB")
        return im if im.size == size else im.resize(size, Image.BILINEAR)

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c, flow, s = self.config, self.flow, self.flow.spec.sigma_min
        x = torch.stack([self._to_model(ex.image) for ex in batch]).to(self.device)
        y = torch.tensor([self.index[ex.label] for ex in batch], device=self.device)
        eps = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(p["seed"]))
                           for p in params]).to(self.device)
        out = torch.empty_like(x)
        # One ODE solve per distinct start time; every image keeps its own noise, so grouping changes nothing.
        for t in sorted({p["t"] for p in params}):
            sel = torch.tensor([p["t"] == t for p in params], device=self.device)
            n_steps = max(1, round(c.steps * (1 - t)))
            xs, ys, es = x[sel], y[sel], eps[sel]
            if params[int(sel.nonzero()[0])]["mode"] == "sdedit":
                start = flow.noise_at(xs, es, t)
            else:
                deltas = torch.tensor([p["delta"] for p, m in zip(params, sel.tolist()) if m],
                                      device=self.device).view(-1, 1, 1, 1)
                z = flow.invert(xs, ys, steps=n_steps, solver=c.solver, t_to=t)
                start = z + deltas * (1 - (1 - s) * t) * es
                if c.mode == "latent" and c.renormalize:
                    start = start / torch.sqrt(1 + deltas ** 2)
            out[sel] = flow.generate(start, ys, steps=n_steps, solver=c.solver, t_from=t, guidance=c.guidance)
        return [Synthetic(image=self._to_image(o, ex.image.size), label=ex.label, source_id=ex.id,
                          params=self.recorded(p)) for o, ex, p in zip(out, batch, params)]
