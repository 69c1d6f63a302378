"""Checks with the real pretrained weights (default hub ids at their pinned revisions). Skipped unless
GENAUG_SLOW=1; they need the models in the Hugging Face cache or hub access (then also HF_HUB_OFFLINE=0):

    GENAUG_SLOW=1 HF_HUB_OFFLINE=0 .venv/bin/python -m pytest tests/test_real_models.py

A GPU makes the diffusion ones take seconds instead of minutes."""
import os

import numpy as np
import pytest

from conftest import cli, make_imagefolder, read_rows

pytestmark = pytest.mark.skipif(os.environ.get("GENAUG_SLOW") != "1", reason="real weights: set GENAUG_SLOW=1")


@pytest.fixture(scope="module")
def cat():
    from PIL import Image
    from skimage import data

    return Image.fromarray(data.chelsea())  # a real photo of a cat, bundled with scikit-image


def test_clip_prefers_the_right_caption(cat):
    from genaug.components.clip import Clip

    sims = Clip().image_text_similarity([cat] * 3, ["a photo of a cat", "a photo of a car", "a bowl of soup"])
    assert int(np.argmax(sims)) == 0


def test_blip_captions_name_the_cat(cat):
    from genaug.components.captioner import Captioner

    captions = Captioner().captions(cat, 3, 3)
    assert sum("cat" in c or "kitten" in c for c in captions) >= 3


@pytest.mark.parametrize("method, options", [
    ("real_guidance", ["steps=20"]),
    ("sgid", ["steps=20", "n_beam=2", "n_nucleus=2"]),
    ("da_fusion", ["steps=20", "ti_steps=50", "strengths=[0.5]"]),
    ("diagen", ["steps=20", "ti_steps=50", "weighting=none"]),
])
def test_diffusion_methods_with_real_weights(method, options, tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    cli("augment", src, "--method", method, "--out", tmp_path / "o", "-n", 1, *options)
    rows = read_rows(tmp_path / "o")
    assert len(rows) == 4 and "revision" in rows[0]["models"]["diffusion"]
