"""Bench results -> `results.csv`, `summary.csv`, `report.md` and a self-contained `report.html`
(tables, an accuracy-vs-synthetic-proportion plot, real-vs-synthetic image grids, all embedded)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from markupsafe import Markup

from ..core.config import ConfigError
from .pages import IMAGES_LOADED_SCRIPT, img64 as _img64

GROUP = ["arm", "kind", "split", "synthetic_prob"]


def write_results(root: Path, rows: list[dict]) -> Path:
    """results.csv; each row's `run_dir` relative to `root` (so the report finds the runs from any working
    directory, and after the folder moves)."""
    path = root / "results.csv"

    def relative(run_dir):
        if not isinstance(run_dir, str) or not run_dir:
            return run_dir
        p = Path(run_dir).absolute()
        return p.relative_to(root.absolute()).as_posix() if p.is_relative_to(root.absolute()) else str(p)

    pd.DataFrame([{**r, "run_dir": relative(r["run_dir"])} if "run_dir" in r else r for r in rows]).to_csv(
        path, index=False)
    return path


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per (arm, split, synthetic proportion)."""
    acc_cols = [c for c in results.columns if c in ("test_acc", "val_acc", "test_sic", "cas_acc", "label_agreement")
                or (c.startswith("ood_") and c.endswith("_acc"))]
    df = results.copy()
    df["synthetic_prob"] = df["synthetic_prob"].astype("object").where(df["synthetic_prob"].notna(), "pooled")
    # arms that draw extra images (a generator's, or a pseudo-labelled "pool") keep their share
    df.loc[~df["kind"].isin(("generator", "pool")), "synthetic_prob"] = "-"
    agg = {c: ["mean", "std"] for c in acc_cols if df[c].notna().any()}
    agg.update(seed=["count"], n_synthetic=["mean"], generation_seconds=["mean"], train_seconds=["mean"])
    if "synthetic_share" in df:
        agg["synthetic_share"] = ["mean"]  # the share of synthetic images the batches really held
    if "budget" in df:
        agg["budget"] = ["max"]  # one value per arm: synthetic images per real image
    out = df.groupby(GROUP, sort=False, dropna=False).agg(agg)
    out.columns = [a if b == "mean" or a == "budget" else f"{a}_{b}" for a, b in out.columns]
    out = out.rename(columns={"seed_count": "seeds"}).reset_index()
    for c in out.columns:
        if c.endswith("_std"):
            out[c] = out[c].fillna(0.0)
    return out


def _fmt(mean: float, std: float) -> str:
    return "-" if pd.isna(mean) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _table(summary: pd.DataFrame) -> pd.DataFrame:
    metric_cols = [c for c in summary.columns if (c.endswith("_acc") or c in ("test_sic", "label_agreement"))
                   and f"{c}_std" in summary]
    t = summary[["arm", "split", "synthetic_prob", "seeds"]].copy()
    for c in metric_cols:
        label = {"test_acc": "test acc %", "val_acc": "val acc %", "test_sic": "test SIC ×100",
                 "cas_acc": "CAS acc %", "label_agreement": "label agreement %"}.get(
            c, c.removeprefix("ood_").removesuffix("_acc") + " (OOD) acc %")
        t[label] = [_fmt(m, s) for m, s in zip(summary[c], summary[f"{c}_std"])]
    if "budget" in summary:
        t["per real image"] = summary["budget"].fillna(0).astype(int)
    if "synthetic_share" in summary:
        t["synthetic share"] = summary["synthetic_share"].round(3)
    t["synthetic images"] = summary["n_synthetic"].round().astype(int)
    t["generation s"] = summary["generation_seconds"].round(1)
    t["train s"] = summary["train_seconds"].round(1)
    return t


def _proportion_plot(summary: pd.DataFrame, path: Path) -> Path | None:
    gen = summary[(summary["kind"] == "generator") & summary["synthetic_prob"].map(lambda v: isinstance(v, float))]
    if gen.empty or gen["synthetic_prob"].nunique() < 2:
        return None
    # test accuracy; a bench without a test set plots validation accuracy, and says so
    metric = "test_acc" if "test_acc" in summary and summary["test_acc"].notna().any() else "val_acc"
    if metric not in summary or not summary[metric].notna().any():
        return None
    from matplotlib.figure import Figure  # no pyplot: the user's matplotlib backend is left alone

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for (arm, split), g in gen.groupby(["arm", "split"], sort=False):
        g = g.sort_values("synthetic_prob")
        ax.errorbar(g["synthetic_prob"], 100 * g[metric], yerr=100 * g[f"{metric}_std"], marker="o", capsize=3,
                    label=f"{arm} ({split})")
    for (arm, split), g in summary[summary["kind"] == "real"].groupby(["arm", "split"], sort=False):
        ax.axhline(100 * g[metric].iloc[0], linestyle="--", color="grey", label=f"real only ({split})")
    ax.set(xlabel="synthetic proportion of each batch",
           ylabel="test accuracy (%)" if metric == "test_acc" else "validation accuracy (%) (no test set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def run_path(root: Path, run_dir) -> Path | None:
    """A results row's run folder: recorded relative to the bench folder (older benches: to the working
    directory they ran in); None when neither holds it."""
    if not isinstance(run_dir, str) or not run_dir:
        return None
    p = Path(run_dir)
    return next((q for q in ((p,) if p.is_absolute() else (root / p, p)) if q.is_dir()), None)


def learning_curves(results: pd.DataFrame, path: Path, root: Path) -> Path | None:
    """Validation accuracy against training step, mean over seeds, one line per arm (and split, and synthetic
    proportion where several were trained): where each arm's selected epoch sits, and whether real-only
    training had converged and begun to overfit."""
    curves = []
    for row in results.itertuples():
        run = run_path(root, getattr(row, "run_dir", None))
        if run is None or not (run / "results.csv").is_file():
            continue
        h = pd.read_csv(run / "results.csv")
        if "val_acc" in h and h["val_acc"].notna().any():
            share = getattr(row, "synthetic_prob", None)
            curves.append(h[["step", "val_acc"]].assign(arm=row.arm, split=row.split,
                                                       share="" if pd.isna(share) else f"p={share:g}"))
    if not curves:
        return None
    from matplotlib.figure import Figure  # no pyplot: the user's matplotlib backend is left alone

    df = pd.concat(curves)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    many_splits = df["split"].nunique() > 1
    many_shares = df.groupby("arm")["share"].nunique().max() > 1
    for (arm, split, share), g in df.groupby(["arm", "split", "share"], sort=False):
        m = g.groupby("step")["val_acc"].agg(["mean", "std"]).reset_index()
        label = " ".join(x for x in (arm, share if many_shares else "", f"({split})" if many_splits else "") if x)
        line, = ax.plot(m["step"], 100 * m["mean"], marker=".", label=label)
        ax.fill_between(m["step"], 100 * (m["mean"] - m["std"].fillna(0)), 100 * (m["mean"] + m["std"].fillna(0)),
                        color=line.get_color(), alpha=0.15)
    ax.set(xlabel="training step", ylabel="validation accuracy (%)", title="learning curves (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _grids(root: Path, results: pd.DataFrame) -> dict[str, Path]:
    """One grid per generator arm of these results: its first split and seed, at the budget it was trained at
    (folders of arms or budgets no longer in results.csv are not shown)."""
    from .grids import save_grid

    grids = {}
    gen = results[results["kind"] == "generator"] if "kind" in results else results.iloc[:0]
    for arm, g in gen.groupby("arm", sort=False):
        first = g.sort_values(["split", "seed"]).iloc[0]
        budget = first.get("budget")
        folder = (root / "synthetic" / str(arm) / str(first["split"])
                  / f"budget-{int(budget) if pd.notna(budget) else 0}" / f"seed-{int(first['seed'])}")
        if (folder / "metadata.jsonl").is_file():
            grid = save_grid(folder, root / "grids" / f"{arm}.png")
            if grid is not None:
                grids[str(arm)] = grid
    return grids


_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genaug bench report</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}
figure{display:inline-block;margin:0 2em 1em 0;vertical-align:top}figcaption{font-size:13px;color:#555}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}
</style></head><body>
<h1>genaug bench report</h1>
<p>{{ intro }}</p>
{% for note in notes %}<p>{{ note }}</p>{% endfor %}
<h2>Accuracy (mean ± std over seeds)</h2>
{{ table }}
{% if curves %}<h2>Learning curves</h2><p>Validation accuracy against training step; each run keeps its best validation epoch.</p><img alt="learning curves" src="{{ curves }}">{% endif %}
{% if plot %}<h2>Accuracy vs synthetic proportion</h2><img alt="accuracy vs synthetic proportion" src="{{ plot }}">{% endif %}
{% if grids %}<h2>Real vs synthetic</h2><p>Each row: a real image, then its first synthetic variants.</p>
{% for name, src in grids %}<figure><img alt="grid {{ name }}" src="{{ src }}"><figcaption>{{ name }}</figcaption></figure>{% endfor %}{% endif %}
<h2>Configuration</h2><pre>{{ config }}</pre>
{{ images_loaded }}
</body></html>
"""


def write_report(root: str | Path, grids: dict[str, Path] | None = None, notes: list[str] = ()) -> Path:
    """(Re-)render report.md and report.html from RUN_DIR/results.csv; `grids` (name -> PNG) replaces the
    real-vs-synthetic grids found under RUN_DIR/synthetic/; `notes` are paragraphs under the intro (e.g. what
    a generator was trained on)."""
    import jinja2

    root = Path(root)
    if not (root / "results.csv").exists():
        raise ConfigError(f"{root} has no results.csv: run `genaug bench` first")
    results = pd.read_csv(root / "results.csv")
    summary = summarize(results)
    summary.to_csv(root / "summary.csv", index=False)
    table = _table(summary)
    plot = _proportion_plot(summary, root / "accuracy_vs_proportion.png")
    curves = learning_curves(results, root / "learning_curves.png", root)
    grids = {n: g for n, g in (grids if grids is not None else _grids(root, results)).items() if g is not None}
    config = (root / "config.yaml").read_text() if (root / "config.yaml").exists() else ""
    budgets = (results.loc[results["kind"] == "generator", "budget"].dropna().unique()
               if {"kind", "budget"} <= set(results) else [])
    intro = (f"{len(results)} training runs: {results['arm'].nunique()} arms × {results['split'].nunique()} "
             f"split(s) × {results['seed'].nunique()} seed(s). Every arm trains the same classifier on the same "
             "split and seed" + ("; generators get the same number of synthetic images per real image "
                                 f"({int(budgets[0])})." if len(budgets) == 1 else
                                 "; generators' budgets differ (the 'per real image' column)." if len(budgets) else
                                 "."))
    md = ["# genaug bench report", "", intro, "", *(x for n in notes for x in (n, "")), "## Accuracy (mean ± std over seeds)", "",
          table.to_markdown(index=False), ""]
    if curves:
        md += ["## Learning curves", "", f"![learning curves]({curves.name})", ""]
    if plot:
        md += ["## Accuracy vs synthetic proportion", "", f"![accuracy vs synthetic proportion]({plot.name})", ""]
    if grids:
        md += ["## Real vs synthetic", ""] + [f"![{n}](grids/{p.name})" for n, p in grids.items()] + [""]
    md += ["## Configuration", "", "```yaml", config.rstrip(), "```", ""]
    (root / "report.md").write_text("\n".join(md), encoding="utf-8")
    html = jinja2.Template(_HTML, autoescape=True).render(
        intro=intro, notes=list(notes), table=Markup(table.to_html(index=False, border=0)),
        plot=_img64(plot) if plot else None, curves=_img64(curves) if curves else None,
        grids=[(n, _img64(p)) for n, p in grids.items()], config=config,
        images_loaded=Markup(IMAGES_LOADED_SCRIPT))
    (root / "report.html").write_text(html, encoding="utf-8")
    return root / "report.html"


def load_summary(root: str | Path) -> list[dict]:
    return json.loads(pd.read_csv(Path(root) / "summary.csv").to_json(orient="records"))


