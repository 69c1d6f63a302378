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


def save_grid(real_dir: Path, synthetic_dir: Path, out_png: Path, per_row: int = 10, n_variants: int = 3) -> Path:
    """One row per class (its first source image): the real image, then its first `n_variants` variants."""
    import torch
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor
    from torchvision.utils import make_grid, save_image

    rows: dict[str, list[str]] = {}
    first_of_label: dict[str, str] = {}
    with open(synthetic_dir / "metadata.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["variant"] < n_variants:
                rows.setdefault(r["source_path"], [None] * n_variants)[r["variant"]] = r["file_name"]
                first_of_label[r["label"]] = min(first_of_label.get(r["label"], r["source_path"]), r["source_path"])
    tiles = []
    for src in [first_of_label[label] for label in sorted(first_of_label)][:per_row]:
        files = [Path(src)] + [synthetic_dir / fn for fn in rows[src] if fn]
        tiles += [pil_to_tensor(Image.open(p).convert("RGB")) for p in files]
    grid = make_grid(torch.stack(tiles), nrow=1 + n_variants, padding=2, pad_value=255)
    save_image(grid.float() / 255, out_png)
    return out_png


def run_demo(out: str | Path, per_class: int = 50, n: int = 4, seed: int = 0, method: str = "randaugment",
             progress: bool | None = None) -> dict:
    out = Path(out)
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    images, labels, classes = load_builtin(dataset)
    manifest = export_images(images, labels, classes, stratified_subset(labels, per_class, seed), out / "real")
    summary = augment(manifest, out / "synthetic", method=method, n=n, seed=seed, progress=progress)
    grid = save_grid(out / "real", out / "synthetic", out / "grid.png")
    result = {"dataset": dataset, "real": str(manifest), "synthetic": str(out / "synthetic"), "grid": str(grid),
              "method": method, "images_written": summary.generated, "images_present": summary.generated
              + summary.already_done, "classes": len(classes), "per_class": per_class}
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result
