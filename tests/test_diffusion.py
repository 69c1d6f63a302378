"""Stable Diffusion img2img methods with tiny random pipelines, saved and loaded like real ones."""
import pytest

from conftest import cli, make_imagefolder, read_rows


@pytest.fixture
def src(tmp_path, digit_images):
    return make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))


def test_real_guidance_records_prompt_strength_guidance_and_model(src, tmp_path, tiny_models):
    out = tmp_path / "rg"
    cli("augment", src, "--method", "real_guidance", "--out", out, "-n", 2, f"model={tiny_models['sd15']}",
        "steps=4", "strength=0.75", "guidance_scale=5", "resolution=32", "scheduler=euler", "prompt=a drawing of a {label}")
    rows = read_rows(out)
    assert len(rows) == 8
    p = rows[0]["params"]
    assert p["prompt"] == f"a drawing of a {rows[0]['label']}" and p["strength"] == 0.75
    assert p["guidance_scale"] == 5 and p["steps"] == 4
    assert rows[0]["models"]["diffusion"]["id"] == str(tiny_models["sd15"])


@pytest.mark.parametrize("args, message", [
    (["steps=1", "strength=0.5"], "steps x strength"),
    (["scheduler=nope"], "unknown scheduler"),
    (["strength=0"], "strength"),
])
def test_bad_real_guidance_options(src, tmp_path, tiny_models, args, message):
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", f"model={tiny_models['sd15']}",
              "resolution=32", *args, expect=2)
    assert message in res.output


def test_default_hub_model_offline_is_a_clear_error(src, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", expect=2)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in res.output and "451f4fe" in res.output
    assert "Traceback" not in res.output
