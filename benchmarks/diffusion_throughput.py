"""Diffusion generation budget, measured side by side in one process: genaug's engine vs a plain
per-image diffusers loop (one pipeline call per image, the way the public DA-Fusion / DIAGen scripts
generate), same model, same steps, same number and size of outputs; plus the share of wall time spent
outside model forward passes, the rerun cost, and the Ray executor with 2 workers vs 1.

Prints figures; asserts only that the arms made the same number of images.

    .venv/bin/python benchmarks/diffusion_throughput.py [--images 64] [--steps 20] [--model DIR] [--ray]

Without --model it uses genaug's tiny random SD 1.x (64 px; CPU-sized). On a GPU machine pass a real
checkpoint folder (or hub id), e.g. --model stable-diffusion-v1-5/stable-diffusion-v1-5 --size 512.

Full size, no download (`--arch sd15` at 512 px, `--arch sdxl` at 1024 px): the UNet, VAE and text encoder(s)
are built from the public architecture configs of stable-diffusion-v1-5 and stable-diffusion-xl-base-1.0
(written out below) with random weights — throughput does not depend on the weights — saved with
`save_pretrained` and loaded through genaug's own `Diffusion(folder, None, ...)`. genaug's batched img2img
(`Diffusion.img2img`, what real_guidance calls; da_fusion-style mixed strengths: one call per strength, as
the da_fusion method does) against a per-image diffusers loop on the *same* loaded modules (same dtype,
attention processor, memory format, compiled UNet), same steps, strengths, seeds and number of outputs:

    .venv/bin/python benchmarks/diffusion_throughput.py --arch sd15 --quick            # CPU: float32, batch 1-2
    .venv/bin/python benchmarks/diffusion_throughput.py --arch sd15 --max-batch 32     # GPU: the whole sweep
    .venv/bin/python benchmarks/diffusion_throughput.py --arch sdxl --max-batch 8

The tokenizers are genaug's offline CLIP BPE (`genaug.testing.tiny.make_clip_tokenizer`, padded to 77
tokens like the real one: the text encoders see the same sequence length, so the same compute).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genaug.components.diffusion import DTYPES


class ForwardTimer:
    """Wall time inside outermost nn.Module forward calls (global hooks; nested calls counted once)."""

    def __init__(self):
        self.depth, self.start, self.total = 0, 0.0, 0.0

    def pre(self, module, args):
        if self.depth == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()
        self.depth += 1

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.total += time.perf_counter() - self.start

    def __enter__(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        self.handles = [register_module_forward_pre_hook(self.pre), register_module_forward_hook(self.post)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def make_source(root: Path, n: int, size: int) -> Path:
    from genaug.data.builtin import export_images, fashion_mnist_available, load_builtin

    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    images, labels, classes = load_builtin(dataset)
    big = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images[:n]]
    return export_images(np.stack(big), labels[:n], classes, range(n), root), dataset


def plain_loop(model: str, manifest: Path, out: Path, steps: int, strength: float, guidance: float, size: int) -> float:
    """One StableDiffusionImg2ImgPipeline call per image, loaded once (as DA-Fusion / DIAGen do)."""
    import csv

    from diffusers import StableDiffusionImg2ImgPipeline

    from genaug.core.devices import model_dtype, resolve_device

    device = resolve_device(None)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False,
                                                          dtype=model_dtype(device)).to(device)
    pipe.set_progress_bar_config(disable=True)
    rows = list(csv.DictReader(open(manifest)))
    out.mkdir(parents=True)
    t = time.perf_counter()
    for i, r in enumerate(rows):
        src = Image.open(manifest.parent / r["path"]).convert("RGB")
        im = pipe(prompt=f"a photo of a {r['label']}", image=src.resize((size, size)), strength=strength,
                  num_inference_steps=steps, guidance_scale=guidance,
                  generator=torch.Generator("cpu").manual_seed(i)).images[0]
        im.resize(src.size).save(out / f"{i}.png")
    return time.perf_counter() - t


# --- full size, no download ------------------------------------------------------------------------------
# The public architecture configs (config.json of each component), random weights. SD 1.5:
# stable-diffusion-v1-5/stable-diffusion-v1-5 (unet, vae, text_encoder = CLIP ViT-L/14 text tower, PNDM);
# SDXL: stabilityai/stable-diffusion-xl-base-1.0 (unet, vae, text_encoder = CLIP-L, text_encoder_2 = OpenCLIP
# bigG with projection, Euler).
_DOWN_SD15 = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_UP_SD15 = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_VAE = {"act_fn": "silu", "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
        "layers_per_block": 2, "norm_num_groups": 32}
_CLIP_L = {"hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
           "num_hidden_layers": 12, "projection_dim": 768, "vocab_size": 49408, "max_position_embeddings": 77,
           "layer_norm_eps": 1e-05, "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0,
           "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
ARCHS = {
    "sd15": {
        "resolution": 512,
        "unet": {"act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
                 "center_input_sample": False, "cross_attention_dim": 768, "down_block_types": _DOWN_SD15,
                 "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
                 "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
                 "out_channels": 4, "sample_size": 64, "up_block_types": _UP_SD15},
        "vae": {**_VAE, "sample_size": 512},  # scaling_factor: the default 0.18215
        "text_encoder": _CLIP_L,
        "scheduler": ("PNDMScheduler", {**_BETAS, "set_alpha_to_one": False, "skip_prk_steps": True,
                                        "steps_offset": 1, "clip_sample": False}),
    },
    "sdxl": {
        "resolution": 1024,
        "unet": {"act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
                 "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
                 "block_out_channels": [320, 640, 1280], "center_input_sample": False, "cross_attention_dim": 2048,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
                 "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
                 "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
                 "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
                 "resnet_time_scale_shift": "default", "sample_size": 128, "time_embedding_type": "positional",
                 "transformer_layers_per_block": [1, 2, 10],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 "use_linear_projection": True},
        "vae": {**_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
        "text_encoder": _CLIP_L,
        "text_encoder_2": {**_CLIP_L, "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
                           "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280},
        "scheduler": ("EulerDiscreteScheduler", {**_BETAS, "interpolation_type": "linear",
                                                 "prediction_type": "epsilon", "steps_offset": 1,
                                                 "timestep_spacing": "leading", "use_karras_sigmas": False}),
    },
}
STRENGTHS_DA_FUSION = (0.25, 0.5, 0.75, 1.0)


def build_full_size(arch: str, folder: Path) -> Path:
    """Random-weight pipeline of the public `arch` architecture, saved (fp16 safetensors: half the disk) to
    `folder`; reused when already there."""
    if (folder / "model_index.json").is_file():
        return folder
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from genaug.testing.tiny import make_clip_tokenizer

    spec = ARCHS[arch]
    t = time.perf_counter()
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(spec["unet"]).eval()
    vae = diffusers.AutoencoderKL.from_config(spec["vae"]).eval()
    te = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])).eval()
    cls_name, sched_cfg = spec["scheduler"]
    scheduler = getattr(diffusers, cls_name).from_config(sched_cfg)
    tok = make_clip_tokenizer(model_max_length=77)
    if arch == "sdxl":
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**spec["text_encoder_2"])).eval()
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok,
                                                   tokenizer_2=tok, unet=unet, scheduler=scheduler,
                                                   force_zeros_for_empty_prompt=True)
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                                 scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                 image_encoder=None, requires_safety_checker=False)
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in pipe.components.items()
              if isinstance(m, torch.nn.Module)}
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    print(f"built {arch} from its public configs with random weights in {time.perf_counter() - t:.0f} s: "
          + ", ".join(f"{n} {v:.0f} M" for n, v in params.items()) + f" parameters; saved to {folder}")
    return folder


class ModelTimer:
    """Wall time inside the pipeline's top-level model calls (UNet, text encoders, VAE encoder / decoder and
    their quant convs), nested calls counted once; the UNet's calls and time also on their own. Hooks on those
    few modules only (a global hook would fire on every submodule and cost time itself)."""

    def __init__(self, pipe):
        self.depth, self.start, self.total, self.unet_s, self.unet_calls = 0, 0.0, 0.0, 0.0, 0
        vae = pipe.vae
        self.modules = [pipe.unet, vae.encoder, vae.decoder] + [
            m for m in (getattr(vae, "quant_conv", None), getattr(vae, "post_quant_conv", None),
                        getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)) if m is not None]
        self.unet = pipe.unet

    @staticmethod
    def _sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def pre(self, module, args, kwargs=None):
        if self.depth == 0:
            self._sync()
            self.start = time.perf_counter()
        self.depth += 1

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            self._sync()
            dt = time.perf_counter() - self.start
            self.total += dt
            if module is self.unet:
                self.unet_s += dt
                self.unet_calls += 1

    def __enter__(self):
        self.handles = [h for m in self.modules for h in (m.register_forward_pre_hook(self.pre),
                                                          m.register_forward_hook(self.post))]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with contextlib.suppress(OSError):  # Linux: resets VmHWM, the peak resident set size
            Path("/proc/self/clear_refs").write_text("5")


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def configure(d, dtype: str, attention: str, channels_last: bool) -> None:
    """Apply one sweep point to a loaded genaug `Diffusion` (its modules are shared by both arms)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    pipe = d.pipe
    if pipe.unet.dtype != DTYPES[dtype]:
        pipe.to(dtype=DTYPES[dtype])
    processor = AttnProcessor2_0 if attention == "sdpa" else AttnProcessor
    pipe.unet.set_attn_processor(processor())
    pipe.vae.set_attn_processor(processor())
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)


def _timed(pipe, fn) -> dict:
    reset_peak()
    with ModelTimer(pipe) as mt:
        t = time.perf_counter()
        images = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    return {"images": images, "s": wall, "img_s": len(images) / wall, "unet_it_s": mt.unet_calls / max(mt.unet_s, 1e-9),
            "unet_calls": mt.unet_calls, "outside": 1 - mt.total / wall, "peak_mb": peak_mb()}


def genaug_arm(d, sources, prompts, seeds, strengths, args):
    """genaug's batched img2img: one `Diffusion.img2img` call per distinct strength (as real_guidance with one
    strength, and da_fusion with its drawn strengths, call it), outputs back in source order."""
    out = [None] * len(sources)
    for s in sorted(set(strengths)):
        rows = [i for i, x in enumerate(strengths) if x == s]
        ims = d.img2img([sources[i] for i in rows], [prompts[i] for i in rows], [seeds[i] for i in rows],
                        strength=s, guidance_scale=args.guidance, steps=args.steps)
        for i, im in zip(rows, ims):
            out[i] = im
    return out


def loop_arm(loop, sources, prompts, seeds, strengths, args, resolution):
    """The per-image loop: one pipeline call per image (as DA-Fusion / DIAGen generate), the prompt encoded
    by the pipeline on every call, images resized to the model's square size and back as genaug does."""
    out = []
    for src, prompt, seed, s in zip(sources, prompts, seeds, strengths):
        im = loop(prompt=prompt, image=src.resize((resolution, resolution), Image.BICUBIC), strength=s,
                  num_inference_steps=args.steps, guidance_scale=args.guidance,
                  generator=torch.Generator("cpu").manual_seed(seed)).images[0]
        out.append(im.resize(src.size, Image.BICUBIC))
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def max_diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def sweep_points(args) -> list[tuple[str, str, bool, bool]]:
    """(dtype, attention, channels_last, compile): the baseline, then one option changed at a time (or the
    full grid with --grid), then all the speed options together."""
    dtypes, attns, cls, comps = args.dtypes, args.attention, args.channels_last, args.compile
    if args.grid:
        return [(dt, a, c, k) for dt in dtypes for a in attns for c in cls for k in comps]
    base = (dtypes[0], attns[0], cls[0], comps[0])
    points = [base]
    for i, values in enumerate((dtypes, attns, cls, comps)):
        for v in values[1:]:
            p = list(base)
            p[i] = v
            points.append(tuple(p))
    best = (dtypes[0], "sdpa" if "sdpa" in attns else attns[0], max(cls), max(comps))
    if best not in points:
        points.append(best)
    return points


def full_size_main(args) -> None:
    import warnings

    import diffusers

    from genaug.components.diffusion import Diffusion

    warnings.filterwarnings("ignore", message="invalid value encountered in cast")  # random weights: NaN pixels
    diffusers.utils.logging.set_verbosity_error()
    on_gpu = torch.cuda.is_available()
    if args.quick:
        args.dtypes = args.dtypes or ["float32"]
        args.images = args.images or 2
        args.max_batch = args.max_batch or 2
    args.dtypes = args.dtypes or (["float16", "bfloat16"] if on_gpu else ["float32", "bfloat16"])
    args.images = args.images or 32
    args.max_batch = args.max_batch or 16
    bad = [d for d in args.dtypes if d == "float16" and not on_gpu]
    if bad:
        raise SystemExit("float16 on the CPU is not a throughput setting (slow or unsupported kernels): use float32 / "
                         "bfloat16")
    batches = [b for b in (2**i for i in range(12)) if b <= args.max_batch]
    spec = ARCHS[args.arch]
    resolution = args.size if args.size != 64 else spec["resolution"]
    methods = args.methods
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.model_cache) if args.model_cache else Path(tmp)
        folder = build_full_size(args.arch, root / f"{args.arch}-random")
        src_dir = Path(tmp) / "src"
        manifest, dataset = make_source(src_dir, args.images, 32)
        import csv

        rows = list(csv.DictReader(open(manifest)))
        sources = [Image.open(manifest.parent / r["path"]).convert("RGB") for r in rows]
        prompts = [f"a photo of a {r['label']}" for r in rows]
        seeds = list(range(len(rows)))
        rng = np.random.default_rng(0)
        strengths_of = {"real_guidance": [args.strength] * len(rows),
                        "da_fusion": [float(x) for x in rng.choice(STRENGTHS_DA_FUSION, len(rows))]}
        for m in methods:
            low = [s for s in strengths_of[m] if int(args.steps * s) < 1]
            if low:
                raise SystemExit(f"{m}: steps x strength < 1 for strength {low[0]}: raise --steps")
        print(f"{args.arch}: public architecture, random weights, {resolution} px; {args.images} real {dataset} "
              f"images (32 px, upscaled by the pipeline), {args.steps} steps, strength {args.strength} "
              f"(da_fusion: drawn from {STRENGTHS_DA_FUSION}), guidance {args.guidance}; "
              f"device {'cuda: ' + torch.cuda.get_device_name() if on_gpu else 'cpu'}, torch {torch.__version__}, "
              f"diffusers {diffusers.__version__}, {torch.get_num_threads()} threads")
        results = []
        header = (f"{'dtype':<8} {'attn':<7} {'cl':<3} {'comp':<4} {'method':<13} {'batch':>5} | "
                  f"{'loop img/s':>10} {'genaug img/s':>12} {'speed-up':>8} | {'UNet it/s loop/genaug':>21} | "
                  f"{'peak MB loop/genaug':>19} | {'outside fwd loop/genaug':>23} | {'max|d|':>6}")
        print(header)
        for dtype, attention, cl, comp in sweep_points(args):
            t = time.perf_counter()
            d = Diffusion(str(folder), None, micro_batch=1, resolution=resolution, compile=comp)
            configure(d, dtype, attention, cl)
            loop = type(d.pipe).from_pipe(d.pipe)
            loop.set_progress_bar_config(disable=True)
            load_s = time.perf_counter() - t
            warmed: set[int] = set()
            for method in methods:
                strengths = strengths_of[method]
                with torch.inference_mode():
                    if 1 not in warmed:  # first calls allocate (and compile): both arms run warm
                        loop_arm(loop, sources[:1], prompts[:1], seeds[:1], [args.strength], args, resolution)
                        warmed.add(1)
                    base = _timed(d.pipe, lambda: loop_arm(loop, sources, prompts, seeds, strengths, args, resolution))
                for b in batches:
                    d.micro_batch = b
                    try:
                        with torch.inference_mode():
                            if b not in warmed and (on_gpu or not args.quick):  # --quick on a CPU: warm once
                                genaug_arm(d, sources[:1], prompts[:1], seeds[:1], [args.strength], args)
                                warmed.add(b)
                            g = _timed(d.pipe, lambda: genaug_arm(d, sources, prompts, seeds, strengths, args))
                    except torch.OutOfMemoryError:
                        print(f"{dtype:<8} {attention:<7} {'on' if cl else 'off':<3} {'on' if comp else 'off':<4} "
                              f"{method:<13} {b:>5} | out of memory: the sweep stops here")
                        torch.cuda.empty_cache()
                        break
                    row = {"arch": args.arch, "dtype": dtype, "attention": attention, "channels_last": cl,
                           "compile": comp, "method": method, "batch": b, "images": len(sources), "steps": args.steps,
                           "load_s": load_s, "speedup": g["img_s"] / base["img_s"],
                           "max_abs_diff_vs_loop": max_diff(g["images"], base["images"]),
                           **{f"loop_{k}": v for k, v in base.items() if k != "images"},
                           **{f"genaug_{k}": v for k, v in g.items() if k != "images"}}
                    results.append(row)
                    print(f"{dtype:<8} {attention:<7} {'on' if cl else 'off':<3} {'on' if comp else 'off':<4} "
                          f"{method:<13} {b:>5} | {base['img_s']:>10.3f} {g['img_s']:>12.3f} {row['speedup']:>7.2f}x | "
                          f"{base['unet_it_s']:>10.3f}/{g['unet_it_s']:<10.3f} | "
                          f"{base['peak_mb']:>9.0f}/{g['peak_mb']:<9.0f} | "
                          f"{pct(base['outside']):>11}/{pct(g['outside']):<11} | "
                          f"{row['max_abs_diff_vs_loop']:>6}", flush=True)
            d = loop = None  # free this point's model before the next one loads
            gc.collect()
            if on_gpu:
                torch.cuda.empty_cache()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        print(json.dumps({"rows": len(results), "best_speedup": max((r["speedup"] for r in results), default=None)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--size", type=int, default=64, help="model resolution")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--model", default=None)
    ap.add_argument("--ray", action="store_true", help="also time --executor ray with 1 and 2 workers")
    full = ap.add_argument_group("full size (--arch sd15 / sdxl): public architectures, random weights, no download")
    full.add_argument("--arch", choices=["tiny", *ARCHS], default="tiny",
                      help="tiny (default): the tiny-model run above; sd15 (512 px) / sdxl (1024 px): the sweep")
    full.add_argument("--quick", action="store_true", help="CPU-sized: float32, 2 images, batch 1 and 2")
    full.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None,
                      help="genaug's dtype names; default float16 bfloat16 on a GPU, float32 bfloat16 on the CPU; "
                           "the first is the baseline")
    full.add_argument("--attention", nargs="+", choices=["sdpa", "classic"], default=None,
                      help="sdpa: diffusers' default AttnProcessor2_0; classic: AttnProcessor (default both)")
    full.add_argument("--channels-last", nargs="+", type=lambda v: v == "on", default=None,
                      metavar="{off,on}", help="the UNet in channels-last memory format (default both)")
    full.add_argument("--compile", nargs="+", type=lambda v: v == "on", default=None, metavar="{off,on}",
                      help="PipelineOptions.compile (torch.compile the UNet); default off and on on a GPU, off on the CPU")
    full.add_argument("--max-batch", type=int, default=None, help="batch sizes 1, 2, 4, ... up to this (default 16)")
    full.add_argument("--methods", nargs="+", choices=["real_guidance", "da_fusion"], default=None,
                      help="da_fusion: strengths drawn from 0.25/0.5/0.75/1 per image (default both on a GPU)")
    full.add_argument("--grid", action="store_true", help="every combination, not one option at a time")
    full.add_argument("--model-cache", default=None, help="keep the built random-weight model here between runs")
    full.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if args.arch != "tiny":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        on_gpu = torch.cuda.is_available()
        if args.compile is None:
            args.compile = [False, True] if on_gpu and not args.quick else [False]
        args.attention = args.attention or (["sdpa"] if args.quick else ["sdpa", "classic"])
        args.channels_last = args.channels_last or ([False] if args.quick else [False, True])
        if args.methods is None:
            args.methods = ["real_guidance"] if args.quick else ["real_guidance", "da_fusion"]
        if args.images == 64:  # the tiny mode's default: the full-size mode picks its own
            args.images = None
        if args.steps == 20 and args.quick:
            args.steps = 2
        return full_size_main(args)
    from genaug.pipeline import augment

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["GENAUG_CACHE"] = str(tmp / "cache")
        model = args.model
        if model is None:
            from genaug.testing.tiny import write_tiny_models

            model = str(write_tiny_models(tmp / "models", ["sd15"])["sd15"])
        manifest, dataset = make_source(tmp / "src", args.images, 32)
        print(f"{args.images} real {dataset} images (32 px), model {'tiny SD 1.x' if args.model is None else model} "
              f"at {args.size} px, {args.steps} steps x strength {args.strength}, guidance {args.guidance}, "
              f"torch threads {torch.get_num_threads()}, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
        options = {"model": model, "steps": args.steps, "strength": args.strength, "guidance_scale": args.guidance,
                   "resolution": args.size, "micro_batch": args.micro_batch}
        # warm-up: first calls allocate; both arms then run warm
        augment(manifest, tmp / "warm", "real_guidance", n=1, options={**options, "steps": 4}, progress=False)

        loop_s = plain_loop(model, manifest, tmp / "loop", args.steps, args.strength, args.guidance, args.size)
        with ForwardTimer() as ft:
            t = time.perf_counter()
            s = augment(manifest, tmp / "genaug", "real_guidance", n=1, batch_size=args.batch_size, options=options,
                        progress=False)
            genaug_s = time.perf_counter() - t
        assert s.generated == args.images == len(list((tmp / "loop").glob("*.png")))
        t = time.perf_counter()
        again = augment(manifest, tmp / "genaug", "real_guidance", n=1, batch_size=args.batch_size, options=options,
                        progress=False)
        rerun_s = time.perf_counter() - t
        assert again.generated == 0
        result = {
            "plain_loop_img_s": args.images / loop_s, "genaug_img_s": args.images / genaug_s,
            "speedup": loop_s / genaug_s, "outside_forward_share": 1 - ft.total / genaug_s,
            "rerun_share": rerun_s / genaug_s, "plain_loop_s": loop_s, "genaug_s": genaug_s, "rerun_s": rerun_s,
        }
        print(f"{'arm':<34} {'images/s':>9} {'seconds':>8}")
        print(f"{'plain diffusers loop (per image)':<34} {result['plain_loop_img_s']:>9.2f} {loop_s:>8.1f}")
        print(f"{'genaug real_guidance (batched)':<34} {result['genaug_img_s']:>9.2f} {genaug_s:>8.1f}")
        print(f"speed-up {result['speedup']:.2f}x; time outside model forward passes "
              f"{100 * result['outside_forward_share']:.1f} %; rerun of the finished run {rerun_s:.2f} s "
              f"({100 * result['rerun_share']:.1f} % of the run)")
        if args.ray:
            import ray

            os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            for workers in (1, 2):
                t = time.perf_counter()
                r = augment(manifest, tmp / f"ray{workers}", "real_guidance", n=1, batch_size=args.batch_size,
                            options=options, progress=False, executor="ray", workers=workers)
                secs = time.perf_counter() - t
                result[f"ray{workers}_img_s"] = r.generated / secs
                print(f"ray, {workers} worker(s), 1 thread each: {r.generated / secs:.2f} images/s ({secs:.1f} s, "
                      f"actor start-up included)")
            result["ray_2_vs_1"] = result["ray2_img_s"] / result["ray1_img_s"]
            print(f"ray 2 workers vs 1: {result['ray_2_vs_1']:.2f}x")
            ray.shutdown()
        print(json.dumps(result))


if __name__ == "__main__":
    main()
