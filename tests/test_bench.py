"""A small bench end to end on real data; the report rendered in headless Chromium."""
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import cli, needs_chromium, render_in_chromium
from genaug.data.builtin import fashion_mnist_available

DATASET = "fashion-mnist" if fashion_mnist_available() else "digits"
BENCH = {
    "data": {"train": DATASET, "test": DATASET if DATASET == "fashion-mnist" else None,
             "pool_per_class": 20, "test_per_class": 10},
    "splits": {"shots": [4], "seeds": [0, 1], "val": 3},
    "methods": [{"method": "randaugment"}, {"method": "flipcrop", "name": "crop+flip"}, {"method": "mixup"}],
    "budget": 2,
    "synthetic_probs": [0.3, 0.7],
    "train": {"epochs": 2, "image_size": 28, "batch_size": 16, "min_steps": 0},  # 0: no 1000-step floor, kept fast
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    cfg = root / "bench.yaml"
    cfg.write_text(yaml.safe_dump(BENCH))
    res = cli("bench", cfg, "--out", root / "run", "--json", root / "summary.json")
    return root, res


def test_bench_grid_runs_end_to_end(bench_run):
    root, res = bench_run
    run = root / "run"
    results = pd.read_csv(run / "results.csv")
    # real + mixup once per seed; each generator once per seed and synthetic proportion
    assert len(results) == 2 * (1 + 1 + 2 + 2)
    gen = results[results["kind"] == "generator"]
    assert set(gen["n_synthetic"]) == {4 * 10 * 2} and (gen["generation_seconds"] > 0).all()
    assert set(results.loc[results["kind"] != "generator", "n_synthetic"]) == {0}
    assert set(results["arm"]) == {"real", "randaugment", "crop+flip", "mixup"}
    summary = json.loads((root / "summary.json").read_text())
    assert {"val_acc", "val_acc_std", "seeds"} <= set(summary[0])
    if DATASET == "fashion-mnist":
        assert {"test_acc", "test_acc_std"} <= set(summary[0])
    assert all(r["seeds"] == 2 for r in summary)
    md = (run / "report.md").read_text()
    assert "| arm" in md and "crop+flip" in md and "accuracy_vs_proportion.png" in md
    assert (run / "accuracy_vs_proportion.png").is_file() and (run / "grids" / "randaugment.png").is_file()
    assert "report.html" in res.output
    # each generator's own columns: label agreement with the real arm's classifier, and the CAS (a classifier
    # trained on its images alone: one per arm, split and seed, whatever the synthetic proportion)
    assert gen["label_agreement"].between(0, 1).all() and gen["cas_acc"].between(0, 1).all()
    assert (gen.groupby(["arm", "seed"])["cas_acc"].nunique() == 1).all()
    assert (run / "runs" / "randaugment-cas" / "shots-4" / "seed-0" / "best.safetensors").is_file()
    assert results.loc[results["kind"] != "generator", "label_agreement"].isna().all()
    assert "CAS acc %" in md and "label agreement %" in md
    assert "learning_curves.png" in md and (run / "learning_curves.png").is_file()


def test_bench_rerun_reuses_everything(bench_run):
    root, _ = bench_run
    run = root / "run"
    stamps = {p: p.stat().st_mtime_ns for p in run.rglob("bench_row.json")}
    pngs = {p: p.stat().st_mtime_ns for p in (run / "synthetic").rglob("*.png")}
    cli("bench", root / "bench.yaml", "--out", run)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("bench_row.json")} == stamps
    assert {p: p.stat().st_mtime_ns for p in (run / "synthetic").rglob("*.png")} == pngs


def test_report_rerenders(bench_run, tmp_path):
    root, _ = bench_run
    (root / "run" / "report.html").unlink()
    assert "report.html" in cli("report", root / "run").output
    assert (root / "run" / "report.html").stat().st_size > 10_000
    assert "has no results.csv" in cli("report", tmp_path, expect=2).output


def test_report_of_a_moved_bench_from_anywhere_shows_what_results_csv_holds(bench_run, tmp_path, monkeypatch):
    """Rendered from another working directory, after the folder moved: the learning curves (one line per
    arm and synthetic proportion) and grids are still found; the table has each arm's budget and real share;
    an arm gone from results.csv has no grid; a bench without a test set plots validation accuracy."""
    import shutil

    from matplotlib.axes import Axes

    from genaug.bench.report import learning_curves

    root, _ = bench_run
    moved = shutil.copytree(root / "run", tmp_path / "moved")
    results = pd.read_csv(moved / "results.csv")
    assert not results["run_dir"].map(lambda p: p.startswith("/") or p.startswith("..")).any()  # bench-relative
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    keep = results[results["arm"] != "crop+flip"]
    keep.to_csv(moved / "results.csv", index=False)
    cli("report", moved)
    md = (moved / "report.md").read_text()
    assert "learning_curves.png" in md and "grids/randaugment.png" in md and "grids/crop+flip.png" not in md
    table = md.split("## Accuracy")[1].split("##")[0]
    assert "per real image" in table and "synthetic share" in table
    summary = pd.read_csv(moved / "summary.csv").set_index("arm")
    assert summary.loc["randaugment", "budget"].tolist() == [2, 2] and "budget_max" not in summary
    labels, plot = [], Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: labels.append(k.get("label")) or plot(self, *a, **k))
    learning_curves(keep, tmp_path / "curves.png", moved)
    assert {"randaugment p=0.3", "randaugment p=0.7", "real"} <= set(labels)

    keep.drop(columns=[c for c in keep if c.startswith("test_")]).to_csv(moved / "results.csv", index=False)
    cli("report", moved)  # no test set: the proportion plot shows validation accuracy instead of failing
    assert (moved / "accuracy_vs_proportion.png").is_file() and "accuracy_vs_proportion.png" in (
        moved / "report.md").read_text()


@needs_chromium
def test_report_shows_tables_and_images_in_chromium(bench_run, tmp_path):
    root, _ = bench_run
    dom, shot = render_in_chromium(root / "run" / "report.html", tmp_path)
    n_img = dom.count("<img")
    assert n_img >= 3 and f'data-images-loaded="{n_img}"' in dom  # every image decoded and laid out
    assert dom.count("<table") == 1 and "randaugment" in dom and "± " in dom
    assert shot.shape == (1600, 1200) and len(np.unique(shot)) > 50  # a rendered page, not a blank one


@pytest.mark.parametrize("change, message", [
    ({"methods": [{"method": "nosuch"}]}, "unknown method"),
    ({"methods": [{"method": "cutout"}, {"method": "cutout"}]}, "unique"),
    ({"splits": {"seeds": [0]}}, "splits.shots"),
    ({"data": {"train": "x"}, "bogus": 1}, "unknown option 'bogus'"),
])
def test_bad_bench_configs(tmp_path, change, message):
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({**BENCH, **change}))
    assert message in cli("bench", cfg, "--out", tmp_path / "r", expect=2).output


def _small_bench(tmp_path, val: int, method: str):
    """A bench config of 2 shots, one seed, one arm beside real, one short epoch; no budget (the methods' M)."""
    small = {**BENCH, "data": {**BENCH["data"], "pool_per_class": 6, "test_per_class": 2},
             "splits": {"shots": [2], "seeds": [0], "val": val}, "methods": [{"method": method}],
             "train": {"epochs": 1, "image_size": 16, "batch_size": 8, "min_steps": 0}}
    del small["budget"], small["synthetic_probs"]
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump(small))
    return cfg


def test_each_generator_gets_its_own_m_unless_a_budget_is_given(tmp_path):
    """budget: unset -> each generator writes its paper's M (the method's default_n); budget=N -> N for all.
    The budget and the synthetic share each arm actually used are in results.csv."""
    from genaug.methods import get_method_class

    cfg = _small_bench(tmp_path, val=0, method="randaugment")
    cli("bench", cfg, "--out", tmp_path / "own")
    own = pd.read_csv(tmp_path / "own" / "results.csv").set_index("arm")
    m = get_method_class("randaugment").default_n
    n_real = own.loc["randaugment", "n_real"]
    assert own.loc["randaugment", "budget"] == m and own.loc["randaugment", "n_synthetic"] == m * n_real
    assert own.loc["randaugment", "synthetic_prob"] == 0.5 and own.loc["randaugment", "synthetic_share"] == 0.5
    assert own.loc["real", "budget"] == 0 and own.loc["real", "synthetic_share"] == 0
    assert "per real image" in (tmp_path / "own" / "report.md").read_text()
    cli("bench", cfg, "budget=3", "--out", tmp_path / "matched")
    matched = pd.read_csv(tmp_path / "matched" / "results.csv").set_index("arm")
    assert matched.loc["randaugment", "budget"] == 3 and matched.loc["randaugment", "n_synthetic"] == 3 * n_real
    # a lower budget in the same folder: its own generation, not the 3-image folder's images under its name
    cli("bench", cfg, "budget=1", "--out", tmp_path / "matched")
    lower = pd.read_csv(tmp_path / "matched" / "results.csv").set_index("arm")
    assert lower.loc["randaugment", "budget"] == 1 and lower.loc["randaugment", "n_synthetic"] == n_real


def test_a_bench_rerun_retrains_what_reads_data_changed_in_place(tmp_path):
    """Cached runs are keyed by what their files hold, not only their paths: a split rewritten with another
    validation size is new data, and the runs on it train again."""
    cfg = _small_bench(tmp_path, val=1, method="mixup")
    cli("bench", cfg, "--out", tmp_path / "run")
    rows = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "runs").rglob("bench_row.json")}
    assert len(rows) == 2
    cli("bench", cfg, "--out", tmp_path / "run")
    assert {p: p.stat().st_mtime_ns for p in rows} == rows  # nothing changed: all reused
    cli("bench", cfg, "splits.val=2", "--out", tmp_path / "run")  # val.csv rewritten at the same path
    assert all(p.stat().st_mtime_ns != t for p, t in rows.items())
    metrics = json.loads((tmp_path / "run" / "runs" / "real" / "shots-2" / "seed-0" / "metrics.json").read_text())
    assert metrics["val"]["n"] == 2 * 10  # two a class now


def test_pseudo_labels_come_from_the_classifier_not_the_pool(bench_run, tmp_path):
    """The unlabelled pool without a generator: labelled by the real-only classifier, confident ones only, at
    most `per_class` per predicted class; the pool's own labels are never used (here they are all wrong)."""
    import torch

    from genaug.bench.run import pseudo_label
    from genaug.data.imageset import load_real
    from genaug.features import normalize
    from genaug.train import load_run

    run = bench_run[0] / "run"
    real_run = run / "runs" / "real" / "shots-4" / "seed-0"
    rest = run / "splits" / "shots-4" / "seed-0" / "rest.csv"
    frame = pd.read_csv(rest, dtype=str, keep_default_na=False)
    frame["label"] = "nonsense"  # labels the classifier would never give
    pool = rest.with_name("pool-wrong-labels.csv")
    frame.to_csv(pool, index=False)
    model, meta = load_run(real_run)
    images = load_real(pool, meta["image_size"])
    with torch.no_grad():
        probs = torch.softmax(model(normalize(images.images, meta["mean"], meta["std"])), 1)
    conf, pred = probs.max(1)
    threshold = float(conf.median())
    out = tmp_path / "pseudo.csv"
    report = pseudo_label(real_run, pool, out, threshold=threshold, per_class=3)
    kept = pd.read_csv(out, dtype={"label": str})
    assert 0 < len(kept) == report["kept"] <= 3 * len(meta["classes"])
    assert kept["label"].value_counts().max() <= 3 and "nonsense" not in set(kept["label"])
    assert (kept["confidence"] >= threshold - 1e-4).all()
    by_id = {i: (meta["classes"][int(p)], float(c)) for i, p, c in zip(images.ids, pred, conf)}
    for row in kept.itertuples():  # each kept image carries the classifier's label, most confident first
        assert by_id[row.id][0] == row.label and by_id[row.id][1] == pytest.approx(row.confidence, abs=1e-4)
    for _, g in kept.groupby("label"):
        assert list(g["confidence"]) == sorted(g["confidence"], reverse=True)
    assert report["accuracy_vs_withheld_labels"] == 0  # the pool's (wrong) labels only scored, never used
    with pytest.raises(Exception, match="no image reached confidence"):
        pseudo_label(real_run, pool, tmp_path / "none.csv", threshold=1.01)
    # it trains as the synthetic share: a manifest is an added source, weight 1
    r = cli("train", "--real", run / "splits" / "shots-4" / "seed-0" / "train.csv", "--synthetic", out,
            "--out", tmp_path / "train", "epochs=1", "image_size=28", "batch_size=16", "min_steps=0", "--json",
            tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["n_synthetic"] == len(kept), r.output
    # the same request reuses the manifest; another cap (or threshold, classifier, pool) makes it again
    stamp = out.stat().st_mtime_ns
    assert pseudo_label(real_run, pool, out, threshold=threshold, per_class=3) == report
    assert out.stat().st_mtime_ns == stamp
    fewer = pseudo_label(real_run, pool, out, threshold=threshold, per_class=1)
    assert fewer["kept"] == len(pd.read_csv(out)) and pd.read_csv(out)["label"].value_counts().max() == 1


def test_generator_scores_of_a_folder_with_nothing_to_draw_or_a_class_missing(bench_run, tmp_path, caplog):
    """Columns that cannot be had are empty, with a warning — the bench goes on to its other arms."""
    import shutil

    from genaug.bench.run import generator_scores

    run = bench_run[0] / "run"
    real_run = run / "runs" / "real" / "shots-4" / "seed-0"
    syn = shutil.copytree(run / "synthetic" / "randaugment" / "shots-4" / "budget-2" / "seed-0", tmp_path / "syn")
    meta = syn / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    first = rows[0]["label"]

    def weigh(rule):
        meta.write_text("".join(json.dumps({**r, "weight": rule(r)}) + "\n" for r in rows))

    weigh(lambda r: 0.0)
    scores = generator_scores(real_run, syn, tmp_path / "cas", None, None, {"epochs": 1, "image_size": 16})
    assert scores == {"label_agreement": None, "cas_acc": None} and "no image that training draws" in caplog.text
    weigh(lambda r: 0.0 if r["label"] == first else 1.0)  # one class without images: no comparable CAS
    scores = generator_scores(real_run, syn, tmp_path / "cas", None, None, {"epochs": 1, "image_size": 16})
    assert 0 <= scores["label_agreement"] <= 1 and scores["cas_acc"] is None
    assert f"of class(es) ['{first}']" in caplog.text and not (tmp_path / "cas").exists()


def test_a_bench_diagen_arm_calibrates_its_weights_on_the_validation_split(tmp_path, digit_images, tiny_models):
    """DIAGen calibrates on a validation split: a bench whose split has one gives it to the arm, instead of the
    arm holding out 20 % of the few-shot train split (here: 1 of 3 images per class). An arm's own choice wins."""
    from conftest import make_imagefolder, read_rows
    from genaug.bench.run import ArmSpec, generation_options

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=6, classes=("0", "1"))
    diagen = {"model": str(tiny_models["sd15"]), "steps": 4, "resolution": 32, "ti_steps": 1, "weight_epochs": 1,
              "weight_backbone": "mobilenet_v2", "weight_image_size": 16, "prompts_per_class": 1, "llm": "template"}
    cfg = tmp_path / "b.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"train": str(src)}, "splits": {"shots": [3], "seeds": [0], "val": 2},
        "methods": [{"method": "diagen", "options": diagen}], "budget": 1, "cas": False,
        "train": {"epochs": 1, "image_size": 16, "batch_size": 8, "min_steps": 0}}))
    cli("bench", cfg, "--out", tmp_path / "run")
    syn = tmp_path / "run" / "synthetic" / "diagen" / "shots-3" / "budget-1" / "seed-0"
    val = (tmp_path / "run" / "splits" / "shots-3" / "seed-0" / "val.csv").resolve()
    w = json.loads((syn / "weighting.json").read_text())
    assert w["calibration"] == "val" and w["val"] == str(val) and w["n_holdout"] == 4 and w["holdout"] is None
    assert yaml.safe_load((syn / "config.yaml").read_text())["options"]["weight_val"] == str(val)  # recorded
    assert len(read_rows(syn)) == 6
    assert pd.read_csv(tmp_path / "run" / "results.csv").set_index("arm").loc["diagen", "n_synthetic"] > 0
    # the arm's own weight_val, weighting turned off, no validation split, a method without weighting: untouched
    assert generation_options(ArmSpec(method="diagen", options={"weight_val": "mine.csv"}), val)["weight_val"] \
        == "mine.csv"
    assert "weight_val" not in generation_options(ArmSpec(method="diagen", options={"weighting": "none"}), val)
    assert "weight_val" not in generation_options(ArmSpec(method="diagen"), None)
    assert generation_options(ArmSpec(method="randaugment", options={"magnitude": 5}), val) == {"magnitude": 5}
