"""Classifier-confidence weights for synthetic images (DIAGen's weighting), for any genaug output folder.

1. A classifier is trained on the real images with `genaug train`. DIAGen's (visinf/DIAGen `train_filter.py`,
   `models/filter_model.py`) is the default `backbone="resnet50"`: a linear head on the frozen ImageNet ResNet-50
   (torchvision's DEFAULT weights), 256 px, RandAugment. Where those weights cannot be had (not in torch's cache,
   no network, or `HF_HUB_OFFLINE` set) the offline ImageNet MobileNetV2 takes its place (linear, RandAugment,
   at genaug's CPU-sized 64 px), and `weighting.json` (`backbone`, `backbone_fallback`) and the run summary say so. `classifier` options
   (genaug train's) override any of it.
2. Temperature scaling (Guo et al. 2017): one temperature T minimises the negative log-likelihood of real images
   the classifier did not train on (LBFGS on log T, T kept positive), so the confidences are calibrated. With
   `val` (DIAGen: a separate validation split) the classifier trains on every real image, its best epoch is
   chosen on `val` and T is fitted on `val`; without it `holdout` of each class's real images (seeded) are held
   out of training and calibrate T. `weighting.json` records which (`calibration`: "val" or "holdout").
3. Each synthetic image's confidence p = softmax(logits / T)[its label].
4. Rule `diagen` (DIAGen's code: weight 1 when p >= 0.5, else 2p) or `confidence` (weight p); then the
   weights of one source image's variants are scaled to average 1 (a source whose variants all score 0
   keeps 0), so synthetic data keeps the same total weight while its good variants count more.
The folder's `metadata.jsonl` and `manifest.parquet` are rewritten (atomically) with `weight` and
`scores.confidence`; `weighting.json` records T, the calibration NLL before and after (`holdout_nll_*`, on
whichever split calibrated), the backbone and the options.
The output folder holds only the dataset and its records: the classifier's run (split manifests, checkpoint,
plots) is work, kept under `GENAUG_CACHE/work/weighting/<key>/` (`work_dir`), keyed by the synthetic folder,
the real source, the validation split and the options; `weighting.json` names it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from filelock import FileLock

from ..core.config import ConfigError
from ..components.hub import offline
from ..core.files import atomic_write
from ..data.cache import cache_root
from ..data.sources import Source
from ..data.splits import per_class_order, write_manifest
from ..data.metadata import read_rows, rewrite_rows
from ..data.writer import folder_locked
from ..features import normalize, resnet50_imagenet_file

# The probe's protocol (DIAGen: linear head, 256 px, RandAugment, batch 32); its training length and optimiser are
# genaug's (DIAGen: Adam 1e-4 for up to 50 x 200 steps with early stopping; here 15 passes at AdamW 1e-2).
PROBE = {"mode": "linear", "image_size": 256, "augment": "randaugment", "epochs": 15, "lr": 1e-2, "batch_size": 32}
# Input size per backbone: DIAGen's 256 px for its ResNet-50; the offline MobileNetV2 fallback keeps genaug's
# CPU-sized 64 px (4x to 16x cheaper on a CPU, where a machine without the ResNet-50 file usually is);
# `image_size=` overrides either.
BACKBONES = {"resnet50": {"image_size": 256}, "mobilenet_v2": {"image_size": 64}}


def resolve_classifier(backbone: str = "resnet50", overrides: dict[str, Any] | None = None,
                       download: bool | None = None) -> tuple[dict[str, Any], str, str | None]:
    """`(genaug train options, backbone used, why it fell back or None)`. `resnet50` is DIAGen's; its weights come
    from torch's cache or a download (none when `HF_HUB_OFFLINE` is set); without them the offline MobileNetV2
    is used. A `model` in `overrides` replaces the backbone altogether (`backbone` is then "custom")."""
    overrides = dict(overrides or {})
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown weighting backbone {backbone!r}: {' or '.join(BACKBONES)}")
    if "model" in overrides:
        return {**PROBE, **overrides}, "custom", None
    if download is None:
        download = not offline()
    used, fallback, pretrained = backbone, None, "imagenet"
    if backbone == "resnet50":
        try:
            pretrained = str(resnet50_imagenet_file(download=download))
        except ConfigError as e:
            used, fallback = "mobilenet_v2", f"resnet50 unavailable, used the offline ImageNet MobileNetV2: {e}"
    cfg = {"model": f"torchvision/{used}", "pretrained": pretrained, **PROBE, **BACKBONES[used], **overrides}
    return cfg, used, fallback


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 100) -> tuple[float, float, float]:
    """`(T, NLL at T = 1, NLL at T)` for held-out logits (LBFGS on log T, T kept positive)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    with torch.no_grad():
        return t, float(F.cross_entropy(logits, targets)), float(F.cross_entropy(logits / t, targets))


def rule_weights(p: np.ndarray, rule: str) -> np.ndarray:
    if rule == "diagen":
        return np.where(p >= 0.5, 1.0, 2.0 * p)
    if rule == "confidence":
        return p.copy()
    raise ConfigError(f"unknown weighting rule {rule!r}: diagen or confidence")


def normalise_per_source(weights: np.ndarray, sources: list[str]) -> np.ndarray:
    out = weights.astype(float).copy()
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(s, []).append(i)
    for idx in groups.values():
        mean = out[idx].mean()
        out[idx] = out[idx] / mean if mean > 0 else 0.0
    return out


def _split_real(real: str | Path, holdout: float, seed: int, out: Path) -> tuple[Path, Path]:
    recs = (r for r in Source(real).records() if r.error is None)
    train, held = [], []
    for label, rs in per_class_order(recs, lambda r: r.label, lambda r: r.id, seed, salt="weight").items():
        if len(rs) < 2:
            raise ConfigError(f"class {label!r} has {len(rs)} real image: weighting needs 2 (one to train, one held out)")
        k = min(len(rs) - 1, max(1, round(holdout * len(rs))))
        held += rs[:k]
        train += rs[k:]
    return write_manifest(train, out / "train.csv"), write_manifest(held, out / "holdout.csv")


@torch.no_grad()
def _logits(model, images: torch.Tensor, mean, std, batch: int = 128) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(normalize(images[i:i + batch].to(device), mean, std)).float().cpu()
                      for i in range(0, len(images), batch)])


def work_dir(synthetic: Path, real: str | Path, holdout: float, classifier: dict[str, Any],
             val: str | Path | None = None) -> Path:
    """Where the weighting classifier of `synthetic` runs: `GENAUG_CACHE/work/weighting/<key>`."""
    parts = [str(Path(synthetic).resolve()), str(Path(real).resolve()), holdout, classifier]
    if val is not None:
        parts.append(str(Path(val).resolve()))
    key = json.dumps(parts, sort_keys=True, default=str)
    return cache_root() / "work" / "weighting" / hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def weight_synthetic(synthetic: str | Path, real: str | Path, rule: Literal["diagen", "confidence"] = "diagen",
                     holdout: float = 0.2, classifier: dict[str, Any] | None = None, seed: int = 0,
                     progress: bool | None = None, val: str | Path | None = None,
                     backbone: str = "resnet50") -> dict[str, Any]:
    read_rows(synthetic)  # a clear error when it is not an output folder, before a lock file is made in it
    if val is not None and not Path(val).exists():
        raise ConfigError(f"validation split not found: {val}")
    with folder_locked(synthetic):  # its rows are rewritten: no run may append to them meanwhile
        return _weight_synthetic(synthetic, real, rule, holdout, classifier, seed, progress, val, backbone)


def _weight_synthetic(synthetic: str | Path, real: str | Path, rule: str, holdout: float,
                      classifier: dict[str, Any] | None, seed: int, progress: bool | None,
                      val: str | Path | None = None, backbone: str = "resnet50") -> dict[str, Any]:
    from safetensors.torch import load_model

    from ..train import load_real, load_synthetic, train
    from ..train.models import create_classifier

    synthetic = Path(synthetic)
    rows = read_rows(synthetic)  # read under the folder lock: the rows rewritten below
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    cfg, used, fallback = resolve_classifier(backbone, classifier)
    cfg["seed"] = seed
    work = work_dir(synthetic, real, holdout, cfg, val)
    work.mkdir(parents=True, exist_ok=True)
    with FileLock(work / ".lock", thread_local=False):  # two runs weighing one folder take turns
        if val is None:  # no validation split: hold part of each class out of training to calibrate on
            train_csv, calib_src = _split_real(real, holdout, seed, work)
        else:  # DIAGen's: train on every real image, select the epoch and calibrate on the validation split
            train_csv, calib_src = real, val
        result = train(train_csv, work / "classifier", val=val, config=cfg, progress=progress)
        classes = result["classes"]
        model, mean, std = create_classifier(cfg["model"], len(classes), None, **cfg.get("model_options", {}))
        load_model(model, str(work / "classifier" / "best.safetensors"))

    held = load_real(calib_src, cfg["image_size"], "holdout" if val is None else "val")
    t, nll_before, nll_after = fit_temperature(_logits(model, held.images, mean, std), held.targets(classes))

    unknown = sorted({r["label"] for r in rows} - set(classes))
    if unknown:
        raise ConfigError(f"synthetic labels {unknown[:5]} are not among the real classes")
    images = load_synthetic(synthetic, cfg["image_size"], keep_zero_weight=True).images  # in the order of rows
    probs = (_logits(model, images, mean, std) / t).softmax(1)
    index = {c: i for i, c in enumerate(classes)}
    p = probs[torch.arange(len(rows)), torch.tensor([index[r["label"]] for r in rows])].numpy()
    weights = normalise_per_source(rule_weights(p, rule), [r["source_id"] for r in rows])
    for r, conf, w in zip(rows, p, weights):
        r["weight"] = round(float(w), 6)
        r["scores"] = {**r.get("scores", {}), "confidence": round(float(conf), 6)}
    rewrite_rows(synthetic, rows)
    summary = {"rule": rule, "temperature": t, "holdout_nll_before": nll_before, "holdout_nll_after": nll_after,
               "calibration": "holdout" if val is None else "val", "val": str(val) if val is not None else None,
               "holdout": holdout if val is None else None, "n_holdout": len(held),
               "backbone_requested": backbone, "backbone": used, "backbone_fallback": fallback,
               "classifier": cfg, "n_synthetic": len(rows),
               "mean_confidence": float(p.mean()), "zero_weight": int((weights == 0).sum()),
               "weight_min": float(weights.min()), "weight_max": float(weights.max()), "work_dir": str(work)}
    atomic_write(synthetic / "weighting.json", json.dumps(summary, indent=2))
    return summary


def weight_stage(out: Path, source, rule: str = "diagen", holdout: float = 0.2,
                 classifier: dict[str, Any] | None = None, seed: int = 0, val: str | Path | None = None,
                 backbone: str = "resnet50") -> dict[str, Any]:
    """The `weight` post-generation stage (DIAGen's): weigh a finished output folder against its real source.
    A rerun of a folder already weighted the same way (rule, calibration split, backbone) with the same number
    of images does nothing; a folder that cannot be weighted (a class with one real image) keeps weight 1 and
    the report says why."""
    n_rows = len(read_rows(out))
    done = Path(out) / "weighting.json"
    val = str(val) if val is not None else None
    if done.is_file():
        previous = json.loads(done.read_text())
        if (previous.get("n_synthetic") == n_rows and previous.get("rule") == rule and previous.get("val") == val
                and previous.get("backbone_requested", "mobilenet_v2") == backbone):
            return {"weighting": f"unchanged ({n_rows} images already weighted)"}
    try:
        r = weight_synthetic(out, source.root, rule=rule, holdout=holdout, classifier=classifier, seed=seed,
                             val=val, backbone=backbone)
    except ConfigError as e:  # the images are written; say why they are unweighted and how to weigh them
        return {"weighting": f"skipped ({e}); every image keeps weight 1 — fix that and rerun, or use "
                             f"`genaug weight {out} --real <real images>`"}
    calibrated = (f"validation split ({r['n_holdout']} images)" if r["calibration"] == "val" else
                  f"{holdout:g} of the real images held out of training ({r['n_holdout']} images)")
    c = r["classifier"]
    report = {"weighting": rule, "weight_classifier": f"{r['backbone']} ({c['model']}, {c['mode']}, "
                                                       f"{c['image_size']} px, augment={c.get('augment')})",
              "calibrated_on": calibrated, "temperature": round(r["temperature"], 4),
              "holdout_nll": f"{r['holdout_nll_before']:.4f} -> {r['holdout_nll_after']:.4f}",
              "mean_confidence": round(r["mean_confidence"], 4), "zero_weight": r["zero_weight"]}
    if r["backbone_fallback"]:
        report["weight_classifier_fallback"] = r["backbone_fallback"]
    return report
