"""Stable Diffusion (diffusers): image-to-image, text-to-image and inpainting, for SD 1.x / 2.x and SDXL,
batched and deterministic per image.

Defaults: Stable Diffusion 1.5 and SDXL base 1.0 at pinned revisions (`SD15_MODEL`, `SDXL_MODEL`), SD 1.5
inpainting for `task="inpaint"`. Any checkpoint the diffusers `AutoPipelineFor*` classes understand works,
from the hub or a local directory; the three tasks share one set of modules (`from_pipe`). fp16 on a GPU,
fp32 on the CPU, unless `dtype` says otherwise.

Determinism: every image has its own `torch.Generator`; prompts are encoded one at a time (and cached), and
the pipeline is always called with exactly `micro_batch` images (the last call padded with copies), because
kernels choose algorithms by batch size and their float results differ in the last bits — so an image never
depends on the batch it was made in.

Safety checker: off by default, as in DA-Fusion and DIAGen — the hub SD 1.x checkpoints ship one whose false
positives come back as black images. `safety_checker=True` keeps the checkpoint's own; an image it flags is
returned marked with `core.records.refuse` (`refusal(image)` gives the reason; it survives `resize`), and the engine lists it
in `rejected.jsonl` instead of writing it.

Speed and memory options (all off by default; off, they change no byte): few-step schedulers (`lcm`, `tcd`) and a
LoRA fused into the UNet / text encoder (`lora`: LCM-LoRA, TCD-LoRA, ...); DeepCache's reuse of the UNet's deep
features between steps (the authors' `DeepCache` package); the VAE's slicing and tiling. A micro-batch that does not
fit in memory is a `ConfigError` naming the options to lower, not a crash.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image

from pydantic import Field

from ..core.config import ConfigError, config_dataclass
from ..core.devices import model_dtype, resolve_device
from ..core.log import dropping
from ..core.records import refuse
from .hub import ModelNotAvailable, absent_components, load_pretrained, local_override, resolve

SD15_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_REVISION = "451f4fe16113bff5a5d2269ed5ad43b0592e9a14"
SD15_INPAINT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
SDXL_REVISION = "462165984030d82259a11f4367a4eed129e94a7b"
# default hub id -> (pinned revision, folder name under --models DIR)
KNOWN = {SD15_MODEL: (SD15_REVISION, "sd15"), SDXL_MODEL: (SDXL_REVISION, "sdxl"),
         SD15_INPAINT_MODEL: (None, "sd15-inpaint")}
SCHEDULERS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "euler_a": "EulerAncestralDiscreteScheduler",
              "dpm++": "DPMSolverMultistepScheduler", "pndm": "PNDMScheduler", "lms": "LMSDiscreteScheduler",
              "lcm": "LCMScheduler", "tcd": "TCDScheduler"}
TASKS = ("img2img", "text2img", "inpaint")
Embeds = dict[str, torch.Tensor]  # one prompt's conditioning: the pipeline's *_embeds keyword arguments
FLAGGED = ("the Stable Diffusion safety checker flagged it (diffusers blacks such images out); its false "
           "positives are common on harmless images: set safety_checker=false to keep them, as DA-Fusion and "
           "DIAGen do, or inspect this source")


def _safety_checker_entry(model: str, revision: str | None) -> list | None:
    """The checkpoint's `model_index.json` entry for `safety_checker` (None: the pipeline has no such slot, as
    SDXL; `[None, None]`: saved without one). Reads only the index, from the cache, a directory or the hub."""
    import diffusers

    source, extra, _ = resolve(model, revision)
    try:
        index = diffusers.DiffusionPipeline.load_config(source, **extra)
    except (OSError, ValueError):
        return None  # loading the pipeline itself will say what is wrong
    return index.get("safety_checker")


def models_dir_name(model: str) -> str:
    """The `--models DIR/<name>` folder standing in for a hub id: the known defaults' own, else by family."""
    if model in KNOWN:
        return KNOWN[model][1]
    name = model.lower()
    return "sd15-inpaint" if "inpaint" in name else "sdxl" if "xl" in name else "sd15"


def default_revision(model: str, revision: str | None) -> str | None:
    return revision or KNOWN.get(model, (None, None))[0]


def text_encoders(pipe) -> dict[str, tuple[Any, Any]]:
    """`{name: (tokenizer, text_encoder)}` of a pipeline: `text_encoder` and, for SDXL, `text_encoder_2`."""
    out = {}
    for tok_name, te_name in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tok, te = getattr(pipe, tok_name, None), getattr(pipe, te_name, None)
        if tok is not None and te is not None:
            out[te_name] = (tok, te)
    return out


@contextlib.contextmanager
def token_rows(pipe, rows: dict[str, dict[str, torch.Tensor]] | None):
    """Within this block the embedding rows of the given tokens are replaced: `rows` is
    `{token: {text_encoder_name: vector}}` (DIAGen's noisy class embeddings); restored afterwards."""
    saved = []
    try:
        with torch.no_grad():
            for token, per_encoder in (rows or {}).items():
                for name, vector in per_encoder.items():
                    tok, te = text_encoders(pipe)[name]
                    token_id = tok.convert_tokens_to_ids(token)
                    weight = te.get_input_embeddings().weight
                    saved.append((weight, token_id, weight[token_id].clone()))
                    weight[token_id] = vector.to(weight.device, weight.dtype)
        yield
    finally:
        with torch.no_grad():
            for weight, token_id, old in reversed(saved):
                weight[token_id] = old


# diffusers' SDXL img2img / inpaint move the VAE to float32 with `.to(dtype=...)` on every call, and diffusers
# then warns about its own cast (with an empty module list), dozens of times per run: dropped during our calls.
_FP32_NOTE = ("diffusers.models.modeling_utils", "should be kept in float32: []")
# The safety checker's own warning: genaug lists each flagged image in rejected.jsonl and the run summary.
_NSFW_NOTE = ("diffusers.pipelines.stable_diffusion.safety_checker", "Potential NSFW content was detected")


def _out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or the CPU allocator failing (a RuntimeError, no class of its own)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "DefaultCPUAllocator" in text)


def _files_digest(path: Path) -> str:
    """`sha:<hash>` of a LoRA file, or of every safetensors file in a LoRA folder: a local folder has no revision."""
    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() if f != path else b"")
        h.update(f.read_bytes())
    return f"sha:{h.hexdigest()}"


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class Diffusion:
    """One loaded checkpoint; `img2img`, `text2img` and `inpaint` each return one image per input."""

    def __init__(self, model: str = SD15_MODEL, revision: str | None = None, scheduler: str | None = None,
                 device=None, micro_batch: int = 4, resolution: int | None = None, task: str = "img2img",
                 compile: bool = False, safety_checker: bool = False, lora: str | None = None,
                 lora_revision: str | None = None, lora_scale: float = 1.0, eta: float | None = None,
                 deepcache_interval: int = 1, deepcache_branch: int = 0, vae_slicing: bool = False,
                 vae_tiling: bool = False, dtype: str | None = None, channels_last: bool = False):
        import diffusers

        if not lora and (lora_revision or lora_scale != 1.0):
            raise ConfigError("lora_revision and lora_scale apply to a LoRA: set lora=<hub id or folder> too")
        if deepcache_interval == 1 and deepcache_branch:
            raise ConfigError("deepcache_branch applies to DeepCache: set deepcache_interval >= 2 too")

        self.device = resolve_device(device)
        self.dtype = self._dtype(dtype)
        model = local_override(models_dir_name(model), model)
        self.id, self.revision = model, default_revision(model, revision)
        auto = {"img2img": diffusers.AutoPipelineForImage2Image, "text2img": diffusers.AutoPipelineForText2Image,
                "inpaint": diffusers.AutoPipelineForInpainting}
        if task not in auto:
            raise ConfigError(f"unknown diffusion task {task!r}; choose from {TASKS}")
        self._auto = auto
        absent = absent_components(model)
        entry = _safety_checker_entry(model, self.revision)
        has_checker = isinstance(entry, list) and entry[0] is not None
        if "safety_checker" in absent or (entry is not None and not (safety_checker and has_checker)):
            # off (or saved without one): not loaded at all, diffusers' documented way; its "you have disabled
            # the safety checker" notice is for its own users, and ours chose this explicitly
            absent |= {"safety_checker": None, "requires_safety_checker": False}
        self.pipes = {task: load_pretrained(auto[task], model, self.revision, role=task, dtype=self.dtype,
                                            **absent).to(self.device)}
        self.pipe = self.pipes[task]
        if safety_checker and getattr(self.pipe, "safety_checker", None) is None:
            raise ConfigError(f"safety_checker=true, but {model} has no safety checker (SDXL and SD 3 pipelines "
                              "ship none; a saved SD 1.x/2.x pipeline may leave it out): leave safety_checker off")
        self.safety_checker = safety_checker
        self.pipe.set_progress_bar_config(disable=True)
        if scheduler:
            if scheduler not in SCHEDULERS:
                raise ConfigError(f"unknown scheduler {scheduler!r}; choose from {sorted(SCHEDULERS)}")
            cls = getattr(diffusers, SCHEDULERS[scheduler])
            self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config)
        if eta is not None and "eta" not in inspect.signature(self.pipe.scheduler.step).parameters:
            raise ConfigError(f"eta={eta}: the {type(self.pipe.scheduler).__name__} takes no eta (DDIM and TCD do)")
        self.eta = eta
        self.lora = self._load_lora(lora, lora_revision, lora_scale) if lora else None
        if vae_slicing:  # decode the micro-batch one image at a time
            self.pipe.vae.enable_slicing()
        if vae_tiling:  # encode / decode images larger than the VAE's native size in overlapping tiles
            self.pipe.vae.enable_tiling()
        self.vae_slicing, self.vae_tiling = vae_slicing, vae_tiling
        self._deepcache = self._deepcache_helper(deepcache_interval, deepcache_branch) if deepcache_interval > 1 else None
        if channels_last:  # NHWC convolutions: faster on most GPUs (diffusers' speed guide); changes the last bits
            self.pipe.unet.to(memory_format=torch.channels_last)
        self.channels_last = channels_last
        if compile:  # shared by every task's pipeline (from_pipe reuses the module)
            self.pipe.unet = torch.compile(self.pipe.unet)
        self.is_xl = getattr(self.pipe, "text_encoder_2", None) is not None
        vae_scale = 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.pipe.unet.config.sample_size * vae_scale
        self.micro_batch = micro_batch
        self._embeds: dict[tuple[str, str], Embeds] = {}

    def _dtype(self, name: str | None) -> torch.dtype:
        """The weights' and activations' dtype: `name`, or fp16 on a GPU and fp32 on the CPU."""
        if name is None:
            return model_dtype(self.device)
        if name not in DTYPES:
            raise ConfigError(f"unknown dtype {name!r}; choose from {sorted(DTYPES)}")
        if name == "float16" and self.device.type == "cpu":
            raise ConfigError("dtype=float16 on the CPU: several of its kernels are missing or slow there; use "
                              "bfloat16 (fast on CPUs with AMX) or float32")
        return DTYPES[name]

    def _load_lora(self, lora: str, revision: str | None, scale: float) -> dict[str, str]:
        """Load a LoRA (hub id, folder or .safetensors file) with diffusers and fuse it into the weights at `scale`:
        fused, a few-step LoRA costs nothing per step, and every task's pipeline (from_pipe) shares it."""
        path = Path(lora).expanduser()
        try:
            source, extra, where = (str(path), {}, f"file {path}") if path.is_file() else resolve(lora, revision)
        except ModelNotAvailable as e:
            raise ConfigError(f"lora: {e}") from None
        if not hasattr(self.pipe, "load_lora_weights"):
            raise ConfigError(f"lora: the {type(self.pipe).__name__} of {self.id} takes no LoRA")
        try:
            import peft  # noqa: F401 - diffusers loads LoRAs through peft
        except ImportError:
            raise ConfigError("lora needs the peft package: pip install 'genaug[speed]'") from None
        try:
            self.pipe.load_lora_weights(source, adapter_name="genaug", use_safetensors=True, **extra)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"lora {lora!r} could not be loaded into {self.id} from {where} "
                              f"(a diffusers / kohya LoRA in safetensors is expected): {first}") from None
        if not self.pipe.get_list_adapters():
            raise ConfigError(f"lora {lora!r} has no weights for any module of {self.id} (a LoRA for another "
                              "model family?)")
        self.pipe.fuse_lora(lora_scale=scale, adapter_names=["genaug"])
        self.pipe.unload_lora_weights()  # the fused weights stay; the adapter layers go
        local = Path(source)
        if path.exists():
            rev = _files_digest(path)
        elif "snapshots" in local.parts:  # found in the HF cache: the folder is named by its commit
            rev = local.name
        else:
            rev = revision or "main"
        return {"id": str(path.resolve()) if path.exists() else lora, "revision": rev}

    def _deepcache_helper(self, interval: int, branch: int):
        """DeepCache (Ma et al., CVPR 2024) through its authors' package: the UNet's deep features are computed
        every `interval` steps and reused in between; only the shallow branch `branch` runs every step."""
        try:
            from DeepCache import DeepCacheSDHelper
        except ImportError:
            raise ConfigError("deepcache_interval needs the DeepCache package: pip install 'genaug[speed]'") from None
        helper = DeepCacheSDHelper(pipe=self.pipe)
        helper.set_params(cache_interval=interval, cache_branch_id=branch)
        return helper  # enabled around each pipeline call only (`_run`)

    def models(self, role: str = "diffusion") -> dict[str, dict[str, str]]:
        """This checkpoint's provenance record, and its LoRA's (`<role>_lora`) when one is fused in."""
        out = {role: {"id": self.id, "revision": self.revision or "local"}}
        if self.lora:
            out[f"{role}_lora"] = dict(self.lora)
        return out

    def pipeline(self, task: str):
        """The pipeline for `task`, sharing the loaded modules (built once)."""
        if task not in self.pipes:
            if task not in self._auto:
                raise ConfigError(f"unknown diffusion task {task!r}; choose from {TASKS}")
            if self.pipe.unet.config.in_channels != 4:
                raise ConfigError(f"{self.id} is an inpainting checkpoint (its UNet takes the mask): it can only "
                                  f"inpaint; use a base model for {task}")
            self.pipes[task] = self._auto[task].from_pipe(self.pipe)
            self.pipes[task].set_progress_bar_config(disable=True)
        return self.pipes[task]

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str = "",
               rows: dict[str, dict[str, torch.Tensor]] | None = None) -> Embeds:
        """The conditioning of one prompt, encoded alone; cached unless embedding `rows` are overridden."""
        key = (prompt, negative_prompt)
        if rows is None and key in self._embeds:
            return self._embeds[key]
        with token_rows(self.pipe, rows):
            out = self.pipe.encode_prompt(prompt=prompt, device=self.device, num_images_per_prompt=1,
                                          do_classifier_free_guidance=True,
                                          # None when empty: SDXL base then guides against zeros
                                          # (force_zeros_for_empty_prompt), as its own pipeline does
                                          negative_prompt=negative_prompt or None)
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        embeds = {k: v for k, v in zip(names, out) if v is not None}
        if rows is None:
            self._embeds[key] = embeds
        return embeds

    def _run(self, task: str, n: int, seeds: Sequence[int], embeds: Sequence[Embeds],
             per_image: Callable[[int], dict[str, Any]], **common) -> list[Image.Image]:
        """Fixed-size micro-batches over n outputs; `per_image(i)` gives row i's image arguments."""
        pipe, m = self.pipeline(task), self.micro_batch
        out: list[Image.Image] = []
        for start in range(0, n, m):
            idx = list(range(start, min(start + m, n)))
            idx += [idx[0]] * (m - len(idx))  # pad to the fixed shape; the copies are dropped
            kw = {k: torch.cat([embeds[j][k] for j in idx]) for k in embeds[idx[0]]}
            rows = [per_image(j) for j in idx]
            for k in rows[0]:
                kw[k] = [r[k] for r in rows]
            if self.eta is not None:
                kw["eta"] = self.eta
            # DeepCache wraps the UNet for this call only: the call starts with an empty cache (an image never
            # reuses another's features), and outside pipeline calls the UNet is plain (textual inversion trains
            # through it with timesteps of its own)
            if self._deepcache is not None:
                self._deepcache.pipe = pipe
                self._deepcache.enable()
            try:
                with dropping(*_FP32_NOTE), dropping(*_NSFW_NOTE):
                    result = pipe(generator=[torch.Generator("cpu").manual_seed(int(seeds[j])) for j in idx],
                                  output_type="pil", **kw, **common)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _out_of_memory(e):
                    raise
                raise self._memory_error(task, e) from None
            finally:
                if self._deepcache is not None:
                    self._deepcache.disable()
            keep = min(m, n - start)
            flagged = getattr(result, "nsfw_content_detected", None) or [False] * keep  # None: no checker ran
            out += [refuse(im, FLAGGED if flag else None) for im, flag in zip(result.images[:keep], flagged)]
        return out

    def _memory_error(self, task: str, error: BaseException) -> ConfigError:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        tiling = "vae_tiling is on" if self.vae_tiling else "set vae_tiling=true (and vae_slicing=true)"
        return ConfigError(f"{task}: a micro-batch of {self.micro_batch} images at {self.resolution}x{self.resolution} "
                           f"px does not fit in {self.device} memory ({first}). Lower micro_batch (now "
                           f"{self.micro_batch}) or resolution (now {self.resolution}), or {tiling}")

    def _conditioning(self, prompts: Sequence[str] | None, embeds: Sequence[Embeds] | None, n: int,
                      negative_prompt: str) -> list[Embeds]:
        if embeds is None:
            if prompts is None or len(prompts) != n:
                raise ValueError("give one prompt (or one embeds dict) per image")
            return [self.encode(p, negative_prompt) for p in prompts]
        if len(embeds) != n:
            raise ValueError("give one embeds dict per image")
        return list(embeds)

    def _square(self, image: Image.Image, mode: str = "RGB") -> Image.Image:
        resample = Image.NEAREST if mode == "L" else Image.BICUBIC
        return image.convert(mode).resize((self.resolution, self.resolution), resample)

    @staticmethod
    def _check(steps: int, strength: float) -> None:
        if int(steps * strength) < 1:
            raise ConfigError(f"steps x strength must be at least 1 (got {steps} x {strength})")

    def img2img(self, images: Sequence[Image.Image], prompts: Sequence[str] | None, seeds: Sequence[int],
                strength: float, guidance_scale: float, steps: int, negative_prompt: str = "",
                embeds: Sequence[Embeds] | None = None) -> list[Image.Image]:
        """SDEdit from each image at `strength`. Images are resized to the model's native square resolution
        first (small images are upscaled, as SGID recommends) and back to their own size afterwards."""
        self._check(steps, strength)
        cond = self._conditioning(prompts, embeds, len(images), negative_prompt)
        out = self._run("img2img", len(images), seeds, cond, lambda j: {"image": self._square(images[j])},
                        strength=strength, guidance_scale=guidance_scale, num_inference_steps=steps)
        return [o.resize(src.size, Image.BICUBIC) for o, src in zip(out, images)]

    def text2img(self, prompts: Sequence[str] | None, seeds: Sequence[int], guidance_scale: float, steps: int,
                 size: tuple[int, int] | None = None, negative_prompt: str = "",
                 embeds: Sequence[Embeds] | None = None) -> list[Image.Image]:
        """One image per prompt at the model's resolution, resized to `size` (width, height) when given."""
        n = len(embeds) if embeds is not None else len(prompts or [])
        cond = self._conditioning(prompts, embeds, n, negative_prompt)
        out = self._run("text2img", n, seeds, cond, lambda j: {}, guidance_scale=guidance_scale,
                        num_inference_steps=steps, height=self.resolution, width=self.resolution)
        return [o.resize(size, Image.BICUBIC) if size else o for o in out]

    def inpaint(self, images: Sequence[Image.Image], masks: Sequence[Image.Image], prompts: Sequence[str] | None,
                seeds: Sequence[int], strength: float, guidance_scale: float, steps: int, negative_prompt: str = "",
                embeds: Sequence[Embeds] | None = None) -> list[Image.Image]:
        """Repaint the white part of each mask ("L", same size as its image); returned at the image's size."""
        self._check(steps, strength)
        cond = self._conditioning(prompts, embeds, len(images), negative_prompt)
        out = self._run("inpaint", len(images), seeds, cond,
                        lambda j: {"image": self._square(images[j]), "mask_image": self._square(masks[j], "L")},
                        strength=strength, guidance_scale=guidance_scale, num_inference_steps=steps,
                        height=self.resolution, width=self.resolution)
        return [o.resize(src.size, Image.BICUBIC) for o, src in zip(out, images)]


@config_dataclass
class PipelineOptions:
    """How a method runs its diffusion pipeline (a base of the methods' Configs)."""

    scheduler: str | None = None  # ddim, euler, euler_a, dpm++, pndm, lms, lcm, tcd; None: the checkpoint's own
    resolution: int | None = None  # working size; None: the model's native size
    micro_batch: int = Field(4, ge=1)  # images per pipeline call (fixed: outputs never depend on the batch)
    compile: bool = False  # torch.compile the UNet (GPU: faster after a warm-up; may change the last bits)
    device: str | None = None
    # The checkpoint's NSFW safety checker (SD 1.x/2.x hub checkpoints ship one). Off: the papers' setting
    # (DA-Fusion, DIAGen), not even loaded. On: kept, and the images it flags are rejected, never written.
    safety_checker: bool = False
    # Few-step generation: a LoRA (hub id, folder or .safetensors file) fused into the weights at lora_scale, e.g.
    # scheduler=lcm lora=latent-consistency/lcm-lora-sdv1-5 steps=4 guidance_scale=1. None: no LoRA.
    lora: str | None = None
    lora_revision: str | None = None  # hub revision of the LoRA (recorded: the resolved commit, or sha: of a folder)
    lora_scale: float = 1.0
    eta: float | None = None  # DDIM's eta / TCD's gamma; None: the pipelines' 0 (TCD's paper uses 0.3)
    # DeepCache: the UNet's deep features are recomputed every deepcache_interval steps (1: off, every step is
    # whole; the DeepCache paper's SD 1.5 setting: 3) and reused in between; deepcache_branch: the shallow branch
    # that always runs (0: the shallowest, the paper's setting).
    deepcache_interval: int = Field(1, ge=1)
    deepcache_branch: int = Field(0, ge=0)
    vae_slicing: bool = False  # VAE decodes a micro-batch one image at a time: less peak memory
    vae_tiling: bool = False  # VAE works in overlapping tiles beyond its native size (large images; changes pixels)
    dtype: Literal["float16", "bfloat16", "float32"] | None = None  # None: float16 on a GPU, float32 on the CPU
    channels_last: bool = False  # the UNet in channels-last memory layout (GPU speed; may move the last bits)

    def diffusion(self, model: str, revision: str | None, task: str = "img2img", **overrides) -> Diffusion:
        kw = dict(scheduler=self.scheduler, device=self.device, micro_batch=self.micro_batch,
                  resolution=self.resolution, task=task, compile=self.compile,
                  safety_checker=self.safety_checker, lora=self.lora, lora_revision=self.lora_revision,
                  lora_scale=self.lora_scale, eta=self.eta, deepcache_interval=self.deepcache_interval,
                  deepcache_branch=self.deepcache_branch, vae_slicing=self.vae_slicing,
                  vae_tiling=self.vae_tiling, dtype=self.dtype, channels_last=self.channels_last) | overrides
        return Diffusion(model, revision, **kw)
