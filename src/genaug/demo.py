"""`genaug demo`: the main job, end to end and offline, on a real dataset.

Today it exports a small stratified subset of real Fashion-MNIST (scikit-learn's digits where the Debian
package is missing), writes classical RandAugment variants of it with full provenance, and saves a grid of
real vs synthetic images.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data.builtin import export_images, fashion_mnist_available, load_builtin, stratified_subset
from .engine import augment
from .viz import save_grid


def run_demo(out: str | Path, per_class: int = 50, n: int = 4, seed: int = 0, method: str = "randaugment",
             progress: bool | None = None) -> dict:
    out = Path(out)
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    images, labels, classes = load_builtin(dataset)
    manifest = export_images(images, labels, classes, stratified_subset(labels, per_class, seed), out / "real")
    summary = augment(manifest, out / "synthetic", method=method, n=n, seed=seed, progress=progress)
    grid = save_grid(out / "synthetic", out / "grid.png")
    result = {"dataset": dataset, "real": str(manifest), "synthetic": str(out / "synthetic"), "grid": str(grid),
              "method": method, "images_written": summary.generated, "images_present": summary.generated
              + summary.already_done, "classes": len(classes), "per_class": per_class}
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result
