"""Which levers move the demo's semantic_flow arm? An ablation on a finished `genaug demo` folder.

    python benchmarks/demo_levers.py --demo runs/demo --out runs/demo-levers   # resumable

Every lever changes one thing against the demo's semantic_flow arm and keeps everything else — the split,
the generator (the demo's flow model), the budget (2 images per real image, unless the lever is the budget),
the classifier, its steps and seeds. Levers:
- generation: the SDEdit insertion time t0 (each value alone), classifier-free guidance, the midpoint solver
  instead of Euler, the paper's latent mode (inversion + perturbation) instead of SDEdit;
- scoring the demo's own images: DIAGen's confidence weighting, label-agreement filtering (a real-only
  probe; images it disagrees with weigh 0);
- the demo's "both" arm (the best classical candidate's images beside the generator's) with guidance 2;
- the closed-setting generator (`--ablation closed`, the labelled images only; needs that demo folder) with
  guidance 2, alone and in "both"; a generator trained twice as long;
- fewer images: only the first of the 2 variants of each real image; more: 4 instead of 2;
- the two composed: the best classical candidate applied once to every generated image (in its place);
- a lower synthetic share of every batch (0.25 instead of 0.5); for "both", a higher one (0.75).
Prints one row per lever: validation and test accuracy (mean ± std over the demo's seeds) and the test
difference to the demo's semantic_flow arm, real-only and the best classical arm; writes OUT/levers.csv and
OUT/levers.md. Choose a lever on the validation column only: the test column is there to report.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pandas as pd

from genaug.bench.run import train_cached
from genaug.data.imageset import shared_loads
from genaug.data.metadata import METADATA
from genaug.demo import pool_manifest
from genaug.flow.train import fit_flow
from genaug.pipeline import augment
from genaug.scoring.filters import filter_folder
from genaug.scoring.weighting import weight_synthetic

LEVERS: dict[str, dict] = {
    "t0 = 0.2 only": {"generate": {"t0": [0.2]}},  # earlier insertion: more of the image regenerated
    "t0 = 0.5 only": {"generate": {"t0": [0.5]}},
    "guidance 2 (CFG)": {"generate": {"guidance": 2.0}},
    # the demo's "both" arm with that lever: the best classical candidate's images beside the generator's
    "both, guidance 2": {"generate": {"guidance": 2.0}, "with_best_classical": True},
    "guidance 3 (CFG)": {"generate": {"guidance": 3.0}},
    "both, guidance 3": {"generate": {"guidance": 3.0}, "with_best_classical": True},
    # two levers together: guidance on the paper's latent mode
    "guidance 2, latent mode": {"generate": {"guidance": 2.0, "mode": "latent"}},
    "both, guidance 2, latent mode": {"generate": {"guidance": 2.0, "mode": "latent"}, "with_best_classical": True},
    # the closed-setting generator (--ablation closed: trained on the labelled images only) with guidance 2
    "closed generator, guidance 2": {"generate": {"guidance": 2.0}, "flow": "flow-model-closed"},
    "both, closed generator, guidance 2": {"generate": {"guidance": 2.0}, "flow": "flow-model-closed",
                                           "with_best_classical": True},
    # a generator trained twice as long (900 steps), guidance 2
    "900 generator steps, guidance 2": {"generate": {"guidance": 2.0}, "fit": {"steps": 900}},
    "both, 900 generator steps, guidance 2": {"generate": {"guidance": 2.0}, "fit": {"steps": 900},
                                              "with_best_classical": True},
    # guidance keeps the label: does it let an earlier insertion (more diversity) pay?
    "t0 = 0.2, guidance 2": {"generate": {"guidance": 2.0, "t0": [0.2]}},
    "both, t0 = 0.2, guidance 2": {"generate": {"guidance": 2.0, "t0": [0.2]}, "with_best_classical": True},
    # more images: 4 per real image instead of 2
    "4 images per real image, guidance 2": {"generate": {"guidance": 2.0}, "n": 4},
    "both, 4 images per real image, guidance 2": {"generate": {"guidance": 2.0}, "n": 4, "with_best_classical": True},
    # the two augmentations composed: the best classical candidate applied to each generated image
    "classical on the generator's images, guidance 2": {"generate": {"guidance": 2.0}, "chain_classical": True},
    "both, classical on the generator's images, guidance 2": {"generate": {"guidance": 2.0}, "chain_classical": True,
                                                              "with_best_classical": True},
    "midpoint solver": {"generate": {"solver": "midpoint"}},
    "latent mode (inversion + delta)": {"generate": {"mode": "latent"}},
    "DIAGen weighting": {"score": "weight"},
    "label-agreement filter": {"score": "agreement"},
    "1 image per real image": {"first_variant_only": True},
    "synthetic share 0.25": {"train": {"synthetic_prob": 0.25}},
    # "both" splits the synthetic half between two sources: a larger share gives each of them more
    "both, guidance 2, synthetic share 0.75": {"generate": {"guidance": 2.0}, "with_best_classical": True,
                                               "train": {"synthetic_prob": 0.75}},
}
PROBE = {"backbone": "mobilenet_v2"}  # the offline probe; weighting and filtering share one training of it


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("=", "")


def _copy_folder(src: Path, dst: Path) -> Path:
    if not (dst / METADATA).exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".genaug.lock"), dirs_exist_ok=True)
    return dst


def _first_variants(src: Path, dst: Path) -> Path:
    """The demo's images, keeping only variant 0 of each real image (the rest weigh 0: never drawn)."""
    dst = _copy_folder(src, dst)
    rows = [json.loads(line) for line in (dst / METADATA).read_text().splitlines()]
    for r in rows:
        if r["variant"] != 0:
            r["weight"] = 0.0
    (dst / METADATA).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a finished genaug demo folder")
    ap.add_argument("--out", type=Path, default=Path("runs/demo-levers"))
    ap.add_argument("--levers", nargs="*", default=list(LEVERS), help="a subset of the levers, by name")
    args = ap.parse_args()
    demo, out = args.demo.resolve(), args.out
    cfg = json.loads((demo / "config.yaml").read_text())
    result = json.loads((demo / "demo.json").read_text())
    split = demo / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
    real, val = split / "train.csv", split / "val.csv"
    test = demo / "data" / f"{result['dataset']}-test" / "manifest.csv"
    test = test if test.exists() else None
    base_syn = demo / "synthetic" / "semantic_flow"
    out.mkdir(parents=True, exist_ok=True)
    arms = result["arms"]

    rows = []
    with shared_loads():
        for name in args.levers:
            lever, key = LEVERS[name], _slug(name)
            syn = base_syn
            if "generate" in lever:
                # the same generation options are the same images: "both, guidance 2" reuses "guidance 2"'s
                first = next(n for n, v in LEVERS.items() if all(v.get(k) == lever.get(k)
                                                                 for k in ("generate", "flow", "fit", "n")))
                flow = demo / lever.get("flow", "flow-model")
                if "fit" in lever:  # a generator of its own: the demo's settings and data, one option changed
                    flow = out / "flows" / _slug(first)
                    fit_flow(real, flow, {**cfg["flow"], **lever["fit"]}, progress=False,
                             unlabeled=pool_manifest(split / "rest.csv", cfg["pool_per_class"]))
                syn = out / "synthetic" / _slug(first)
                augment(real, syn, method="semantic_flow", n=lever.get("n", cfg["n"]), seed=0, progress=False,
                        options={"model": str(flow), **cfg["semantic_flow"], **lever["generate"]})
                if lever.get("chain_classical"):  # one classical variant of every generated image, in its place
                    chained = out / "synthetic" / f"{_slug(first)}_then_{arms['classical']['method']}"
                    augment(syn, chained, method=arms["classical"]["method"], n=1, seed=0, progress=False)
                    syn = chained
            elif lever.get("score") == "weight":
                syn = _copy_folder(base_syn, out / "synthetic" / key)
                weight_synthetic(syn, real, val=val, progress=False, **PROBE)
            elif lever.get("score") == "agreement":
                syn = _copy_folder(base_syn, out / "synthetic" / key)
                filter_folder(syn, real, val=val, config={"filters": ["agreement"], **PROBE})
            elif lever.get("first_variant_only"):
                syn = _first_variants(base_syn, out / "synthetic" / key)
            sources = [syn]
            if lever.get("with_best_classical"):
                sources.insert(0, demo / "synthetic" / arms["classical"]["method"])
            for seed in cfg["seeds"]:
                tcfg = {**cfg["train"], **lever.get("train", {}), "seed": seed}
                rows.append(train_cached(out / "runs" / key / f"seed-{seed}", real, sources, val, test, {}, tcfg,
                                         {"lever": name, "seed": seed}))
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "levers.csv", index=False)
    metric = "test_acc" if test is not None else "val_acc"
    best_classical = max(arms["real"]["mean"], arms["classical"]["mean"])
    lines = [f"| lever | val acc % | {metric.replace('_acc', '')} acc % | vs semantic_flow (pp) | "
             f"vs best of real, classical (pp) |", "|---|---|---|---|---|",
             f"| demo's semantic_flow | {100 * arms['semantic_flow']['val_mean']:.2f} | "
             f"{100 * arms['semantic_flow']['mean']:.2f} ± {100 * arms['semantic_flow']['std']:.2f} | 0 | "
             f"{100 * (arms['semantic_flow']['mean'] - best_classical):+.2f} |"]
    for name, g in frame.groupby("lever", sort=False):
        m, s = g[metric].mean(), g[metric].std()
        lines.append(f"| {name} | {100 * g['val_acc'].mean():.2f} | {100 * m:.2f} ± {100 * s:.2f} | "
                     f"{100 * (m - arms['semantic_flow']['mean']):+.2f} | {100 * (m - best_classical):+.2f} |")
    table = "\n".join(lines)
    (out / "levers.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
