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
4. The same small CNN trains, for the same number of steps (600: long enough that real-only training
   converges and overfits — 100 % train accuracy from step ~420, validation flat from step ~360), on (a) real,
   (b) real + each classical candidate, (c) real + the pool pseudo-labelled by (a) (confidence >= 0.95, the
   same budget: what the unlabelled images give without a generator), (d) real + semantic_flow, (e) real + both
   (the best classical candidate, picked on mean validation accuracy over the seeds, and semantic_flow), over 3
   training seeds;
   synthetic images make up `synthetic_prob` of every batch; each run keeps its best validation epoch.
   Test accuracy: mean ± std.
5. Each generator's images are also judged on their own: label agreement (the share the real-only
   classifier of the same seed assigns to their label) and, for semantic_flow and the picked classical
   candidate, the classification accuracy score (a classifier trained on them alone).
Every stage is a job run as soon as what it needs is done, side by side on one-thread worker processes
(`bench.lanes`; the results do not depend on how many), in bfloat16 where the CPU has AMX (`precision: auto`).
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
from .bench.lanes import Lanes, default_workers
from .bench.run import ArmSpec, generate_cached, generator_scores, pseudo_label, train_cached
from .core.config import ConfigError
from .data.builtin import export_builtin, fashion_mnist_available
from .data.imageset import load_real, shared_loads
from .data.splits import make_splits
from .flow.train import fit_flow

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
    "classical_candidates": ["flipcrop", "randaugment"],
    "pool_per_class": None,  # the unlabelled pool: the rest of the training set (None: all of it)
    # the dataset's training and test images exported per class (None: all of them; --quick: a stratified subset)
    "export_per_class": {"train": None, "test": None},
    "pseudo_label": {"threshold": 0.95},
    "ablations": [],  # "closed": the generator trained on the labelled images only, as another arm
    "flow": {"steps": 450, "batch_size": 80, "unlabeled_share": 0.2, "block_channels": [32, 64, 64],
             "precision": "auto"},
    # guidance 2 (classifier-free): chosen on validation among the levers of benchmarks/demo_levers.py
    "semantic_flow": {"mode": "sdedit", "t0": [0.3, 0.4, 0.5], "steps": 10, "guidance": 2.0, "precision": "auto"},
    "train": {"model": "genaug_small_cnn", "model_options": {"width": 16}, "image_size": 28, "epochs": 10,
              "steps_per_epoch": 60, "batch_size": 64, "lr": 3e-3, "synthetic_prob": 0.5, "precision": "auto"},
    # the jobs (fit-flow, generations, classifier runs) side by side: `workers` processes (None: one per CPU at
    # `threads_per_job`, at most 8) of `threads_per_job` torch threads each — every job at that thread count
    # whatever the number of workers, so the results do not depend on it
    "workers": None,
    "threads_per_job": 1,
}


# what the demo's jobs import, loaded by each worker while the data is exported
PRELOAD = ("genaug.bench.run", "genaug.flow.train", "diffusers.training_utils")


def pseudo_labels(real_runs: dict[int, Path], pool: Path, manifests: dict[int, Path], threshold: float,
                  per_class: int) -> dict[int, dict[str, Any]]:
    """`pseudo_label` for every seed in one job, so that the pool is decoded once."""
    return {seed: pseudo_label(run, pool, manifests[seed], threshold, per_class=per_class)
            for seed, run in real_runs.items()}


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


def data_name(dataset: str, part: str, per_class: int | None) -> str:
    """The folder of one exported part of the dataset: `fashion-mnist-train`, or `…-train-100` for a subset."""
    return f"{dataset}-{part}" + ("" if per_class is None else f"-{per_class}")


def _run_demo(out: str | Path, quick: bool, progress: bool | None, overrides: dict[str, Any] | None) -> dict[str, Any]:
    cfg = json.loads(json.dumps(DEMO))
    dataset = (overrides or {}).get("dataset", cfg["dataset"])
    if dataset == "auto":
        dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    if dataset not in SIZES:
        raise ConfigError(f"unknown demo dataset {dataset!r}; choose auto or one of {sorted(SIZES)}")
    cfg.update(SIZES[dataset])
    if quick:  # 100 training images a class exported, 12 of them labelled, 10 for validation; 50 test images a class
        cfg.update(fraction=0.12, val_per_class=10, seeds=[0, 1], pool_per_class=30,
                   export_per_class={"train": 100, "test": 50},
                   pseudo_label={"threshold": 0.0})  # a 20-step classifier is never 95 % sure
        cfg["flow"].update(steps=20, block_channels=[16, 32], batch_size=32)
        cfg["semantic_flow"].update(steps=4)
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
    threads = cfg["threads_per_job"]
    workers = cfg["workers"] or default_workers(threads)
    # every stage after the data is a job, started as soon as the jobs it needs are done, on `workers` processes
    # at `threads` threads each: the generator trains beside the classifiers that do not need it. The workers
    # start (and import what the jobs need) while this process exports the data.
    with Lanes(workers, threads, progress=progress, desc="genaug demo", preload=PRELOAD) as lanes:
        t = time.perf_counter()
        per_class = cfg["export_per_class"]
        train_pool, test = (export_builtin(dataset, part, out / "data" / data_name(dataset, part, per_class[part]),
                                           per_class[part]) for part in ("train", "test"))
        make_splits(train_pool, out / "splits", [0], fraction=cfg["fraction"], val=cfg["val_per_class"])
        split = out / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
        real, val = split / "train.csv", split / "val.csv"
        pool = pool_manifest(split / "rest.csv", cfg["pool_per_class"])
        labelled = load_real(real, cfg["train"]["image_size"], "real")
        timings["data"] = time.perf_counter() - t

        seeds, n = cfg["seeds"], cfg["n"]
        tcfg = cfg["train"]
        synthetic = {name: out / "synthetic" / name for name in ("semantic_flow", *cfg["classical_candidates"])}
        bar = progress if lanes.inline else False  # side by side, the jobs' own bars would garble each other
        stage: dict = {}  # job -> the stage its seconds count towards
        sources_of: dict = {}  # classifier run -> the synthetic sources it trains on

        def job(name: str, fn, *args, after=(), **kwargs):
            stage[f := lanes.submit(fn, *args, after=after, **kwargs)] = name
            return f

        def generate(name: str, method: str, options: dict | None = None, after=()):
            return job(f"generate_{'classical' if method in cfg['classical_candidates'] else name}", generate_cached,
                       ArmSpec(method=method, options=options or {}), real, synthetic[name], n, 0, progress=bar,
                       after=after)

        flows = {"semantic_flow": job("fit_flow", fit_flow, real, out / "flow-model", cfg["flow"], progress=bar,
                                      unlabeled=pool)}
        if "closed" in cfg["ablations"]:
            synthetic["semantic_flow_closed"] = out / "synthetic" / "semantic_flow_closed"
            flows["semantic_flow_closed"] = job("fit_flow_closed", fit_flow, real, out / "flow-model-closed",
                                                cfg["flow"], progress=bar)
        gens = {name: generate(name, name) for name in cfg["classical_candidates"]}
        for name, folder in (("semantic_flow", "flow-model"), ("semantic_flow_closed", "flow-model-closed")):
            if name in flows:
                gens[name] = generate(name, "semantic_flow", {"model": str(out / folder), **cfg["semantic_flow"]},
                                      after=[flows[name]])

        def run(arm: str, method: str, sources: list[str], seed: int, kind: str = "generator", after=()):
            row = {"arm": arm, "method": method, "kind": "real" if not sources else kind,
                   "split": f"fraction-{cfg['fraction']:g}", "seed": seed,
                   "synthetic_prob": tcfg["synthetic_prob"] if sources else None, "budget": n if sources else 0}
            f = job("classifiers", train_cached, run_dir(arm, method, seed), real, [synthetic[s] for s in sources],
                    val, test, {}, {**tcfg, "seed": seed}, row, progress=bar,
                    after=[*after, *(gens[s] for s in sources if s in gens)])
            sources_of[f] = sources
            return f

        def run_dir(arm: str, method: str, seed: int) -> Path:
            return out / "runs" / arm / f"{method}-seed-{seed}"

        def scores(name: str, seed: int, cas: bool):
            """Label agreement with the real-only classifier of the same seed; the CAS when `cas`."""
            return job("classifiers", generator_scores, run_dir("real", "none", seed), synthetic[name],
                       out / "runs" / "cas" / f"{name}-seed-{seed}" if cas else None, val, test,
                       {**tcfg, "seed": seed}, progress=bar, after=[reals[seed], gens[name]])

        reals = {seed: run("real", "none", [], seed) for seed in seeds}
        candidates = {name: [run(f"classical:{name}", name, [name], seed) for seed in seeds]
                      for name in cfg["classical_candidates"]}
        # the unlabelled pool without a generator: pseudo-labelled by each seed's real-only classifier, at most
        # the generators' budget per class
        per_class = -(-n * len(labelled) // len(set(labelled.labels)))
        for seed in seeds:
            synthetic[f"pseudo_label-seed-{seed}"] = out / "pseudo_label" / f"seed-{seed}.csv"
        pseudo_job = job("pseudo_label", pseudo_labels, {seed: run_dir("real", "none", seed) for seed in seeds}, pool,
                         {seed: synthetic[f"pseudo_label-seed-{seed}"] for seed in seeds},
                         cfg["pseudo_label"]["threshold"], per_class, after=list(reals.values()))
        pseudo_runs = [run("pseudo_label", "pseudo_label", [f"pseudo_label-seed-{seed}"], seed, kind="pool",
                           after=[pseudo_job]) for seed in seeds]
        flow_runs = {name: [run("semantic_flow" if name == "semantic_flow" else "ablation:closed", name, [name], seed)
                            for seed in seeds] for name in flows}
        judged = {(name, seed): scores(name, seed, cas=name == "semantic_flow") for name in flows for seed in seeds}
        # every classical candidate is an arm over every seed; the best is picked on mean validation accuracy (the
        # other jobs go on meanwhile)
        picks = {name: sum(lanes.result(f)["val_acc"] for f in fs) / len(fs) for name, fs in candidates.items()}
        best = max(picks, key=picks.get)
        both = [run("both", f"{best}+semantic_flow", [best, "semantic_flow"], seed) for seed in seeds]
        judged |= {(name, seed): scores(name, seed, cas=name == best) for name in cfg["classical_candidates"]
                   for seed in seeds}
        lanes.join()
        flow = lanes.result(flows["semantic_flow"])
        closed = lanes.result(flows["semantic_flow_closed"]) if "semantic_flow_closed" in flows else None
        gen_seconds = {name: lanes.result(f)[1] for name, f in gens.items()}
        pseudo = lanes.result(pseudo_job)
        for f, name in stage.items():  # the seconds each stage's jobs ran (side by side: they overlap in time)
            timings[name] = timings.get(name, 0.0) + lanes.seconds[f]

    def row(f, arm: str | None = None) -> dict:
        r = lanes.result(f)
        r = {**r, "arm": arm or r["arm"],
             # what its synthetic images cost to generate (the first generation's seconds, not a rerun's)
             "generation_seconds": round(sum(gen_seconds.get(s, 0.0) for s in sources_of[f]), 1)}
        judge = judged.get((r["method"], r["seed"]))  # a generator's own columns
        return {**r, **lanes.result(judge)} if judge is not None else r

    rows = [row(reals[seed]) for seed in seeds]
    rows += [row(f, "classical" if name == best else None) for name, fs in candidates.items() for f in fs]
    rows += [row(f) for f in pseudo_runs]
    rows += [row(f) for f in flow_runs["semantic_flow"]]
    rows += [row(f) for f in both]
    rows += [row(f) for f in flow_runs.get("semantic_flow_closed", [])]
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
              # each stage's job seconds (at threads_per_job threads; stages overlap on `workers` processes)
              "timings_s": {k: round(v, 1) for k, v in timings.items()},
              "workers": workers, "threads_per_job": threads, "classifier_precision": rows[0].get("precision"),
              "seconds": round(time.perf_counter() - t_start, 1), "quick": quick}
    if closed is not None:
        result["flow_closed"] = _flow_summary(closed)
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    return result


def _flow_summary(fit: dict[str, Any]) -> dict[str, Any]:
    return {k: fit[k] for k in ("steps", "reconstruction", "seconds", "precision")}


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
