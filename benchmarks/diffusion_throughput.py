"""Diffusion generation budget, measured side by side in one process: genaug's engine vs a plain
per-image diffusers loop (one pipeline call per image, the way the public DA-Fusion / DIAGen scripts
generate), same model, same steps, same number and size of outputs; plus the share of wall time spent
outside model forward passes, the rerun cost, and the Ray executor with 2 workers vs 1.

Prints figures; asserts only that the arms made the same number of images.

    .venv/bin/python benchmarks/diffusion_throughput.py [--images 64] [--steps 20] [--model DIR] [--ray]

Without --model it uses genaug's tiny random SD 1.x (64 px; CPU-sized). On a GPU machine pass a real
checkpoint folder (or hub id), e.g. --model stable-diffusion-v1-5/stable-diffusion-v1-5 --size 512.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


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
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
