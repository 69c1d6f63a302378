"""Classifier-confidence weights for synthetic images (DIAGen's weighting), for any genaug output folder.

1. The real-only classifier (`probe.fit_probe`: DIAGen's ResNet-50 linear probe at 256 px with RandAugment,
   else the offline MobileNetV2, temperature-scaled on `val` or on a seeded `holdout` of the real images)
   gives each synthetic image its confidence p = softmax(logits / T)[its label].
2. Rule `diagen` (DIAGen's code: weight 1 when p >= 0.5, else 2p) or `confidence` (weight p); then the
   weights of one source image's variants are scaled to average 1 (a source whose variants all score 0
   keeps 0), so synthetic data keeps the same total weight while its good variants count more. Images a
   filter removed (`filtered`, see filters.py) keep weight 0 and take no part in that average.
The folder's `metadata.jsonl` and `manifest.parquet` are rewritten (atomically) with `weight` and
`scores.confidence`; `weighting.json` records T, the calibration NLL before and after (`holdout_nll_*`, on
whichever split calibrated), the backbone, the options and the probe's work folder.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..core.config import ConfigError
from ..core.files import atomic_write
from ..core.log import get_logger
from ..data.metadata import read_rows, rewrite_rows
from ..data.writer import folder_locked
from .probe import temperature_note
from .probe import fit_probe

log = get_logger(__name__)


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


def weight_synthetic(synthetic: str | Path, real: str | Path, rule: Literal["diagen", "confidence"] = "diagen",
                     holdout: float = 0.2, classifier: dict[str, Any] | None = None, seed: int = 0,
                     progress: bool | None = None, val: str | Path | None = None,
                     backbone: str = "resnet50") -> dict[str, Any]:
    read_rows(synthetic)  # a clear error when it is not an output folder, before a lock file is made in it
    rule_weights(np.ones(1), rule)  # an unknown rule fails before a classifier trains
    with folder_locked(synthetic):  # ...and so does a folder another run is writing
        pass
    probe = fit_probe(real, val=val, holdout=holdout, classifier=classifier, seed=seed, backbone=backbone,
                      progress=progress)
    with folder_locked(synthetic):  # its rows are rewritten: no run may append to them meanwhile
        return _weight_rows(Path(synthetic), probe, rule, holdout, val)


def _weight_rows(synthetic: Path, probe, rule: str, holdout: float, val: str | Path | None) -> dict[str, Any]:
    rows = read_rows(synthetic)  # read under the folder lock: the rows rewritten below
    probs, targets = probe.folder_probs(synthetic)  # every row, in order
    p = probs[torch.arange(len(rows)), targets].numpy()
    removed = np.array([bool(r.get("filtered")) for r in rows])
    w_rule = rule_weights(p, rule)
    weights = np.zeros(len(rows))  # removed images stay at 0, outside their source's average
    kept = np.flatnonzero(~removed)
    weights[kept] = normalise_per_source(w_rule[kept], [rows[i]["source_id"] for i in kept])
    for i, (r, conf, wt, out) in enumerate(zip(rows, p, weights, removed)):
        r["weight"] = round(float(wt), 6)
        if out:  # given back if a later `genaug filter` keeps it (rerun the weighting to renormalise)
            r["weight_before_filter"] = round(float(w_rule[i]), 6)
        r["scores"] = {**r.get("scores", {}), "confidence": round(float(conf), 6)}
    rewrite_rows(synthetic, rows)
    single = len(kept) > 0 and len({rows[i]["source_id"] for i in kept}) == len(kept)
    if single:
        log.warning("every source image has one weighted variant: DIAGen's weights average to 1 over a source's "
                    "variants, so each is 1 — the rule ranks variants of one real image (generate several: -n)")
    probe_record = {k: v for k, v in probe.describe().items() if k != "holdout_accuracy"}
    summary = {"rule": rule, **probe_record,
               "val": str(val) if val is not None else None, "holdout": holdout if val is None else None,
               "n_synthetic": len(rows), "n_filtered": int(removed.sum()), "filtered_digest": _filtered_digest(rows),
               "one_variant_per_source": single,
               "mean_confidence": float(p.mean()) if len(p) else float("nan"),
               "zero_weight": int((weights == 0).sum()),
               "weight_min": float(weights.min()) if len(rows) else float("nan"),
               "weight_max": float(weights.max()) if len(rows) else float("nan")}
    atomic_write(synthetic / "weighting.json", json.dumps(summary, indent=2))
    return summary


def _filtered_digest(rows: list[dict[str, Any]]) -> str:
    """Which rows a filter removed: the weights average over the others, so another set means weighing again."""
    import hashlib

    ids = sorted(f"{r['source_id']}\0{r['variant']}" for r in rows if r.get("filtered"))
    return hashlib.blake2b("\n".join(ids).encode(), digest_size=16).hexdigest()


def weight_stage(out: Path, source, rule: str = "diagen", holdout: float = 0.2,
                 classifier: dict[str, Any] | None = None, seed: int = 0, val: str | Path | None = None,
                 backbone: str = "resnet50") -> dict[str, Any]:
    """The `weight` post-generation stage (DIAGen's): weigh a finished output folder against its real source.
    A rerun of a folder already weighted the same way (rule, calibration split, backbone) with the same number
    of images does nothing; a folder that cannot be weighted (a class with one real image) keeps weight 1 and
    the report says why."""
    rows = read_rows(out)
    n_rows = len(rows)
    done = Path(out) / "weighting.json"
    val = str(val) if val is not None else None
    if done.is_file():
        from .probe import resolve_classifier, work_dir

        previous = json.loads(done.read_text())
        cfg, _, _ = resolve_classifier(backbone, classifier, download=False)
        # the probe's key: the real and validation images as they are now (a split rewritten in place), the
        # hold-out, the classifier options and seed
        probe_key = str(work_dir(source.root, holdout, {**cfg, "seed": seed}, val))
        if (previous.get("n_synthetic") == n_rows and previous.get("rule") == rule and previous.get("val") == val
                and previous.get("backbone_requested", "mobilenet_v2") == backbone
                and previous.get("work_dir") == probe_key
                and previous.get("filtered_digest") == _filtered_digest(rows)):  # the average is over the kept
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
    if temperature_note(r["temperature"]):
        report["temperature_note"] = temperature_note(r["temperature"])
    return report
