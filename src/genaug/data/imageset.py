"""Image sets for training and evaluation, decoded once into uint8 tensors at one resolution.

Few-shot and low-data training sets (and their synthetic companions) are small, so they are held in
memory: 10k images at 32 px are 30 MB. Sources go through the same validation as `genaug augment`.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from ..core.config import ConfigError
from .images import ANY_SIZE, InputConfig, Rejected, load_image
from .sources import Source
from .metadata import FILTERED, METADATA, is_output_dir, left_out, read_rows
from ..core.log import bar_disabled, get_logger

log = get_logger(__name__)
_MEMO: dict[tuple, "ImageSet"] | None = None  # active inside `shared_loads()`


@contextmanager
def shared_loads() -> Iterator[None]:
    """Within this block a source loaded twice at the same size is decoded once: a harness that trains many
    classifiers on the same real, validation, test and synthetic sets (the demo, the bench) shares them
    instead of decoding 10k test images per run. Keyed by the resolved path, size and input options, and the
    modification time of the file, folder or manifest (metadata.jsonl, filtered.jsonl) — a rewritten
    manifest is a new entry. Callers must not modify a returned set in place (genaug's own code copies)."""
    global _MEMO
    outer = _MEMO
    _MEMO = {} if outer is None else outer
    try:
        yield
    finally:
        _MEMO = outer


def keep_loads() -> None:
    """`shared_loads` for the rest of this process's life: a harness's worker process (`bench.lanes`) that runs
    job after job on the same sets."""
    global _MEMO
    if _MEMO is None:
        _MEMO = {}


def _memo(kind: str, src: str | Path, size: int, extra, load):
    if _MEMO is None:
        return load()
    p = Path(src).resolve()
    stamps = tuple(q.stat().st_mtime_ns if q.exists() else None
                   for q in (p, p / METADATA, p / FILTERED))
    key = (kind, str(p), size, repr(extra), stamps)
    if key not in _MEMO:
        _MEMO[key] = load()
    return _MEMO[key]


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    labels: list[str]
    weights: torch.Tensor  # float (N,), 1.0 for real images
    ids: list[str]
    rejected: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self, classes: list[str]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted(set(self.labels) - set(index))
        if unknown:
            raise ConfigError(f"labels {unknown[:5]} are not among the training classes {classes[:10]}")
        return torch.tensor([index[label] for label in self.labels], dtype=torch.long)


def _to_tensor(image, size: int) -> torch.Tensor:
    t = TF.pil_to_tensor(image)
    if t.shape[-2:] != (size, size):
        t = TF.resize(t, [size, size], antialias=True)
    return t


def _stack(tensors: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack(tensors) if tensors else torch.empty(0, 3, size, size, dtype=torch.uint8)


def load_real(src: str | Path, size: int, desc: str = "real", input_cfg: InputConfig | None = None) -> ImageSet:
    """Any source (ImageFolder, CSV / JSONL manifest or split file, genaug output folder, Hugging Face
    dataset) as an ImageSet, every image weighing 1; cut-outs composited onto `input_cfg.background`."""
    return _memo("real", src, size, input_cfg, lambda: _load_real(src, size, desc, input_cfg))


def _load_real(src: str | Path, size: int, desc: str, input_cfg: InputConfig | None) -> ImageSet:
    source = Source(src, input_cfg)
    images, labels, ids, rejected = [], [], [], []
    for rec in tqdm(list(source.records()), desc=f"load {desc}", unit="img", disable=bar_disabled(), leave=False):
        try:
            ex = source.load(rec)
        except Rejected as e:
            rejected.append({"path": rec.path, "reason": str(e)})
            continue
        images.append(_to_tensor(ex.image, size))
        labels.append(ex.label)
        ids.append(ex.id)
    if rejected:
        log.warning("%s: %d image(s) could not be used (first: %s)", src, len(rejected), rejected[0])
    if not images:
        raise ConfigError(f"{src} holds no usable images")
    return ImageSet(_stack(images, size), labels, torch.ones(len(labels)), ids, rejected)


def load_files(paths: list[str], size: int) -> ImageSet:
    """Image files outside any dataset (e.g. the sources a synthetic folder names) as an ImageSet, label "?";
    unreadable ones are left out (the set's `ids` are the paths that loaded)."""
    loaded, tensors = [], []
    for p in paths:
        try:
            tensors.append(_to_tensor(load_image(p, ANY_SIZE)[0], size))
        except Rejected:
            continue
        loaded.append(p)
    return ImageSet(_stack(tensors, size), ["?"] * len(loaded), torch.ones(len(loaded)), loaded)


def load_synthetic(out_dir: str | Path, size: int, keep_zero_weight: bool = False) -> ImageSet:
    """A `genaug augment` output directory: its images, labels and manifest weights, in manifest order.

    Images of weight 0, and images a filter removed (`filtered`, genaug.scoring.filters), are left out entirely
    (so adding them to a run changes nothing at all), unless `keep_zero_weight` (re-scoring every image).
    """
    return _memo("synthetic", out_dir, size, keep_zero_weight,
                 lambda: _load_synthetic(Path(out_dir), size, keep_zero_weight))


def _load_synthetic(out_dir: Path, size: int, keep_zero_weight: bool) -> ImageSet:
    images, labels, weights, ids = [], [], [], []
    rows = read_rows(out_dir)
    for r in tqdm(rows, desc=f"load {out_dir.name}", unit="img", disable=bar_disabled(), leave=False):
        w = float(r.get("weight", 1.0))
        if not np.isfinite(w) or w < 0:
            raise ConfigError(f"{out_dir / r['file_name']}: weight must be a finite number >= 0, got {w}")
        if left_out(r) and not keep_zero_weight:
            continue
        try:
            image, _ = load_image(out_dir / r["file_name"], ANY_SIZE)
        except Rejected as e:  # a folder edited by hand, or copied in part: say which image and how to mend it
            raise ConfigError(f"{out_dir / r['file_name']} (a row of {out_dir / METADATA}): {e}; delete it if it "
                              "is there and rerun the `genaug augment` that made the folder: it regenerates "
                              "missing images") from None
        images.append(_to_tensor(image, size))
        labels.append(r["label"])
        weights.append(w)
        ids.append(r["file_name"])
    return ImageSet(_stack(images, size), labels, torch.tensor(weights, dtype=torch.float32), ids)


def load_any(path: str | Path, size: int, desc: str = "", input_cfg: InputConfig | None = None) -> ImageSet:
    """A genaug output folder with its weights, else any real source."""
    if is_output_dir(path):
        return load_synthetic(path, size)
    return load_real(path, size, desc or Path(path).name, input_cfg)


def concat(sets: list[ImageSet], size: int) -> ImageSet:
    if not sets:
        return ImageSet(_stack([], size), [], torch.ones(0), [])
    return ImageSet(torch.cat([s.images for s in sets]), sum((s.labels for s in sets), []),
                    torch.cat([s.weights for s in sets]), sum((s.ids for s in sets), []))
