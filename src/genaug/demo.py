"""`genaug demo`: the main job, end to end and offline, on real Fashion-MNIST (scikit-learn's digits where
the Debian package is missing). Does flow-matching semantic augmentation help in the low-data regime?

1. A stratified 1 % of the training set (600 images; one split, seed 0) is the labelled data; 200 other
   images per class are validation; the full test set (10k) is the test (`--dataset digits`: 10 % of genaug's
   fixed 1,198 training digits, 20 a class for validation, its 599 test digits; `SIZES`). The rest of the training set is an *unlabelled pool*:
   its labels are withheld from everything that trains.
2. `fit-flow` trains genaug's flow-matching generator on the labelled 1 % and the unlabelled pool (the
   papers' premise: a generator that has seen more images than the labelled set). It never sees a
   validation or test image. Ablation `closed` (`--ablation closed`): a second generator on the labelled
   images only.
3. `semantic_flow` writes synthetic variants of every labelled image; each classical candidate writes the
   same number of variants (a matched budget).
4. The same small CNN trains, for the same number of steps (1,500: long enough that real-only training
   converges and overfits — train loss 0.001, validation flat from step ~600), on (a) real, (b) real + each classical
   candidate, (c) real + the pool pseudo-labelled by (a) (confidence >= 0.95, the same budget: what the
   unlabelled images give without a generator), (d) real + semantic_flow, (e) real + both (the best classical
   candidate, picked on mean validation accuracy over the seeds, and semantic_flow), over 3 training seeds;
   synthetic images make up `synthetic_prob` of every batch; each run keeps its best validation epoch.
   Test accuracy: mean ± std.
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

from .bench.grids import save_grid
from .bench.report import summarize, write_report, write_results
from .bench.run import generator_scores, pseudo_label, train_cached
from .core.config import ConfigError
from .data.builtin import export_builtin, fashion_mnist_available
from .data.imageset import shared_loads
from .data.splits import make_splits
from .flow.train import fit_flow
from .pipeline import augment

ARMS = ("real", "classical", "pseudo_label", "semantic_flow", "both")
ABLATIONS = {"closed": "semantic_flow, generator on the labelled images only"}

# The labelled share and the validation images per class of each dataset: Fashion-MNIST at 1 % (60 a class), the
# low-data regime where augmentation matters (at 5 % and 600 steps no arm had converged and no augmentation helped:
# benchmarks/README.md, "the demo's protocol"); digits has 120 training images a class, so 1 % would be one image
# and 200 validation images a class do not exist: 10 % (12 a class) and 20. Fixed from the sizes, not tuned.
SIZES = {"fashion-mnist": {"fraction": 0.01, "val_per_class": 200},
         "digits": {"fraction": 0.1, "val_per_class": 20}}

DEMO = {
    # "auto": Fashion-MNIST where its Debian package is installed, else scikit-learn's digits
    "dataset": "auto",
    "fraction": None,  # None: the dataset's (SIZES)
    "val_per_class": None,
    "seeds": [0, 1, 2],
    "n": 2,  # synthetic variants per real image, for every generator
    "classical_candidates": ["flipcrop", "randaugment", "trivialaugment"],
    "pool_per_class": None,  # the unlabelled pool: the rest of the training set (None: all of it)
    "pseudo_label": {"threshold": 0.95},
    "ablations": [],  # "closed": the generator trained on the labelled images only, as another arm
    "flow": {"steps": 450, "batch_size": 128, "block_channels": [32, 64, 64]},
    # guidance 2 (classifier-free): chosen on validation among the levers of benchmarks/demo_levers.py
    "semantic_flow": {"mode": "sdedit", "t0": [0.3, 0.4, 0.5], "steps": 10, "guidance": 2.0},
    "train": {"model": "genaug_small_cnn", "model_options": {"width": 16}, "image_size": 28, "epochs": 15,
              "steps_per_epoch": 100, "batch_size": 64, "lr": 3e-3, "synthetic_prob": 0.5},
}


def pool_manifest(rest: Path, per_class: int | None) -> Path:
    """The unlabelled pool's manifest: the split's rest (or its first `per_class` of each class, in the split's
    seeded order), beside it so that its relative paths still hold."""
    if per_class is None:
        return rest
    out = rest.with_name(f"pool-{per_class}pc.csv")
    if not out.exists():
        frame = pd.read_csv(rest, dtype=str, keep_default_na=False)
        frame.groupby("label", sort=False).head(per_class).to_csv(out, index=False)
    return out


def run_demo(out: str | Path, quick: bool = False, progress: bool | None = None,
             overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) the demo; `quick` shrinks every stage for smoke tests."""
    # every stage reads the same sets (the labelled images and the pool: fit-flow and pseudo-labelling; real,
    # val, test and synthetic: every classifier): each is decoded once
    with shared_loads():
        return _run_demo(out, quick, progress, overrides)


def _run_demo(out: str | Path, quick: bool, progress: bool | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(DEMO))
    dataset = (overrides or {}).get("dataset", cfg["dataset"])
    if dataset == "auto":
        dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    if dataset not in SIZES:
        raise ConfigError(f"unknown demo dataset {dataset!r}; choose auto or one of {sorted(SIZES)}")
    cfg.update(SIZES[dataset])
    if quick:
        cfg.update(val_per_class=10, seeds=[0, 1], classical_candidates=["flipcrop", "randaugment"],
                   pool_per_class=30, pseudo_label={"threshold": 0.0})  # a 20-step classifier is never 95 % sure
        cfg["flow"].update(steps=20, block_channels=[16, 32])
        cfg["train"].update(epochs=2, steps_per_epoch=10)
    for k, v in (overrides or {}).items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) and isinstance(cfg.get(k), dict) else v
    cfg["dataset"] = dataset  # the name "auto" resolved to
    unknown = sorted(set(cfg["ablations"]) - set(ABLATIONS))
    if unknown:
        raise ConfigError(f"unknown demo ablation(s) {unknown}; choose from {sorted(ABLATIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    cfg["flow"].setdefault("hflip", dataset == "fashion-mnist")  # a mirrored garment is a garment; a digit is not
    t = time.perf_counter()
    train_pool = export_builtin(dataset, "train", out / "data" / f"{dataset}-train")
    test = export_builtin(dataset, "test", out / "data" / f"{dataset}-test")
    make_splits(train_pool, out / "splits", [0], fraction=cfg["fraction"], val=cfg["val_per_class"])
    split = out / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
    real, val = split / "train.csv", split / "val.csv"
    pool = pool_manifest(split / "rest.csv", cfg["pool_per_class"])
    timings["data"] = time.perf_counter() - t

    t = time.perf_counter()
    flow = fit_flow(real, out / "flow-model", cfg["flow"], progress=progress, unlabeled=pool)
    timings["fit_flow"] = time.perf_counter() - t

    def generate(name: str, method: str, options: dict | None = None) -> None:
        t = time.perf_counter()
        synthetic[name] = out / "synthetic" / name
        augment(real, synthetic[name], method=method, n=cfg["n"], seed=0, progress=progress, options=options)
        gen_seconds[name] = time.perf_counter() - t

    synthetic: dict[str, Path] = {}
    gen_seconds: dict[str, float] = {}
    generate("semantic_flow", "semantic_flow", {"model": str(out / "flow-model"), **cfg["semantic_flow"]})
    timings["generate_semantic_flow"] = gen_seconds["semantic_flow"]
    for name in cfg["classical_candidates"]:
        generate(name, name)
    timings["generate_classical"] = sum(gen_seconds[n] for n in cfg["classical_candidates"])
    closed = None
    if "closed" in cfg["ablations"]:
        t = time.perf_counter()
        closed = fit_flow(real, out / "flow-model-closed", cfg["flow"], progress=progress)
        timings["fit_flow_closed"] = time.perf_counter() - t
        generate("semantic_flow_closed", "semantic_flow",
                 {"model": str(out / "flow-model-closed"), **cfg["semantic_flow"]})
        timings["generate_semantic_flow_closed"] = gen_seconds["semantic_flow_closed"]

    def run(arm: str, method: str, sources: list[str], seed: int, kind: str = "generator") -> dict:
        row = {"arm": arm, "method": method, "kind": "real" if not sources else kind,
               "split": f"fraction-{cfg['fraction']:g}", "seed": seed,
               "synthetic_prob": cfg["train"]["synthetic_prob"] if sources else None,
               "budget": cfg["n"] if sources else 0,
               # what its synthetic images cost to generate (resumed runs: this call's share only)
               "generation_seconds": round(sum(gen_seconds.get(s, 0.0) for s in sources), 1)}
        return train_cached(out / "runs" / arm / f"{method}-seed-{seed}", real, [synthetic[s] for s in sources],
                            val, test, {}, {**cfg["train"], "seed": seed}, row, progress=progress)

    t = time.perf_counter()
    rows = [run("real", "none", [], seed) for seed in cfg["seeds"]]
    real_runs = {r["seed"]: Path(r["run_dir"]) for r in rows}
    # every classical candidate is an arm over every seed; the best is picked on mean validation accuracy
    candidates = {name: [run(f"classical:{name}", name, [name], seed) for seed in cfg["seeds"]]
                  for name in cfg["classical_candidates"]}
    picks = {name: sum(r["val_acc"] for r in rs) / len(rs) for name, rs in candidates.items()}
    best = max(picks, key=picks.get)
    for name, rs in candidates.items():
        rows += [{**r, "arm": "classical" if name == best else r["arm"]} for r in rs]
    # the unlabelled pool without a generator: pseudo-labelled by each seed's real-only classifier
    tp = time.perf_counter()
    n_classes = len(flow["classes"])
    pseudo = {}
    for seed in cfg["seeds"]:
        synthetic[f"pseudo_label-seed-{seed}"] = manifest = out / "pseudo_label" / f"seed-{seed}.csv"
        pseudo[seed] = pseudo_label(real_runs[seed], pool, manifest, cfg["pseudo_label"]["threshold"],
                                    per_class=-(-cfg["n"] * flow["n_images"] // n_classes))
    timings["pseudo_label"] = time.perf_counter() - tp
    rows += [run("pseudo_label", "pseudo_label", [f"pseudo_label-seed-{seed}"], seed, kind="pool")
             for seed in cfg["seeds"]]
    rows += [run("semantic_flow", "semantic_flow", ["semantic_flow"], seed) for seed in cfg["seeds"]]
    rows += [run("both", f"{best}+semantic_flow", [best, "semantic_flow"], seed) for seed in cfg["seeds"]]
    if closed is not None:
        rows += [run("ablation:closed", "semantic_flow_closed", ["semantic_flow_closed"], seed)
                 for seed in cfg["seeds"]]
    # each generator's images judged on their own: label agreement with the real-only classifier of the same
    # seed, and the classification accuracy score (a classifier trained on them alone)
    for i, r in enumerate(rows):
        if r["kind"] == "generator" and "+" not in r["method"]:
            cas_dir = (out / "runs" / "cas" / f"{r['method']}-seed-{r['seed']}"
                       if r["arm"] in ("classical", "semantic_flow") else None)
            rows[i] = {**r, **generator_scores(real_runs[r["seed"]], synthetic[r["method"]], cas_dir, val, test,
                                               {**cfg["train"], "seed": r["seed"]}, progress=progress)}
    timings["classifiers"] = time.perf_counter() - t - timings["pseudo_label"]

    write_results(out, rows)
    (out / "config.yaml").write_text(json.dumps(cfg, indent=2))
    grids = {name: save_grid(synthetic[name], out / "grids" / f"{name}.png") for name in ("semantic_flow", best)}
    saw = {"labelled_images": flow["n_images"], "unlabelled_images": flow["n_unlabeled"],
           "unlabelled_source": str(pool), "labels_of_unlabelled": "withheld",
           "validation_or_test_images": 0,
           "text": (f"the generator trained on the {flow['n_images']:,} labelled images and {flow['n_unlabeled']:,} "
                    f"other training images with their labels withheld; it never saw a validation or test image")}
    write_report(out, grids=grids, notes=[f"What the generator saw: {saw['text']}.",
                                          _pseudo_note(pseudo, cfg["pseudo_label"]["threshold"])])
    summary = summarize(pd.DataFrame(rows))
    metric = "test_acc"
    arms = {}
    extra = [f"classical:{n}" for n in cfg["classical_candidates"] if n != best]
    extra += [f"ablation:{a}" for a in cfg["ablations"]]
    for arm in [*ARMS, *extra]:
        r = summary[summary["arm"] == arm].iloc[0]
        arms[arm] = {"mean": float(r[metric]), "std": float(r[f"{metric}_std"]), "seeds": int(r["seeds"]),
                     "val_mean": float(r["val_acc"]), "generation_seconds": float(r["generation_seconds"])}
        for col in ("label_agreement", "cas_acc"):
            if col in r and pd.notna(r[col]):
                arms[arm][col] = float(r[col])
    arms["classical"]["method"] = best
    result = {"dataset": dataset, "metric": metric.replace("_acc", " accuracy"), "arms": arms,
              "classical_validation": picks, "real_images": int(rows[0]["n_real"]),
              "synthetic_per_real": cfg["n"], "generator_saw": saw,
              "flow": _flow_summary(flow),
              "pseudo_label": pseudo,
              "grid": str(grids["semantic_flow"]), "report": str(out / "report.html"),
              "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "seconds": round(time.perf_counter() - t_start, 1), "quick": quick}
    if closed is not None:
        result["flow_closed"] = _flow_summary(closed)
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def _flow_summary(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: fit[k] for k in ("steps", "reconstruction", "seconds")}


def _pseudo_note(pseudo: dict[int, dict], threshold: float) -> str:
    kept = ", ".join(f"seed {s}: {p['kept']:,} of {p['pool_images']:,}"
                     + (f" ({100 * p['accuracy_vs_withheld_labels']:.1f} % right by the withheld labels)"
                        if p["accuracy_vs_withheld_labels"] is not None else "") for s, p in pseudo.items())
    return (f"pseudo_label: the same unlabelled pool without a generator — the images each seed's real-only "
            f"classifier labels with confidence >= {threshold:g}, at most the generators' budget per class ({kept}).")


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
    return "\n".join(lines + ["", f"What the generator saw: {result['generator_saw']['text']}."])
