"""Real datasets that work offline: Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(read with torchvision's own MNIST reader) and scikit-learn's bundled 8x8 digits (a fallback, and the demo's
second dataset; genaug fixes its train/test split)."""
from __future__ import annotations

import csv
import gzip
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.config import ConfigError
from ..core.files import atomic_path
from .cache import cache_root
from .labels import label_folder

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
BUILTIN = ("fashion-mnist", "digits")


def _fashion_mnist_source() -> Path | None:
    for d in filter(None, (os.environ.get("GENAUG_FASHION_MNIST_DIR"), *FASHION_MNIST_DIRS)):
        if all((Path(d) / f"{f}.gz").is_file() or (Path(d) / f).is_file() for f in _FASHION_FILES):
            return Path(d)
    return None


def fashion_mnist_available() -> bool:
    return _fashion_mnist_source() is not None


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`(images uint8 [N, 28, 28], labels int64 [N], class names)` for split "train" (60k) or "test" (10k)."""
    from torchvision.datasets import FashionMNIST

    src = _fashion_mnist_source()
    if src is None:
        raise ConfigError(
            "Fashion-MNIST not found: install the Debian package (apt-get install dataset-fashion-mnist) "
            "or set GENAUG_FASHION_MNIST_DIR to a folder holding its four IDX(.gz) files"
        )
    root = cache_root() / "torchvision"
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in _FASHION_FILES:  # torchvision reads the uncompressed IDX files from <root>/FashionMNIST/raw
        if not (raw / f).is_file():
            with atomic_path(raw / f) as tmp:  # decompressed aside, then renamed: never half a file
                with (open(src / f, "rb") if (src / f).is_file() else gzip.open(src / f"{f}.gz")) as i, \
                        open(tmp, "wb") as o:
                    shutil.copyfileobj(i, o)
    ds = FashionMNIST(str(root), train=(split == "train"), download=False)
    return ds.data.numpy(), ds.targets.numpy().astype(np.int64), list(ds.classes)


DIGITS_TEST_SHARE = 1 / 3


def digits(split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 1797 real 8x8 digits, grey levels 0..16 scaled to 0..255. scikit-learn ships no split, so
    genaug fixes one: "test" is a third of every class (599 images; the first of each class in genaug's seeded
    per-class order, `splits.per_class_order` with seed 0), "train" the other 1,198; "all": every digit, in
    scikit-learn's order."""
    from sklearn.datasets import load_digits

    from .splits import per_class_order

    if split not in ("train", "test", "all"):
        raise ConfigError(f"unknown digits split {split!r}; choose train, test or all")
    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    labels, classes = d.target.astype(np.int64), [str(c) for c in d.target_names]
    if split == "all":
        return images, labels, classes
    order = per_class_order(range(len(labels)), lambda i: str(labels[i]), lambda i: i, 0, salt="digits-test")
    test = np.zeros(len(labels), dtype=bool)
    for idx in order.values():
        test[idx[:round(DIGITS_TEST_SHARE * len(idx))]] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep], classes


def load_builtin(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    if split not in ("train", "test"):
        raise ConfigError(f"unknown split {split!r} of built-in dataset {name!r}; choose train or test")
    if name == "fashion-mnist":
        return fashion_mnist(split)
    if name == "digits":
        return digits(split)
    raise ConfigError(f"unknown built-in dataset {name!r}; available: {', '.join(BUILTIN)}")


def stratified_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of `per_class` images of every class (all of a class if it has fewer), sorted: the first of
    each class in genaug's one seeded per-class order (`splits.per_class_order`)."""
    from .splits import per_class_order

    order = per_class_order(range(len(labels)), lambda i: str(labels[i]), lambda i: i, seed, salt="subset")
    return np.sort(np.array([i for idx in order.values() for i in idx[:per_class]], dtype=np.int64))


def export_builtin(name: str, split: str, out: str | Path, per_class: int | None = None) -> Path:
    """A built-in dataset (or a stratified `per_class` subset) exported once to `out`; the manifest path.
    Written under `<out>.partial` and renamed, so an interrupted export is redone, never half used; two runs
    exporting at once take turns (`<out>.lock`), and the second finds the first's export."""
    from filelock import FileLock

    out = Path(out)
    manifest = out / "manifest.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.with_name(out.name + ".lock"), thread_local=False):
        if not manifest.exists():
            images, labels, classes = load_builtin(name, split)
            idx = stratified_subset(labels, per_class) if per_class else range(len(labels))
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)  # an interrupted export's leftovers
            export_images(images, labels, classes, idx, partial)
            os.replace(partial, out)
    return manifest


def export_images(images: np.ndarray, labels: np.ndarray, classes: list[str], indices, out: str | Path) -> Path:
    """Write the chosen images as PNGs in class folders plus `manifest.csv` (path,label) holding the exact
    labels (folder names are sanitised: Fashion-MNIST has a class called "T-shirt/top"). Returns the manifest."""
    out = Path(out)
    _clear_export(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    with atomic_path(manifest) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i in indices:
            label = classes[int(labels[i])]
            rel = f"{label_folder(label)}/{int(i):06d}.png"
            (out / rel).parent.mkdir(exist_ok=True)
            Image.fromarray(images[i]).save(out / rel)
            w.writerow([rel, label])
    return manifest


def _clear_export(out: Path) -> None:
    """An earlier export in `out` is replaced whole — its manifest and the PNGs it lists are removed (nothing
    else), so a smaller export leaves no stale image for an ImageFolder reader to find; a non-empty folder that
    holds no export is refused."""
    manifest = out / "manifest.csv"
    if manifest.is_file():
        root = out.resolve()
        with open(manifest, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                png = (out / row.get("path", "")).resolve()
                if png.suffix == ".png" and root in png.parents:
                    png.unlink(missing_ok=True)
        manifest.unlink()
        for d in out.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no genaug export (manifest.csv): export into a new or "
                          f"empty folder")
