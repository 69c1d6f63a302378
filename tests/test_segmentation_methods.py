"""Segmentation-guided augmentation: subject masks (dataset first, GroundingDINO -> SAM otherwise), `aga`
(captioned backgrounds, affine paste) and object-centric `inpaint`."""
import json

import numpy as np
import pytest
from PIL import Image
from genaug.data.images import InputConfig, load_image

from conftest import ChatServer, cli, make_cutouts, png_bytes, read_rows


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory, digit_images):
    """Real handwritten digits as RGBA cut-outs (alpha = the ink), 40x40, two classes named like words."""
    return make_cutouts(tmp_path_factory.mktemp("cutouts"), digit_images, per_class=3)


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory):
    """Real photos bundled with scikit-image."""
    from skimage import data

    root = tmp_path_factory.mktemp("backgrounds")
    for name in ("astronaut", "coffee", "rocket", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(root / f"{name}.jpg")
    return root


def _mask(path) -> np.ndarray:
    return np.asarray(Image.open(path).getchannel("A")) == 255


def test_dilation_radius_and_window():
    from genaug.components.segment import dilate

    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    disk = dilate(m, 3, "radius")
    assert disk.sum() == 29 and disk[10, 13] and disk[12, 12] and not disk[13, 12]  # x^2 + y^2 <= 9
    square = dilate(m, 4, "window")
    ys, xs = np.nonzero(square)
    # a 4-px window: -1 / +2 px around the pixel (scipy centres even windows so, as in DA-Fusion)
    assert square.sum() == 16 and (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 12, 9, 12)
    assert np.array_equal(dilate(m, 0), m)


def test_captions_never_name_a_class():
    from genaug.methods.aga import class_words, scrub

    words = class_words(["cat", "sports_car", "butterfly"], {"cat": ["kitten"]})
    assert {"cat", "cats", "sports car", "car", "cars", "butterflies", "kitten"} <= set(words)
    caption, removed = scrub("A Cat and two CATS near a sports-car, a kitten, butterflies and a catalogue", words)
    assert caption == "and a catalogue"  # the words, their articles, and the connectors left dangling
    assert scrub("the cat", words)[0] == ""  # nothing left: the caller falls back to its template
    assert {"cat", "cats", "kitten", "butterflies"} <= set(removed)
    words = class_words(["café", "猫", "dog"])  # any script: no "caf", no empty word whose plural is "s"
    assert {"café", "cafés", "猫"} <= set(words) and "s" not in words and "caf" not in words
    assert scrub("a 猫 sleeping in a cosy café", words)[0] == "sleeping in a cosy"
    assert scrub("a farmer's barn", words)[0] == "a farmer's barn"


def test_aga_refuses_an_unreadable_background_before_generating(cutouts, backgrounds, tmp_path):
    import shutil

    bgs = shutil.copytree(backgrounds, tmp_path / "bgs")
    (bgs / "bad.jpg").write_bytes(b"")
    res = cli("augment", cutouts, "--method", "aga", "--out", tmp_path / "o", f"backgrounds_dir={bgs}", expect=2)
    assert "1 unreadable image(s): bad.jpg" in res.output and not (tmp_path / "o" / "metadata.jsonl").exists()


def test_aga_identity_keeps_the_subject_pixels_and_records_everything(cutouts, backgrounds, tmp_path):
    out = tmp_path / "aga"
    cli("augment", cutouts, "--method", "aga", "--out", out, "-n", 2, f"backgrounds_dir={backgrounds}",
        "flip_p=0", "rotation=[0,0]", "scale=[1,1]", "position=keep", "feather=2")
    rows = read_rows(out)
    assert len(rows) == 12
    for r in rows:
        p = r["params"]
        assert p["mask_source"] == "dataset" and p["flip"] is False and p["scale"] == 1 and p["rotation"] == 0
        assert p["background_file"].endswith(".jpg") and len(p["subject_box"]) == 4
        src = Image.open(cutouts / r["source_id"])
        made = np.asarray(Image.open(out / r["file_name"]))
        under = _mask(cutouts / r["source_id"])
        assert made.shape[:2] == under.shape
        assert np.array_equal(made[under], np.asarray(src.convert("RGB"))[under])  # the subject, untouched
        # away from the subject and its feather band (3 sigma), the pixels are the background photo's
        from scipy import ndimage

        far = ndimage.distance_transform_edt(~under) > 7
        bg = Image.open(backgrounds / p["background_file"]).convert("RGB")
        from PIL import ImageOps

        fitted = np.asarray(ImageOps.fit(bg, src.size, Image.BICUBIC))
        assert np.array_equal(made[far], fitted[far])


def test_aga_pastes_a_soft_edged_cut_out_without_the_white_it_was_read_on(tmp_path):
    """A pure-red disc with a soft alpha edge, pasted as it is onto black: its edge is red fading to black, with
    no green or blue from the white the cut-out was composited onto when read."""
    yy, xx = np.mgrid[:48, :48]
    alpha = np.clip((16 - np.hypot(yy - 24, xx - 24)) * 40, 0, 255).astype(np.uint8)  # a ramp at the rim
    disc = np.dstack([np.full((48, 48), 255, np.uint8), np.zeros((48, 48), np.uint8), np.zeros((48, 48), np.uint8),
                      alpha])
    (tmp_path / "src" / "apple").mkdir(parents=True)
    Image.fromarray(disc, "RGBA").save(tmp_path / "src" / "apple" / "a.png")
    (tmp_path / "bgs").mkdir()
    Image.new("RGB", (48, 48), (0, 0, 0)).save(tmp_path / "bgs" / "black.png")
    cli("augment", tmp_path / "src", "--method", "aga", "--out", tmp_path / "o", f"backgrounds_dir={tmp_path / 'bgs'}",
        "-n", 1, "flip_p=0", "rotation=[0,0]", "scale=[1,1]", "position=keep", "feather=0")
    made = np.asarray(Image.open(next((tmp_path / "o").rglob("*.png"))).convert("RGB")).astype(int)
    assert 0 < ((alpha > 0) & (alpha < 255)).sum() and made[..., 1:].max() <= 1  # no matte colour in the rim
    soft = (alpha > 20) & (alpha < 235)
    assert np.abs(made[..., 0][soft] - alpha[soft]).max() <= 2  # red x alpha over black


def test_aga_offline_copy_paste_composites_are_plausible(cutouts, backgrounds, tmp_path):
    """The real-data check: real digits pasted onto real photos, with the default transforms."""
    from genaug.bench.grids import save_grid

    out = tmp_path / "aga"
    cli("augment", cutouts, "--method", "aga", "--out", out, "-n", 4, f"backgrounds_dir={backgrounds}")
    rows = read_rows(out)
    images = [Image.open(out / r["file_name"]).convert("RGB") for r in rows]
    grid = tmp_path / "grid.png"
    save_grid(out, grid)  # per class: the source, then its variants
    g = np.asarray(Image.open(grid).convert("RGB"))
    assert g.shape[0] > 40 and g.shape[1] > 40 and g.std() > 20
    for r, im in zip(rows, images):
        p = r["params"]
        a = np.asarray(im).astype(float)
        assert im.size == (40, 40) and a.std() > 10  # a composite, not a flat image
        assert 0.6 <= p["scale"] <= 1.0 and -15 <= p["rotation"] <= 15 and 0 <= p["center"][0] <= 40
    assert len({r["params"]["background_file"] for r in rows}) >= 3  # the backgrounds vary
    by_source = {}
    for r, im in zip(rows, images):
        by_source.setdefault(r["source_id"], []).append(np.asarray(im))
    assert all(not np.array_equal(v[0], v[1]) for v in by_source.values())  # variants differ
    # the subject's colours survive: each composite holds the cut-out's own ink colour (g, 255 - g, 90)
    assert all(np.any(np.all(np.asarray(im)[..., 2:3] == 90, axis=-1)) for im in images)


def test_aga_with_models_captions_and_determinism(cutouts, tmp_path, tiny_models, chat_server):
    ChatServer.answer = "A quiet farm field at dawn with a Cat, two dogs and a fence, a soft light"
    args = ["--method", "aga", "-n", 2, f"model={tiny_models['sd15']}", "steps=2", "resolution=32",
            f"llm={chat_server}", "caption_variants=1", f"detector={tiny_models['grounding-dino']}",
            f"segmenter={tiny_models['sam']}", "box_threshold=0.0", "text_threshold=0.0"]
    cli("augment", cutouts, "--out", tmp_path / "a", *args)
    rows = read_rows(tmp_path / "a")
    assert len(rows) == 12
    for r in rows:
        p = r["params"]
        assert p["prompt_source"] == "llm" and p["caption"] == "A quiet farm field at dawn, and a fence, a soft light"
        assert not any(w in p["caption"].lower() for w in ("cat", "dog")) and set(p["caption_removed"]) == {"cat", "dogs"}
        assert {"instruction", "background", "temporal", "negative_prompt", "flip", "scale", "rotation",
                "center", "subject_box"} <= set(p)
        assert "cat" in p["negative_prompt"] and r["models"]["detector"]["id"] == str(tiny_models["grounding-dino"])
    # The same run elsewhere: the same bytes; a rerun in place: nothing new.
    cli("augment", cutouts, "--out", tmp_path / "b", *args)
    assert png_bytes(tmp_path / "a") == png_bytes(tmp_path / "b")
    assert "wrote 0 image(s)" in cli("augment", cutouts, "--out", tmp_path / "a", *args).output
    # Without dataset masks, GroundingDINO -> SAM find the subject (cached per image).
    flat = tmp_path / "flat"
    for r in rows[::2]:
        (flat / r["label"]).mkdir(parents=True, exist_ok=True)
        Image.open(cutouts / r["source_id"]).convert("RGB").save(flat / r["source_id"])
    cli("augment", flat, "--out", tmp_path / "c", *args)
    params = [r["params"] for r in read_rows(tmp_path / "c")]
    assert params and all(p["mask_source"] == "model" and 0 <= p["box_score"] <= 1 for p in params)


def test_images_without_a_subject_are_rejected_or_used_whole(cutouts, backgrounds, tmp_path, tiny_models):
    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    Image.open(cutouts / "cat" / "0.png").convert("RGB").save(flat / "cat" / "0.png")
    common = ["--method", "aga", "-n", 2, f"backgrounds_dir={backgrounds}", f"detector={tiny_models['grounding-dino']}",
              f"segmenter={tiny_models['sam']}", "box_threshold=1.0"]
    res = cli("augment", flat, "--out", tmp_path / "r", *common)
    assert "1 rejected" in res.output and not read_rows(tmp_path / "r")
    reason = json.loads((tmp_path / "r" / "rejected.jsonl").read_text().splitlines()[0])["reason"]
    assert "no subject" in reason and "box_threshold" in reason
    cli("augment", flat, "--out", tmp_path / "w", *common, "on_missing=whole_image")
    assert [r["params"]["mask_source"] for r in read_rows(tmp_path / "w")] == ["whole_image"] * 2
    res = cli("augment", flat, "--out", tmp_path / "d", "--method", "inpaint", "masks=dataset",
              f"model={tiny_models['sd15-inpaint']}", "steps=2")
    assert "1 rejected" in res.output
    res = cli("augment", cutouts, "--out", tmp_path / "all", "--method", "inpaint", "dilation=100",
              f"model={tiny_models['sd15-inpaint']}", "steps=2")  # the grown subject leaves no background
    assert "6 rejected" in res.output and "nothing to repaint" in (tmp_path / "all" / "rejected.jsonl").read_text()


@pytest.mark.parametrize("mode", ["background", "foreground", "both"])
def test_inpaint_repaints_only_its_region(cutouts, tmp_path, tiny_models, mode):
    from scipy import ndimage

    out = tmp_path / mode
    args = ["--method", "inpaint", "-n", 1, f"model={tiny_models['sd15-inpaint']}", "steps=2", f"mode={mode}",
            "dilation=4", "dilation_kind=radius"]
    cli("augment", cutouts, "--out", out, *args)
    rows = read_rows(out)
    assert len(rows) == 6
    for r in rows:
        p = r["params"]
        assert p["mode"] == mode and p["dilation"] == 4 and p["prompt"] == f"a photo of a {r['label']}"
        src = np.asarray(load_image(cutouts / r["source_id"], InputConfig())[0])  # composited onto white
        made = np.asarray(Image.open(out / r["file_name"]))
        subject = _mask(cutouts / r["source_id"])
        grown = ndimage.distance_transform_edt(~subject) <= 4
        if mode == "background":  # the subject is preserved exactly
            assert np.array_equal(made[subject], src[subject]) and not np.array_equal(made[~grown], src[~grown])
        elif mode == "foreground":  # everything outside the dilated subject is preserved exactly
            assert np.array_equal(made[~grown], src[~grown]) and not np.array_equal(made[subject], src[subject])
        else:
            assert p["repainted_fraction"] == 1.0
    cli("augment", cutouts, "--out", tmp_path / "again", *args)
    assert png_bytes(out) == png_bytes(tmp_path / "again")


def test_inpaint_with_textual_inversion_tokens(cutouts, tmp_path, tiny_models):
    import json
    import shutil

    # the token base with SD 1.5's own scheduler (PNDM, which takes no eta): the sampling options are the
    # inpainting model's, never applied to the base, which only lends its tokens
    base = shutil.copytree(tiny_models["sd15"], tmp_path / "sd15-pndm")
    config = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "PNDMScheduler"}))
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "PNDMScheduler"]}))
    out = tmp_path / "ti"
    cli("augment", cutouts, "--out", out, "--method", "inpaint", "-n", 1, f"model={tiny_models['sd15-inpaint']}",
        "steps=2", f"tokens_from={base}", "ti_steps=2", "resolution=32", "mode=foreground", "scheduler=ddim", "eta=0.3")
    rows = read_rows(out)
    tokens = {r["label"]: r["params"]["prompt"].removeprefix("a photo of a ") for r in rows}
    assert set(tokens.values()) == {"<genaug-class-0>", "<genaug-class-1>"}
    assert rows[0]["models"]["tokens_from"]["id"] == str(base)
    res = cli("augment", cutouts, "--out", tmp_path / "x", "--method", "inpaint", f"model={tiny_models['sd15-inpaint']}",
              "prompt=a photo of a {token}", expect=2)
    assert "tokens_from" in res.output


def test_aga_without_a_language_model_warns_and_records_only_what_shaped_the_caption(cutouts, tmp_path,
                                                                                     tiny_models, monkeypatch):
    from genaug.methods.aga import TEMPLATE_CAPTION

    monkeypatch.delenv("GENAUG_LLM_URL", raising=False)
    args = ["--method", "aga", "-n", 2, f"model={tiny_models['sd15']}", "steps=2", "resolution=32"]
    res = cli("augment", cutouts, "--out", tmp_path / "auto", *args)  # the default llm=auto; the hub is offline
    assert "warning(s): no language model" in res.output and "llm=template" in res.output
    rows = read_rows(tmp_path / "auto")
    assert len(rows) == 12 and "llm" not in rows[0]["models"]
    for r in rows:
        p = r["params"]
        assert p["prompt_source"] == "template" and "instruction" not in p and "caption_variant" not in p
        assert p["caption"] == TEMPLATE_CAPTION.format(background=p["background"], temporal=p["temporal"])
    # The captions vary with exactly the recorded phrases.
    assert len({r["params"]["caption"] for r in rows}) == len({(r["params"]["background"], r["params"]["temporal"])
                                                               for r in rows}) > 1
    # Templates chosen on purpose: the same images, and no warning.
    res = cli("augment", cutouts, "--out", tmp_path / "template", *args, "llm=template")
    assert "warning" not in res.output
    assert png_bytes(tmp_path / "template") == png_bytes(tmp_path / "auto")


def test_aga_uses_the_endpoint_the_environment_names(cutouts, tmp_path, tiny_models, chat_server, monkeypatch):
    from genaug.methods.aga import INSTRUCTIONS

    monkeypatch.setenv("GENAUG_LLM_URL", chat_server)
    monkeypatch.setenv("GENAUG_LLM_MODEL", "bg-writer")
    ChatServer.answer = "A misty lake shore at dawn with a dog"
    res = cli("augment", cutouts, "--out", tmp_path / "o", "--method", "aga", "-n", 1,
              f"model={tiny_models['sd15']}", "steps=2", "resolution=32")
    assert "warning" not in res.output and ChatServer.requests[0][1]["model"] == "bg-writer"
    rows = read_rows(tmp_path / "o")
    assert rows[0]["models"]["llm"]["id"] == f"{chat_server} (bg-writer)"
    for r in rows:
        p = r["params"]
        assert p["prompt_source"] == "llm" and p["caption"] == "A misty lake shore at dawn"
        assert p["instruction"] in INSTRUCTIONS and p["caption_variant"] in range(3)  # both shaped the request


@pytest.mark.parametrize("position", ["random", "keep"])
def test_aga_never_cuts_off_the_subject(tmp_path, position):
    """A large cut-out scaled up and rotated: the scale shrinks until the whole subject fits, and the scale
    recorded is the one applied (subject area = mask area x scale^2)."""
    src, bgs = tmp_path / "src" / "big", tmp_path / "bg"
    src.mkdir(parents=True)
    bgs.mkdir()
    Image.new("RGB", (64, 64), (0, 0, 255)).save(bgs / "blue.png")
    for j, (x0, y0) in enumerate([(4, 4), (0, 8)]):  # one in the middle, one at the frame's edges
        rgba = np.zeros((64, 64, 4), np.uint8)
        rgba[y0:y0 + 56, x0:x0 + 50] = (255, 0, 0, 255)  # a solid red subject filling most of the frame
        Image.fromarray(rgba, "RGBA").save(src / f"{j}.png")
    out = tmp_path / "o"
    cli("augment", src.parent, "--method", "aga", "--out", out, "-n", 3, f"backgrounds_dir={bgs}", "feather=0",
        "scale=[1.5,2.0]", "rotation=[20,40]", f"position={position}")
    rows = read_rows(out)
    assert len(rows) == 6
    for r in rows:
        p = r["params"]
        assert p["scale_shrunk"] is True and p["scale"] < p["scale_sampled"] and 1.5 <= p["scale_sampled"] <= 2
        made = np.asarray(Image.open(out / r["file_name"]).convert("RGB")).astype(int)
        red = made[..., 0] > made[..., 2]  # nearer the subject's red than the blue background
        assert red.sum() == pytest.approx(56 * 50 * p["scale"] ** 2, rel=0.03)  # every subject pixel is there
        assert red[[0, -1]].sum() + red[:, [0, -1]].sum() < red.sum() * 0.02  # it touches the frame at most


def test_aga_detection_phrases_and_default_n(cutouts, backgrounds, tmp_path, tiny_models):
    assert "-n 10 (default_n" in cli("methods", "aga").output  # the paper's 10x
    flat = tmp_path / "flat"
    for label in ("cat", "dog"):
        (flat / label).mkdir(parents=True)
        Image.open(cutouts / label / "0.png").convert("RGB").save(flat / label / "0.png")
    common = ["--method", "aga", "-n", 1, f"backgrounds_dir={backgrounds}", f"detector={tiny_models['grounding-dino']}",
              f"segmenter={tiny_models['sam']}", "box_threshold=0.0", "text_threshold=0.0"]
    cli("augment", flat, "--out", tmp_path / "o", *common, "phrase=animal", "phrases={cat: domestic cat}")
    rows = read_rows(tmp_path / "o")
    assert {r["label"]: r["params"]["phrase"] for r in rows} == {"cat": "domestic cat", "dog": "animal"}
    assert all(r["params"]["mask_source"] == "model" for r in rows)
    res = cli("augment", flat, "--out", tmp_path / "bad", *common, "phrases={kitten: cat}", expect=2)
    assert "kitten" in res.output and "not in the dataset" in res.output


def test_inpaint_both_keeps_the_source_by_default(cutouts, tmp_path, tiny_models):
    """mode=both masks the whole image: at strength 1.0 the pipeline starts from pure noise, so two different
    sources with one seed give the same picture (text-to-image). The default strength inserts the source."""
    from genaug.core.records import Example
    from genaug.methods import create_method

    sources = []
    for j in (0, 1):
        image, mask = load_image(cutouts / "cat" / f"{j}.png", InputConfig())
        sources.append(Example(id=f"cat/{j}.png", image=image, label="cat", path="", mask=mask))

    def made(**options):
        m = create_method("inpaint", {"model": str(tiny_models["sd15-inpaint"]), "steps": 4, "mode": "both",
                                      "masks": "dataset", **options})
        params = [{**m.sample_params(ex, np.random.default_rng(0)), "seed": 7} for ex in sources]
        out = m(sources, params)
        return [np.asarray(s.image) for s in out], [s.params for s in out], m.warnings

    full, full_params, full_warnings = made(strength=1.0)
    assert np.array_equal(full[0], full[1])  # nothing of either source survived
    assert [p["strength"] for p in full_params] == [1.0, 1.0] and "text-to-image" in full_warnings[0]
    kept, kept_params, kept_warnings = made()
    assert not np.array_equal(kept[0], kept[1]) and not kept_warnings
    assert [p["strength"] for p in kept_params] == [0.5, 0.5]
    again, _, _ = made()
    assert all(np.array_equal(a, b) for a, b in zip(kept, again))
    # the subject's own modes still regenerate their region from noise
    fg = create_method("inpaint", {"model": str(tiny_models["sd15-inpaint"]), "steps": 4, "masks": "dataset",
                                   "mode": "foreground", "dilation": 2})
    assert fg.sample_params(sources[0], np.random.default_rng(0))["strength"] == 1.0 and not fg.warnings
    # ...unless the grown subject is the whole image (a small image): then it is `both`, the source kept
    grown, grown_params, _ = made(mode="foreground", dilation=40)
    assert [(p["mode"], p["mode_asked"], p["strength"]) for p in grown_params] == [("both", "foreground", 0.5)] * 2
    assert not np.array_equal(grown[0], grown[1])


def test_inpaint_warns_in_the_run_summary_when_the_whole_image_is_text_to_image(cutouts, tmp_path, tiny_models):
    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    (one / "cat" / "0.png").write_bytes((cutouts / "cat" / "0.png").read_bytes())
    common = ["--method", "inpaint", "-n", 1, f"model={tiny_models['sd15-inpaint']}", "steps=2", "mode=both"]
    res = cli("augment", one, "--out", tmp_path / "full", *common, "strength=1.0")
    assert "1 warning(s): inpaint: mode=both at strength 1.0" in res.output and "text-to-image" in res.output
    res = cli("augment", one, "--out", tmp_path / "kept", *common)
    assert "text-to-image" not in res.output
    assert [r["params"]["strength"] for r in read_rows(tmp_path / "kept")] == [0.5]
    res = cli("augment", one, "--out", tmp_path / "x", *common, "steps=1", expect=2)  # 1 x 0.5 < 1 step
    assert "steps x strength" in res.output
