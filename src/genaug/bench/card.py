"""The data card of a genaug output folder: one self-contained HTML page (`genaug card DIR`) saying what the
synthetic data is and how far to trust it — the run's configuration and models, real beside synthetic
images per class, the synthetic-data metrics, the filter funnel, the weights and the memorisation / leakage
audit. It only reads the folder (and the real images); the one file it writes is the page.

Every section reads one file of the folder; where that file is missing the section says in one line which
command writes it.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from markupsafe import Markup
from tqdm.auto import tqdm

from ..core.config import ConfigError, build_config, load_yaml
from ..core.files import atomic_write
from ..core.log import bar_disabled, get_logger
from ..data.images import InputConfig, Rejected
from ..data.metadata import CONFIG, METADATA, is_output_dir, read_rows
from ..data.sources import Source
from ..scoring.audit import AUDIT, PAIRS_IMAGE
from .pages import IMAGES_LOADED_SCRIPT, img64, thumb64

log = get_logger(__name__)

CARD = "card.html"
MAX_CLASSES = 20  # per-class grids and tables beyond this are summarised in one line
MAX_FILTERED = 8  # thumbnails of filtered-out images shown
THUMB = 96  # px, the longer side of every thumbnail


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); rerun the command that wrote it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a JSON object; rerun the command that wrote it")
    return data


def _thumb_file(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return thumb64(im, THUMB)
    except (OSError, UnidentifiedImageError):
        return None


def collect_models(config: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Every distinct pretrained model the folder's provenance names — `{role: {"id", "revision"}}` under
    `models` in config.yaml and in each row, and any such mapping inside a row's `params` — as
    `{"role", "id", "revision"}`, in the order first seen."""
    found: dict[tuple[str, str, str], dict[str, str]] = {}

    def walk(node: Any, role: str) -> None:
        if isinstance(node, dict):
            if "id" in node and isinstance(node["id"], (str, int)) and ("revision" in node or role.startswith("models")):
                key = (role.removeprefix("models."), str(node["id"]), str(node.get("revision") or "-"))
                found.setdefault(key, {"role": key[0], "id": key[1], "revision": key[2]})
                return
            for k, v in node.items():
                walk(v, f"{role}.{k}" if role else str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, role)

    walk({"models": config.get("models") or {}}, "")
    for r in rows:
        walk({"models": r.get("models") or {}}, "")
        walk(r.get("params") or {}, "params")
    return list(found.values())


def _real_examples(real: Path, classes: list[str], per_class: int, input_cfg: InputConfig) -> dict[str, list[str]]:
    """The first `per_class` usable real images of each class as thumbnails, read by the source loader (so
    cut-outs are composited onto the run's `input.background`, as `genaug augment` saw them)."""
    source = Source(real, input_cfg)
    wanted = set(classes)
    out: dict[str, list[str]] = {c: [] for c in classes}
    for rec in source.records():
        if rec.error is not None or rec.label not in wanted or len(out[rec.label]) >= per_class:
            continue
        try:
            out[rec.label].append(thumb64(source.load(rec).image, THUMB))
        except Rejected:
            continue
        if all(len(v) >= per_class for v in out.values()):
            break
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _metrics(real: Path, folder: Path, clip, feature_size: int) -> dict[str, Any]:
    """synthetic_metrics as tables: overall and per class, one column per figure."""
    from ..scoring.metrics import synthetic_metrics

    r = synthetic_metrics(real, folder, clip=clip, feature_size=feature_size)
    keys = ["precision", "recall", "density", "coverage", r["distances"]["frechet"], r["distances"]["kernel"]]
    if clip is not None:
        keys += ["cmmd", "clip_score"]
    per_class = list(r.get("per_class", {}).items())
    rows = [["overall", str(r["n_real"]), str(r["n_synthetic"]), *(_fmt(r["overall"].get(k)) for k in keys)]]
    rows += [[c, str(v["n_real"]), str(v["n_synthetic"]), *(_fmt(v.get(k)) for k in keys)]
             for c, v in per_class[:MAX_CLASSES]]
    return {"header": ["", "real", "synthetic", *keys], "rows": rows,
            "more": max(0, len(per_class) - MAX_CLASSES),
            "about": f"{r['features']} features ({r['image_size']} px), k={r['k']}; synthetic: the images of weight "
                     f"> 0, as training draws them; the Fréchet distance "
                     f"({r['distances']['frechet']}) compares only with others in the same feature space"
                     + (f"; CLIP: {r['clip']['model']}" if "clip" in r else "")}


def _filters(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    f = _read_json(folder / "filters.json")
    filtered = [r for r in rows if r.get("filtered")]
    if f is None and not filtered:
        return None
    out: dict[str, Any] = {"examples": [], "n_filtered_rows": len(filtered)}
    if f is not None:
        names = [str(n) for n in f.get("filters", [])]
        out["summary"] = (f"{f.get('n', '?')} images, {f.get('kept', '?')} kept; action: {f.get('action', '?')}"
                          + (" (failed images get weight 0)" if f.get("action") == "weight" else
                             " (failed images are removed)" if f.get("action") == "drop" else ""))
        out["funnel"] = [[str(s.get("filter", "?")), _fmt(s.get("failed")), _fmt(s.get("removed")),
                          _fmt(s.get("remaining"))] for s in f.get("funnel", [])]
        per_class = list((f.get("per_class") or {}).items())
        out["per_class_header"] = ["class", "n", "kept", *names]
        out["per_class"] = [[str(c), _fmt(v.get("n")), _fmt(v.get("kept")), *(_fmt(v.get(n, 0)) for n in names)]
                            for c, v in per_class[:MAX_CLASSES]]
        out["per_class_more"] = max(0, len(per_class) - MAX_CLASSES)
        out["options"] = json.dumps(f.get("options") or {}, indent=2, ensure_ascii=False)
        out["warnings"] = [str(w) for w in f.get("warnings") or []]
        probe = (f.get("models") or {}).get("probe")
        if probe:
            out["classifier"] = (f"judged by a real-only classifier ({probe.get('backbone')}, calibrated on "
                                 f"{probe.get('calibration')}), right on {_fmt(probe.get('holdout_accuracy'))} of "
                                 f"its {probe.get('n_holdout')} held-out real images")
    for r in filtered[:MAX_FILTERED]:
        reasons = r["filtered"] if isinstance(r["filtered"], list) else [r["filtered"]]
        out["examples"].append({"src": _thumb_file(folder / r["file_name"]), "file_name": r["file_name"],
                                "label": r["label"], "reasons": ", ".join(map(str, reasons))})
    return out


def _weighting(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    weights = [float(r.get("weight", 1.0)) for r in rows]
    out: dict[str, Any] = {"weights": [["min", _fmt(min(weights))], ["median", _fmt(statistics.median(weights))],
                                       ["max", _fmt(max(weights))],
                                       ["at weight 0", str(sum(w == 0 for w in weights))]] if weights else []}
    w = _read_json(folder / "weighting.json")
    if w is not None:
        out["summary"] = [[k, _fmt(w.get(k))] for k in ("rule", "temperature", "calibration", "backbone",
                                                         "mean_confidence", "zero_weight") if k in w]
        if w.get("backbone_fallback"):
            out["summary"].append(["backbone fallback", str(w["backbone_fallback"])])
    return out


def _audit(folder: Path, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    a = _read_json(folder / AUDIT)
    if a is None:
        return None
    counts = a.get("counts") or {}
    shown = [k for k in ("near_copy", "source_copy", "leak", "duplicate") if k in counts]
    t = a.get("threshold") or {}
    how = (f"quantile {t.get('quantile')} of the training images' nearest-neighbour similarities"
           if t.get("method") == "quantile" else t.get("method", "?"))
    out: dict[str, Any] = {
        "about": f"{a.get('n_synthetic', '?')} synthetic vs {a.get('n_train', '?')} training images"
                 + "".join(f", {a[f'n_{k}']} {k}" for k in ("test", "val") if f"n_{k}" in a)
                 + f"; {a.get('features', '?')} features; near-copy threshold "
                 + (f"{t['value']:.4f}" if isinstance(t.get("value"), (int, float)) else "?") + f" ({how})",
        "counts_header": ["", *shown], "counts": [["all", *(_fmt(counts[k]) for k in shown)]],
        "pairs_png": None, "pairs": []}
    per_class = list((a.get("per_class") or {}).items())
    out["counts"] += [[str(c), *(_fmt(v.get(k)) for k in shown)] for c, v in per_class[:MAX_CLASSES]]
    audited = {im.get("file_name") for im in a.get("images") or []}
    now = {r["file_name"] for r in rows}
    if audited and audited != now:
        out["stale"] = (f"This audit judged {len(audited)} images; the folder now holds {len(now)} "
                        f"({len(now - audited)} not audited, {len(audited - now)} gone): its figures are out of date "
                        f"— rerun genaug audit.")
    pairs_png = folder / PAIRS_IMAGE
    if pairs_png.is_file():  # the picture; the table below too: its labels are text (any script), the PNG's font
        out["pairs_png"] = img64(pairs_png)  # may lack their glyphs
    roots = {k: Path(v) for k, v in (a.get("real") or {}).items() if isinstance(v, str)}
    for p in (a.get("closest_pairs") or [])[:12]:
        real_root = roots.get(p.get("split", "train"))
        real_path = (Path(p["real_path"]) if p.get("real_path") else  # older audits: the id under an ImageFolder
                     real_root / str(p.get("real")) if real_root is not None and real_root.is_dir() else None)
        out["pairs"].append({
            "synthetic": str(p.get("synthetic")), "real": str(p.get("real")), "split": str(p.get("split")),
            "similarity": _fmt(p.get("similarity")), "flag": bool(p.get("flag")),
            "syn_src": _thumb_file(folder / str(p.get("synthetic"))),
            "real_src": _thumb_file(real_path) if real_path is not None and real_path.is_file() else None})
    return out


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genaug data card: {{ folder_name }}</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img.t{width:{{ thumb }}px;height:{{ thumb }}px;object-fit:contain;image-rendering:pixelated;background:#eee;margin:1px}
.row{display:flex;gap:2em;align-items:flex-start;margin:.3em 0 1em}.row h4{margin:.2em 0;font-weight:normal;color:#555}
.note{color:#666;font-style:italic}.warning{color:#a00000}pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}figcaption{font-size:12px;color:#555;max-width:200px}
tr.flag td{background:#fde8e8}#summary td{text-align:left}
</style></head><body>
{% macro table(header, rows, id) %}<table id="{{ id }}"><thead><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>{% for r in rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>{% endmacro %}
<h1>Data card: {{ folder_name }}</h1>
<table id="summary"><tbody>
<tr><td>folder</td><td>{{ folder }}</td></tr>
<tr><td>method</td><td>{{ method }}</td></tr>
<tr><td>images</td><td>{{ n_images }}</td></tr>
<tr><td>classes</td><td>{{ classes|length }}: {{ classes[:max_classes]|join(", ") }}{% if classes|length > max_classes %}, … ({{ classes|length - max_classes }} more){% endif %}</td></tr>
<tr><td>source</td><td>{{ source }}</td></tr>
<tr><td>created</td><td>{{ created }}</td></tr>
<tr><td>genaug version</td><td>{{ version }}</td></tr>
</tbody></table>

<h2 id="models">Models</h2>
{% if models %}{{ table(["role", "model", "revision"], models, "models-table") }}
{% else %}<p class="note">No pretrained model: {{ method }} is a classical transform (or its models were not recorded).</p>{% endif %}

<h2 id="grids">Real and synthetic images per class</h2>
<p class="note">{{ real_note }}</p>
{% for g in grids %}<h3>{{ g.label }} <small>({{ g.n_synthetic }} synthetic)</small></h3><div class="row" data-class="{{ g.label }}">
{% if g.real is not none %}<div class="real"><h4>real</h4>{% for src in g.real %}<img class="t real" alt="real {{ g.label }}" src="{{ src }}">{% else %}<span class="note">none</span>{% endfor %}</div>{% endif %}
<div class="synthetic"><h4>synthetic</h4>{% for src in g.synthetic %}<img class="t synthetic" alt="synthetic {{ g.label }}" src="{{ src }}">{% else %}<span class="note">none</span>{% endfor %}</div>
</div>{% endfor %}
{% if more_classes %}<p class="note">… and {{ more_classes }} more classes, not shown.</p>{% endif %}

<h2 id="metrics">Synthetic-data metrics</h2>
{% if metrics is string %}<p class="note">{{ metrics }}</p>{% else %}<p>{{ metrics.about }}</p>
{{ table(metrics.header, metrics.rows, "metrics-table") }}{% if metrics.more %}<p class="note">… and {{ metrics.more }} more classes.</p>{% endif %}
{% if cmmd_note %}<p class="note">{{ cmmd_note }}</p>{% endif %}{% endif %}

<h2 id="filters">Filters</h2>
{% if filters is none %}<p class="note">No filters.json: run <code>genaug filter {{ folder }}</code> to filter the images and record the funnel here.</p>
{% else %}{% if filters.summary %}<p>{{ filters.summary }}</p>
{% if filters.classifier %}<p>Agreement and confident learning {{ filters.classifier }}.</p>{% endif %}
{% for w in filters.warnings %}<p class="warning">Warning: {{ w }}</p>{% endfor %}
<h3>Funnel</h3>{{ table(["filter", "failed", "removed", "remaining"], filters.funnel, "funnel-table") }}
{% if filters.per_class %}<h3>Per class (images failing each filter)</h3>{{ table(filters.per_class_header, filters.per_class, "filters-per-class") }}{% endif %}
{% if filters.per_class_more %}<p class="note">… and {{ filters.per_class_more }} more classes.</p>{% endif %}
<details><summary>filter options</summary><pre>{{ filters.options }}</pre></details>
{% else %}<p class="note">No filters.json (run <code>genaug filter {{ folder }}</code> to record the funnel), but {{ filters.n_filtered_rows }} image(s) record failed filters.</p>{% endif %}
{% if filters.examples %}<h3>Filtered images ({{ filters.examples|length }} of {{ filters.n_filtered_rows }})</h3>
{% for e in filters.examples %}<figure>{% if e.src %}<img class="t filtered" alt="filtered {{ e.file_name }}" src="{{ e.src }}">{% endif %}<figcaption>{{ e.label }}: {{ e.reasons }}</figcaption></figure>{% endfor %}{% endif %}{% endif %}

<h2 id="weighting">Weights</h2>
{% if weighting.summary %}{{ table(["", "value"], weighting.summary, "weighting-table") }}
{% else %}<p class="note">No weighting.json: run <code>genaug weight {{ folder }} --real TRAIN</code> to weight the images by a calibrated real-data classifier.</p>{% endif %}
{% if weighting.weights %}{{ table(["weight", "value"], weighting.weights, "weights-table") }}{% endif %}

<h2 id="audit">Memorisation and leakage audit</h2>
{% if audit is none %}<p class="note">No audit.json: run <code>genaug audit {{ folder }} --real TRAIN [--test TEST]</code> to look for near-copies and leaks.</p>
{% else %}{% if audit.stale %}<p class="note" id="audit-stale">{{ audit.stale }}</p>{% endif %}<p>{{ audit.about }}</p>{{ table(audit.counts_header, audit.counts, "audit-table") }}
<h3>Closest pairs</h3>
{% if audit.pairs_png %}<img alt="audit closest pairs" src="{{ audit.pairs_png }}">{% endif %}
{% if audit.pairs %}<table id="pairs-table"><thead><tr><th>synthetic</th><th>real</th><th>split</th><th>similarity</th><th>flagged</th></tr></thead><tbody>
{% for p in audit.pairs %}<tr{% if p.flag %} class="flag"{% endif %}><td>{% if p.syn_src %}<img class="t pair" alt="{{ p.synthetic }}" src="{{ p.syn_src }}"><br>{% endif %}{{ p.synthetic }}</td>
<td>{% if p.real_src %}<img class="t pair" alt="{{ p.real }}" src="{{ p.real_src }}"><br>{% endif %}{{ p.real }}</td><td>{{ p.split }}</td><td>{{ p.similarity }}</td><td>{{ "yes" if p.flag else "no" }}</td></tr>{% endfor %}
</tbody></table>{% elif not audit.pairs_png %}<p class="note">The audit recorded no pairs.</p>{% endif %}{% endif %}

<h2 id="config">Configuration</h2><pre>{{ config_text }}</pre>
{{ images_loaded }}
</body></html>
"""


def write_card(folder: str | Path, real: str | Path | None = None, out: str | Path | None = None, clip=None,
               per_class: int = 6, metrics: bool = True, feature_size: int = 224, progress: bool | None = None) -> Path:
    """Write the data card of the genaug output folder `folder` (to `folder/card.html`, or `out`) and return
    its path. `real`: the real images shown beside the synthetic ones and measured against them (default: the
    run's `source` where it still exists). `clip`: a CLIP model (hub id, local dir or a
    `genaug.components.clip.Clip`) adds CMMD and the CLIP score. `metrics=False` leaves the metrics out;
    `feature_size`: input size of the MobileNetV2 feature extractor they use."""
    import jinja2

    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist")
    if not is_output_dir(folder):
        raise ConfigError(f"{folder} is not a genaug output folder (it needs {METADATA} and {CONFIG}, written by "
                          "`genaug augment SRC --out DIR`)")
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    if real is not None and not Path(real).exists():
        raise ConfigError(f"real images {real} do not exist")
    config_text = (folder / CONFIG).read_text(encoding="utf-8")
    config = load_yaml(folder / CONFIG)
    if not isinstance(config, dict):
        raise ConfigError(f"{folder / CONFIG} is not a mapping; rerun the `genaug augment` that wrote it")
    rows = read_rows(folder)
    input_cfg = build_config(InputConfig, config.get("input") or {}, where=f"{folder / CONFIG}: input")

    if real is None and config.get("source") and Path(config["source"]).exists():
        real = Path(config["source"])
    real = Path(real) if real is not None else None
    if real is not None:
        real_note = f"Real images: the first {per_class} of each class in {real}; synthetic: the first {per_class}."
    else:
        real_note = (f"Synthetic images only: the run's source ({config.get('source', 'not recorded')}) is not here; "
                     "pass --real TRAIN to show real images beside them and to compute the metrics.")

    by_class: dict[str, list[dict]] = {}
    for r in rows:
        by_class.setdefault(str(r["label"]), []).append(r)
    classes = sorted(by_class)
    shown = classes[:MAX_CLASSES]
    real_thumbs = _real_examples(real, shown, per_class, input_cfg) if real is not None else None
    grids = []
    for c in tqdm(shown, desc="card: classes", unit="class", disable=bar_disabled(progress), leave=False):
        syn = [s for s in (_thumb_file(folder / r["file_name"]) for r in by_class[c][:per_class]) if s]
        grids.append({"label": c, "n_synthetic": len(by_class[c]), "synthetic": syn,
                      "real": real_thumbs[c] if real_thumbs is not None else None})

    clip_model, cmmd_note = clip, None
    if not metrics:
        metric_section: Any = "Metrics left out (--no-metrics); run `genaug card` without it, or `genaug metrics`."
    elif real is None:
        metric_section = "No real images to compare with: pass --real TRAIN for precision / recall / density / coverage, the Fréchet distance and CMMD."
    else:
        if isinstance(clip, (str, Path)):
            from ..components.clip import Clip

            clip_model = Clip(str(clip))
        try:
            metric_section = _metrics(real, folder, clip_model, feature_size)
        except ConfigError as e:  # e.g. every image at weight 0: the card still renders, and says why
            metric_section = f"Metrics could not be computed: {e}"
        if clip_model is None:
            cmmd_note = "CMMD and the CLIP score need a CLIP model: pass --clip MODEL (hub id or local dir)."

    models = [[m["role"], m["id"], m["revision"]] for m in collect_models(config, rows)]
    versions = config.get("versions") or {}
    created = sorted(str(r["created_at"]) for r in rows if r.get("created_at"))
    html = jinja2.Template(_HTML, autoescape=True).render(
        folder=str(folder), folder_name=folder.resolve().name, method=config.get("method", "?"), n_images=len(rows),
        classes=classes, max_classes=MAX_CLASSES, source=config.get("source", "?"),
        created=f"{created[0]} – {created[-1]}" if created else "-",
        version=versions.get("genaug") or (rows[0].get("genaug_version") if rows else None) or "?",
        models=models, real_note=real_note, grids=grids, more_classes=max(0, len(classes) - MAX_CLASSES),
        metrics=metric_section, cmmd_note=cmmd_note, filters=_filters(folder, rows),
        weighting=_weighting(folder, rows), audit=_audit(folder, rows), config_text=config_text, thumb=THUMB,
        images_loaded=Markup(IMAGES_LOADED_SCRIPT))
    out = Path(out) if out is not None else folder / CARD
    atomic_write(out, html)
    log.info("data card: %s", out)
    return out
