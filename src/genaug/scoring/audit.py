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

Near-duplicates among the synthetic images: each image's most similar *earlier* synthetic image (metadata order);
above the same threshold it is a `duplicate` — so the first of a group never is, every later one is.

The `top_k` closest synthetic / real pairs are also drawn side by side, one row per pair, into
`audit_pairs.png` beside `audit.json`.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import nn

from ..core.config import ConfigError
from ..core.files import atomic_path, atomic_write
from ..data.imageset import ImageSet, load_files, load_real, load_synthetic
from ..data.images import ANY_SIZE, Rejected, load_image
from ..data.metadata import CONFIG, METADATA, is_output_dir, json_default, read_rows, source_file
from ..data.sources import Source
from ..features import image_features_name
from .metrics import default_extractor, extract

AUDIT = "audit.json"
FEATURE_SIZE = 224  # input size of the default feature extractor (the ImageNet MobileNetV2)
DEFAULT_FEATURES = image_features_name(FEATURE_SIZE)
PAIRS_IMAGE = "audit_pairs.png"
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


def nearest_earlier(a: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row `i` of `a (n, D)` (L2-normalised) its most similar row `j < i`: `(sims, indices)`, NaN / -1
    for row 0. Blocks of `chunk` rows against blocks of `chunk` earlier rows, so at most chunk x chunk
    similarities are held at once; on a tie the earliest row wins."""
    n = len(a)
    best = torch.full((n,), float("-inf"))
    arg = torch.full((n,), -1, dtype=torch.long)
    for r0 in range(0, n, chunk):
        rows = a[r0:r0 + chunk]
        r_idx = torch.arange(r0, r0 + len(rows))
        for c0 in range(0, r0 + len(rows), chunk):  # only the prefix: columns before the block's last row
            s = rows @ a[c0:c0 + chunk].T
            c_idx = torch.arange(c0, c0 + s.shape[1])
            s[c_idx[None, :] >= r_idx[:, None]] = float("-inf")
            v, i = s.max(dim=1)
            better = v > best[r0:r0 + len(rows)]  # strict: an earlier column block keeps a tie
            best[r0:r0 + len(rows)][better] = v[better]
            arg[r0:r0 + len(rows)][better] = i[better] + c0
    best[arg < 0] = float("nan")
    return best, arg


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
          top_k: int = 20, feature_size: int = FEATURE_SIZE, image_size: int | None = None,
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
    real_paths = {"train": _file_paths(real), **{name: _file_paths(path) for name, path in
                                                (("test", test), ("val", val)) if path}}

    sf = _features(syn_set, extractor, "synthetic features")
    tf = _features(train_set, extractor, "train features")
    hf = {name: _features(s, extractor, f"{name} features") for name, s in held.items()}

    calib = calibrate(tf, quantile) if threshold is None else {"value": float(threshold), "method": "fixed"}
    thr = calib["value"]

    # Memorisation: the nearest training image, and the own source image (by source_id, else source_path).
    t_sim, t_idx = nearest(sf, tf)
    rows = {r["file_name"]: r for r in read_rows(synthetic)}
    src_sim = _source_similarities(synthetic, syn_set, rows, real, train_set.ids, sf, tf, extractor, image_size)

    # Near-duplicates among the synthetic images: the most similar earlier one.
    d_sim, d_idx = nearest_earlier(sf)

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
        j = int(d_idx[i])
        rec["synthetic_dup_of"] = syn_set.ids[j] if j >= 0 else None
        rec["synthetic_dup_sim"] = float(d_sim[i]) if j >= 0 else None
        rec["duplicate"] = j >= 0 and rec["synthetic_dup_sim"] > thr
        rec["leak"] = False
        if hf:
            j = int(h_idx[i])
            rec.update(nearest_heldout=ids[j], heldout_split=names[j], heldout_label=labels[j],
                       heldout_sim=float(h_sim[i]))
            rec["leak"] = rec["heldout_sim"] > thr and rec["heldout_sim"] > rec["train_sim"]
        images.append(rec)
        c = per_class.setdefault(rec["label"], Counter(n=0, near_copy=0, source_copy=0, leak=0, duplicate=0))
        c.update(n=1, near_copy=int(rec["near_copy"]), source_copy=int(rec["source_copy"]), leak=int(rec["leak"]),
                 duplicate=int(rec["duplicate"]))

    pairs = [{"synthetic": r["file_name"], "real": r["nearest_train"], "split": "train", "similarity": r["train_sim"],
              "label": r["label"], "real_label": r["nearest_train_label"], "flag": r["near_copy"]} for r in images]
    pairs += [{"synthetic": r["file_name"], "real": r["nearest_heldout"], "split": r["heldout_split"],
               "similarity": r["heldout_sim"], "label": r["label"], "real_label": r["heldout_label"],
               "flag": r["leak"]} for r in images if "heldout_sim" in r]
    for p in pairs:
        p["real_path"] = real_paths[p["split"]].get(p["real"])
    pairs.sort(key=lambda p: -p["similarity"])
    top = pairs[:top_k]

    result = {
        "synthetic": str(synthetic), "real": real_sets(real, test, val),
        "n_synthetic": len(syn_set), "n_train": len(train_set), **{f"n_{k}": len(s) for k, s in held.items()},
        "features": getattr(extractor, "name", type(extractor).__name__), "image_size": image_size,
        "similarity": "cosine of L2-normalised features", "threshold": calib,
        "counts": {"near_copy": sum(r["near_copy"] for r in images),
                   "source_copy": sum(r["source_copy"] for r in images),
                   "leak": sum(r["leak"] for r in images),
                   "duplicate": sum(r["duplicate"] for r in images),
                   "source_found": sum(r["source_sim"] is not None for r in images)},
        "per_class": {c: dict(v) for c, v in sorted(per_class.items())},
        "closest_pairs": top, "pairs_image": PAIRS_IMAGE if write and top else None, "images": images,
    }
    if clip is not None:
        result["clip"] = {"model": clip.id, "revision": clip.revision}
    if write:
        if top:
            # a real image that lives in no file (a Hugging Face dataset's Arrow rows) is drawn from its tensor
            sets = {"train": train_set, **held}
            index = {(split, rid): (s, i) for split, s in sets.items() for i, rid in enumerate(s.ids)}
            fallback = {(p["split"], p["real"]): _tensor_image(*index[p["split"], p["real"]])
                        for p in top if p["real_path"] is None and (p["split"], p["real"]) in index}
            with atomic_path(synthetic / PAIRS_IMAGE) as tmp:
                render_pairs(top, synthetic, fallback).save(tmp, format="PNG")
        else:
            (synthetic / PAIRS_IMAGE).unlink(missing_ok=True)  # an earlier audit's pairs are not this one's
        atomic_write(synthetic / AUDIT, json.dumps(result, indent=2, default=json_default))
    return result


def real_sets(real, test=None, val=None) -> dict[str, str]:
    """The real sets an audit judged against, as audit.json records them (`real`)."""
    return {"train": str(real), **{k: str(v) for k, v in (("test", test), ("val", val)) if v}}


def _file_paths(src: str | Path) -> dict[str, str]:
    """Real image id -> absolute path of its file, for the ids `load_real` gives (the same `Source` listing;
    nothing is decoded). Images stored inside a dataset (Arrow rows) have no file and are left out."""
    out = {}
    for rec in Source(src).records():
        if rec.error is None and rec.row is None and Path(rec.path).is_file():
            out.setdefault(rec.id, str(Path(rec.path).resolve()))
    return out


def _tensor_image(images: ImageSet, i: int) -> Image.Image:
    return Image.fromarray(images.images[i].permute(1, 2, 0).numpy())


THUMB = 96  # px, the longer side of each thumbnail
_PAD = 6
_CAPTION_W = 330
_FLAG = (220, 30, 30)


def render_pairs(pairs: list[dict], synthetic: str | Path,
                 fallback: dict[tuple[str, str], Image.Image] | None = None) -> Image.Image:
    """The pairs of an audit's `closest_pairs` as one image: a row per pair — the synthetic thumbnail, the real
    one (from `real_path`, else `fallback[(split, real)]`), and a caption (synthetic file name, real id and
    split, similarity, labels); flagged pairs get a red frame and say why. A missing image is a grey box."""
    if not pairs:
        raise ConfigError("no pairs to draw")
    font = ImageFont.load_default()
    row_h = THUMB + 2 * _PAD
    width = 3 * _PAD + 2 * THUMB + _PAD + _CAPTION_W
    canvas = Image.new("RGB", (width, row_h * len(pairs)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, p in enumerate(pairs):
        y = k * row_h
        syn = _thumb(Path(synthetic) / p["synthetic"])
        real = _thumb(p.get("real_path")) if p.get("real_path") else None
        if real is None and fallback and (p["split"], p["real"]) in fallback:
            real = _fit(fallback[p["split"], p["real"]])
        for col, im in enumerate((syn, real)):
            x = _PAD + col * (THUMB + _PAD)
            if im is None:
                draw.rectangle([x, y + _PAD, x + THUMB - 1, y + _PAD + THUMB - 1], fill=(200, 200, 200))
            else:  # centred in its THUMB x THUMB cell
                canvas.paste(im, (x + (THUMB - im.width) // 2, y + _PAD + (THUMB - im.height) // 2))
        why = ("near-copy" if p["split"] == "train" else f"leak ({p['split']})") if p["flag"] else None
        lines = [f"{k + 1}. synthetic: {p['synthetic']}", f"real ({p['split']}): {p['real']}",
                 f"similarity {p['similarity']:.4f}", f"labels: {p['label']} / {p['real_label']}"]
        tx = 3 * _PAD + 2 * THUMB + _PAD
        for n, line in enumerate(lines + ([why.upper()] if why else [])):
            draw.text((tx, y + _PAD + 2 + 14 * n), _clip(draw, line, font, _CAPTION_W - _PAD), font=font,
                      fill=_FLAG if n == len(lines) else (0, 0, 0))
        if why:
            draw.rectangle([0, y, width - 1, y + row_h - 1], outline=_FLAG, width=3)
        elif k:
            draw.line([0, y, width - 1, y], fill=(210, 210, 210))
    return canvas


def _fit(im: Image.Image) -> Image.Image:
    im = im.convert("RGB")
    small = im.width <= THUMB and im.height <= THUMB  # tiny images grow as blocks, not blurs
    return ImageOps.contain(im, (THUMB, THUMB), Image.NEAREST if small else Image.BICUBIC)


def _thumb(path: str | Path) -> Image.Image | None:
    try:
        return _fit(load_image(path, ANY_SIZE)[0])
    except Rejected:
        return None


def _clip(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """`text`, cut in the middle with an ellipsis until it fits `width` px (file names keep both ends)."""
    if draw.textlength(text, font=font) <= width:
        return text
    head, tail = len(text) // 2, len(text) // 2
    while head > 1 and draw.textlength(f"{text[:head]}...{text[-tail:]}", font=font) > width:
        head, tail = head - 1, max(tail - 1, 1)
    return f"{text[:head]}...{text[-tail:]}"


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
        if (found_at := source_file(row, cfg_source)) is not None:
            elsewhere.setdefault(str(found_at.resolve()), []).append(i)
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
