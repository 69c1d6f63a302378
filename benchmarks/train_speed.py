"""What `genaug train`'s speed options buy, side by side in one process: the channels-last layout (the demo's
small CNN, training and inference) and the linear probe's cached features.

    .venv/bin/python benchmarks/train_speed.py [--steps 200] [--probe-images 600]

1. `channels_last` false vs true: ms per training step (batch 64, 28 px, AdamW: the demo's classifier) and per
   inference batch of 256, the median of three timed blocks after a warm-up.
2. `cache_features` false vs true: a whole `genaug train mode=linear` run (the offline ImageNet MobileNetV2,
   64 px, 3 epochs at batch 32, `min_steps` 0) on real Fashion-MNIST (digits where it is missing), and the two
   runs' final train loss (the same training, up to float rounding).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from genaug.data.builtin import export_builtin, fashion_mnist_available
from genaug.train import train
from genaug.train.models import SmallCNN


def _median_ms(fn, repeat: int) -> float:
    for _ in range(5):
        fn()
    blocks = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        blocks.append((time.perf_counter() - t) / repeat * 1000)
    return statistics.median(blocks)


def layout(steps: int) -> list[tuple[str, float, float]]:
    rows = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = SmallCNN(10, width=16)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        x, y = torch.randn(64, 3, 28, 28), torch.randint(0, 10, (64,))

        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        train_ms = _median_ms(step, steps // 3)
        model.eval()
        xe = torch.randn(256, 3, 28, 28)
        with torch.no_grad():
            infer_ms = _median_ms(lambda: model(xe), max(5, steps // 30))
        rows.append(("channels_last" if channels_last else "NCHW (contiguous)", train_ms, infer_ms))
    return rows


def probe(n_images: int, work: Path) -> list[tuple[str, float, float]]:
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    real = export_builtin(dataset, "train", work / "data", per_class=max(1, n_images // 10))
    cfg = {"model": "torchvision/mobilenet_v2", "pretrained": "imagenet", "mode": "linear", "image_size": 64,
           "epochs": 3, "batch_size": 32, "lr": 1e-2, "min_steps": 0}
    rows = []
    for cache in (False, True):
        t = time.perf_counter()
        r = train(real, work / f"probe-{cache}", config={**cfg, "cache_features": cache}, progress=False)
        rows.append((f"cache_features={str(cache).lower()}", time.perf_counter() - t, r["history"][-1]["train_loss"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--probe-images", type=int, default=600)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = layout(args.steps)
    print("\n| layout | train step ms (64 × 28 px) | inference ms (256) |\n|---|---:|---:|")
    for name, tr, inf in rows:
        print(f"| {name} | {tr:.1f} | {inf:.1f} |")
    print(f"channels-last speed-up: training {rows[0][1] / rows[1][1]:.2f}x, inference {rows[0][2] / rows[1][2]:.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        rows = probe(args.probe_images, Path(tmp))
    print("\n| linear probe (MobileNetV2, 64 px) | run s | final train loss |\n|---|---:|---:|")
    for name, sec, loss in rows:
        print(f"| {name} | {sec:.1f} | {loss:.5f} |")
    print(f"cached features speed-up: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
