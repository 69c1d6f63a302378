"""The user-visible checks of tests/visible.py (used by the real-weight tests) checked themselves: each fails
on what it must catch, and passes on real outputs of the tiny models for the methods that promise it."""
import numpy as np
import pytest
from PIL import Image

from conftest import cli, make_cutouts, make_imagefolder
from visible import (assert_differs, assert_no_class_words, assert_not_blank, assert_pixels_kept, check_output,
                     dataset_subject)


def test_the_checks_catch_what_they_must(digit_images):
    photo = np.asarray(digit_images[0][3].convert("RGB").resize((32, 32), Image.NEAREST))
    rng = np.random.default_rng(0)
    noisy = np.clip(photo.astype(int) + rng.integers(-30, 31, photo.shape), 0, 255).astype(np.uint8)
    for flat in (np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 128, np.uint8)):
        with pytest.raises(AssertionError, match="blank"):
            assert_not_blank(Image.fromarray(flat))
    spots = np.zeros((32, 32, 3), np.uint8)
    spots[0, :5] = 255  # nearly black, a few bright pixels
    with pytest.raises(AssertionError, match="one colour covers"):
        assert_not_blank(Image.fromarray(spots))
    assert_not_blank(Image.fromarray(photo))
    with pytest.raises(AssertionError, match="nearly its source"):
        assert_differs(Image.fromarray(photo), Image.fromarray(photo))
    assert_differs(Image.fromarray(noisy), Image.fromarray(photo))
    region = np.zeros((32, 32), bool)
    region[8:24, 8:24] = True
    assert_pixels_kept(Image.fromarray(np.where(region[..., None], photo, noisy)), Image.fromarray(photo), region)
    one_off = photo.copy()
    one_off[10, 10] ^= 1
    with pytest.raises(AssertionError, match="1 of the 256 kept pixels changed"):
        assert_pixels_kept(Image.fromarray(one_off), Image.fromarray(photo), region)
    labels = ["cat", "sports_car", "butterfly"]
    for text in ("two Cats on a beach", "a sports car at dusk", "sports-car", "butterflies at noon", "a CAR."):
        with pytest.raises(AssertionError, match="class words"):
            assert_no_class_words(text, labels)
    assert_no_class_words("a catalog of carpets in a sportsman's scattered garden", labels)


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory, digit_images):
    """Digits as RGBA cut-outs (alpha = the ink), 40x40, classes named like words."""
    return make_cutouts(tmp_path_factory.mktemp("cutouts"), digit_images, per_class=2)


def test_inpaint_background_output_passes_the_checks(cutouts, tmp_path, tiny_models):
    out = tmp_path / "bg"
    cli("augment", cutouts, "--out", out, "--method", "inpaint", "-n", 1, f"model={tiny_models['sd15-inpaint']}",
        "steps=2", "mode=background", "dilation=2", "masks=dataset")
    assert len(check_output(out, cutouts, kept=dataset_subject)) == 4
    with pytest.raises(AssertionError, match="kept pixels changed"):  # foreground mode repaints the subject
        fg = tmp_path / "fg"
        cli("augment", cutouts, "--out", fg, "--method", "inpaint", "-n", 1, f"model={tiny_models['sd15-inpaint']}",
            "steps=2", "mode=foreground", "dilation=2", "masks=dataset")
        check_output(fg, cutouts, kept=dataset_subject)


def test_aga_output_with_a_language_model_passes_the_checks(cutouts, tmp_path, tiny_models):
    """The tiny chat model babbles words of its corpus, class names among them: AGA's captions must not."""
    out = tmp_path / "aga"
    cli("augment", cutouts, "--out", out, "--method", "aga", "-n", 1, f"model={tiny_models['sd15']}", "steps=2",
        "resolution=32", "masks=dataset", f"llm={tiny_models['llm']}", "caption_variants=1", "flip_p=0",
        "scale=[1,1]", "rotation=[0,0]", "position=keep", "class_words={cat: [photo]}")
    rows = check_output(out, cutouts, kept=dataset_subject, class_free="caption", labels=["cat", "dog", "photo"])
    assert len(rows) == 4 and {r["params"]["prompt_source"] for r in rows} == {"llm"}
    assert any(r["params"]["caption_removed"] for r in rows)  # a class word was written, and scrubbed


def test_diffusion_output_passes_the_checks(tmp_path, tiny_models, digit_images):
    """check_output passes on real_guidance's images; assert_differs, on its own, passes each generated image
    against its source and fails on the source itself saved again, as PNG or JPEG, or moved by one level."""
    from genaug.data.images import InputConfig, load_image

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0", "1"))
    out = tmp_path / "rg"
    cli("augment", src, "--method", "real_guidance", "--out", out, "-n", 1, f"model={tiny_models['sd15']}",
        "steps=2", "resolution=32")
    rows = check_output(out, src)
    assert len(rows) == 2
    for r in rows:
        source = load_image(src / r["source_id"], InputConfig())[0]
        assert_differs(out / r["file_name"], source)
        again = {}
        for fmt in ("PNG", "JPEG"):
            path = tmp_path / f"again.{fmt.lower()}"
            source.save(path, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            again[fmt] = Image.open(path)
        a = np.asarray(source).astype(int)
        again["+1"] = Image.fromarray(np.where(a < 255, a + 1, a - 1).astype(np.uint8))
        for name, image in again.items():
            with pytest.raises(AssertionError, match="nearly its source"):
                assert_differs(image, source)
