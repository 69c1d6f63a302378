"""What `genaug train`'s speed options buy, side by side: the channels-last layout and the bfloat16 precision (the
demo's small CNN, training and inference), one-thread runs side by side in processes (the demo's `Lanes`), and the
linear probe's cached features.

    .venv/bin/python benchmarks/train_speed.py [--steps 200] [--probe-images 600]

1. `channels_last` false vs true: ms per training step (batch 64, 28 px, AdamW: the demo's classifier) and per
   inference batch of 256, the median of three timed blocks after a warm-up.
2. `precision` float32 vs bfloat16 (autocast; channels-last): the same two figures, at this process's threads and
   at one thread, and a fit-flow training step (the demo's UNet, batch 128); whether the CPU has AMX tiles
   (`precision=auto` picks bfloat16 only where it has).
3. Throughput of the demo's classifier steps (bfloat16 where AMX, else float32): one process at all its threads
   against as many one-thread processes side by side (`genaug.bench.lanes.Lanes`), each running the same steps.
4. `cache_features` false vs true: a whole `genaug train mode=linear` run (the offline ImageNet MobileNetV2,
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

from genaug.bench.lanes import Lanes, default_workers
from genaug.core.devices import autocast_dtype, fast_bfloat16
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


def _cnn_step(channels_last: bool = True, dtype: torch.dtype | None = None):
    """One training step of the demo's classifier (a fresh model), and an inference pass of 256 images."""
    torch.manual_seed(0)
    model = SmallCNN(10, width=16)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y, xe = torch.randn(64, 3, 28, 28), torch.randint(0, 10, (64,)), torch.randn(256, 3, 28, 28)

    def step():
        model.train()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer():
        model.eval()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            model(xe)

    return step, infer


def precision(steps: int) -> list[tuple[str, float, float]]:
    rows, threads = [], torch.get_num_threads()
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        for dtype in (None, torch.bfloat16):
            step, infer = _cnn_step(dtype=dtype)
            rows.append((f"{'bfloat16' if dtype else 'float32'}, {n} thread{'s' * (n > 1)}",
                         _median_ms(step, steps // 3), _median_ms(infer, max(5, steps // 30))))
    torch.set_num_threads(threads)
    return rows


def flow_precision(steps: int) -> list[tuple[str, float]]:
    """ms per fit-flow training step (the demo's UNet, 28 px, one channel, batch 128, Adam) by precision and
    threads."""
    from genaug.flow.model import FlowModel, FlowSpec, make_unet

    rows, threads = [], torch.get_num_threads()
    spec = FlowSpec(classes=[str(i) for i in range(10)], image_size=28, channels=1)
    for n in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(n)
        for dtype in (None, torch.bfloat16):
            torch.manual_seed(0)
            model = FlowModel(make_unet(spec, (32, 64, 64)), spec).train()
            opt = torch.optim.Adam(model.unet.parameters(), lr=1e-3)
            x1, eps = torch.randn(128, 1, 28, 28), torch.randn(128, 1, 28, 28)
            y, t = torch.randint(0, 11, (128,)), torch.rand(128)

            def step():
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = model.loss(x1, y, t, eps).float().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

            rows.append((f"{'bfloat16' if dtype else 'float32'}, {n} thread{'s' * (n > 1)}",
                         _median_ms(step, max(2, steps // 40))))
    torch.set_num_threads(threads)
    return rows


def _steps_seconds(steps: int, dtype_name: str | None) -> float:
    step, _ = _cnn_step(dtype=getattr(torch, dtype_name) if dtype_name else None)
    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - t


def side_by_side(steps: int) -> list[tuple[str, float]]:
    """Steps per second of the demo's classifier: one process at all threads, then that many one-thread processes
    side by side (each the same steps)."""
    dtype = autocast_dtype("auto", torch.device("cpu"))
    name = str(dtype).removeprefix("torch.") if dtype else None
    workers = default_workers(1)
    with Lanes(1, threads=torch.get_num_threads()) as lanes:
        one = lanes.result(lanes.submit(_steps_seconds, steps, name))
    rows = [(f"1 process x {torch.get_num_threads()} threads", steps / one)]
    if workers > 1:
        with Lanes(workers, threads=1) as lanes:
            lanes.join([lanes.submit(_steps_seconds, 5, name) for _ in range(workers)])  # started and warm
            t = time.perf_counter()
            lanes.join([lanes.submit(_steps_seconds, steps, name) for _ in range(workers)])
            rows.append((f"{workers} processes x 1 thread", workers * steps / (time.perf_counter() - t)))
    return rows


def layout(steps: int) -> list[tuple[str, float, float]]:
    rows = []
    for channels_last in (False, True):
        step, infer = _cnn_step(channels_last)
        rows.append(("channels_last" if channels_last else "NCHW (contiguous)", _median_ms(step, steps // 3),
                     _median_ms(infer, max(5, steps // 30))))
    return rows


def _table(header: str, rows: list[tuple], formats: tuple[str, ...]) -> None:
    """Rows as a Markdown table under `header` (its columns separated by |)."""
    columns = header.count("|") + 1
    print(f"\n| {header} |\n|---{'|---:' * (columns - 1)}|")
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(format(v, f) for v, f in zip(values, formats)) + " |")


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
    _table("layout | train step ms (64 × 28 px) | inference ms (256)", rows, (".1f", ".1f"))
    print(f"channels-last speed-up: training {rows[0][1] / rows[1][1]:.2f}x, inference {rows[0][2] / rows[1][2]:.2f}x")
    print(f"\nAMX tiles (bfloat16 fast, precision=auto picks it): {'yes' if fast_bfloat16(torch.device('cpu')) else 'no'}")
    rows = precision(args.steps)
    _table("precision (channels-last) | train step ms (64 × 28 px) | inference ms (256)", rows, (".1f", ".1f"))
    print(f"bfloat16 speed-up: training {rows[0][1] / rows[1][1]:.2f}x, inference {rows[0][2] / rows[1][2]:.2f}x")
    rows = flow_precision(args.steps)
    _table("precision | fit-flow step ms (128 × 28 px)", rows, (".0f",))
    print(f"bfloat16 speed-up: {rows[0][1] / rows[1][1]:.2f}x")
    rows = side_by_side(args.steps * 2)
    _table("the demo's classifier steps | steps/s", rows, (".1f",))
    if len(rows) > 1:
        print(f"side by side: {rows[1][1] / rows[0][1]:.2f}x the steps per second")
    with tempfile.TemporaryDirectory() as tmp:
        rows = probe(args.probe_images, Path(tmp))
    _table("linear probe (MobileNetV2, 64 px) | run s | final train loss", rows, (".1f", ".5f"))
    print(f"cached features speed-up: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
