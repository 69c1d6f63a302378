"""Does AGA's background replacement buy robustness to new backgrounds? A fully offline, real-data check.

Real Fashion-MNIST garments are photographed on black: thresholding gives true subject masks, so the
images are RGBA cut-outs and `aga` runs in its copy-paste mode (dataset masks, photo backgrounds) with
no pretrained model. Backgrounds are random crops of scikit-image's bundled photos, split by photo:
one set for training augmentation, a disjoint set for the out-of-distribution test.

- real:           300 garments per class (3,000), on black (the Fashion-MNIST images as they are)
- ID test:        200 test garments per class, on black (the usual test images)
- OOD test:       the same test garments composited onto the held-out photos by this script's own code
                  (`write_ood`), not by genaug's paste: hard binary alpha (no feathered halo), a random
                  square window of a background crop (not AGA's centre fit), LANCZOS resampling, a uniform
                  scale in [0.7, 1] and a uniform position where the garment fits whole; no flip, no rotation.
                  Testing on images made by the paste code that made the training images would flatter AGA.
- arms:           real only; real + randaugment (classical, n = 2); real + aga (n = 2, default transforms)
- classifier:     the demo's small CNN (28 px, 6 epochs x 100 steps, synthetic = half of each batch), 3 seeds
- SIC:            the softmax information curve score (AGA's explainability metric) on 100 ID test images,
                  on XRAI saliency as in AGA (`--sic-saliency integrated_gradients` is much faster on a CPU)

    .venv/bin/python benchmarks/aga_ood.py [--out runs/aga-ood] [--seeds 0 1 2] [--sic 100] [--sic-saliency xrai]
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "grass", "brick", "camera", "moon", "immunohistochemistry")
TEST_PHOTOS = ("chelsea", "hubble_deep_field", "gravel", "coins", "clock", "retina", "cell")
TRAIN_CFG = {"model": "genaug_small_cnn", "model_options": {"width": 16}, "image_size": 28, "epochs": 6,
             "steps_per_epoch": 100, "batch_size": 64, "lr": 3e-3, "synthetic_prob": 0.5}


def write_cutouts(images: np.ndarray, labels: np.ndarray, classes: list[str], idx, out: Path,
                  cutout: bool = True) -> Path:
    """RGBA PNGs: the garment's grey levels, alpha = its filled silhouette (pixel > 8); with `cutout=False` the
    grey image on black as it is (RGB): a cut-out would be composited onto white when a classifier loads it."""
    from scipy import ndimage

    from genaug.data.labels import label_folder

    rows = []
    for i in idx:
        g = images[i]
        alpha = ndimage.binary_fill_holes(g > 8).astype(np.uint8) * 255
        rel = f"{label_folder(classes[labels[i]])}/{i}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.dstack([g, g, g, alpha]) if cutout else np.dstack([g, g, g])
        Image.fromarray(pixels, "RGBA" if cutout else "RGB").save(out / rel)
        rows.append({"path": rel, "label": classes[labels[i]]})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    return out / "manifest.csv"


def write_backgrounds(names, out: Path, crops: int = 16, seed: int = 0) -> Path:
    from skimage import data

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = photo.size
        for k in range(crops):
            side = int(rng.uniform(0.25, 0.6) * min(w, h))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            photo.crop((x, y, x + side, y + side)).resize((96, 96), Image.BICUBIC).save(out / f"{name}_{k}.png")
    return out


def write_ood(cutouts: Path, backgrounds: Path, out: Path, seed: int = 7, size: int = 28) -> Path:
    """The OOD test set, composited here with PIL alone and nothing of genaug's paste: for each test cut-out, a
    background crop drawn uniformly, a random square window of it (side 50-100 % of the crop) resized to
    `size` with LANCZOS; the garment scaled by a uniform factor in [0.7, 1] (LANCZOS; its alpha NEAREST, so
    the edge stays hard) and pasted with `Image.paste` at a uniform position where it fits whole. Every draw
    comes from a generator seeded by (seed, row), and is written to `params.jsonl`."""
    with open(cutouts / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    bgs = sorted(backgrounds.glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    params = []
    for k, row in enumerate(rows):
        rng = np.random.default_rng([seed, k])
        bg_path = bgs[int(rng.integers(len(bgs)))]
        bg = Image.open(bg_path).convert("RGB")
        side = int(rng.integers(bg.width // 2, bg.width + 1))
        bx, by = int(rng.integers(0, bg.width - side + 1)), int(rng.integers(0, bg.height - side + 1))
        canvas = bg.crop((bx, by, bx + side, by + side)).resize((size, size), Image.LANCZOS)
        garment = Image.open(cutouts / row["path"])
        scale = float(rng.uniform(0.7, 1.0))
        w, h = max(1, round(garment.width * scale)), max(1, round(garment.height * scale))
        rgb = garment.convert("RGB").resize((w, h), Image.LANCZOS)
        alpha = garment.getchannel("A").resize((w, h), Image.NEAREST)
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        canvas.paste(rgb, (x, y), alpha)
        (out / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out / row["path"])
        params.append({"path": row["path"], "background": bg_path.name, "window": [bx, by, side], "scale": scale,
                       "position": [x, y]})
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"]} for r in rows)
    (out / "params.jsonl").write_text("".join(json.dumps(p) + "\n" for p in params), encoding="utf-8")
    return out / "manifest.csv"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/aga-ood")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sic", type=int, default=100, help="test images scored for SIC (AGA's explainability score)")
    ap.add_argument("--sic-saliency", default="xrai", choices=["xrai", "integrated_gradients", "saliency"],
                    help="saliency under SIC: xrai as in AGA (slow on a CPU), or a faster one")
    args = ap.parse_args()
    from genaug.bench.run import train_cached
    from genaug.data.builtin import fashion_mnist_available, load_builtin, stratified_subset
    from genaug.pipeline import augment

    t0 = time.perf_counter()
    out = Path(args.out)
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    tr_images, tr_labels, classes = load_builtin(dataset, "train")
    te_images, te_labels, _ = load_builtin(dataset, "test") if dataset == "fashion-mnist" else load_builtin(dataset)
    real, cutouts = out / "data" / "train" / "manifest.csv", out / "data" / "train-cutouts" / "manifest.csv"
    test = out / "data" / "test" / "manifest.csv"
    if not (real.exists() and cutouts.exists() and test.exists()):
        train_idx, test_idx = stratified_subset(tr_labels, 300, seed=0), stratified_subset(te_labels, 200, seed=1)
        write_cutouts(tr_images, tr_labels, classes, train_idx, real.parent, cutout=False)
        write_cutouts(tr_images, tr_labels, classes, train_idx, cutouts.parent)
        write_cutouts(te_images, te_labels, classes, test_idx, test.parent, cutout=False)
        write_cutouts(te_images, te_labels, classes, test_idx, out / "data" / "test-cutouts")
        write_backgrounds(TRAIN_PHOTOS, out / "backgrounds" / "train")
        write_backgrounds(TEST_PHOTOS, out / "backgrounds" / "test", seed=1)
    ood = write_ood(out / "data" / "test-cutouts", out / "backgrounds" / "test", out / "ood-composited")
    t = time.perf_counter()
    synthetic = {"randaugment": out / "synthetic" / "randaugment", "aga": out / "synthetic" / "aga"}
    augment(real, synthetic["randaugment"], "randaugment", n=2, seed=0, progress=False)
    augment(cutouts, synthetic["aga"], "aga", n=2, seed=0, progress=False,
            options={"backgrounds_dir": str(out / "backgrounds" / "train"), "masks": "dataset"})
    gen_s = time.perf_counter() - t

    results: dict[str, list[tuple[float, float]]] = {}
    for arm, sources in (("real", []), ("real + randaugment", [synthetic["randaugment"]]),
                         ("real + aga", [synthetic["aga"]])):
        for seed in args.seeds:
            row = train_cached(out / "runs" / arm.replace(" + ", "+") / f"seed-{seed}", real, sources, None, test,
                               {"photos": str(ood)}, {**TRAIN_CFG, "seed": seed, "sic_images": args.sic,
                                                      "sic_saliency": args.sic_saliency},
                               {"arm": arm, "seed": seed})
            results.setdefault(arm, []).append((row["test_acc"], row["ood_photos_acc"], row["test_sic"] or np.nan))
    print(f"{dataset}: 3,000 real images (300 per class) on black; ID test = 2,000 test images on black; OOD test = "
          f"the same garments composited (write_ood, not genaug's paste) onto {len(TEST_PHOTOS)} held-out photos; "
          f"{len(args.seeds)} seeds; SIC on {args.sic_saliency}")
    print(f"{'arm':<22}{'ID test %':>16}{'OOD test %':>16}{'ID SIC':>16}")
    for arm, accs in results.items():
        a = np.array(accs, dtype=float)
        print(f"{arm:<22}{100 * a[:, 0].mean():>9.2f} ± {100 * a[:, 0].std():.2f}"
              f"{100 * a[:, 1].mean():>9.2f} ± {100 * a[:, 1].std():.2f}{a[:, 2].mean():>9.3f} ± {a[:, 2].std():.3f}")
    print(f"generation {gen_s:.1f} s; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
