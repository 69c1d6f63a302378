"""Classifier-confidence weights (DIAGen's weighting) for any synthetic folder."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import cli, make_imagefolder, read_rows
from genaug.scoring.weighting import fit_temperature, normalise_per_source, rule_weights

FAST = ["model=genaug_small_cnn", "pretrained=null", "mode=scratch", "image_size=16", "epochs=6", "lr=0.003",
        "batch_size=16"]


def test_rules_and_per_source_normalisation():
    p = np.array([0.9, 0.2, 0.5, 0.0, 0.0])
    assert rule_weights(p, "diagen").tolist() == [1.0, 0.4, 1.0, 0.0, 0.0]
    assert rule_weights(p, "confidence").tolist() == p.tolist()
    w = normalise_per_source(rule_weights(p, "diagen"), ["a", "a", "b", "c", "c"])
    assert w[:2] == pytest.approx([1 / 0.7, 0.4 / 0.7]) and w[2] == 1.0 and w[3:].tolist() == [0.0, 0.0]


def test_temperature_scaling_lowers_held_out_nll():
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(5, (400,), generator=g)
    logits = torch.randn(400, 5, generator=g)
    logits[torch.arange(400), targets] += 1.0  # right more often than not...
    t, before, after = fit_temperature(logits * 6, targets)  # ...but far too confident
    assert t > 1 and after < before
    t2, b2, a2 = fit_temperature(logits / 6, targets)  # under-confident: T < 1
    assert t2 < 1 and a2 < b2


def test_weight_command_rewrites_metadata_and_manifest(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=20)
    syn = tmp_path / "syn"
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 3)
    res = cli("weight", syn, "--real", real, *FAST, "--json", tmp_path / "w.json")
    assert "held-out NLL" in res.output
    summary = json.loads((tmp_path / "w.json").read_text())
    assert summary["holdout_nll_after"] <= summary["holdout_nll_before"] and summary["temperature"] > 0
    # the classifier's run is work, kept in the cache's work folder; the output folder holds data and records
    from genaug.data.cache import cache_root

    work = Path(json.loads((syn / "weighting.json").read_text())["work_dir"])
    assert work.parent == cache_root() / "work" / "weighting" and (work / "classifier" / "best.safetensors").is_file()
    assert sorted(p.name for p in syn.iterdir()) == [".genaug.lock", "0", "1", "2", "config.yaml", "manifest.parquet",
                                                     "metadata.jsonl", "rejected.jsonl", "weighting.json"]
    rows = read_rows(syn)
    assert len(rows) == 180 and all(0 <= r["scores"]["confidence"] <= 1 for r in rows)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source_id"], []).append(r["weight"])
    assert all(np.mean(w) == pytest.approx(1.0, abs=1e-4) or max(w) == 0 for w in by_source.values())
    manifest = {r["file_name"]: r["weight"] for r in pq.read_table(syn / "manifest.parquet").to_pylist()}
    assert manifest == {r["file_name"]: r["weight"] for r in rows}
    from genaug.train import load_synthetic

    assert load_synthetic(syn, 16).weights.tolist() == pytest.approx([r["weight"] for r in rows if r["weight"] > 0])
    # the folder still resumes: more variants are added next to the weighted ones
    cli("augment", real, "--method", "flipcrop", "--out", syn, "-n", 4)
    assert len(read_rows(syn)) == 240


def test_weight_needs_two_real_images_per_class(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=1)
    cli("augment", real, "--method", "flipcrop", "--out", tmp_path / "syn")
    assert "needs 2" in cli("weight", tmp_path / "syn", "--real", real, *FAST, expect=2).output
