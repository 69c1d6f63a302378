"""How far to trust the demo's synthetic images: the memorisation / leakage audit and the filters on
`genaug demo`'s own generators (semantic_flow and RandAugment), made exactly as the demo makes them.

    python benchmarks/demo_trust.py --out runs/demo-trust      # resumable; about 1 h on a 2-core CPU

Writes OUT/ (the demo's data, split, flow model and synthetic folders, each folder's audit.json,
audit_pairs.png, filters.json and card.html) and prints, per generator, the audit's counts and the filter
funnel. Every step is a genaug command's Python function; each folder is audited against the real training
split, with the test set and the validation split for leakage.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from genaug.bench.card import write_card
from genaug.data.builtin import export_builtin, fashion_mnist_available
from genaug.data.splits import make_splits
from genaug.demo import DEMO
from genaug.flow.train import fit_flow
from genaug.pipeline import augment
from genaug.scoring.audit import audit
from genaug.scoring.filters import filter_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/demo-trust"))
    args = ap.parse_args()
    out, cfg = args.out, json.loads(json.dumps(DEMO))
    out.mkdir(parents=True, exist_ok=True)
    dataset = "fashion-mnist" if fashion_mnist_available() else "digits"
    cfg["flow"].setdefault("hflip", dataset == "fashion-mnist")  # as the demo
    pool = export_builtin(dataset, "train", out / "data" / f"{dataset}-train")
    test = (export_builtin(dataset, "test", out / "data" / f"{dataset}-test") / "manifest.csv"
            if dataset == "fashion-mnist" else None)
    make_splits(pool, out / "splits", [0], fraction=cfg["fraction"], val=cfg["val_per_class"])
    split = out / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
    real, val = split / "train.csv", split / "val.csv"
    fit_flow(real, out / "flow-model", cfg["flow"], progress=False)
    folders = {"semantic_flow": out / "synthetic" / "semantic_flow", "randaugment": out / "synthetic" / "randaugment"}
    augment(real, folders["semantic_flow"], method="semantic_flow", n=cfg["n"], seed=0, progress=False,
            options={"model": str(out / "flow-model"), **cfg["semantic_flow"]})
    augment(real, folders["randaugment"], method="randaugment", n=cfg["n"], seed=0, progress=False)

    for name, folder in folders.items():
        t = time.perf_counter()
        a = audit(folder, real, test=test, val=val)
        audit_s = time.perf_counter() - t
        filtered = folder.with_name(f"{name}-filtered")
        if not filtered.exists():
            shutil.copytree(folder, filtered)
        t = time.perf_counter()
        f = filter_folder(filtered, real, test=test, val=val)
        filter_s = time.perf_counter() - t
        write_card(filtered, real=real)
        print(f"\n{name}: {a['n_synthetic']} images vs {a['n_train']} train; threshold {a['threshold']['value']:.4f}"
              f" ({audit_s:.0f} s)")
        print("  audit: " + ", ".join(f"{k} {v}" for k, v in a["counts"].items()))
        probe = f["models"].get("probe", {})
        print(f"  filters ({filter_s:.0f} s; classifier {probe.get('backbone')}, held-out accuracy "
              f"{probe.get('holdout_accuracy', float('nan')):.3f}): "
              + " -> ".join([str(f["n"])] + [f"{s['remaining']} ({s['filter']}: fails alone {s['failed']})"
                                             for s in f["funnel"]]))
        for w in f["warnings"]:
            print(f"  warning: {w}")


if __name__ == "__main__":
    main()
