"""Few-step generation: images/s against a quality cost, each option against genaug's 50-step default.

Every arm makes the same images (same prompts, same seeds, text-to-image through genaug's `Diffusion`, the code
the methods call); the reference is the checkpoint's own scheduler at 50 steps, guidance 7.5. For each arm:
images/s after a warm-up call, the speed-up over the reference, and its quality cost against the reference
images: CMMD (Jayasumana et al. 2024; genaug.scoring.metrics.cmmd on CLIP image embeddings, 0 = same
distribution), the mean CLIP image-image cosine with the same-seed reference image, and CLIPScore (prompt).

    .venv/bin/python benchmarks/few_step.py                           # tiny random SD + CLIP, CPU: speed only
    .venv/bin/python benchmarks/few_step.py --model stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        --clip openai/clip-vit-large-patch14 --images 64 --micro-batch 8 \\
        --lcm-lora latent-consistency/lcm-lora-sdv1-5 --tcd-lora h1t/TCD-SD15-LoRA           # a GPU

With the tiny random models the quality columns mean nothing (random weights draw noise, and a 4-step LCM or TCD
run without its distilled LoRA is not what those schedulers are for): the tiny run checks that the arms run and
shows the step-count speed-up only. Quality needs a real checkpoint, its few-step LoRAs and a real CLIP.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

PROMPTS = ["a photo of a cat", "a photo of a dog", "a drawing of a bird on a tree", "a red car parked on the street",
           "a small boat on the lake", "an airplane in the blue sky", "a truck with a trailer", "a frog on a leaf",
           "a horse in a field", "a deer in the forest", "a ship in the harbour"]


def arms(args) -> list[tuple[str, dict, int, float]]:
    """(name, PipelineOptions fields, steps, guidance scale)."""
    out = [("default, 50 steps", {}, 50, 7.5),
           ("ddim, 25 steps", {"scheduler": "ddim"}, 25, 7.5),
           ("deepcache 3, 50 steps", {"deepcache_interval": 3}, 50, 7.5)]
    lcm = {"scheduler": "lcm"} | ({"lora": args.lcm_lora} if args.lcm_lora else {})
    tcd = {"scheduler": "tcd", "eta": 0.3} | ({"lora": args.tcd_lora} if args.tcd_lora else {})
    out += [(f"lcm{' + LoRA' if args.lcm_lora else ''}, 4 steps", lcm, 4, 1.0),
            (f"tcd{' + LoRA' if args.tcd_lora else ''}, 4 steps", tcd, 4, 1.0)]
    if args.lcm_lora:
        out.append(("lcm + LoRA + deepcache 2, 4 steps", lcm | {"deepcache_interval": 2}, 4, 1.0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="SD 1.x/2.x/XL folder or hub id (default: genaug's tiny random SD 1.x)")
    ap.add_argument("--clip", help="CLIP folder or hub id for the quality columns (default: tiny random CLIP)")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=None, help="working resolution (default: the model's own)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--lcm-lora", help="e.g. latent-consistency/lcm-lora-sdv1-5 (lcm-lora-sdxl for SDXL)")
    ap.add_argument("--tcd-lora", help="e.g. h1t/TCD-SD15-LoRA (h1t/TCD-SDXL-LoRA for SDXL)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    from genaug.components.clip import Clip
    from genaug.components.diffusion import PipelineOptions
    from genaug.scoring.metrics import cmmd

    tmp = tempfile.TemporaryDirectory()
    if not args.model or not args.clip:
        from genaug.testing.tiny import write_tiny_models

        tiny = write_tiny_models(tmp.name, which=["sd15", "clip"])
        args.model, args.clip = args.model or str(tiny["sd15"]), args.clip or str(tiny["clip"])
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    seeds = list(range(args.images))
    clip = Clip(args.clip, device=args.device)
    rows, ref = [], None
    for name, options, steps, guidance in arms(args):
        sd = PipelineOptions(micro_batch=args.micro_batch, resolution=args.size, device=args.device,
                             **options).diffusion(args.model, None, task="text2img")
        sd.text2img(prompts[:args.micro_batch], seeds[:args.micro_batch], guidance, steps)  # warm-up
        if sd.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        images = sd.text2img(prompts, seeds, guidance, steps)
        if sd.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t
        emb = clip.image_embeds(images)
        pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
        if ref is None:
            ref = (emb, seconds)
        rows.append((name, steps, guidance, args.images / seconds, ref[1] / seconds, cmmd(ref[0], emb),
                     float((ref[0] * emb).sum(-1).mean()), clip.clip_score(pixels, prompts)))
        del sd
    print(f"model {args.model}, clip {args.clip}, {args.images} images, micro_batch {args.micro_batch}, "
          f"device {clip.device}")
    print("| arm | steps | guidance | images/s | speed-up | CMMD vs 50-step | CLIP img-img vs 50-step | CLIPScore |")
    print("|---|---|---|---|---|---|---|---|")
    for name, steps, guidance, ips, speedup, c, sim, score in rows:
        print(f"| {name} | {steps} | {guidance} | {ips:.2f} | {speedup:.1f}x | {c:.3f} | {sim:.3f} | {score:.2f} |")


if __name__ == "__main__":
    main()
