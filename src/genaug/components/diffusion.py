"""Stable Diffusion (diffusers) image-to-image, batched and deterministic per image.

Default model: Stable Diffusion 1.5 (`stable-diffusion-v1-5/stable-diffusion-v1-5`, pinned revision).
Any diffusers checkpoint that `AutoPipelineForImage2Image` understands works (SD 1.x / 2.x, SDXL), from
the hub or a local directory. fp16 on a GPU, fp32 on the CPU.

Determinism: every image has its own `torch.Generator`; the pipeline is always called with exactly
`micro_batch` images (the last call padded with copies), because kernels choose algorithms by batch size
and their float results differ in the last bits — so an image never depends on its batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..config import ConfigError
from ..devices import model_dtype, resolve_device
from .hub import absent_components, load_pretrained, local_override

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
              "dpm++": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler"}


def default_revision(model: str, revision: str | None) -> str | None:
    return revision or (SD15_REVISION if model == SD15_MODEL else None)


class Img2Img:
    def __init__(self, model: str = SD15_MODEL, revision: str | None = None, scheduler: str | None = None,
                 device=None, micro_batch: int = 4, resolution: int | None = None):
        import diffusers
        from diffusers import AutoPipelineForImage2Image

        self.device = resolve_device(device)
        dtype = model_dtype(self.device)
        model = local_override("sd15", model)
        self.id, self.revision = model, default_revision(model, revision)
        self.pipe = load_pretrained(AutoPipelineForImage2Image, model, self.revision, role="img2img",
                                    dtype=dtype, **absent_components(model)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        if scheduler:
            if scheduler not in SCHEDULERS:
                raise ConfigError(f"unknown scheduler {scheduler!r}; choose from {sorted(SCHEDULERS)}")
            cls = getattr(diffusers, SCHEDULERS[scheduler])
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)
        vae_scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.pipe.unet.config.sample_size * vae_scale
        self.micro_batch = micro_batch

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str], seeds: Sequence[int], strength: float,
                 guidance_scale: float, steps: int, negative_prompt: str = "",
                 prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None) -> list[Image.Image]:
        """One output per input image, each at its source size. Images are resized to the model's native
        square resolution first (small images are upscaled, as SGID recommends) and back afterwards."""
        if int(steps * strength) < 1:
            raise ConfigError(f"steps x strength must be at least 1 (got {steps} x {strength})")
        n, m = len(images), self.micro_batch
        out: list[Image.Image] = []
        for i in range(0, n, m):
            idx = list(range(i, min(i + m, n)))
            idx += [idx[0]] * (m - len(idx))  # pad to the fixed shape; the copies are dropped
            kw = {}
            if prompt_embeds is not None:
                kw = {"prompt_embeds": prompt_embeds[idx], "negative_prompt_embeds": negative_prompt_embeds[idx]}
            else:
                kw = {"prompt": [prompts[j] for j in idx], "negative_prompt": [negative_prompt] * m}
            result = self.pipe(
                image=[images[j].convert("RGB").resize((self.resolution, self.resolution), Image.BICUBIC)
                       for j in idx],
                strength=strength, guidance_scale=guidance_scale, num_inference_steps=steps,
                generator=[torch.Generator("cpu").manual_seed(int(seeds[j])) for j in idx], output_type="pil", **kw)
            out += result.images[: min(m, n - i)]
        return [o.resize(src.size, Image.BICUBIC) for o, src in zip(out, images)]
