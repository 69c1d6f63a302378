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


@pytest.mark.parametrize("method", ["da_fusion", "diagen"])
def test_too_few_steps_for_a_strength_is_refused_before_any_token_trains(method, src, tmp_path, tiny_models):
    res = cli("augment", src, "--method", method, "--out", tmp_path / "o", f"model={tiny_models['sd15']}",
              "resolution=32", "steps=4", "strengths=[0.1, 0.5]", "ti_steps=50", expect=2)
    assert "steps x strength must be at least 1 (got 4 x 0.1)" in " ".join(res.output.split())
    assert not (tmp_path / "o" / "metadata.jsonl").exists()


def test_default_hub_model_offline_is_a_clear_error(src, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", expect=2)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in res.output and "451f4fe" in res.output
    assert "Traceback" not in res.output


def _sgid_args(tiny_models, *extra):
    return [f"model={tiny_models['sd15']}", f"captioner={tiny_models['blip']}", f"clip={tiny_models['clip']}",
            "n_beam=2", "n_nucleus=2", "steps=4", "resolution=32", *extra]


def test_sgid_prompt_weights_guidance_mapping_and_filter(src, tmp_path, tiny_models):
    from genaug.methods.sgid import sgid_quadratic

    out = tmp_path / "sgid"
    cli("augment", src, "--method", "sgid", "--out", out, "-n", 2, *_sgid_args(tiny_models, "min_similarity=1.01"))
    rows = read_rows(out)
    assert len(rows) == 8
    for r in rows:
        p = r["params"]
        assert p["weighted_prompt"].endswith(f"(A picture of {r['label']})1.5") and ")0.9 (" in p["weighted_prompt"]
        assert p["prompt"] == f"{p['caption']}. A picture of {r['label']}"
        mapped = sgid_quadratic(p["similarity"])  # applied as 1 below 1 (no guidance), the mapped value kept
        assert p["guidance_scale"] == pytest.approx(max(mapped, 1.0), abs=1e-5)
        assert p.get("guidance_mapped", 1.0) == pytest.approx(min(mapped, 1.0), abs=1e-5)
        assert p["strength"] == 0.3 and -1 <= r["scores"]["clip_source_similarity"] <= 1
        assert r["weight"] == 0.0  # no output is more similar to its source than 1.01
    assert set(rows[0]["models"]) == {"diffusion", "captioner", "clip"}
    keep = tmp_path / "keep"
    cli("augment", src, "--method", "sgid", "--out", keep, "-n", 1, *_sgid_args(tiny_models, "min_similarity=-1"))
    assert all(r["weight"] == 1.0 for r in read_rows(keep))


def test_sgid_takes_the_pipeline_options_but_one_image_per_call(src, tmp_path, tiny_models):
    res = cli("augment", src, "--method", "sgid", "--out", tmp_path / "o", "-n", 1, *_sgid_args(tiny_models),
              "micro_batch=4", expect=2)
    assert "one image per pipeline call" in res.output and "Traceback" not in res.output
    res = cli("augment", src, "--method", "sgid", "--out", tmp_path / "o", "-n", 1, *_sgid_args(tiny_models),
              "dtype=float16", expect=2)  # a PipelineOptions field reaches sgid's pipeline
    assert "dtype=float16 on the CPU" in res.output


def test_sgid_records_the_guidance_applied_its_local_clip_and_strips_compel_syntax(tiny_models, monkeypatch):
    """A mapped guidance below 1 is applied as 1 (diffusers: no guidance at <= 1) and recorded so; a CLIP from
    --models is recorded as local, not with the hub's commit; a backslash in a label cannot unweight it."""
    from PIL import Image

    from genaug.components.hub import models_dir
    from genaug.core.records import Example
    from genaug.methods import create_method

    with models_dir(tiny_models["clip"].parent):
        m = create_method("sgid", {"model": str(tiny_models["sd15"]), "captioner": str(tiny_models["blip"]),
                                   "n_beam": 1, "n_nucleus": 0, "steps": 4, "resolution": 32})
    assert m.models()["clip"]["revision"] == "local"
    monkeypatch.setattr(m, "best_caption", lambda image: ("a dog on a sofa", 0.7))
    p = m.sample_params(Example(id="x", image=Image.new("RGB", (8, 8)), label="C:\\", path=""), None)
    assert p["guidance_scale"] == 1.0 and p["guidance_mapped"] == pytest.approx(0.44)
    assert p["weighted_prompt"] == "(a dog on a sofa)0.9 (A picture of C:)1.5"


def test_real_guidance_keeps_other_braces_in_its_prompt(tiny_models):
    from PIL import Image

    from genaug.core.records import Example
    from genaug.methods import create_method

    m = create_method("real_guidance", {"model": str(tiny_models["sd15"]), "prompt": "a {label}, style {style}"})
    p = m.sample_params(Example(id="x", image=Image.new("RGB", (8, 8)), label="cat", path=""), None)
    assert p["prompt"] == "a cat, style {style}"


def test_sgid_captions_are_cached_not_recomputed(src, tmp_path, tiny_models):
    from genaug.components.captioner import Captioner
    from genaug.data.cache import cache_root

    out = tmp_path / "sgid"
    cli("augment", src, "--method", "sgid", "--out", out, "-n", 1, *_sgid_args(tiny_models))
    files = sorted((cache_root() / "captions").rglob("*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) >= 4
    cli("augment", src, "--method", "sgid", "--out", out, "-n", 2, *_sgid_args(tiny_models))  # new variants
    assert sorted((cache_root() / "captions").rglob("*.json")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    cap = Captioner(str(tiny_models["blip"]))
    from PIL import Image

    img = Image.new("RGB", (20, 20), (10, 200, 30))
    first = cap.captions(img, 2, 2)
    cap.model.generate = None  # a second captioning would fail here
    assert cap.captions(img, 2, 2) == first and cap.cache.hits == 1


def test_captions_beam_and_nucleus_counts(tiny_models):
    from genaug.components.captioner import Captioner
    from PIL import Image

    cap = Captioner(str(tiny_models["blip"]))
    beam_only = cap.captions(Image.new("RGB", (20, 20), (1, 2, 3)), 3, 0)
    assert 1 <= len(beam_only) <= 3 and all(isinstance(c, str) and c for c in beam_only)
    both = cap.captions(Image.new("RGB", (20, 20), (1, 2, 3)), 3, 3)
    assert len(both) >= len(beam_only)


def test_nucleus_captions_do_not_depend_on_where_the_model_was_loaded_from(tiny_models, tmp_path):
    """Two machines with the same weights in different folders (`--models DIR`) sample the same captions."""
    import shutil

    from genaug.components.captioner import Captioner
    from PIL import Image

    # copied without its modification times: another cache entry, so the second captions again, same draw
    moved = shutil.copytree(tiny_models["blip"], tmp_path / "elsewhere" / "blip", copy_function=shutil.copy)
    img = Image.new("RGB", (20, 20), (200, 30, 90))
    here, there = Captioner(str(tiny_models["blip"])), Captioner(str(moved))
    assert here.model_key != there.model_key
    assert here.captions(img, 0, 6) == there.captions(img, 0, 6)
    assert there.cache.hits == 0
    kept = shutil.copytree(tiny_models["blip"], tmp_path / "kept" / "blip")  # times kept: the same entry
    again = Captioner(str(kept))
    assert again.captions(img, 0, 6) == here.captions(img, 0, 6) and again.cache.hits == 1


def test_captions_are_keyed_by_each_option_and_by_what_a_model_folder_holds(tiny_models, tmp_path):
    """(n_beam 11, n_nucleus 0) and (1, 10) are two requests; weights re-saved into the same folder are
    captioned again, not answered from the cache of the old weights."""
    import shutil

    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration

    from genaug.components.captioner import Captioner

    img = Image.new("RGB", (20, 20), (90, 30, 200))
    folder = shutil.copytree(tiny_models["blip"], tmp_path / "blip")
    cap = Captioner(str(folder))
    beams = cap.captions(img, 11, 0)
    mixed = cap.captions(img, 1, 10)
    assert cap.cache.hits == 0 and cap.cache.misses == 2
    assert mixed == cap._generate(img, 1, 10, 0.9) and len(beams) >= 1

    model = BlipForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        for p in model.text_decoder.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    model.save_pretrained(folder)  # retrained in place
    retrained = Captioner(str(folder))
    assert retrained.model_key != cap.model_key
    fresh = retrained.captions(img, 11, 0)
    assert retrained.cache.hits == 0 and fresh == retrained._generate(img, 11, 0, 0.9)


def test_textual_inversion_lowers_its_loss_and_changes_only_the_new_row(tiny_models, digit_images):
    import torch
    from diffusers import StableDiffusionPipeline

    from genaug.components.diffusion import text_encoders
    from genaug.components.textual_inversion import learn_token

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"], safety_checker=None, feature_extractor=None,
                                                   image_encoder=None, requires_safety_checker=False)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    images = [im.convert("RGB") for im in digit_images[0][:8]]
    vectors, losses = learn_token(pipe, images, "<t>", "drawing", steps=60, lr=0.05, batch_size=8, resolution=32,
                                  encoders=text_encoders(pipe))  # train in the pipeline's own, to inspect them
    vector = vectors["text_encoder"]
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    new_id = pipe.tokenizer.convert_tokens_to_ids("<t>")
    assert after.shape[0] == before.shape[0] + 1 and new_id == before.shape[0]
    assert torch.equal(after[:-1], before)  # every old row untouched
    assert torch.equal(after[new_id], vector) and not torch.equal(vector, before[pipe.tokenizer.encode(
        "drawing", add_special_tokens=False)[0]])
    assert losses["eval_after"] < losses["eval_before"] and len(losses["train"]) == 60


def test_da_fusion_learns_tokens_once_and_records_them(src, tmp_path, tiny_models, monkeypatch):
    import genaug.components.textual_inversion as ti

    args = ["--method", "da_fusion", "-n", 2, f"model={tiny_models['sd15']}", "steps=4", "resolution=32",
            "ti_steps=3", "strengths=[0.5,1.0]"]
    cli("augment", src, "--out", tmp_path / "a", *args)
    rows = read_rows(tmp_path / "a")
    assert len(rows) == 8 and {r["params"]["strength"] for r in rows} <= {0.5, 1.0}
    tokens = {r["label"]: r["params"]["token"] for r in rows}
    assert len(set(tokens.values())) == 2 and all(r["params"]["prompt"] == f"a photo of a {r['params']['token']}"
                                                  for r in rows)
    monkeypatch.setattr(ti, "learn_token", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    cli("augment", src, "--out", tmp_path / "b", *args)  # a new output folder: tokens come from the cache
    assert len(read_rows(tmp_path / "b")) == 8


def test_sdxl_textual_inversion_trains_only_the_new_row_of_both_encoders(tiny_models, digit_images):
    import copy

    import torch

    from genaug.components.diffusion import Diffusion, text_encoders
    from genaug.components.textual_inversion import learn_token

    pipe = Diffusion(str(tiny_models["sdxl"])).pipe
    encoders = {k: (copy.deepcopy(t), copy.deepcopy(e)) for k, (t, e) in text_encoders(pipe).items()}
    assert set(encoders) == {"text_encoder", "text_encoder_2"}
    before = {k: e.get_input_embeddings().weight.detach().clone() for k, (_, e) in encoders.items()}
    images = [im.convert("RGB") for im in digit_images[0][:8]]
    vectors, losses = learn_token(pipe, images, "<t>", "drawing", steps=40, lr=0.05, batch_size=8, resolution=32,
                                  encoders=encoders)
    for k, (_, e) in encoders.items():
        after = e.get_input_embeddings().weight.detach()
        assert torch.equal(after[:-1], before[k]) and torch.equal(after[-1], vectors[k])
    assert losses["eval_after"] < losses["eval_before"]
    assert "<t>" not in pipe.tokenizer.get_vocab()  # the pipeline itself is untouched


def test_sdxl_base_guides_against_zeros_for_an_empty_negative_prompt(tiny_models):
    # SDXL base sets force_zeros_for_empty_prompt: its own pipeline guides against zero embeddings, not the
    # encoding of ""; a negative prompt that says something is encoded
    from genaug.components.diffusion import Diffusion

    xl = Diffusion(str(tiny_models["sdxl"]))
    empty, said = xl.encode("a photo of a cat"), xl.encode("a photo of a cat", "blurry")
    for k in ("negative_prompt_embeds", "negative_pooled_prompt_embeds"):
        assert not empty[k].any() and said[k].abs().sum() > 0
    sd = Diffusion(str(tiny_models["sd15"]))  # SD 1.x has no such setting: "" is encoded
    assert sd.encode("a photo of a cat")["negative_prompt_embeds"].abs().sum() > 0


@pytest.mark.parametrize("method, extra", [
    ("da_fusion", ["ti_steps=2", "strengths=[0.5]"]),
    ("diagen", ["ti_steps=2", "weighting=none"]),
    ("sgid", ["n_beam=1", "n_nucleus=1"]),
])
def test_methods_run_on_sdxl(src, tmp_path, tiny_models, method, extra):
    more = [f"captioner={tiny_models['blip']}", f"clip={tiny_models['clip']}"] if method == "sgid" else []
    cli("augment", src, "--method", method, "--out", tmp_path / "o", "-n", 1, f"model={tiny_models['sdxl']}",
        "steps=4", *more, *extra)
    rows = read_rows(tmp_path / "o")
    assert len(rows) == 4 and rows[0]["models"]["diffusion"]["id"] == str(tiny_models["sdxl"])


def test_text2img_and_inpaint_shapes_masks_and_batch_invariance(tiny_models, digit_images):
    import numpy as np
    from PIL import Image

    from genaug.components.diffusion import Diffusion
    from genaug.core.config import ConfigError

    images = [im.convert("RGB").resize((24, 20)) for im in digit_images[0][:3]]
    mask = Image.fromarray(np.pad(np.full((10, 12), 255, np.uint8), ((5, 5), (6, 6))))
    for name in ("sd15", "sdxl", "sd15-inpaint"):
        d = Diffusion(str(tiny_models[name]), task="inpaint" if name == "sd15-inpaint" else "img2img", micro_batch=2)
        three = d.inpaint(images, [mask] * 3, ["a photo of a cat"] * 3, [1, 2, 3], strength=1.0, guidance_scale=5,
                          steps=2)
        alone = d.inpaint(images[2:], [mask], ["a photo of a cat"], [3], strength=1.0, guidance_scale=5, steps=2)
        assert [o.size for o in three] == [(24, 20)] * 3 and np.array_equal(np.array(three[2]), np.array(alone[0]))
        if name == "sd15-inpaint":
            with pytest.raises(ConfigError, match="inpainting checkpoint"):
                d.text2img(["a cat"], [0], guidance_scale=5, steps=2)
            continue
        made = d.text2img(["a photo of a dog", "a cat"], [1, 2], guidance_scale=5, steps=2, size=(30, 20))
        again = d.text2img(["a cat"], [2], guidance_scale=5, steps=2, size=(30, 20))
        assert [o.size for o in made] == [(30, 20)] * 2 and np.array_equal(np.array(made[1]), np.array(again[0]))


def _cached_tokens():
    """`{label: (vector, metadata)}` of every textual-inversion file in the (test's own) cache."""
    from safetensors import safe_open

    from genaug.data.cache import Cache

    out = {}
    for path in sorted(Cache("textual_inversion").dir.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
            out.setdefault(meta["label"], []).append((f.get_tensor(meta["token"]), meta))
    return out


def test_textual_inversion_starts_from_dafusions_word_not_the_labels_first_word(tmp_path, digit_images, tiny_models,
                                                                              monkeypatch):
    """DA-Fusion's fine_tune.py starts every class token from "the"; "red car" must not start from "red"."""
    import torch

    monkeypatch.setenv("GENAUG_CACHE", str(tmp_path / "cache"))  # only this test's tokens in the cache
    import yaml
    from transformers import CLIPTextModel, CLIPTokenizer

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("red car", "small dog"))
    tok = CLIPTokenizer.from_pretrained(tiny_models["sd15"], subfolder="tokenizer")
    rows = CLIPTextModel.from_pretrained(tiny_models["sd15"], subfolder="text_encoder").get_input_embeddings().weight

    def row(text):
        return rows[tok.encode(text, add_special_tokens=False)].mean(0).detach()

    # one step at a negligible learning rate: the learned vector is the initial row
    args = ["--method", "da_fusion", "-n", 1, f"model={tiny_models['sd15']}", "steps=4", "resolution=32",
            "ti_steps=1", "ti_lr=1e-9", "strengths=[0.5]"]
    cli("augment", src, "--out", tmp_path / "a", *args)
    cfg = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["options"]
    assert cfg["ti_init"] == "the" and cfg["ti_lr"] == 1e-9 and len(read_rows(tmp_path / "a")) == 2
    learned = _cached_tokens()
    for label, first in (("red car", "red"), ("small dog", "small")):
        [(vector, meta)] = learned[label]
        assert meta["initializer"] == "the"
        assert torch.allclose(vector, row("the"), atol=1e-6) and not torch.allclose(vector, row(first), atol=1e-3)

    # the class name itself, as an option: the mean of its words' rows, learned anew (a new cache key)
    as_yaml = tmp_path / "ti.yaml"
    as_yaml.write_text("method: da_fusion\noptions: {ti_init: {label}}\n")  # YAML: a mapping, not a text
    res = cli("augment", src, "--out", tmp_path / "b", "--config", as_yaml, *args, expect=2)
    assert "in a YAML file quote it" in res.output
    cli("augment", src, "--out", tmp_path / "b", *args, "ti_init={label}")  # typed bare: kept as text
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())["options"]["ti_init"] == "{label}"
    vector, meta = next((v, m) for v, m in _cached_tokens()["red car"] if m["initializer"] != "the")
    assert meta["initializer"] == "red car" and torch.allclose(vector, row("red car"), atol=1e-6)
    res = cli("augment", src, "--out", tmp_path / "c", *args, "ti_init='a {class}'", expect=2)
    assert "ti_init" in res.output and "placeholder" in res.output


def test_textual_inversion_defaults_are_dafusions_scripts():
    from genaug.components.textual_inversion import TEMPLATES, TextualInversionOptions

    o = TextualInversionOptions()
    # scripts/fine_tuning/fine_tune_*.sh: 1000 steps, batch 4, lr 5e-4 scaled by the batch; fine_tune.py: "the"
    assert (o.ti_steps, o.ti_batch_size, o.ti_lr, o.ti_weight_decay, o.ti_init) == (1000, 4, 2e-3, 1e-2, "the")
    assert len(TEMPLATES) == 27 and "a photo of a dirty {}" in TEMPLATES


def test_sgid_guidance_mapping_is_the_documented_formula_and_the_range_option_applies(tiny_models, digit_images):
    import numpy as np

    from genaug.core.config import ConfigError
    from genaug.core.records import Example
    from genaug.methods import create_method
    from genaug.methods.sgid import linear_guidance, sgid_quadratic

    # the report's f(s) = -4 s^2 + 2 s + 1 at CLIP B/32's typical caption similarities (README): nearly unguided
    assert [round(sgid_quadratic(s), 3) for s in (0.2, 0.25, 0.3, 0.4)] == [1.24, 1.25, 1.24, 1.16]
    # linear (the report's intent): higher similarity, higher guidance, clamped at the ends
    assert [linear_guidance(s, (0.2, 0.4), (5.0, 10.0)) for s in (0.1, 0.2, 0.3, 0.4, 0.9)] == [5, 5, 7.5, 10, 10]
    base = {"model": str(tiny_models["sd15"]), "captioner": str(tiny_models["blip"]), "clip": str(tiny_models["clip"]),
            "n_beam": 1, "n_nucleus": 1, "steps": 4, "resolution": 32}
    ex = Example(id="0/a.png", image=digit_images[0][0].convert("RGB"), label="cat", path="")

    def run(**options):
        m = create_method("sgid", {**base, **options})
        p = {**m.sample_params(ex, np.random.default_rng(0)), "seed": 3}
        return p, np.asarray(m([ex], [p])[0].image)

    quad, quad_image = run()
    s = quad["similarity"]
    assert quad["guidance_mapping"] == "sgid_quadratic" and quad["guidance_scale"] == round(-4 * s * s + 2 * s + 1, 6)
    lin, lin_image = run(guidance_mapping="linear", similarity_range=[-1, 1], guidance_range=[3, 9])
    assert lin["guidance_scale"] == pytest.approx(3 + 6 * (s + 1) / 2, abs=1e-6) != quad["guidance_scale"]
    assert lin["similarity_range"] == [-1, 1] and lin["guidance_range"] == [3, 9]
    assert not np.array_equal(lin_image, quad_image)
    # the recorded guidance is the one applied: the same scale given as a constant makes the same image
    _, const_image = run(guidance_mapping="constant", guidance_scale=lin["guidance_scale"])
    assert np.array_equal(const_image, lin_image)
    with pytest.raises(ConfigError, match="guidance_range") as e:
        create_method("sgid", {**base, "guidance_range": [9, 3]})
    assert "\n" not in str(e.value)


def test_ti_vectors_learns_that_many_rows_from_the_initializer_all_in_the_prompt_and_cached_apart(
        tmp_path, digit_images, tiny_models, monkeypatch):
    """DA-Fusion's fine_tune_upstream.py --num_vectors k (the paper's final tokens: k = 4, the class name as
    initializer): rows <t>, <t>_1, … each a copy of the initializer's row; every prompt holds all k."""
    import torch
    import yaml
    from transformers import CLIPTextModel, CLIPTokenizer

    import genaug.components.textual_inversion as ti
    from genaug.data import Source
    from genaug.methods import create_method

    monkeypatch.setenv("GENAUG_CACHE", str(tmp_path / "cache"))  # only this test's tokens in the cache
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("red car", "small dog"))
    tok = CLIPTokenizer.from_pretrained(tiny_models["sd15"], subfolder="tokenizer")
    rows = CLIPTextModel.from_pretrained(tiny_models["sd15"], subfolder="text_encoder").get_input_embeddings().weight
    name_row = rows[tok.encode("red car", add_special_tokens=False)].mean(0).detach()
    # one step at a negligible learning rate: the learned vectors are the initial rows
    options = {"model": str(tiny_models["sd15"]), "resolution": 32, "ti_steps": 1, "ti_lr": 1e-9,
               "ti_init": "{label}", "strengths": [0.5], "steps": 4}
    args = ["--method", "da_fusion", "-n", 1, *[f"{k}={v}" for k, v in options.items() if k != "ti_init"],
            "ti_init='{label}'"]
    cli("augment", src, "--out", tmp_path / "k3", *args, "ti_vectors=3")
    made = read_rows(tmp_path / "k3")
    assert len(made) == 2  # provenance: the run's resolved config
    assert yaml.safe_load((tmp_path / "k3" / "config.yaml").read_text())["options"]["ti_vectors"] == 3
    [(vector, meta)] = _cached_tokens()["red car"]
    assert vector.shape == (3, rows.shape[1]) and meta["vectors"] == "3"
    assert torch.allclose(vector, name_row.expand(3, -1), atol=1e-6)  # each vector from the class name's row

    # a pipeline given the tokens (from the cache: the same k) writes all three rows wherever a prompt names the
    # class token
    learn = ti.learn_token
    monkeypatch.setattr(ti, "learn_token", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    m = create_method("da_fusion", {**options, "ti_vectors": 3})
    m.prepare(Source(src))
    token, pipe = m.tokens["red car"], m.sd.pipe
    prompt = next(r["params"]["prompt"] for r in made if r["label"] == "red car")
    assert prompt == f"a photo of a {token}"
    ids = pipe.tokenizer(pipe.maybe_convert_prompt(prompt, pipe.tokenizer)).input_ids
    wanted = pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1", f"{token}_2"])
    assert min(wanted) >= rows.shape[0] and [i for i in ids if i in wanted] == wanted
    clean = m.sd.encode(prompt)["prompt_embeds"]
    last = m.sd.encode(prompt, rows={f"{token}_2": {"text_encoder": torch.zeros(rows.shape[1])}})["prompt_embeds"]
    assert not torch.allclose(clean, last)  # the third vector shapes the conditioning

    # another k is another token, learned anew beside the 3-vector one
    monkeypatch.setattr(ti, "learn_token", learn)
    cli("augment", src, "--out", tmp_path / "k1", *args, "ti_vectors=1")
    assert {tuple(v.shape) for v, _ in _cached_tokens()["red car"]} == {(rows.shape[1],), (3, rows.shape[1])}
    assert read_rows(tmp_path / "k1")[0]["config_hash"] != made[0]["config_hash"]
    res = cli("augment", src, "--out", tmp_path / "k0", *args, "ti_vectors=0", expect=2)
    assert "ti_vectors" in res.output


def test_diagen_noise_reaches_every_vector_of_a_multi_vector_class_token(tmp_path, digit_images, tiny_models,
                                                                          monkeypatch):
    """DIAGen's aggregate_embeddings.py adds `randn_like(v) * std` to the stored tensor: with ti_vectors = k, each
    of the k rows the text encoder reads for the image gets its noise, and the image changes with it."""
    import numpy as np
    import torch

    from genaug.data import Source
    from genaug.methods import create_method
    from genaug.methods.diagen import add_embedding_noise

    src = Source(make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0", "1")))
    m = create_method("diagen", {"model": str(tiny_models["sd15"]), "resolution": 32, "steps": 4, "ti_steps": 1,
                                 "ti_vectors": 3, "weighting": "none", "llm": "template", "prompts_per_class": 1,
                                 "slots": [], "micro_batch": 2})
    m.prepare(src)
    ex = next(e for e in map(src.load, src.records()) if e.label == "0")
    clean = m.vectors["0"]["text_encoder"]
    assert clean.shape == (3, m.sd.pipe.text_encoder.get_input_embeddings().weight.shape[1])
    params = [m.sample_params(ex, np.random.default_rng(0), variant=v) | {"seed": 7} for v in range(4)]
    noisy = next(p for p in params if p["noise_std"] == 0.025)
    plain = next(p for p in params if p["noise_std"] == 0.0)

    token = m.tokens["0"]
    pipe = m.sd.pipe
    ids = pipe.tokenizer.convert_tokens_to_ids([token, f"{token}_1", f"{token}_2"])
    seen, encode = [], pipe.encode_prompt

    def spy(*a, **k):  # the rows the text encoder reads while it encodes the image's prompt
        seen.append(pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone())
        return encode(*a, **k)

    monkeypatch.setattr(pipe, "encode_prompt", spy)
    a, b = m([ex, ex], [noisy, plain])
    want = add_embedding_noise(m.vectors["0"], 0.025, noisy["noise_seed"])["text_encoder"]
    assert torch.allclose(seen[0], want) and bool(((seen[0] - clean).abs().amax(-1) > 1e-3).all())  # every row
    assert torch.equal(seen[1], clean)  # the clean slot: the learned rows themselves
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], clean)  # restored afterwards
    assert not np.array_equal(np.asarray(a.image), np.asarray(b.image))


def test_every_vector_of_a_multi_vector_token_trains_and_nothing_else(tiny_models, digit_images):
    """genaug writes all k rows into every training prompt (DA-Fusion's fine_tune_upstream.py wrote only the
    first, so its other vectors never learned): each of the k rows moves from the initializer, old rows stay."""
    import torch
    from diffusers import StableDiffusionPipeline

    from genaug.components.diffusion import text_encoders
    from genaug.components.textual_inversion import learn_token

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["sd15"], safety_checker=None, feature_extractor=None,
                                                   image_encoder=None, requires_safety_checker=False)
    before = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    init = before[pipe.tokenizer.encode("drawing", add_special_tokens=False)].mean(0)
    images = [im.convert("RGB") for im in digit_images[0][:4]]
    vectors, _ = learn_token(pipe, images, "<t>", "drawing", steps=5, lr=0.05, batch_size=4, resolution=32,
                             vectors=3, encoders=text_encoders(pipe))
    after = pipe.text_encoder.get_input_embeddings().weight.detach()
    ids = pipe.tokenizer.convert_tokens_to_ids(["<t>", "<t>_1", "<t>_2"])
    assert ids == [before.shape[0], before.shape[0] + 1, before.shape[0] + 2] and torch.equal(after[:-3], before)
    assert vectors["text_encoder"].shape == (3, before.shape[1]) and torch.equal(after[ids], vectors["text_encoder"])
    assert all((row - init).abs().max() > 1e-3 for row in vectors["text_encoder"])


# ---- few-step generation and memory options (issue 15, points 2 and 5) -------------------------------------------
def _tiny_lora(model_dir, out):
    """A LoRA on the tiny UNet's attention projections, with random (non-zero) up weights, saved as diffusers does."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    torch.manual_seed(1)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), safe_serialization=True)
    return out


def _img2img(sd, images, strength=0.75, steps=4, guidance=5.0, seeds=None):
    import numpy as np

    out = sd.img2img(images, ["a photo of a cat"] * len(images), seeds or list(range(len(images))),
                     strength=strength, guidance_scale=guidance, steps=steps)
    return [np.asarray(im) for im in out]


def test_lora_option_fuses_a_saved_lora_changes_the_image_and_is_recorded(tmp_path, tiny_models, digit_images):
    import numpy as np

    from genaug.components.diffusion import PipelineOptions

    pytest.importorskip("peft")
    lora = _tiny_lora(tiny_models["sd15"], tmp_path / "lora")
    images = [im.convert("RGB") for im in digit_images[0][:2]]
    plain = PipelineOptions(resolution=32, micro_batch=2).diffusion(str(tiny_models["sd15"]), None)
    with_lora = PipelineOptions(resolution=32, micro_batch=2, lora=str(lora)).diffusion(str(tiny_models["sd15"]), None)
    half = PipelineOptions(resolution=32, micro_batch=2, lora=str(lora), lora_scale=0.5).diffusion(
        str(tiny_models["sd15"]), None)
    a, b, c = _img2img(plain, images), _img2img(with_lora, images), _img2img(half, images)
    assert all(not np.array_equal(x, y) for x, y in zip(a, b))  # the LoRA shaped the images
    assert all(not np.array_equal(x, y) for x, y in zip(b, c))  # and so did its scale
    record = with_lora.models()
    assert record["diffusion"]["id"] == str(tiny_models["sd15"])
    assert record["diffusion_lora"]["id"] == str(lora.resolve())
    assert record["diffusion_lora"]["revision"].startswith("sha:")  # a folder has no revision: its content hash
    assert "diffusion_lora" not in plain.models()


def test_lora_is_in_config_yaml_and_a_bad_lora_is_a_clear_error(tmp_path, tiny_models, digit_images):
    import yaml

    pytest.importorskip("peft")
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0",))
    lora = _tiny_lora(tiny_models["sd15"], tmp_path / "lora")
    base = ["augment", src, "--method", "real_guidance", f"model={tiny_models['sd15']}", "resolution=32", "steps=4"]
    cli(*base, "--out", tmp_path / "ok", f"lora={lora}", "lora_scale=0.5")
    options = yaml.safe_load((tmp_path / "ok" / "config.yaml").read_text())["options"]
    assert options["lora"] == str(lora) and options["lora_scale"] == 0.5
    rows = read_rows(tmp_path / "ok")  # every image's provenance names the LoRA fused into its model
    assert rows and all(r["models"]["diffusion_lora"]["revision"].startswith("sha:") for r in rows)
    res = cli(*base, "--out", tmp_path / "bad", f"lora={tmp_path / 'no-such-lora'}", expect=2)
    assert "lora" in res.output and "no-such-lora" in res.output and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = cli(*base, "--out", tmp_path / "bad2", f"lora={tmp_path / 'empty'}", expect=2)
    assert "could not be loaded" in res.output and "Traceback" not in res.output
    res = cli(*base, "--out", tmp_path / "bad3", "lora_scale=0.5", expect=2)
    assert "set lora=" in res.output


@pytest.mark.parametrize("scheduler", ["lcm", "tcd"])
def test_few_step_schedulers_make_images_in_two_steps(tiny_models, digit_images, scheduler):
    import numpy as np

    from genaug.components.diffusion import PipelineOptions

    images = [im.convert("RGB") for im in digit_images[0][:2]]
    sd = PipelineOptions(resolution=32, micro_batch=2, scheduler=scheduler).diffusion(str(tiny_models["sd15"]), None)
    assert type(sd.pipe.scheduler).__name__ == {"lcm": "LCMScheduler", "tcd": "TCDScheduler"}[scheduler]
    out = _img2img(sd, images, strength=1.0, steps=2, guidance=1.0)
    assert [o.shape for o in out] == [(16, 16, 3)] * 2 and all(o.std() > 0 for o in out)
    assert np.array_equal(out[1], _img2img(sd, images[1:], strength=1.0, steps=2, guidance=1.0, seeds=[1])[0])


def test_eta_reaches_tcd_and_is_refused_where_the_scheduler_takes_none(tiny_models, digit_images):
    import numpy as np

    from genaug.components.diffusion import PipelineOptions
    from genaug.core.config import ConfigError

    images = [digit_images[0][0].convert("RGB")]
    tcd = PipelineOptions(resolution=32, micro_batch=1, scheduler="tcd").diffusion(str(tiny_models["sd15"]), None)
    gamma = PipelineOptions(resolution=32, micro_batch=1, scheduler="tcd", eta=0.3).diffusion(str(tiny_models["sd15"]), None)
    assert not np.array_equal(_img2img(tcd, images, 1.0, 4, 1.0)[0], _img2img(gamma, images, 1.0, 4, 1.0)[0])
    with pytest.raises(ConfigError, match="takes no eta"):
        PipelineOptions(resolution=32, scheduler="euler", eta=0.3).diffusion(str(tiny_models["sd15"]), None)


def _plain_and_deepcache(tiny_models):
    """The tiny SD 1.5 twice, fresh: as is, and with DeepCache every 3 steps."""
    from genaug.components.diffusion import PipelineOptions

    pytest.importorskip("DeepCache")
    model = str(tiny_models["sd15"])
    return (PipelineOptions(resolution=32, micro_batch=1).diffusion(model, None),
            PipelineOptions(resolution=32, micro_batch=1, deepcache_interval=3).diffusion(model, None))


def test_deepcache_reuses_features_but_never_across_calls(tiny_models, digit_images):
    import numpy as np

    images = [im.convert("RGB") for im in digit_images[0][:2]]
    plain, cached = _plain_and_deepcache(tiny_models)
    fresh = _img2img(cached, images[1:], strength=0.5, steps=8)[0]
    assert not np.array_equal(fresh, _img2img(plain, images[1:], strength=0.5, steps=8)[0])  # features were reused
    _img2img(cached, images[:1], strength=1.0, steps=8)  # another image, another start step: its cache must not leak
    assert np.array_equal(_img2img(cached, images[1:], strength=0.5, steps=8)[0], fresh)


def test_deepcache_leaves_the_unet_plain_for_textual_inversion(tiny_models, digit_images):
    # DA-Fusion / DIAGen / inpaint learn their tokens through the generating pipeline's UNet, at timesteps of
    # their own: DeepCache must be on only inside pipeline calls, before and after one
    import torch

    from genaug.components.textual_inversion import learn_token

    images = [im.convert("RGB") for im in digit_images[0][:4]]
    plain, cached = _plain_and_deepcache(tiny_models)
    want, _ = learn_token(plain.pipe, images, "<t0>", "cat", steps=4, resolution=32, progress=False)
    for _ in range(2):  # before any pipeline call, then after one
        got, _ = learn_token(cached.pipe, images, "<t0>", "cat", steps=4, resolution=32, progress=False)
        assert all(torch.equal(got[k], want[k]) for k in want)
        _img2img(cached, images[:1], strength=0.5, steps=8)


def test_vae_tiling_keeps_the_size_and_slicing_keeps_the_bytes(tiny_models):
    import numpy as np

    from genaug.components.diffusion import PipelineOptions

    model = str(tiny_models["sd15"])

    def make(**kw):  # 128 px: twice the tiny VAE's 64 px tile, so the tiled path runs
        sd = PipelineOptions(resolution=128, micro_batch=2, **kw).diffusion(model, None)
        return [np.asarray(im) for im in sd.text2img(["a photo of a cat"] * 2, [0, 1], guidance_scale=5.0, steps=2)]

    plain, tiled, sliced = make(), make(vae_tiling=True), make(vae_slicing=True)
    assert [t.shape for t in tiled] == [(128, 128, 3)] * 2
    assert not np.array_equal(plain[0], tiled[0])  # tiles are blended at their seams: pixels change
    # decoding one image at a time runs the VAE's kernels at batch 1: the last bits may move, never more
    assert max(np.abs(p.astype(int) - s).max() for p, s in zip(plain, sliced)) <= 2


def test_dtype_and_channels_last_options_change_the_precision_and_layout_not_the_image(tiny_models, digit_images):
    import numpy as np
    import torch

    from genaug.components.diffusion import PipelineOptions

    model = str(tiny_models["sd15"])
    images = [im.convert("RGB") for im in digit_images[0][:2]]

    def make(**kw):
        return PipelineOptions(resolution=32, micro_batch=2, **kw).diffusion(model, None)

    plain, bf16, nhwc = make(), make(dtype="bfloat16"), make(channels_last=True)
    assert plain.pipe.unet.dtype == torch.float32 and bf16.pipe.unet.dtype == torch.bfloat16
    assert bf16.pipe.vae.dtype == bf16.pipe.text_encoder.dtype == torch.bfloat16
    conv = nhwc.pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not plain.pipe.unet.conv_in.weight.is_contiguous(
        memory_format=torch.channels_last)
    ref, low, cl = _img2img(plain, images), _img2img(bf16, images), _img2img(nhwc, images)
    assert [x.shape for x in low] == [x.shape for x in cl] == [x.shape for x in ref]
    # the same image at lower precision: close, not equal; the layout moves float rounding only
    assert not np.array_equal(low[0], ref[0]) and np.abs(low[0].astype(int) - ref[0]).mean() < 2
    assert max(np.abs(c.astype(int) - r).max() for c, r in zip(cl, ref)) <= 2


def test_float16_on_the_cpu_is_refused_with_the_dtypes_that_work(tmp_path, tiny_models, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0",))
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", f"model={tiny_models['sd15']}",
              "resolution=32", "steps=4", "dtype=float16", expect=2)
    assert "dtype=float16 on the CPU" in res.output and "bfloat16" in res.output and "Traceback" not in res.output
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", f"model={tiny_models['sd15']}",
              "dtype=half", expect=2)
    assert "dtype" in res.output and "float16" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("kind, message", [
    ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 20.00 GiB"),
    ("RuntimeError", "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried "
                     "to allocate 53687091200 bytes."),
])
def test_a_micro_batch_that_does_not_fit_is_a_clear_error_naming_what_to_lower(tmp_path, tiny_models, digit_images,
                                                                               monkeypatch, kind, message):
    import diffusers
    import torch

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0",))

    def no_memory(self, *args, **kwargs):
        raise {"OutOfMemoryError": torch.OutOfMemoryError, "RuntimeError": RuntimeError}[kind](message)

    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "__call__", no_memory)
    res = cli("augment", src, "--method", "real_guidance", "--out", tmp_path / "o", f"model={tiny_models['sd15']}",
              "resolution=32", "steps=4", "micro_batch=3", expect=2)
    for needle in ("micro-batch of 3 images at 32x32 px", "micro_batch (now 3)", "resolution (now 32)", "vae_tiling"):
        assert needle in res.output
    assert "Traceback" not in res.output


def test_other_runtime_errors_are_not_called_out_of_memory(tiny_models, digit_images, monkeypatch):
    import diffusers

    from genaug.components.diffusion import PipelineOptions

    def broken(self, *args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    sd = PipelineOptions(resolution=32, micro_batch=1).diffusion(str(tiny_models["sd15"]), None)
    monkeypatch.setattr(diffusers.StableDiffusionImg2ImgPipeline, "__call__", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        _img2img(sd, [digit_images[0][0].convert("RGB")])
