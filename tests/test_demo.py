"""The main job on real data, offline (quick mode: every stage, smaller)."""
import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import cli, png_bytes
from genaug.core.config import ConfigError
from genaug.data.builtin import digits, fashion_mnist, fashion_mnist_available, load_builtin, stratified_subset
from genaug.demo import data_name, run_demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    res = cli("demo", "--out", root / "demo", "--quick", "--workers", "2", "--json", root / "demo.json")
    return root, res


def test_demo_runs_end_to_end_on_real_data(demo_run):
    root, res = demo_run
    table = json.loads((root / "demo.json").read_text())
    picked = table["classical"]["method"]
    other = "randaugment" if picked == "flipcrop" else "flipcrop"
    arms = ("real", "classical", "pseudo_label", "semantic_flow", "both", f"classical:{other}")
    assert set(table) == {*arms, "details"}
    for arm in arms:
        assert 0 <= table[arm]["mean"] <= 1 and table[arm]["std"] >= 0 and table[arm]["seeds"] == 2
    details = table["details"]
    assert details["dataset"] == ("fashion-mnist" if fashion_mnist_available() else "digits")
    # every candidate ran on every seed; the pick is the best mean validation accuracy
    assert picked in ("flipcrop", "randaugment") and details["classical_validation"][picked] == \
        max(details["classical_validation"].values()) == table["classical"]["val_mean"]
    # each generator's own columns; the generation time is the real one
    for arm in ("classical", "semantic_flow", f"classical:{other}"):
        assert 0 <= table[arm]["label_agreement"] <= 1 and table[arm]["generation_seconds"] > 0
    assert 0 <= table["semantic_flow"]["cas_acc"] <= 1 and 0 <= table["classical"]["cas_acc"] <= 1
    assert "cas_acc" not in table[f"classical:{other}"] and "label_agreement" not in table["real"]
    assert table["both"]["generation_seconds"] == pytest.approx(
        table["classical"]["generation_seconds"] + table["semantic_flow"]["generation_seconds"], abs=0.2)
    assert details["flow"]["reconstruction"]["mse"] < 0.05
    grid = Image.open(details["grid"])
    assert grid.width > 3 * 28 and grid.height > 28
    assert "semantic_flow" in res.output and "±" in res.output
    demo = root / "demo"
    rows = [json.loads(line) for line in open(demo / "synthetic" / "semantic_flow" / "metadata.jsonl")]
    assert len(rows) == 2 * details["real_images"] and rows[0]["params"]["mode"] == "sdedit"
    assert (demo / "report.html").is_file() and (demo / "flow-model" / "flow_config.json").is_file()
    html = (demo / "report.html").read_text()
    assert 'alt="learning curves"' in html and 'alt="grid semantic_flow"' in html and "CAS acc %" in html
    assert "label agreement %" in html and (demo / "learning_curves.png").is_file()
    assert "What the generator saw" in html and "What the generator saw" in res.output


def _paths(manifest):
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return {(manifest.parent / p).resolve() for p in frame["path"]}


def test_the_generator_sees_labelled_and_unlabelled_training_images_never_val_or_test(demo_run):
    """The papers' premise done honestly: the generator trains on the labelled split and the rest of the
    training set with its labels withheld; not one validation or test image reaches it."""
    root, _ = demo_run
    demo = root / "demo"
    fit = yaml.safe_load((demo / "flow-model" / "fit_config.yaml").read_text())
    cfg = json.loads((demo / "config.yaml").read_text())
    split = demo / "splits" / f"fraction-{cfg['fraction']:g}" / "seed-0"
    assert Path(fit["source"]) == (split / "train.csv").resolve()
    pool = Path(fit["unlabeled"])
    assert pool.parent == split.resolve() and fit["n_unlabeled"] == len(pd.read_csv(pool)) > 0
    seen = _paths(split / "train.csv") | _paths(pool)
    assert len(seen) == fit["n_images"] + fit["n_unlabeled"]
    assert not seen & _paths(split / "val.csv")
    test = demo / "data" / data_name(cfg["dataset"], "test", cfg["export_per_class"]["test"]) / "manifest.csv"
    assert 0 < len(_paths(test)) <= 10 * cfg["export_per_class"]["test"] and not seen & _paths(test)
    saw = json.loads((root / "demo.json").read_text())["details"]["generator_saw"]
    assert saw["unlabelled_images"] == fit["n_unlabeled"] and saw["labelled_images"] == fit["n_images"]
    # the pseudo-label arm draws on exactly that pool, labelled by each seed's real-only classifier
    for seed in (0, 1):
        kept = _paths(demo / "pseudo_label" / f"seed-{seed}.csv")
        assert kept and kept <= _paths(pool)


def test_demo_rerun_reuses_everything(demo_run):
    root, _ = demo_run
    first = json.loads((root / "demo.json").read_text())
    cli("demo", "--out", root / "demo", "--quick", "--json", root / "again.json")
    again = json.loads((root / "again.json").read_text())
    arms = [k for k in first if k != "details"]
    assert {k: {m: v for m, v in again[k].items() if m != "generation_seconds"} for k in arms} == \
        {k: {m: v for m, v in first[k].items() if m != "generation_seconds"} for k in arms}
    assert again["details"]["seconds"] < first["details"]["seconds"] / 2


def test_one_worker_gives_the_same_table_as_jobs_side_by_side(demo_run):
    """The demo's jobs run at one thread wherever they run: in this process (--workers 1) the table is the one the
    side-by-side run (two workers) wrote, to the last digit, and the generator's images are the same bytes."""
    root, _ = demo_run
    first = json.loads((root / "demo.json").read_text())
    (root / "inline").mkdir()
    (root / "inline" / "data").symlink_to(root / "demo" / "data")  # the same exported images, not exported again
    cli("demo", "--out", root / "inline", "--quick", "--workers", "1", "--json", root / "inline.json")
    inline = json.loads((root / "inline.json").read_text())
    assert inline["details"]["workers"] == 1
    arms = [k for k in first if k != "details"]
    assert {k: {m: v for m, v in inline[k].items() if m != "generation_seconds"} for k in arms} == \
        {k: {m: v for m, v in first[k].items() if m != "generation_seconds"} for k in arms}
    images = png_bytes(root / "demo" / "synthetic" / "semantic_flow")
    assert images and png_bytes(root / "inline" / "synthetic" / "semantic_flow") == images


def test_demo_precision_reaches_the_generator_its_images_and_the_classifiers(monkeypatch, tmp_path):
    """`genaug demo --precision` is how a folder made where `auto` meant bfloat16 is continued elsewhere."""
    import genaug.demo

    seen = {}

    def planned(out, quick, progress, overrides):
        seen.update(overrides)
        raise ConfigError("planned only")

    monkeypatch.setattr(genaug.demo, "run_demo", planned)
    assert "planned only" in cli("demo", "--out", tmp_path, "--precision", "bfloat16", expect=2).output
    assert seen["flow"] == seen["semantic_flow"] == seen["train"] == {"precision": "bfloat16"}
    assert "float16" in cli("demo", "--out", tmp_path, "--precision", "float16", expect=2).output


def test_fashion_mnist_reader_when_installed():
    if not fashion_mnist_available():
        pytest.skip("dataset-fashion-mnist is not installed (make test installs it as root)")
    images, labels, classes = fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype.name == "uint8" and len(classes) == 10
    idx = stratified_subset(labels, 5, seed=0)
    assert len(idx) == 50 and (labels[idx] == labels[idx].min()).sum() == 5


def test_digits_have_a_fixed_stratified_test_third():
    """scikit-learn ships no split: genaug's is a third of every class, the same on every call, disjoint from
    train and together all 1,797 digits."""
    (tr, ytr, classes), (te, yte, _) = digits("train"), digits("test")
    assert len(tr) + len(te) == 1797 and len(classes) == 10
    for c in range(10):
        n = (ytr == c).sum() + (yte == c).sum()
        assert (yte == c).sum() == round(n / 3)
    from sklearn.datasets import load_digits

    def rows(images, labels):  # the multiset of (image, label)
        return sorted(im.tobytes() + bytes([int(y)]) for im, y in zip(images, labels))

    full = load_digits()
    scaled = np.clip(full.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    assert rows(np.concatenate([tr, te]), np.concatenate([ytr, yte])) == rows(scaled, full.target)
    assert np.array_equal(digits("test")[0], te)
    with pytest.raises(ConfigError, match="unknown split"):
        load_builtin("digits", "validation")


def test_demo_rejects_an_unknown_dataset(tmp_path):
    with pytest.raises(ConfigError, match="unknown demo dataset 'mnist'"):
        run_demo(tmp_path / "d", quick=True, overrides={"dataset": "mnist"})
    assert not (tmp_path / "d").exists()
