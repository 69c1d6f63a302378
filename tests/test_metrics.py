"""Synthetic-data metrics agree with known values on constructed cases."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, make_imagefolder
from genaug.scoring import fid_kid, prdc_scores, synthetic_metrics


def test_identical_feature_sets():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    scores = {**prdc_scores(x, x, k=5), **fid_kid(x, x)}
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["fid"] == pytest.approx(0.0, abs=1e-6)
    assert abs(scores["kid"]) < 3 * scores["kid_std"]  # an unbiased estimate of 0: noise around zero


def test_disjoint_and_shifted_feature_sets():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g) + 20
    scores = {**prdc_scores(real, fake, k=5), **fid_kid(real, fake)}
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0 and scores["coverage"] == 0.0
    assert scores["fid"] == pytest.approx(16 * 20 ** 2, rel=0.1)  # ||mu1 - mu2||^2 dominates
    assert scores["kid"] > 100 * fid_kid(real, real)["kid_std"]
    near = fid_kid(real, torch.randn(300, 16, generator=g) + 0.5)["fid"]
    assert 0 < near < scores["fid"]


def test_too_few_images_give_no_prdc():
    x = torch.randn(4, 8)
    assert prdc_scores(x, x, k=5) == {}


def test_metrics_cli_on_real_images(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=12)
    same = synthetic_metrics(real, real, feature_size=64)
    assert same["overall"]["precision"] == 1.0 and same["overall"]["recall"] == 1.0
    assert same["overall"]["fid"] == pytest.approx(0.0, abs=1e-3)
    noise = tmp_path / "noise"
    rng = np.random.default_rng(0)
    rows = []
    for c in ("0", "1", "2"):
        (noise / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(noise / c / f"{i}.png")
            rows.append({"file_name": f"{c}/{i}.png", "label": c})
    (noise / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli("metrics", "--real", real, "--synthetic", noise, "--feature-size", 64, "--json", tmp_path / "m.json")
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["overall"]["precision"] < 0.2 and m["overall"]["fid"] > 10 * max(same["overall"]["fid"], 1.0)
    assert set(m["per_class"]) == {"0", "1", "2"} and "precision" in m["per_class"]["0"]
    assert "overall" in res.output and "mobilenet_v2-imagenet@64px" in res.output


def test_inception_features_without_weights_offline_is_a_clear_error(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=2)
    res = cli("metrics", "--real", real, "--synthetic", real, "--features", "inception",
              "--inception-weights", tmp_path / "missing.pth", expect=2)
    assert "Inception weights not found" in res.output

