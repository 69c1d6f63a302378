"""Synthetic-data metrics agree with known values on constructed cases."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, make_imagefolder
from genaug.core.config import ConfigError
from genaug.features import FID_FEATURES
from genaug.scoring import cmmd, distance_keys, frechet_kernel_distances, prdc_scores, synthetic_metrics


def fkd(real, fake):  # in an arbitrary test space
    return frechet_kernel_distances(real, fake, space="test")


def test_identical_feature_sets():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    scores = {**prdc_scores(x, x, k=5), **fkd(x, x)}
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["fd_test"] == pytest.approx(0.0, abs=1e-6)
    assert abs(scores["kd_test"]) < 3 * scores["kd_test_std"]  # an unbiased estimate of 0: noise around zero


def test_disjoint_and_shifted_feature_sets():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g) + 20
    scores = {**prdc_scores(real, fake, k=5), **fkd(real, fake)}
    assert scores["precision"] == 0.0 and scores["recall"] == 0.0 and scores["coverage"] == 0.0
    assert scores["fd_test"] == pytest.approx(16 * 20 ** 2, rel=0.1)  # ||mu1 - mu2||^2 dominates
    assert scores["kd_test"] > 100 * fkd(real, real)["kd_test_std"]
    near = fkd(real, torch.randn(300, 16, generator=g) + 0.5)["fd_test"]
    assert 0 < near < scores["fd_test"]


def test_distances_are_named_by_their_feature_space():
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))
    assert distance_keys(FID_FEATURES) == ("fid", "kid")
    assert set(frechet_kernel_distances(x, x + 1, space=FID_FEATURES)) == {"fid", "kid", "kid_std"}
    assert set(frechet_kernel_distances(x, x + 1, space="mobilenet_v2")) == {
        "fd_mobilenet_v2", "kd_mobilenet_v2", "kd_mobilenet_v2_std"}


def test_kernel_distance_is_the_same_on_every_call_and_leaves_the_global_rng_alone():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(120, 8, generator=g), torch.randn(120, 8, generator=g) + 0.3  # > 50: subsets drawn
    torch.manual_seed(5)
    first = frechet_kernel_distances(real, fake, space="mobilenet_v2")
    after = torch.rand(1)
    torch.manual_seed(5)
    assert frechet_kernel_distances(real, fake, space="mobilenet_v2") == first and torch.equal(torch.rand(1), after)
    torch.manual_seed(6)
    assert frechet_kernel_distances(real, fake, space="mobilenet_v2") == first


def _cmmd_numpy(x, y, sigma=10.0, scale=1000.0):
    """The paper's estimator written out pair by pair: scale * (mean k(x, x') + mean k(y, y') - 2 mean k(x, y))."""
    def mean_k(a, b):
        return np.mean([[np.exp(-np.sum((u - v) ** 2) / (2 * sigma ** 2)) for v in b] for u in a])
    return scale * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))


def test_cmmd_matches_the_papers_estimator():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(size=(9, 5)) + 0.3
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # L2-normalised, as CLIP embeddings are
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    assert cmmd(torch.from_numpy(x).float(), torch.from_numpy(y).float()) == pytest.approx(_cmmd_numpy(x, y), rel=1e-5)
    assert cmmd(torch.from_numpy(x), torch.from_numpy(y), sigma=0.5) == pytest.approx(
        _cmmd_numpy(x, y, sigma=0.5), rel=1e-9)


def test_cmmd_is_zero_on_itself_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(200, 32, generator=g), dim=-1)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    base = torch.randn(200, 32, generator=g)
    shifts = [cmmd(x, torch.nn.functional.normalize(base + s, dim=-1)) for s in (0.0, 0.3, 1.0, 3.0)]
    assert shifts == sorted(shifts) and shifts[0] < 0.5 < shifts[-1]
    with pytest.raises(ConfigError, match="one width"):
        cmmd(x, x[:, :16])
    with pytest.raises(ConfigError, match="sigma"):
        cmmd(x, x, sigma=0)


def test_too_few_images_give_no_prdc():
    x = torch.randn(4, 8)
    assert prdc_scores(x, x, k=5) == {}


def test_metrics_cli_on_real_images(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=12)
    same = synthetic_metrics(real, real, feature_size=64)
    assert same["overall"]["precision"] == 1.0 and same["overall"]["recall"] == 1.0
    # MobileNetV2 features: a Fréchet distance, not FID, and named so
    assert same["feature_space"] == "mobilenet_v2" and "fid" not in same["overall"] and "kid" not in same["overall"]
    assert same["overall"]["fd_mobilenet_v2"] == pytest.approx(0.0, abs=1e-3)
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
    fd = m["distances"]["frechet"]
    assert fd == "fd_mobilenet_v2" and "fid" not in m["overall"] and "fid" not in m["per_class"]["0"]
    assert m["overall"]["precision"] < 0.2 and m["overall"][fd] > 10 * max(same["overall"][fd], 1.0)
    assert set(m["per_class"]) == {"0", "1", "2"} and "precision" in m["per_class"]["0"]
    assert "overall" in res.output and "mobilenet_v2-imagenet@64px" in res.output
    header = res.output.splitlines()[1].split()
    assert "fd_mobilenet_v2" in header and "kd_mobilenet_v2" in header and "fid" not in header


def test_inception_features_without_weights_offline_is_a_clear_error(tmp_path, digit_images):
    real = make_imagefolder(tmp_path / "real", digit_images, per_class=2)
    res = cli("metrics", "--real", real, "--synthetic", real, "--features", "inception",
              "--inception-weights", tmp_path / "missing.pth", expect=2)
    assert "Inception weights not found" in res.output



@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from genaug.testing.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny-clip"), ["clip"])["clip"]


def test_metrics_cli_prints_cmmd_with_clip(tmp_path, digit_images, tiny_clip):
    from genaug.components.clip import Clip

    real = make_imagefolder(tmp_path / "real", digit_images, per_class=6)
    other = make_imagefolder(tmp_path / "other", digit_images, per_class=6, classes=("7", "8", "9"))
    for c, d in zip(("0", "1", "2"), ("7", "8", "9")):  # other digits under the real labels
        (other / d).rename(other / c)
    res = cli("metrics", "--real", real, "--synthetic", other, "--feature-size", 64, "--clip", tiny_clip,
              "--json", tmp_path / "m.json")
    header = res.output.splitlines()[1].split()
    assert "cmmd" in header and "clip_score" in header
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["overall"]["cmmd"] > 0 and all("cmmd" in v for v in m["per_class"].values())
    assert m["cmmd"]["sigma"] == 10 and m["cmmd"]["scale"] == 1000 and m["clip"]["image_size"] == 64
    # the CMMD the CLI reports is the paper's estimator on the CLIP embeddings; a set against itself gives 0
    same = synthetic_metrics(real, real, feature_size=64, per_class=False, clip=Clip(str(tiny_clip)))
    assert same["overall"]["cmmd"] == pytest.approx(0.0, abs=1e-9)
