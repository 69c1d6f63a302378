"""Semantic data augmentation with a flow-matching generator (Shivashankar & Miller, section 3).

Modes, each drawn per output image:
- `latent` (3.1): z = invert(x) (ODE from t = 1 back to 0), z' = z + delta * N(0, I), x' = generate(z').
- `sdedit` (3.2, eq. 10 on the flow path): x_t0 = (1 - (1 - sigma_min) t0) eps + t0 x, then the ODE from
  t0 to 1. Here t0 is how much of the image is kept: 0 = pure noise, 1 = the image itself.
- `compose` (3.4): k augmentations D_1 .. D_k, as the paper numbers them; D_i inverts the image to
  t = i/k, adds the perturbation of 3.1 there, delta * N(0, I) (`compose_noise=path` scales it like the
  path's own noise, delta * (1 - (1 - sigma_min) t)), and integrates back to 1. One D_i per output, drawn
  with probabilities `p` (uniform by default). Lower i make higher-level changes; D_k (t = 1) perturbs the
  image itself.
- `region` (3.3, object-centric): with a subject mask (the dataset's, else GroundingDINO -> SAM) dilated by
  `dilation` px, only the `foreground` (the dilated subject) or the `background` (the rest) is regenerated
  along the ODE; after every step the other latents are put back on the source's own path (the straight
  line from its unperturbed state at the start time to the source itself), so they end as the source, and
  `composite` pastes the kept pixels back exactly. `all` (default) changes the whole image.
The generator (`model=`) is a `genaug fit-flow` directory, or a pretrained text-conditioned rectified-flow
pipeline from diffusers (SD3 family; a hub id or a local directory), which then works in its VAE latent
space with the prompt `prompt` made from the label (see `genaug.flow.pipeline`).
Textual inversion on a pipeline (the paper's tokens for novel classes, 3.2): with `textual_inversion=true`, one
token per class is learned on the pipeline itself, through its own training objective — SD3 is trained with the
rectified-flow (flow-matching) loss, and only the token's embedding rows learn against it (diffusers' SD3 recipe,
`genaug.components.textual_inversion.learn_flow_token`); every text encoder (CLIP-L, CLIP-G, T5 when present) has
the token and sees it where the prompt has `{label}`. Off by default: the paper's standard-classification runs (4.1)
prompt with the class; its tokens are for novel classes in few-shot learning (3.2, 4.2).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from ..components.segment import MaskOptions, dilate, to_bool
from ..components.textual_inversion import FLOW_RECIPE, TextualInversionOptions, class_images, learned_flow_tokens
from ..core.config import ConfigError, config_dataclass, range_option, values_option
from ..data.images import Rejected
from ..core.devices import Precision, autocast_dtype, precision_name, resolve_device
from ..flow.model import take
from .registry import register_method
from ..core.records import Example, Synthetic
from .base import Method


@register_method("semantic_flow")
class SemanticFlow(Method):
    description = "Flow-matching inversion + latent perturbation / SDEdit / composition (Shivashankar & Miller)"
    paper = "Shivashankar & Miller, Semantic Data Augmentation with Generative Models (section 3)"
    version = "3"  # 2: composition draws the paper's D_1 .. D_k (t = i/k), noise delta N(0, I); 3: tokens learned on
    # the pipeline itself (flow-matching loss), T5 sees them too (was: learned on an SDXL `tokens_from`, T5 the label)
    default_batch_size = 128  # images are grouped by start time, then run in fixed micro-batches: keep groups full

    @config_dataclass
    class Config(MaskOptions, TextualInversionOptions):
        model: str = ""  # a genaug fit-flow directory, or a diffusers rectified-flow pipeline (hub id or directory)
        revision: str | None = None  # pipeline: the hub revision to pin
        prompt: str = "a photo of a {label}"  # pipeline: the text condition
        negative_prompt: str = ""  # pipeline: for classifier-free guidance
        resolution: int | None = None  # pipeline: working size (default: the pipeline's native size)
        textual_inversion: bool = False  # pipeline: learn one token per class on it (paper 3.2, novel classes; ti_*)
        mode: Literal["latent", "sdedit", "compose"] = "latent"
        delta: range_option(ge=0) = (0.3, 0.6)  # latent / compose: perturbation scale, uniform in this range
        renormalize: bool = False  # latent: (z + delta eps) / sqrt(1 + delta^2), keeping z' on the N(0, I) prior
        t0: values_option(ge=0, lt=1) = (0.3, 0.4, 0.5)  # sdedit: insertion times, one drawn per image
        k: int = Field(4, ge=1)  # compose: number of augmentations D_1 .. D_k, D_i at t = i/k (paper 3.4)
        p: values_option(ge=0, le=1) | None = None  # compose: probability of D_1 .. D_k (uniform when unset)
        compose_noise: Literal["constant", "path"] = "constant"  # compose: delta N(0,I) (paper), or scaled like x_t's noise
        steps: int = Field(20, ge=1)  # ODE steps over the whole [0, 1] interval (a part of it gets its share)
        solver: Literal["euler", "midpoint", "rk4", "dopri5"] = "euler"
        guidance: float = Field(1.0, ge=0)  # classifier-free guidance when generating (1 = none)
        invert_guided: bool = False  # invert with `guidance` too (at delta 0 the source comes back); else unguided
        region: Literal["all", "foreground", "background"] = "all"  # 3.3: what is regenerated along the ODE
        dilation: int = Field(16, ge=0)  # region: px the subject mask grows by (the paper's 16), source resolution
        dilation_kind: Literal["radius", "window"] = "radius"
        composite: bool = True  # region: paste the kept pixels back from the source (exactly the source there)
        device: str = "auto"
        # a genaug flow model's UNet in bfloat16 autocast ("auto": where it is fast, a GPU or a CPU with AMX); the
        # ODE stays float32. Another precision gives other pixels (by rounding). A pipeline keeps its own dtype
        precision: Precision = "float32"

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
        if self.is_pipeline and c.solver != "euler":  # said before the pipeline's gigabytes load
            raise ConfigError(f"semantic_flow: solver={c.solver} needs a genaug flow model; with a diffusers "
                              f"pipeline ({c.model}) it integrates on the scheduler's grid: solver=euler")
        if self.is_pipeline and c.precision == "bfloat16":  # "auto": the pipeline's own dtype, as float32
            raise ConfigError(f"semantic_flow: precision={c.precision} is for genaug flow models; a diffusers pipeline "
                              f"({c.model}) runs in its own dtype (float16 on a GPU, float32 on the CPU)")
        if self.is_pipeline:
            from ..flow.pipeline import PipelineFlow

            self.flow = PipelineFlow(c.model, c.revision, c.prompt, c.negative_prompt, c.resolution, device)
        else:
            self.flow = FlowModel.from_pretrained(c.model, device=device)
            self.flow.autocast = autocast_dtype(c.precision, device)
            # what the images are computed in, recorded (config.yaml) and compared on resume: "auto" is resolved on
            # this machine, so a folder is never continued in another precision
            c.precision = precision_name(self.flow.autocast)
        if c.textual_inversion and not self.is_pipeline:
            raise ConfigError("semantic_flow: textual_inversion needs a pipeline model (SD3 family); a fit-flow model "
                              "is conditioned on its own class embedding, learned on your classes")
        self.tokens: dict[str, str] = {}
        self.masker = c.masker(device) if c.region != "all" else None  # its models load on first use only
        if c.mode == "compose" and c.compose_noise == "path" and self.flow.sigma_min == 0 and (c.p is None or c.p[-1] > 0):
            raise ConfigError("semantic_flow: compose_noise=path adds no noise at t = k/k = 1 (sigma_min = 0), so D_k "
                              "would return the source unchanged; give D_k probability 0 (p=[..., 0]) or use "
                              "compose_noise=constant")

    def models(self) -> dict[str, dict[str, str]]:
        if self.is_pipeline:
            return ({"pipeline": {"id": self.config.model, "revision": _revision(self.config.model, self.config.revision)}}
                    | self._masker_models())
        weights = Path(self.config.model) / "unet" / "diffusion_pytorch_model.safetensors"
        digest = hashlib.blake2b(weights.read_bytes(), digest_size=8).hexdigest() if weights.is_file() else "unknown"
        out = {"flow": {"id": str(Path(self.config.model).resolve()), "revision": f"sha:{digest}"}}
        return out | self._masker_models()

    def _masker_models(self) -> dict[str, dict[str, str]]:
        return self.masker.describe() if self.masker is not None and self.config.masks == "auto" else {}

    def prepare(self, source) -> None:
        unknown = self.flow.unknown_labels({r.label for r in source.records() if r.label})
        if unknown:
            raise ConfigError(f"semantic_flow: the model {self.config.model} knows no class {unknown[:5]}; "
                              f"it was trained on {self.flow.spec.classes[:10]}")
        if self.config.textual_inversion:
            self._learn_tokens(source)

    def _learn_tokens(self, source) -> None:
        """One token per class, learned on the pipeline itself with its flow-matching loss (or taken from the
        cache), then added to its text encoders."""
        c = self.config
        flow = self.flow
        tokens, vectors = learned_flow_tokens(
            flow.pipe, c.model, _revision(c.model, c.revision), class_images(source),
            {"steps": c.ti_steps, "lr": c.ti_lr, "batch_size": c.ti_batch_size, "weight_decay": c.ti_weight_decay,
             "init": c.ti_init, "vectors": c.ti_vectors, "resolution": flow.resolution})
        flow.add_tokens(tokens, vectors)
        self.tokens = tokens

    def sample_params(self, example: Example, rng: np.random.Generator, variant: int = 0) -> dict[str, Any]:
        return {**self._draw(rng), **self._region_params(example), **self._token_params(example)}

    def _token_params(self, example: Example) -> dict[str, Any]:
        c = self.config
        if not c.textual_inversion:
            return {}
        if example.label not in self.tokens:
            raise ConfigError(f"semantic_flow: no token for class {example.label!r}; prepare(source) learns them")
        # token_source: learned on this pipeline (models.pipeline) with this recipe
        return {"prompt": self.flow.prompt_for(example.label), "token": self.tokens[example.label],
                "token_source": FLOW_RECIPE}

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        c = self.config
        if c.mode == "sdedit":
            return {"mode": "sdedit", "t": float(c.t0[rng.integers(len(c.t0))])}
        delta = round(float(rng.uniform(*c.delta)), 6)
        if c.mode == "latent":
            return {"mode": "latent", "t": 0.0, "delta": delta}
        i = 1 + int(rng.choice(c.k, p=c.p))  # the paper's D_1 .. D_k: D_i adds its noise at t = i/k
        return {"mode": "compose", "aug_index": i, "t": i / c.k, "delta": delta}

    def _region_params(self, example: Example) -> dict[str, Any]:
        c = self.config
        if c.region == "all":
            return {}
        mask, info = c.subject(self.masker, example)
        if mask is None:
            if c.on_missing == "reject":
                raise Rejected(f"semantic_flow: no subject: {info.get('reason', 'the mask is empty')}")
            return {"region": "all", "mask_source": "whole_image"}
        p = {**{k: v for k, v in info.items() if k != "reason"}, "region": c.region, "dilation": c.dilation,
             "dilation_kind": c.dilation_kind}
        if not self._region(example, p).any():
            raise Rejected(f"semantic_flow: nothing to regenerate in region {c.region}: the subject dilated by "
                           f"{c.dilation} px covers the whole image (lower dilation or use another region)")
        return p

    def _region(self, example: Example, p: dict[str, Any]) -> np.ndarray:
        """Where the image is regenerated (bool, at the source's size)."""
        if p.get("region", "all") == "all":
            return np.ones(example.image.size[::-1], bool)
        grown = dilate(to_bool(self.config.subject(self.masker, example)[0]), p["dilation"], p["dilation_kind"])
        return grown if p["region"] == "foreground" else ~grown

    def __call__(self, batch: list[Example], params: list[dict[str, Any]]) -> list[Synthetic]:
        c, flow = self.config, self.flow
        x = flow.encode_images([ex.image for ex in batch])
        cond = flow.condition([ex.label for ex in batch])
        eps = torch.stack([torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(p["seed"]))
                           for p in params]).to(x.device, x.dtype)
        out = torch.empty_like(x)
        masked = c.region != "all"  # a config choice, never a per-batch one: a row's path must not depend on its batch
        if masked:
            regions = [self._region(ex, p) for ex, p in zip(batch, params)]
            # in the model's space (pixels or latents; the image is stretched to it), every cell that holds any
            # regenerated pixel is regenerated, so the whole region is new
            region = torch.cat([(torch.nn.functional.interpolate(torch.from_numpy(m.astype(np.float32))[None, None],
                                                                 size=x.shape[-2:], mode="area") > 0).float()
                                for m in regions]).to(x.device, x.dtype)
        # One ODE solve per distinct start time; every image keeps its own noise, so grouping changes nothing.
        for t in sorted({p["t"] for p in params}):
            rows = torch.tensor([p["t"] == t for p in params], device=x.device)
            xs, cs, es = x[rows], take(cond, rows), eps[rows]
            if c.mode == "sdedit":
                start = base = flow.noise_at(xs, es, t)
            else:
                deltas = torch.tensor([p["delta"] for p, r in zip(params, rows.tolist()) if r],
                                      device=x.device, dtype=x.dtype).view(-1, *[1] * (x.dim() - 1))
                scale = 1 - (1 - flow.sigma_min) * t if c.compose_noise == "path" else 1.0  # latent: t = 0, both 1
                base = flow.invert(xs, cs, steps=c.steps, solver=c.solver, t_to=t,
                                   guidance=c.guidance if c.invert_guided else 1.0)
                start = base + deltas * scale * es
                if c.mode == "latent" and c.renormalize:
                    start = start / torch.sqrt(1 + deltas ** 2)
            if masked:
                out[rows] = flow.generate_inside(start, cs, region[rows], base, xs, t_from=t, steps=c.steps,
                                                 solver=c.solver, guidance=c.guidance)
            else:
                out[rows] = flow.generate(start, cs, steps=c.steps, solver=c.solver, t_from=t, guidance=c.guidance)
        images = flow.decode_images(out, [ex.image.size for ex in batch])
        if not masked:
            return [Synthetic(image=im, label=ex.label, source_id=ex.id, params=self.recorded(p))
                    for im, ex, p in zip(images, batch, params)]
        results = []
        for im, ex, p, m in zip(images, batch, params, regions):
            if c.composite:
                im = Image.fromarray(np.where(m[..., None], np.asarray(im.convert("RGB")),
                                              np.asarray(ex.image.convert("RGB"))))
            results.append(Synthetic(image=im, label=ex.label, source_id=ex.id,
                                     params=self.recorded(p, regenerated_fraction=round(float(m.mean()), 6))))
        return results


def _revision(model: str, revision: str | None) -> str:
    return revision or ("local" if Path(model).is_dir() else "main")
