"""Throughput and peak memory of `genaug augment` with a classical method, at 1k and 10k source images.

Prints figures; asserts nothing about speed. Memory should stay flat from 1k to 10k: the engine streams
the source and holds one batch. Each run is a fresh process so its peak RSS is its own.

    .venv/bin/python benchmarks/classical_throughput.py [--method randaugment] [--sizes 1000 10000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from genaug.data.builtin import export_images, fashion_mnist_available, load_builtin

CHILD = """
import json, resource, sys, time
t = time.perf_counter()
import genaug.methods
from genaug.pipeline import augment
imports = time.perf_counter() - t
t = time.perf_counter()
s = augment(sys.argv[1], sys.argv[2], method=sys.argv[3], n=1, batch_size=32, progress=False)
print(json.dumps({"generated": s.generated, "already": s.already_done, "seconds": time.perf_counter() - t,
                  "imports": imports,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(src: Path, out: Path, method: str) -> dict:
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), method], capture_output=True, text=True,
                         check=True)
    return {**json.loads(res.stdout.strip().splitlines()[-1]), "wall": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="randaugment")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    images, labels, classes = load_builtin(dataset)
    print(f"dataset {dataset}, method {args.method}, n=1, batch 32")
    print("times exclude the one-off import of torch/torchvision (printed as 'import s')")
    print(f"{'sources':>8} {'images/s':>9} {'run s':>7} {'import s':>8} {'peak RSS MB':>12} {'rerun s':>8} {'rerun/run':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            if size > len(images):
                print(f"{size:>8} skipped: {dataset} has only {len(images)} images")
                continue
            manifest = export_images(images, labels, classes, range(size), Path(tmp) / f"src{size}")
            first = run(manifest, Path(tmp) / f"out{size}", args.method)
            again = run(manifest, Path(tmp) / f"out{size}", args.method)
            assert first["generated"] == size and again["generated"] == 0
            print(f"{size:>8} {size / first['seconds']:>9.0f} {first['seconds']:>7.1f} {first['imports']:>8.1f} "
                  f"{first['peak_rss_mb']:>12.0f} "
                  f"{again['seconds']:>8.2f} {again['seconds'] / first['seconds']:>9.1%}")


if __name__ == "__main__":
    main()
