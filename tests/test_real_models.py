"""Checks with the real pretrained weights (default hub ids at their pinned revisions). Skipped unless
GENAUG_SLOW=1; they need the models in the Hugging Face cache or hub access (then also HF_HUB_OFFLINE=0):

    GENAUG_SLOW=1 HF_HUB_OFFLINE=0 .venv/bin/python -m pytest tests/test_real_models.py

A GPU makes the diffusion ones take seconds instead of minutes. The SD3 one reads GENAUG_SD3 (a hub id or a
folder; default SD3 medium, gated on the hub)."""
import os

import numpy as np
import pytest

from conftest import cli, make_imagefolder
from visible import check_output, dataset_subject

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
    rows = check_output(tmp_path / "o", src)  # not blank, not (nearly) the source
    assert len(rows) == 4 and "revision" in rows[0]["models"]["diffusion"]


@pytest.fixture
def cat_folder(tmp_path, cat):
    """The cat photo as a one-image dataset (class `cat`), saved losslessly."""
    (tmp_path / "cats" / "cat").mkdir(parents=True)
    cat.save(tmp_path / "cats" / "cat" / "chelsea.png")
    return tmp_path / "cats"


@pytest.fixture
def cat_cutout(tmp_path, cat):
    """The cat photo with an alpha mask over the cat's head (an ellipse): the subject the dataset gives."""
    from PIL import Image, ImageDraw

    alpha = Image.new("L", cat.size, 0)
    ImageDraw.Draw(alpha).ellipse((100, 40, 300, 230), fill=255)
    rgba = cat.convert("RGBA")
    rgba.putalpha(alpha)
    (tmp_path / "cutout" / "cat").mkdir(parents=True)
    rgba.save(tmp_path / "cutout" / "cat" / "chelsea.png")
    return tmp_path / "cutout"


def test_inpaint_with_real_weights_keeps_the_subject_and_the_layout(cat_cutout, tmp_path):
    out = tmp_path / "bg"
    cli("augment", cat_cutout, "--method", "inpaint", "--out", out, "-n", 2, "mode=background", "masks=dataset",
        "steps=20")
    check_output(out, cat_cutout, kept=dataset_subject)  # the subject's own pixels, a new background
    both = tmp_path / "both"
    cli("augment", cat_cutout, "--method", "inpaint", "--out", both, "-n", 2, "mode=both", "masks=dataset",
        "steps=20")
    rows = check_output(both, cat_cutout)
    assert {r["params"]["strength"] for r in rows} == {0.5}  # the source inserted, not text-to-image


def test_aga_with_real_weights_keeps_the_subject_and_names_no_class(cat_folder, tmp_path):
    """GroundingDINO -> SAM finds the cat; the caption (LLM or template) names no class; the subject pasted
    unmoved (no flip, scale 1, no rotation, its own place) keeps its pixels on a new background."""
    from genaug.components.segment import MaskOptions

    out = tmp_path / "aga"
    cli("augment", cat_folder, "--method", "aga", "--out", out, "-n", 2, "steps=20", "flip_p=0", "scale=[1,1]",
        "rotation=[0,0]", "position=keep")
    masker = MaskOptions().masker()

    def subject(row, source, alpha):
        mask, info = masker(source, row["label"])
        assert mask is not None, info
        return np.asarray(mask.convert("L")) == 255

    rows = check_output(out, cat_folder, kept=subject, class_free="caption", labels=["cat", "kitten"])
    assert {r["params"]["mask_source"] for r in rows} == {"model"}


def test_semantic_flow_on_a_real_sd3_keeps_the_subject_and_prompts_with_its_token(cat_cutout, cat_folder, tmp_path):
    """semantic_flow on a pretrained rectified-flow pipeline (GENAUG_SD3: a hub id or folder, default SD3 medium,
    gated on the hub): object-centric editing along the ODE keeps the subject's own pixels and changes the rest;
    textual inversion learned on the pipeline itself puts its token, not the class name, into every prompt."""
    model = os.environ.get("GENAUG_SD3", "stabilityai/stable-diffusion-3-medium-diffusers")
    out = tmp_path / "bg"
    cli("augment", cat_cutout, "--method", "semantic_flow", "--out", out, "-n", 2, f"model={model}", "mode=sdedit",
        "region=background", "masks=dataset", "steps=10")
    rows = check_output(out, cat_cutout, kept=dataset_subject)
    assert {r["params"]["region"] for r in rows} == {"background"}
    ti = tmp_path / "ti"
    cli("augment", cat_folder, "--method", "semantic_flow", "--out", ti, "-n", 2, f"model={model}", "mode=sdedit",
        "steps=10", "textual_inversion=true", "ti_steps=20")
    rows = check_output(ti, cat_folder, class_free="prompt", labels=["cat", "kitten"])
    assert all(r["params"]["token"] in r["params"]["prompt"] for r in rows)
