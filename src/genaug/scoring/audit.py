"""Audit a finished output folder for memorisation and leakage: nearest neighbours of every synthetic image
among the real training images (and its own source image), and among the test / validation images.

Everything happens in one feature space (the ImageNet MobileNetV2's offline, CLIP's with a `clip` component),
on L2-normalised features, so a similarity is a cosine. The near-copy threshold is calibrated on the real data
itself: the `quantile` of the similarities between each training image and its nearest *other* training image.
A synthetic image above it is closer to a training image than (all but 1 - quantile of) the real images are to
each other. So an honest synthetic set drawn from the real distribution is expected to have about
`1 - quantile` of its images flagged — the documented tolerance; copies sit far above.
Exact duplicates inside the training set (similarity 1) are left out of the calibration and counted.

Leakage: a synthetic image whose nearest neighbour among train ∪ test ∪ val is a test or validation image
(closer to it than to any training image) with a similarity above the same threshold.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.config import ConfigError
from ..core.files import atomic_write
from ..data.imageset import ImageSet, load_files, load_real, load_synthetic
from ..data.metadata import CONFIG, METADATA, is_output_dir, json_default, read_rows
from .metrics import default_extractor, extract

AUDIT = "audit.json"
# Similarities this close to 1 are the same image (float round-off of a cosine of a vector with itself).
DUPLICATE_SIM = 1 - 1e-5


def nearest(a: torch.Tensor, b: torch.Tensor, exclude_self: bool = False,
            chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of `a (n, D)` its most similar row of `b (m, D)` (both L2-normalised): `(sims, indices)`.
    `exclude_self`: `a` is `b`, and a row may not be its own neighbour. In row blocks, so n x m never has to fit
    in memory at once."""
    if not len(b) or (exclude_self and len(b) < 2):
        return torch.full((len(a),), float("nan")), torch.full((len(a),), -1, dtype=torch.long)
    sims, idx = [], []
    for start in range(0, len(a), chunk):
        s = a[start:start + chunk] @ b.T
        if exclude_self:
            rows = torch.arange(len(s))
            s[rows, rows + start] = float("-inf")
        v, i = s.topk(1, dim=1)
        sims.append(v[:, 0])
        idx.append(i[:, 0])
    return torch.cat(sims), torch.cat(idx)


def calibrate(train: torch.Tensor, quantile: float) -> dict[str, Any]:
    """The near-copy threshold: the `quantile` of the nearest-other-training-image similarities, exact
    duplicates (similarity >= DUPLICATE_SIM) left out."""
    sims, _ = nearest(train, train, exclude_self=True)
    dup = sims >= DUPLICATE_SIM
    kept = sims[~dup & ~sims.isnan()]
    if not len(kept):
        raise ConfigError("the near-copy threshold needs at least two distinct training images; "
                          "give more, or a fixed threshold")
    return {"value": float(torch.quantile(kept.double(), quantile)), "method": "quantile", "quantile": quantile,
            "of": "cosine similarity of each training image to its nearest other training image",
            "n_train_pairs": int(len(kept)), "train_duplicates": int(dup.sum()),
            "train_nn_median": float(kept.median())}


def _features(images: ImageSet, extractor: nn.Module, desc: str) -> torch.Tensor:
    return F.normalize(extract(images, extractor, desc=desc), dim=-1)


def _check_folder(path: Path, what: str) -> None:
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")


def audit(synthetic: str | Path, real: str | Path, test: str | Path | None = None, val: str | Path | None = None,
          extractor: nn.Module | None = None, clip=None, quantile: float = 0.99, threshold: float | None = None,
          top_k: int = 20, feature_size: int = 224, image_size: int | None = None,
          write: bool = True) -> dict[str, Any]:
    """Audit the genaug output folder `synthetic` against its real training images `real` (and the held-out
    `test` / `val` images): per-image memorisation and leakage flags, per-class counts, the `top_k` closest
    pairs. Writes `synthetic/audit.json` (atomically) unless `write=False`; returns the same dict.

    Features: `extractor` (an `nn.Module` on uint8 images with `num_features`), else CLIP image embeddings with
    `clip` (genaug.components.clip.Clip), else the ImageNet MobileNetV2's at `feature_size` px.
    Threshold: `threshold` if given, else calibrated (`calibrate`, at `quantile`).
    """
    synthetic = Path(synthetic)
    _check_folder(synthetic, "synthetic folder")
    if not is_output_dir(synthetic):
        raise ConfigError(f"{synthetic} is not a genaug output folder (no {METADATA} and config.yaml)")
    for path, what in ((real, "training set"), (test, "test set"), (val, "validation set")):
        if path is not None:
            _check_folder(Path(path), what)
    if not 0 < quantile <= 1:
        raise ConfigError(f"quantile must be in (0, 1], got {quantile}")
    if threshold is not None and not -1 <= threshold <= 1:
        raise ConfigError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0, got {top_k}")

    if extractor is None and clip is not None:
        extractor = clip.as_feature_extractor()
    extractor, image_size = default_extractor(extractor, feature_size, image_size)

    syn_set = load_synthetic(synthetic, image_size, keep_zero_weight=True)  # weight 0 is still a copy
    if not len(syn_set):
        raise ConfigError(f"{synthetic} holds no images")
    train_set = load_real(real, image_size, "train")
    held = {name: load_real(path, image_size, name) for name, path in (("test", test), ("val", val)) if path}

    sf = _features(syn_set, extractor, "synthetic features")
    tf = _features(train_set, extractor, "train features")
    hf = {name: _features(s, extractor, f"{name} features") for name, s in held.items()}

    calib = calibrate(tf, quantile) if threshold is None else {"value": float(threshold), "method": "fixed"}
    thr = calib["value"]

    # Memorisation: the nearest training image, and the own source image (by source_id, else source_path).
    t_sim, t_idx = nearest(sf, tf)
    rows = {r["file_name"]: r for r in read_rows(synthetic)}
    src_sim = _source_similarities(synthetic, syn_set, rows, real, train_set.ids, sf, tf, extractor, image_size)

    # Leakage: the nearest held-out image (over test and val together), compared with the nearest training one.
    if hf:
        names = [name for name, s in held.items() for _ in range(len(s))]
        ids = [rid for s in held.values() for rid in s.ids]
        labels = [label for s in held.values() for label in s.labels]
        h_sim, h_idx = nearest(sf, torch.cat(list(hf.values())))
    images, per_class = [], {}
    for i, fname in enumerate(syn_set.ids):
        row = rows.get(fname, {})
        rec = {"file_name": fname, "label": syn_set.labels[i], "source_id": row.get("source_id"),
               "nearest_train": train_set.ids[t_idx[i]], "nearest_train_label": train_set.labels[t_idx[i]],
               "train_sim": float(t_sim[i]), "source_sim": None if src_sim[i].isnan() else float(src_sim[i])}
        rec["near_copy"] = rec["train_sim"] > thr
        rec["source_copy"] = rec["source_sim"] is not None and rec["source_sim"] > thr
        rec["leak"] = False
        if hf:
            j = int(h_idx[i])
            rec.update(nearest_heldout=ids[j], heldout_split=names[j], heldout_label=labels[j],
                       heldout_sim=float(h_sim[i]))
            rec["leak"] = rec["heldout_sim"] > thr and rec["heldout_sim"] > rec["train_sim"]
        images.append(rec)
        c = per_class.setdefault(rec["label"], Counter(n=0, near_copy=0, source_copy=0, leak=0))
        c.update(n=1, near_copy=int(rec["near_copy"]), source_copy=int(rec["source_copy"]), leak=int(rec["leak"]))

    pairs = [{"synthetic": r["file_name"], "real": r["nearest_train"], "split": "train", "similarity": r["train_sim"],
              "label": r["label"], "real_label": r["nearest_train_label"], "flag": r["near_copy"]} for r in images]
    pairs += [{"synthetic": r["file_name"], "real": r["nearest_heldout"], "split": r["heldout_split"],
               "similarity": r["heldout_sim"], "label": r["label"], "real_label": r["heldout_label"],
               "flag": r["leak"]} for r in images if "heldout_sim" in r]
    pairs.sort(key=lambda p: -p["similarity"])

    result = {
        "synthetic": str(synthetic), "real": {"train": str(real), **{k: str(v) for k, v in
                                                                    (("test", test), ("val", val)) if v}},
        "n_synthetic": len(syn_set), "n_train": len(train_set), **{f"n_{k}": len(s) for k, s in held.items()},
        "features": getattr(extractor, "name", type(extractor).__name__), "image_size": image_size,
        "similarity": "cosine of L2-normalised features", "threshold": calib,
        "counts": {"near_copy": sum(r["near_copy"] for r in images),
                   "source_copy": sum(r["source_copy"] for r in images),
                   "leak": sum(r["leak"] for r in images),
                   "source_found": sum(r["source_sim"] is not None for r in images)},
        "per_class": {c: dict(v) for c, v in sorted(per_class.items())},
        "closest_pairs": pairs[:top_k], "images": images,
    }
    if clip is not None:
        result["clip"] = {"model": clip.id, "revision": clip.revision}
    if write:
        atomic_write(synthetic / AUDIT, json.dumps(result, indent=2, default=json_default))
    return result


def _source_similarities(synthetic: Path, syn_set: ImageSet, rows: dict, real: str | Path, train_ids: list[str],
                         sf: torch.Tensor, tf: torch.Tensor, extractor: nn.Module, image_size: int) -> torch.Tensor:
    """Cosine similarity of each synthetic image to its own source; NaN where the source cannot be found.
    Where the folder was generated from `real` (its config.yaml's `source`), the source is the training image
    of the row's `source_id`; else the file at `source_path`, or at `<source>/<source_id>`, if it exists."""
    from ..core.config import load_yaml

    out = torch.full((len(syn_set),), float("nan"))
    cfg_source = load_yaml(synthetic / CONFIG).get("source")
    same = cfg_source is not None and Path(cfg_source).resolve() == Path(real).resolve()
    train_index = {rid: i for i, rid in enumerate(train_ids)} if same else {}
    src = torch.full((len(syn_set),), -1, dtype=torch.long)
    elsewhere: dict[str, list[int]] = {}
    for i, fname in enumerate(syn_set.ids):
        row = rows.get(fname, {})
        sid = row.get("source_id")
        if sid in train_index:
            src[i] = train_index[sid]
            continue
        for cand in (row.get("source_path"), cfg_source and sid and str(Path(cfg_source) / sid)):
            if cand and Path(cand).is_file():
                elsewhere.setdefault(str(Path(cand).resolve()), []).append(i)
                break
    found = src >= 0
    out[found] = (sf[found] * tf[src[found]]).sum(-1)
    if elsewhere:
        imgs = load_files(list(elsewhere), image_size)  # an unreadable source has no similarity, like a missing one
        paths = imgs.ids
        if not paths:
            return out
        pf = _features(imgs, extractor, "source features")
        for j, p in enumerate(paths):
            out[elsewhere[p]] = sf[elsewhere[p]] @ pf[j]
    return out
