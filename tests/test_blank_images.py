"""No blank or safety-flagged image is ever written as labelled data (issue 13, point 2)."""
import json

import numpy as np
import pytest
from PIL import Image

from conftest import cli, make_imagefolder, png_bytes, read_rows
from genaug import Example, create_method
from genaug.components.diffusion import Diffusion
from genaug.core.records import refusal, refuse
from genaug.core.config import ConfigError
from genaug.data.writer import encode_png, synthetic_file_name


def _rejected(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "rejected.jsonl", encoding="utf-8")]


def _is_blank(path) -> bool:
    a = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)
    return int((a.max(0) - a.min(0)).max()) <= 2


def _subjects(root):
    """Black 16 px images, each with a small coloured subject: erase the subject and nothing is left."""
    for c, colour in (("red", (220, 30, 30)), ("green", (30, 200, 60))):
        (root / c).mkdir(parents=True)
        for j, (y, x) in enumerate([(3, 3), (6, 8), (10, 5)]):
            a = np.zeros((16, 16, 3), np.uint8)
            a[y:y + 4, x:x + 4] = colour
            Image.fromarray(a).save(root / c / f"{j}.png")
    return root


def test_blank_outputs_are_rejected_with_the_variant_and_the_rest_written(tmp_path):
    """cutout whose box covers the whole subject leaves a black image: those variants are listed in
    rejected.jsonl, not in metadata.jsonl and not on disk; every other one is written exactly as before."""
    src, out = _subjects(tmp_path / "src"), tmp_path / "out"
    res = cli("augment", src, "--out", out, "--method", "cutout", "-n", 6, "scale=[0.2,1.0]", "ratio=[1,1]")
    rows, rejected = read_rows(out), _rejected(out)
    assert rejected and rows, "the setting should give both blank and non-blank variants"
    assert len(rows) + len(rejected) == 6 * 6
    assert f"{len(rejected)} rejected" in res.output
    written = {(r["source_id"], r["variant"]) for r in rows}
    for rej in rejected:
        assert "cutout variant" in rej["reason"] and "blank" in rej["reason"] and "(0, 0, 0)" in rej["reason"]
        variant = int(rej["reason"].split("variant ")[1].split()[0])
        assert (rej["id"], variant) not in written
        assert not (out / synthetic_file_name(rej["id"].split("/")[0], rej["id"], variant)).exists()
    assert not any(_is_blank(out / r["file_name"]) for r in rows)
    # the images kept are exactly what the method makes (the check only removes)
    m = create_method("cutout", {"scale": [0.2, 1.0], "ratio": [1, 1]})
    for r in rows[:3]:
        image = Image.open(src / r["source_id"]).convert("RGB")
        again = m([Example(r["source_id"], image, r["label"], r["source_path"])], [{"seed": r["seed"]}])[0].image
        assert encode_png(again) == (out / r["file_name"]).read_bytes()


def test_a_flat_source_may_give_flat_outputs(tmp_path):
    """A one-colour source flipped is faithful, not a generator failure: written, not rejected."""
    src = tmp_path / "src" / "sky"
    src.mkdir(parents=True)
    Image.new("RGB", (20, 20), (90, 140, 230)).save(src / "flat.png")
    out = tmp_path / "out"
    cli("augment", src.parent, "--out", out, "--method", "flipcrop", "-n", 2)
    assert len(read_rows(out)) == 2 and _rejected(out) == []


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny SD 1.x checkpoints that ship a safety checker, as the hub ones do: one flags every image, one none."""
    from genaug.testing.tiny import make_sd15

    root = tmp_path_factory.mktemp("sd-safety")
    for kind in ("flag_all", "flag_none"):
        make_sd15(safety_checker=kind)[0].save_pretrained(root / kind)
    return root


RG = ("--method", "real_guidance", "-n", 1, "steps=2", "resolution=32")


@pytest.fixture
def two_digits(tmp_path, digit_images):
    return make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0", "1"))


def test_safety_checker_is_off_by_default_and_recorded(two_digits, tmp_path, checkpoints):
    """The checkpoint's checker would black out every image; by default (the papers' setting) it does not
    run, the option is recorded, and the images are real ones."""
    import yaml

    out = tmp_path / "off"
    cli("augment", two_digits, "--out", out, *RG, f"model={checkpoints / 'flag_all'}")
    assert yaml.safe_load((out / "config.yaml").read_text())["options"]["safety_checker"] is False
    rows = read_rows(out)
    assert len(rows) == 2 and _rejected(out) == []
    assert not any(_is_blank(out / r["file_name"]) for r in rows)


def test_flagged_images_are_rejected_and_unflagged_ones_unchanged(two_digits, tmp_path, checkpoints):
    out = tmp_path / "on"
    res = cli("augment", two_digits, "--out", out, *RG, f"model={checkpoints / 'flag_all'}", "safety_checker=true")
    assert read_rows(out) == [] and png_bytes(out) == {}
    rejected = _rejected(out)
    assert len(rejected) == 2 and "2 rejected" in res.output
    assert all("safety checker flagged it" in r["reason"] and "safety_checker=false" in r["reason"]
               and "variant 0" in r["reason"] for r in rejected)
    # a checker that flags nothing changes no pixel: on and off make the same bytes
    image = Image.open(next(two_digits.rglob("*.png"))).convert("RGB")
    made = [Diffusion(str(checkpoints / "flag_none"), safety_checker=on, resolution=32, micro_batch=2)
            .img2img([image] * 3, ["a photo of a cat"] * 3, [1, 2, 3], strength=0.5, guidance_scale=7.5, steps=2)
            for on in (True, False)]
    assert [encode_png(im) for im in made[0]] == [encode_png(im) for im in made[1]]
    assert not any(refusal(im) for im in made[0] + made[1])


def test_a_refusal_survives_resizing():
    """img2img / inpaint / text2img resize the pipeline's output back to the source size: the mark stays."""
    black = refuse(Image.new("RGB", (8, 8)), "flagged")
    assert refusal(black.resize((16, 16), Image.BICUBIC)) == "flagged"
    assert refusal(Image.new("RGB", (8, 8))) is None and refusal(refuse(Image.new("RGB", (8, 8)), None)) is None


def test_safety_checker_on_a_checkpoint_without_one_is_a_clear_error(tiny_models):
    with pytest.raises(ConfigError, match="has no safety checker"):
        Diffusion(str(tiny_models["sd15"]), safety_checker=True, resolution=32)


@pytest.fixture(scope="module")
def inpaint_checkpoints(tmp_path_factory):
    """Tiny SD 1.x inpainting checkpoints with a safety checker (as runwayml's has): flag every image, or none."""
    from genaug.testing.tiny import make_sd15

    root = tmp_path_factory.mktemp("sd-inpaint-safety")
    for kind in ("flag_all", "flag_none"):
        make_sd15(inpaint=True, safety_checker=kind)[0].save_pretrained(root / kind)
    return root


@pytest.fixture(scope="module")
def cat_dog_cutouts(tmp_path_factory, digit_images):
    from conftest import make_cutouts

    return make_cutouts(tmp_path_factory.mktemp("cutouts"), digit_images, per_class=1)


COMPOSITING = {  # methods that paste source pixels back over what the pipeline made
    "aga": ("sd", ["-n", 2, "steps=2", "resolution=32", "masks=dataset", "llm=template", "flip_p=0",
                   "scale=[1,1]", "rotation=[0,0]", "position=keep"]),
    "inpaint": ("inpaint", ["-n", 2, "steps=2", "resolution=32", "masks=dataset", "mode=background",
                            "dilation=2"]),
}


@pytest.mark.parametrize("method", sorted(COMPOSITING))
def test_a_flagged_image_pasted_with_its_subject_is_still_rejected(method, cat_dog_cutouts, tmp_path, checkpoints,
                                                                   inpaint_checkpoints):
    """aga pastes the subject on the generated background and inpaint restores the kept region: the checker's
    black comes back with the source's own pixels on it, so the image is not blank and only the checker's flag
    can keep it out. Every variant the unflagging checker writes, the flagging one rejects, for that reason."""
    which, args = COMPOSITING[method]
    root = checkpoints if which == "sd" else inpaint_checkpoints
    run = {kind: cli("augment", cat_dog_cutouts, "--out", tmp_path / kind, "--method", method, *args,
                     f"model={root / kind}", "safety_checker=true") for kind in ("flag_none", "flag_all")}
    kept = read_rows(tmp_path / "flag_none")
    assert len(kept) == 4 and _rejected(tmp_path / "flag_none") == []
    assert "wrote 4 image(s)" in run["flag_none"].output and "rejected" not in run["flag_none"].output
    assert not any(_is_blank(tmp_path / "flag_none" / r["file_name"]) for r in kept)
    out = tmp_path / "flag_all"
    assert read_rows(out) == [] and png_bytes(out) == {}
    assert "wrote 0 image(s)" in run["flag_all"].output and "4 rejected" in run["flag_all"].output
    rejected = _rejected(out)
    assert sorted((r["id"], int(r["reason"].split("variant ")[1].split()[0])) for r in rejected) == \
        sorted((r["source_id"], r["variant"]) for r in kept)
    for r in rejected:
        assert r["reason"].startswith(f"{method} variant ")
        assert "safety checker flagged it" in r["reason"] and "safety_checker=false" in r["reason"]
        assert "blank" not in r["reason"]  # caught by the flag, not by the blank check: the composite is not blank
