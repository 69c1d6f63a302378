"""Filters: decide, image by image, which synthetic images of an output folder to keep, and record why.

Each filter judges every image independently and records its evidence in the row's `filters`
(`{"clip": {"pass": false, "predicted": "a photo", "p_label": 0.12}, ...}`); `filtered` lists the filters an
image failed (empty: kept). The filters, in the order the funnel applies them:

- `blank`: one-colour images (genaug.engine.core.blank: a safety checker's black image, an fp16 overflow),
  unless the source image is itself one colour. genaug's engine already rejects these while generating; the
  filter catches them in folders written otherwise.
- `duplicate`: the audit (scoring.audit, calibrated threshold; the folder's audit.json is reused when it
  judged exactly these images the same way): near-copies of a training image (memorisation),
  images closer to a test / validation image than to any training image (leakage), and near-duplicates of an
  earlier synthetic image. Which of the audit's flags count is `duplicate_flags`.
- `clip`: CLIP semantic agreement (ALIA, lisadunlap/ALIA `filtering/filter.py`): each image against the class
  prompts and ALIA's negative prompts ("a photo of an object", ...), softmax of 100 × cosine. `clip_match`
  `label` (genaug's default) keeps an image whose best prompt is its own label's; `any` (ALIA's rule) keeps it
  unless a negative prompt wins. Needs a CLIP model (`clip`).
- `agreement`: label agreement with the real-only classifier (scoring.probe): kept when it predicts the label.
- `cleanlab`: confident learning (Northcutt et al. 2021) on the probe's calibrated probabilities, with
  cleanlab's `find_label_issues`; `scores.label_quality` records cleanlab's per-image label quality.

`action="weight"` (default, reversible) sets a removed image's weight to 0 (its previous weight kept as
`weight_before_filter`, given back when a later run keeps it); `action="drop"` deletes its file and moves its
row to `filtered.jsonl`, where a resumed `genaug augment` finds it done (it is not generated again).
Training, chained augmentation and weighting all leave `filtered` images out. `filters.json` records the
options, the models and the funnel (per filter: how many it fails alone, how many it removes in order).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..core.config import ConfigError, build_config, config_dataclass, load_yaml, to_dict
from ..core.files import atomic_write
from ..data.images import ANY_SIZE, Rejected, load_image
from ..data.metadata import CONFIG, FILTERED, METADATA, dumps_row, is_output_dir, read_rows, rewrite_rows
from ..data.writer import folder_locked
from ..engine.core import blank

FILTERS_JSON = "filters.json"
# Below this accuracy on its own held-out real images the classifier's verdicts on synthetic images are noise
# more than evidence: the summary says so (it does not stop the run).
WEAK_PROBE_ACCURACY = 0.7
FILTER_NAMES = ("blank", "duplicate", "clip", "agreement", "cleanlab")
# ALIA's negative prompts (filtering/filter.py, semantic_filter).
NEGATIVE_PROMPTS = ["a photo of an object", "a photo of a scene", "a photo of geometric shapes", "a photo",
                    "an image"]
FilterName = Literal["blank", "duplicate", "clip", "agreement", "cleanlab"]
AuditFlag = Literal["near_copy", "source_copy", "leak", "duplicate"]


@config_dataclass
class FilterConfig:
    """Every option of `genaug filter` (and of the `filter:` section of `genaug augment`)."""

    # which filters, in funnel order; unset: blank, duplicate, agreement, cleanlab (+ clip with a CLIP model)
    filters: list[FilterName] | None = None
    action: Literal["weight", "drop"] = "weight"  # weight: set removed images' weight to 0; drop: delete them
    # duplicate: the audit's calibrated threshold and which of its flags remove an image
    quantile: float = Field(0.99, gt=0, le=1)
    threshold: float | None = Field(None, ge=-1, le=1)
    duplicate_flags: list[AuditFlag] = Field(default_factory=lambda: ["near_copy", "leak", "duplicate"])
    # clip: a CLIP model (hub id or local dir), its prompts and rule
    clip: str | None = None
    prompt: str = "a photo of a {label}"
    negative_prompts: list[str] = Field(default_factory=lambda: list(NEGATIVE_PROMPTS))
    clip_match: Literal["label", "any"] = "label"
    # agreement, cleanlab: the real-only classifier (scoring.probe)
    backbone: Literal["resnet50", "mobilenet_v2"] = "resnet50"
    holdout: float = Field(0.2, gt=0, lt=1)
    classifier: dict[str, Any] = Field(default_factory=dict)  # genaug train options of the probe
    seed: int = 0
    cleanlab_filter_by: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
                                "predicted_neq_given", "low_normalized_margin", "low_self_confidence"] = \
        "prune_by_noise_rate"


def resolve_filters(cfg: FilterConfig) -> list[str]:
    if cfg.filters is not None:
        names = list(dict.fromkeys(cfg.filters))
        if "clip" in names and not cfg.clip:
            raise ConfigError("the clip filter needs a CLIP model: clip=<hub id or local dir> (--clip)")
        return names
    return [n for n in FILTER_NAMES if n != "clip" or cfg.clip]


def _blank(synthetic: Path, rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        image, _ = load_image(synthetic / r["file_name"], ANY_SIZE)
        why = blank(image)
        if why and r.get("source_path") and Path(r["source_path"]).is_file():
            try:  # a flat source may give flat outputs
                if blank(load_image(r["source_path"], ANY_SIZE)[0]):
                    why = None
            except Rejected:
                pass
        out.append({"pass": why is None, **({"reason": why} if why else {})})
    return out


def _reusable_audit(synthetic: Path, rows: list[dict], real, test, val, cfg: FilterConfig, clip) -> dict | None:
    """The folder's audit.json when it judged exactly these images, against the same real sets, in the same
    feature space and at the same threshold, and no image changed since; else None."""
    from .audit import AUDIT, DEFAULT_FEATURES, real_sets

    path = synthetic / AUDIT
    if not path.is_file():
        return None
    try:
        a = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None
    thr = a.get("threshold") or {}
    same_threshold = (thr.get("method") == "fixed" and thr.get("value") == cfg.threshold if cfg.threshold is not None
                      else thr.get("method") == "quantile" and thr.get("quantile") == cfg.quantile)
    same_space = ((a.get("clip") or {}).get("model") == clip.id if clip is not None
                  else "clip" not in a and a.get("features") == DEFAULT_FEATURES)
    names = [r["file_name"] for r in rows]
    if not (a.get("real") == real_sets(real, test, val) and same_threshold and same_space
            and sorted(im["file_name"] for im in a.get("images", [])) == sorted(names)):
        return None
    newest = max((synthetic / n).stat().st_mtime_ns for n in names)
    return a if newest <= path.stat().st_mtime_ns else None


def _duplicate(synthetic: Path, rows: list[dict], real, test, val, cfg: FilterConfig, clip) -> tuple[list, dict]:
    from .audit import audit

    r = _reusable_audit(synthetic, rows, real, test, val, cfg, clip)
    reused = r is not None
    if r is None:
        r = audit(synthetic, real, test=test, val=val, clip=clip, quantile=cfg.quantile, threshold=cfg.threshold)
    by_name = {rec["file_name"]: rec for rec in r["images"]}
    out = []
    for row in rows:
        rec = by_name[row["file_name"]]
        flags = [f for f in cfg.duplicate_flags if rec.get(f)]
        d = {"pass": not flags, "flags": flags, "nearest_train": rec["nearest_train"],
             "train_sim": round(rec["train_sim"], 6)}
        if rec.get("synthetic_dup_of") and "duplicate" in flags:
            d["duplicate_of"] = rec["synthetic_dup_of"]
        if "leak" in flags:
            d["nearest_heldout"] = rec.get("nearest_heldout")
        out.append(d)
    return out, {"threshold": r["threshold"], "features": r["features"], "audit": "audit.json",
                 "audit_reused": reused}


def _classes(rows: list[dict], real) -> list[str]:
    labels = {r["label"] for r in rows}
    if real is not None:
        from ..data.sources import Source

        labels |= {rec.label for rec in Source(real).records() if rec.error is None}
    return sorted(labels)


def _clip(synthetic: Path, rows: list[dict], real, cfg: FilterConfig, clip) -> tuple[list, dict]:
    from ..data.imageset import load_synthetic
    from .metrics import extract

    classes = _classes(rows, real)
    texts = [cfg.prompt.format(label=c) for c in classes] + list(cfg.negative_prompts)
    images = load_synthetic(synthetic, clip.image_size, keep_zero_weight=True)
    emb = extract(images, clip.as_feature_extractor(), desc="CLIP filter")
    probs = (100.0 * emb @ clip.text_embeds(texts).T).softmax(-1)
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for i, r in enumerate(rows):
        best = int(probs[i].argmax())
        ok = best == index[r["label"]] if cfg.clip_match == "label" else best < len(classes)
        out.append({"pass": bool(ok), "predicted": texts[best], "p_label": round(float(probs[i, index[r["label"]]]), 6)})
    return out, {"model": clip.id, "revision": clip.revision, "prompts": texts, "n_classes": len(classes)}


def _probe_filters(synthetic: Path, rows: list[dict], probe, names: list[str], cfg: FilterConfig) -> dict[str, list]:
    probs, targets = probe.folder_probs(synthetic)  # in the order of `rows`
    pred = probs.argmax(1)
    out: dict[str, list] = {}
    if "agreement" in names:
        out["agreement"] = [{"pass": bool(pred[i] == targets[i]), "predicted": probe.classes[int(pred[i])],
                             "p_label": round(float(probs[i, targets[i]]), 6)} for i in range(len(rows))]
    if "cleanlab" in names:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        labels, p = targets.numpy(), probs.double().numpy()
        p = p / p.sum(1, keepdims=True)  # cleanlab checks that rows sum to 1 in float64
        try:
            issues = find_label_issues(labels, p, filter_by=cfg.cleanlab_filter_by)
            quality = get_label_quality_scores(labels, p)
        except ValueError as e:
            raise ConfigError(f"cleanlab could not judge these {len(rows)} images: {e}") from None
        out["cleanlab"] = [{"pass": not bool(issues[i]), "label_quality": round(float(quality[i]), 6)}
                           for i in range(len(rows))]
    return out


def _funnel(names: list[str], decisions: dict[str, list], rows: list[dict]) -> tuple[list, dict]:
    funnel, alive = [], np.ones(len(rows), dtype=bool)
    per_class: dict[str, Counter] = {}
    for name in names:
        failed = np.array([not d["pass"] for d in decisions[name]], dtype=bool)
        removed = failed & alive
        alive &= ~failed
        funnel.append({"filter": name, "failed": int(failed.sum()), "removed": int(removed.sum()),
                       "remaining": int(alive.sum())})
    for i, r in enumerate(rows):
        c = per_class.setdefault(r["label"], Counter({"n": 0, "kept": 0, **dict.fromkeys(names, 0)}))
        c["n"] += 1
        c["kept"] += int(alive[i])
        for name in names:
            c[name] += int(not decisions[name][i]["pass"])
    return funnel, {label: dict(c) for label, c in sorted(per_class.items())}


def filter_folder(synthetic: str | Path, real: str | Path | None = None, test: str | Path | None = None,
                  val: str | Path | None = None, config: dict[str, Any] | FilterConfig | None = None,
                  clip=None, progress: bool | None = None) -> dict[str, Any]:
    """Run the filters on the genaug output folder `synthetic`, judging against its real training images `real`
    (default: the folder's own source, from its config.yaml), and `test` / `val` for leakage (val also
    calibrates the probe, as in DIAGen). Records every decision in the rows and writes `filters.json`;
    returns its content. `clip`: a loaded genaug.components.clip.Clip (else `config.clip` is loaded)."""
    cfg = config if isinstance(config, FilterConfig) else build_config(FilterConfig, config or {}, where="filter")
    synthetic = Path(synthetic)
    if not is_output_dir(synthetic):
        raise ConfigError(f"{synthetic} is not a genaug output folder (no {METADATA} and config.yaml)")
    names = resolve_filters(cfg)
    if real is None:
        source = load_yaml(synthetic / CONFIG).get("source")
        real = source if source and Path(source).exists() else None
    needs_real = [n for n in names if n in ("duplicate", "agreement", "cleanlab")]
    if needs_real and real is None:
        raise ConfigError(f"filters {needs_real} judge against the real training images: give them (--real)")
    for path, what in ((real, "training set"), (test, "test set"), (val, "validation set")):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{what} {path} does not exist")
    with folder_locked(synthetic):  # a folder another run is writing fails before any model loads or trains
        pass
    if "clip" in names and clip is None:
        from ..components.clip import Clip

        clip = Clip(cfg.clip)
    probe = None
    if "agreement" in names or "cleanlab" in names:
        from .probe import fit_probe

        probe = fit_probe(real, val=val, holdout=cfg.holdout, classifier=cfg.classifier, seed=cfg.seed,
                          backbone=cfg.backbone, progress=progress)
    with folder_locked(synthetic):  # its rows are rewritten: no run may append to them meanwhile
        return _filter_rows(synthetic, names, cfg, real, test, val, clip, probe)


def _filter_rows(synthetic: Path, names: list[str], cfg: FilterConfig, real, test, val, clip, probe) -> dict:
    rows = read_rows(synthetic)
    for r in rows:  # a previous run's decisions are replaced, its weights given back
        if "weight_before_filter" in r:
            r["weight"] = r.pop("weight_before_filter")
        r.pop("filters", None), r.pop("filtered", None)
    if not rows:
        raise ConfigError(f"{synthetic} holds no images")
    decisions: dict[str, list] = {}
    models: dict[str, Any] = {}
    if "blank" in names:
        decisions["blank"] = _blank(synthetic, rows)
    if "duplicate" in names:
        decisions["duplicate"], models["duplicate"] = _duplicate(synthetic, rows, real, test, val, cfg, clip)
    if "clip" in names:
        decisions["clip"], models["clip"] = _clip(synthetic, rows, real, cfg, clip)
    warnings = []
    if probe is not None:
        decisions.update(_probe_filters(synthetic, rows, probe, names, cfg))
        models["probe"] = probe.describe()
        if probe.accuracy < WEAK_PROBE_ACCURACY:
            warnings.append(f"the classifier behind {' and '.join(n for n in names if n in ('agreement', 'cleanlab'))} "
                            f"is right on only {probe.accuracy:.0%} of its {probe.n_calibration} held-out real "
                            f"images: its verdicts on synthetic images are weak evidence. Give it more real images "
                            f"or a validation split (--val), a stronger backbone, or leave those filters out")
    funnel, per_class = _funnel(names, decisions, rows)

    kept, dropped = [], []
    for i, r in enumerate(rows):
        r["filters"] = {name: decisions[name][i] for name in names}
        r["filtered"] = [name for name in names if not decisions[name][i]["pass"]]
        if "cleanlab" in decisions:
            r["scores"] = {**r.get("scores", {}), "label_quality": decisions["cleanlab"][i]["label_quality"]}
        if r["filtered"] and cfg.action == "weight":
            r["weight_before_filter"] = r.get("weight", 1.0)
            r["weight"] = 0.0
        (dropped if r["filtered"] and cfg.action == "drop" else kept).append(r)
    if dropped:  # the record first, then the rows, then the files: a kill at any point loses no decision
        previous = (synthetic / FILTERED).read_text(encoding="utf-8") if (synthetic / FILTERED).is_file() else ""
        atomic_write(synthetic / FILTERED, previous + "".join(dumps_row(r) + "\n" for r in dropped))
    rewrite_rows(synthetic, kept)
    for r in dropped:
        (synthetic / r["file_name"]).unlink(missing_ok=True)
    summary = {"filters": names, "action": cfg.action, "n": len(rows), "kept": funnel[-1]["remaining"] if funnel
               else len(rows), "funnel": funnel, "per_class": per_class, "dropped": len(dropped),
               "real": str(real) if real is not None else None, "test": str(test) if test else None,
               "val": str(val) if val else None, "options": to_dict(cfg), "models": models,
               "warnings": warnings}
    atomic_write(synthetic / FILTERS_JSON, json.dumps(summary, indent=2, default=str))
    return summary


def filter_stage(out: Path, source, **options: Any) -> dict[str, Any]:
    """The `filter` post-generation stage of `genaug augment` (its `filter:` options): judge the finished
    folder against its own source. A rerun with the same options over the same images does nothing."""
    cfg = build_config(FilterConfig, options, where="filter")
    n_rows = len(read_rows(out))
    done = Path(out) / FILTERS_JSON
    if done.is_file():
        previous = json.loads(done.read_text())
        if previous.get("options") == to_dict(cfg) and previous.get("n") - previous.get("dropped", 0) == n_rows:
            return {"filters": f"unchanged ({n_rows} images already filtered)"}
    r = filter_folder(out, source.root, config=cfg)
    return {"filters": ", ".join(r["filters"]), "filter_action": r["action"],
            **({"filter_warnings": "; ".join(r["warnings"])} if r["warnings"] else {}),
            "filter_funnel": " -> ".join([str(r["n"])] + [f"{f['remaining']} ({f['filter']})" for f in r["funnel"]]),
            "filtered_out": r["n"] - r["kept"]}
