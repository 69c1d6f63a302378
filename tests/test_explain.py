"""SIC, AGA's explainability score: XRAI saliency by default (as AGA and the XRAI paper), the others as options."""
import numpy as np
import pytest
from safetensors.torch import load_model

from conftest import make_imagefolder
from genaug.core.config import ConfigError
from genaug.data.imageset import load_any
from genaug.features import normalize
from genaug.train import create_classifier, train
from genaug.train.explain import saliency_maps, sic_score

# min_steps=0: the epochs given are enough for these tests; the 1000-step floor would make each run far longer
CFG = {"epochs": 8, "batch_size": 16, "image_size": 16, "lr": 3e-3, "min_steps": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digit_images):
    """A tiny CNN trained on 3 digit classes through `train` with the default SIC (XRAI) on 2 test images."""
    root = tmp_path_factory.mktemp("sic")
    folder = make_imagefolder(root / "src", digit_images, per_class=40)
    result = train(folder, root / "run", test=folder, progress=False, config={**CFG, "sic_images": 2})
    model, mean, std = create_classifier("genaug_small_cnn", 3)
    load_model(model, str(root / "run" / "best.safetensors"))
    model.eval()
    images = load_any(folder, 16).images
    return result, model, (lambda x: normalize(x, mean, std)), images


def test_the_default_sic_is_computed_on_xrai_saliency(trained):
    result = trained[0]
    sic = result["test"]["sic"]
    assert sic["method"] == "xrai" and sic["xrai_steps"] == 100 and sic["xrai_algorithm"] == "full"
    assert sic["n_scored"] + sic["n_skipped"] == 2 and sic["n_scored"] > 0
    assert 0.0 <= sic["sic"] <= 1.0


def test_xrai_ranks_regions_not_pixels(trained):
    _, model, norm, images = trained
    target = model(norm(images[:1])).argmax(1)
    xrai = saliency_maps(model, images[:1], norm, target, "xrai", xrai_steps=8)
    ig = saliency_maps(model, images[:1], norm, target, "integrated_gradients")
    assert xrai.shape == ig.shape == (1, 16, 16)
    for x, g in zip(xrai, ig):
        # XRAI gives each segment one value (its attribution density); pixel attributions are nearly all distinct
        assert len(np.unique(x)) <= 40 < len(np.unique(g))
    # the IG steps shape the map
    assert not np.allclose(xrai, saliency_maps(model, images[:1], norm, target, "xrai", xrai_steps=2))


def test_xrai_integrates_from_black_and_white_and_sic_counts_each_skip_reason(trained, monkeypatch):
    """A low-contrast image (60..179) keeps XRAI's black and white baselines (PAIR's default would be 60 and
    179); every image PIC skips is counted under its reason."""
    from saliency.core import XRAI

    _, model, norm, images = trained
    seen, get_mask = [], XRAI.GetMask
    monkeypatch.setattr(XRAI, "GetMask", lambda self, x, *a, **k: seen.append(
        [float(b.min()) for b in k["baselines"]] + [float(b.max()) for b in k["baselines"]]) or get_mask(self, x, *a, **k))
    dim = (images[:1].float() * 120 / 255 + 60).round().to(images.dtype)
    saliency_maps(model, dim, norm, model(norm(dim)).argmax(1), "xrai", xrai_steps=2)
    assert seen == [[0.0, 255.0, 0.0, 255.0]]
    sic = sic_score(model, images, norm, n_images=12, seed=0, method="saliency")
    assert sum(sic["skipped"].values()) == sic["n_skipped"] and sic["n_scored"] + sic["n_skipped"] == 12
    assert set(sic["skipped"]) <= {"low_confidence", "blurred_not_less_informative", "blurred_not_less_confident"}


def test_sic_is_deterministic_for_a_seed(trained):
    _, model, norm, images = trained
    runs = [sic_score(model, images, norm, n_images=1, seed=3, xrai_steps=8) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0]["method"] == "xrai" and runs[0]["xrai_steps"] == 8
    assert runs[0]["n_scored"] == 1 and 0.0 <= runs[0]["sic"] <= 1.0


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency"])
def test_the_faster_saliencies_remain_options(trained, method):
    _, model, norm, images = trained
    sic = sic_score(model, images, norm, n_images=2, seed=0, method=method)
    assert sic["method"] == method and "xrai_steps" not in sic
    assert sic["n_scored"] + sic["n_skipped"] == 2 and sic["n_scored"] > 0 and 0.0 <= sic["sic"] <= 1.0


def test_bad_saliency_requests_are_config_errors(trained, tmp_path):
    _, model, norm, images = trained
    with pytest.raises(ConfigError, match="unknown SIC saliency 'gradcam'"):
        sic_score(model, images, norm, n_images=1, method="gradcam")
    with pytest.raises(ConfigError, match="xrai_steps >= 2"):
        sic_score(model, images, norm, n_images=1, xrai_steps=0)
    with pytest.raises(ConfigError, match="sic_saliency"):
        train(tmp_path, tmp_path / "r", config={"sic_saliency": "xria"})


def test_xrai_settings_come_from_the_training_config(tmp_path, digit_images):
    folder = make_imagefolder(tmp_path / "src", digit_images, per_class=10)
    result = train(folder, tmp_path / "run", test=folder, progress=False,
                   config={**CFG, "epochs": 1, "sic_images": 1, "sic_xrai_steps": 4, "sic_xrai_algorithm": "fast"})
    sic = result["test"]["sic"]
    assert sic["method"] == "xrai" and sic["xrai_steps"] == 4 and sic["xrai_algorithm"] == "fast"
    with pytest.raises(ConfigError, match="sic_xrai_steps"):
        train(folder, tmp_path / "r", config={"sic_xrai_steps": 1})
