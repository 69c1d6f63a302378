"""`genaug demo`: the main job, end to end and offline, on real Fashion-MNIST (scikit-learn's digits where
the Debian package is missing). Does flow-matching semantic augmentation help in the low-data regime?

1. A stratified 5 % of the training set (one split, seed 0) is the real data; 200 other images per class
   are validation; the full test set (10k) is the test.
2. `fit-flow` trains genaug's flow-matching generator on the real 5 % only.
3. `semantic_flow` writes synthetic variants of every real image; each classical candidate writes the
   same number of variants (a matched budget).
4. The same small CNN trains, for the same number of steps, on (a) real, (b) real + each classical
   candidate, (c) real + semantic_flow, (d) real + both (the best classical candidate, picked on mean
   validation accuracy over the seeds, and semantic_flow), over 3 training seeds; synthetic images make up
   `synthetic_prob` of every batch; each run keeps its best validation epoch. Test accuracy: mean ± std.
5. Each generator's images are also judged on their own: label agreement (the share the real-only
   classifier of the same seed assigns to their label) and, for semantic_flow and the picked classical
   candidate, the classification accuracy score (a classifier trained on them alone).
Everything is cached in the output folder: a rerun (or a run killed and restarted) redoes only what is
missing. The results are also a bench run: `genaug report DIR` renders them.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .bench.report import summarize, write_report, write_results
from .bench.run import generator_scores, train_cached
from .data.builtin import export_builtin, fashion_mnist_available
from .data.splits import make_splits
from .pipeline import augment
from .flow.train import fit_flow
from .bench.grids import save_grid

ARMS = ("real", "classical", "semantic_flow", "both")

DEMO = {
    "fraction": 0.05,
    "val_per_class": 200,
    "seeds": [0, 1, 2],
    "n": 2,  # synthetic variants per real image, for every generator
    "classical_candidates": ["flipcrop", "randaugment", "trivialaugment"],
    "flow": {"steps": 450, "batch_size": 128, "block_channels": [32, 64, 64]},
    "semantic_flow": {"mode": "sdedit", "t0": [0.3, 0.4, 0.5], "steps": 10},
    "train": {"model": "genaug_small_cnn", "model_options": {"width": 16}, "image_size": 28, "epochs": 6,
              "steps_per_epoch": 100, "batch_size": 64, "lr": 3e-3, "synthetic_prob": 0.5},
}


def run_demo(out: str | Path, quick: bool = False, progress: bool | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the demo; `quick` shrinks every stage for smoke tests."""
    cfg = json.loads(json.dumps(DEMO))
    if quick:
        cfg.update(fraction=0.01, val_per_class=10, seeds=[0, 1], classical_candidates=["flipcrop", "randaugment"])
        cfg["flow"].update(steps=20, block_channels=[16, 32])
        cfg["train"].update(epochs=2, steps_per_epoch=10)
    for k, v in (overrides or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    cfg["flow"].setdefault("hflip", dataset == "fashion-mnist")  # a mirrored garment is a garment; a digit is not
    t = time.perf_counter()
    train_pool = export_builtin(dataset, "train", out / "data" / f"{dataset}-train")
    test = export_builtin(dataset, "test", out / "data" / f"{dataset}-test") if dataset == "fashion-mnist" else None
    make_splits(train_pool, out / "splits", [0], fraction=cfg["fraction"], val=cfg["val_per_class"])
    split = out / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
    real, val = split / "train.csv", split / "val.csv"
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    flow = fit_flow(real, out / "flow-model", cfg["flow"], progress=progress)
    timings["fit_flow"] = time.perf_counter() - t

    t = time.perf_counter()
    synthetic = {"semantic_flow": out / "synthetic" / "semantic_flow"}
    augment(real, synthetic["semantic_flow"], method="semantic_flow", n=cfg["n"], seed=0, progress=progress,
            options={"model": str(out / "flow-model"), **cfg["semantic_flow"]})
    timings["generate_semantic_flow"] = time.perf_counter() - t
    gen_seconds = {"semantic_flow": timings["generate_semantic_flow"]}
    for name in cfg["classical_candidates"]:
        t = time.perf_counter()
        synthetic[name] = out / "synthetic" / name
        augment(real, synthetic[name], method=name, n=cfg["n"], seed=0, progress=progress)
        gen_seconds[name] = time.perf_counter() - t
    timings["generate_classical"] = sum(gen_seconds[n] for n in cfg["classical_candidates"])

    def run(arm: str, method: str, sources: list[str], seed: int) -> dict:
        row = {"arm": arm, "method": method, "kind": "real" if not sources else "generator",
               "split": f"fraction-{cfg['fraction']:g}", "seed": seed,
               "synthetic_prob": cfg["train"]["synthetic_prob"] if sources else None,
               "budget": cfg["n"] if sources else 0,
               # what its synthetic images cost to generate (resumed runs: this call's share only)
               "generation_seconds": round(sum(gen_seconds[s] for s in sources), 1)}
        return train_cached(out / "runs" / arm / f"{method}-seed-{seed}", real, [synthetic[s] for s in sources],
                            val, test, {}, {**cfg["train"], "seed": seed}, row, progress=progress)

    t = time.perf_counter()
    rows = [run("real", "none", [], seed) for seed in cfg["seeds"]]
    # every classical candidate is an arm over every seed; the best is picked on mean validation accuracy
    candidates = {name: [run(f"classical:{name}", name, [name], seed) for seed in cfg["seeds"]]
                  for name in cfg["classical_candidates"]}
    picks = {name: sum(r["val_acc"] for r in rs) / len(rs) for name, rs in candidates.items()}
    best = max(picks, key=picks.get)
    for name, rs in candidates.items():
        rows += [{**r, "arm": "classical" if name == best else r["arm"]} for r in rs]
    rows += [run("semantic_flow", "semantic_flow", ["semantic_flow"], seed) for seed in cfg["seeds"]]
    rows += [run("both", f"{best}+semantic_flow", [best, "semantic_flow"], seed) for seed in cfg["seeds"]]
    # each generator's images judged on their own: label agreement with the real-only classifier of the same
    # seed, and the classification accuracy score (a classifier trained on them alone)
    real_runs = {r["seed"]: Path(r["run_dir"]) for r in rows if r["arm"] == "real"}
    for i, r in enumerate(rows):
        if r["kind"] == "generator" and "+" not in r["method"]:
            cas_dir = (out / "runs" / "cas" / f"{r['method']}-seed-{r['seed']}"
                       if r["arm"] in ("classical", "semantic_flow") else None)
            rows[i] = {**r, **generator_scores(real_runs[r["seed"]], synthetic[r["method"]], cas_dir, val, test,
                                               {**cfg["train"], "seed": r["seed"]}, progress=progress)}
    timings["classifiers"] = time.perf_counter() - t

    write_results(out, rows)
    (out / "config.yaml").write_text(json.dumps(cfg, indent=2))
    grids = {name: save_grid(synthetic[name], out / "grids" / f"{name}.png") for name in ("semantic_flow", best)}
    write_report(out, grids=grids)
    summary = summarize(pd.DataFrame(rows))
    metric = "test_acc" if test else "val_acc"
    arms = {}
    for arm in [*ARMS, *(f"classical:{n}" for n in cfg["classical_candidates"] if n != best)]:
        r = summary[summary["arm"] == arm].iloc[0]
        arms[arm] = {"mean": float(r[metric]), "std": float(r[f"{metric}_std"]), "seeds": int(r["seeds"]),
                     "val_mean": float(r["val_acc"]), "generation_seconds": float(r["generation_seconds"])}
        for col in ("label_agreement", "cas_acc"):
            if col in r and pd.notna(r[col]):
                arms[arm][col] = float(r[col])
    arms["classical"]["method"] = best
    result = {"dataset": dataset, "metric": metric.replace("_acc", " accuracy"), "arms": arms,
              "classical_validation": picks, "real_images": int(rows[0]["n_real"]),
              "synthetic_per_real": cfg["n"], "flow": {"steps": flow["steps"], "reconstruction": flow["reconstruction"],
                                                       "seconds": flow["seconds"]},
              "grid": str(grids["semantic_flow"]), "report": str(out / "report.html"),
              "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "seconds": round(time.perf_counter() - t_start, 1), "quick": quick}
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['dataset']}, {result['real_images']} real training images, "
             f"{result['synthetic_per_real']} synthetic per real image; {result['metric']} over "
             f"{result['arms']['real']['seeds']} seeds (classical picked on mean validation accuracy)", "",
             f"{'arm':<30}{'accuracy %':>16}{'label agr. %':>14}{'CAS %':>9}", "-" * 69]
    for arm, r in result["arms"].items():
        name = f"classical ({r['method']})" if arm == "classical" else arm
        agree = f"{100 * r['label_agreement']:.1f}" if "label_agreement" in r else "-"
        cas = f"{100 * r['cas_acc']:.1f}" if "cas_acc" in r else "-"
        lines.append(f"{name:<30}{100 * r['mean']:>8.2f} ± {100 * r['std']:.2f}{agree:>14}{cas:>9}")
    return "\n".join(lines)
