"""Figures for flow-matching augmentation (Shivashankar & Miller) on real Fashion-MNIST at 5 %:
inversion reconstruction error by solver and steps, the distance between synthetic and real feature
distributions (real ImageNet MobileNetV2 features) per method, and the demo's accuracy table.

Reads a finished `genaug demo` folder (runs the demo first when it is missing):

    .venv/bin/python benchmarks/flow_demo.py [--demo runs/demo]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from genaug.demo import format_table, run_demo
from genaug.flow.model import FlowModel
from genaug.flow.train import reconstruction_error
from genaug.scoring import synthetic_metrics
from genaug.data.imageset import load_real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"))
    ap.add_argument("--feature-size", type=int, default=112)
    args = ap.parse_args()
    if not (args.demo / "demo.json").exists():
        run_demo(args.demo)
    result = json.loads((args.demo / "demo.json").read_text())

    flow = FlowModel.from_pretrained(args.demo / "flow-model")
    real_csv = next((args.demo / "splits").glob("fraction-*/seed-0/train.csv"))
    data = load_real(real_csv, flow.spec.image_size)
    x = (data.images[:128, :flow.spec.channels].float() / 127.5 - 1)
    y = data.targets(flow.spec.classes)[:128]
    print("inversion -> regeneration of 128 real training images (pixels in [-1, 1])")
    print(f"{'solver':>8} {'steps':>6} {'MSE':>9} {'PSNR dB':>8} {'latent std':>10} {'seconds':>8}")
    for solver, steps in [("euler", 10), ("euler", 20), ("euler", 40), ("midpoint", 10), ("rk4", 10)]:
        t = time.perf_counter()
        r = reconstruction_error(flow, x, y, steps=steps, solver=solver)
        print(f"{solver:>8} {steps:>6} {r['mse']:>9.5f} {r['psnr_db']:>8.2f} {r['latent_std']:>10.3f} "
              f"{time.perf_counter() - t:>8.1f}")

    print(f"\nsynthetic vs real training images, MobileNetV2-ImageNet features at {args.feature_size} px")
    # Fréchet / kernel distances in MobileNetV2 space (fd_mobilenet_v2, kd_mobilenet_v2): not FID / KID, and not
    # comparable with published FIDs, which are taken in the FID Inception-v3's space.
    print(f"{'method':>16} {'precision':>9} {'recall':>7} {'density':>8} {'coverage':>8} {'FD-MNv2':>8} {'KD-MNv2':>8}")
    for d in sorted((args.demo / "synthetic").iterdir()):
        r = synthetic_metrics(real_csv, d, per_class=False, feature_size=args.feature_size)
        m, fd, kd = r["overall"], r["distances"]["frechet"], r["distances"]["kernel"]
        print(f"{d.name:>16} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['density']:>8.3f} {m['coverage']:>8.3f} "
              f"{m[fd]:>8.2f} {m[kd]:>8.4f}")

    print("\n" + format_table(result))
    print(f"\ndemo wall time {result['seconds']:.0f} s; stages: {result['timings_s']}")


if __name__ == "__main__":
    main()
