"""Classifier-confidence weights for synthetic images (DIAGen's weighting), for any genaug output folder.

1. The real images are split per class (seeded): `holdout` of each class is held out, the rest trains a
   classifier with `genaug train` (by default a linear probe on the real ImageNet MobileNetV2).
2. Temperature scaling (Guo et al. 2017): one temperature T minimises the negative log-likelihood of the
   held-out real images (LBFGS on log T), so the confidences are calibrated.
3. Each synthetic image's confidence p = softmax(logits / T)[its label].
4. Rule `diagen` (DIAGen's code: weight 1 when p >= 0.5, else 2p) or `confidence` (weight p); then the
   weights of one source image's variants are scaled to average 1 (a source whose variants all score 0
   keeps 0), so synthetic data keeps the same total weight while its good variants count more.
The folder's `metadata.jsonl` and `manifest.parquet` are rewritten (atomically) with `weight` and
`scores.confidence`; `weighting.json` records T, the held-out NLL before and after, and the options.
The output folder holds only the dataset and its records: the classifier's run (split manifests, checkpoint,
plots) is work, kept under `GENAUG_CACHE/work/weighting/<key>/` (`work_dir`), keyed by the synthetic folder,
the real source and the options; `weighting.json` names it.
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
from ..core.files import atomic_write
from ..data.cache import cache_root
from ..data.sources import Source
from ..data.splits import per_class_order, write_manifest
from ..data.metadata import read_rows, rewrite_rows
from ..data.writer import folder_locked
from ..features import normalize

DEFAULT_CLASSIFIER = {"model": "torchvision/mobilenet_v2", "pretrained": "imagenet", "mode": "linear",
                      "image_size": 64, "epochs": 15, "lr": 1e-2, "batch_size": 32}


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


def work_dir(synthetic: Path, real: str | Path, holdout: float, classifier: dict[str, Any]) -> Path:
    """Where the weighting classifier of `synthetic` runs: `GENAUG_CACHE/work/weighting/<key>`."""
    key = json.dumps([str(Path(synthetic).resolve()), str(Path(real).resolve()), holdout, classifier],
                     sort_keys=True, default=str)
    return cache_root() / "work" / "weighting" / hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def weight_synthetic(synthetic: str | Path, real: str | Path, rule: Literal["diagen", "confidence"] = "diagen",
                     holdout: float = 0.2, classifier: dict[str, Any] | None = None, seed: int = 0,
                     progress: bool | None = None) -> dict[str, Any]:
    read_rows(synthetic)  # a clear error when it is not an output folder, before a lock file is made in it
    with folder_locked(synthetic):  # its rows are rewritten: no run may append to them meanwhile
        return _weight_synthetic(synthetic, real, rule, holdout, classifier, seed, progress)


def _weight_synthetic(synthetic: str | Path, real: str | Path, rule: str, holdout: float,
                      classifier: dict[str, Any] | None, seed: int, progress: bool | None) -> dict[str, Any]:
    from safetensors.torch import load_model

    from ..train import load_real, load_synthetic, train
    from ..train.models import create_classifier

    synthetic = Path(synthetic)
    rows = read_rows(synthetic)  # a clear error when it is not an output folder
    if not 0 < holdout < 1:
        raise ConfigError(f"holdout must be in (0, 1), got {holdout}")
    cfg = {**DEFAULT_CLASSIFIER, **(classifier or {}), "seed": seed}
    work = work_dir(synthetic, real, holdout, cfg)
    work.mkdir(parents=True, exist_ok=True)
    with FileLock(work / ".lock", thread_local=False):  # two runs weighing one folder take turns
        train_csv, held_csv = _split_real(real, holdout, seed, work)
        result = train(train_csv, work / "classifier", config=cfg, progress=progress)
        classes = result["classes"]
        model, mean, std = create_classifier(cfg["model"], len(classes), None, **cfg.get("model_options", {}))
        load_model(model, str(work / "classifier" / "best.safetensors"))

    held = load_real(held_csv, cfg["image_size"], "holdout")
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
               "holdout": holdout, "n_holdout": len(held), "classifier": cfg, "n_synthetic": len(rows),
               "mean_confidence": float(p.mean()), "zero_weight": int((weights == 0).sum()),
               "weight_min": float(weights.min()), "weight_max": float(weights.max()), "work_dir": str(work)}
    atomic_write(synthetic / "weighting.json", json.dumps(summary, indent=2))
    return summary


def weight_stage(out: Path, source, rule: str = "diagen", holdout: float = 0.2,
                 classifier: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """The `weight` post-generation stage (DIAGen's): weigh a finished output folder against its real source.
    A rerun of a folder already weighted with the same rule and the same number of images does nothing; a
    folder that cannot be weighted (a class with one real image) keeps weight 1 and the report says why."""
    n_rows = len(read_rows(out))
    done = Path(out) / "weighting.json"
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("n_synthetic") == n_rows and previous.get("rule") == rule:
            return {"weighting": f"unchanged ({n_rows} images already weighted)"}
    try:
        r = weight_synthetic(out, source.root, rule=rule, holdout=holdout, classifier=classifier, seed=seed)
    except ConfigError as e:  # the images are written; say why they are unweighted and how to weigh them
        return {"weighting": f"skipped ({e}); every image keeps weight 1 — fix that and rerun, or use "
                             f"`genaug weight {out} --real <real images>`"}
    return {"weighting": rule, "temperature": round(r["temperature"], 4),
            "holdout_nll": f"{r['holdout_nll_before']:.4f} -> {r['holdout_nll_after']:.4f}",
            "mean_confidence": round(r["mean_confidence"], 4), "zero_weight": r["zero_weight"]}
