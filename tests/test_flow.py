"""The flow-matching generator and the semantic_flow method (Shivashankar & Miller)."""
import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_FLOW, cli, make_imagefolder, png_bytes, read_rows
from genaug import Example, create_method
from genaug.flow.model import FlowModel
from genaug.flow.train import fit_flow
from genaug.data.imageset import load_real

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def digits16(tmp_path_factory, digit_images):
    return make_imagefolder(tmp_path_factory.mktemp("d16") / "src", digit_images, per_class=30)


def _losses(model_dir):
    with open(model_dir / "train_log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_training_loss_falls(digits16, tmp_path):
    cfg = {**TINY_FLOW, "steps": 60, "batch_size": 32, "block_channels": [16, 32], "lr": 3e-3}
    r = fit_flow(digits16, tmp_path / "m", cfg, progress=False)
    losses = _losses(tmp_path / "m")
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert r["channels"] == 1 and r["image_size"] == 16 and r["classes"] == ["0", "1", "2"]
    assert (tmp_path / "m" / UNET).is_file() and (tmp_path / "m" / "flow_config.json").is_file()


def test_resumed_training_equals_an_uninterrupted_one(digits16, digit_images, tmp_path):
    cfg = {**TINY_FLOW, "steps": 8, "checkpoint_every": 4}
    fit_flow(digits16, tmp_path / "straight", cfg, progress=False)
    fit_flow(digits16, tmp_path / "resumed", {**cfg, "steps": 4}, progress=False)
    with open(tmp_path / "resumed" / "train_log.csv", "a") as f:  # a step a killed run logged past its checkpoint
        f.write("5,0.5,0.001,1.0\n")
    res = cli("fit-flow", digits16, "--out", tmp_path / "resumed", *[f"{k}={json.dumps(v)}" for k, v in cfg.items()])
    assert "steps 8" in res.output
    a, b = load_file(tmp_path / "straight" / UNET), load_file(tmp_path / "resumed" / UNET)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")  # step 5 logged once, as trained
    res = cli("fit-flow", digits16, "--out", tmp_path / "resumed", "lr=0.5", expect=2)
    assert "another training run (" in res.output and "train.lr: 0.001 there, 0.5 now" in " ".join(res.output.split())
    other = make_imagefolder(tmp_path / "other", (digit_images[0][300:], digit_images[1][300:], digit_images[2]),
                             per_class=30)  # as many images of the same classes, other ones
    res = cli("fit-flow", other, "--out", tmp_path / "resumed", *[f"{k}={json.dumps(v)}" for k, v in cfg.items()],
              expect=2)
    assert "another training run (data_digest:" in " ".join(res.output.split())
    res = cli("fit-flow", digits16, "--out", tmp_path / "resumed",
              *[f"{k}={json.dumps(v)}" for k, v in {**cfg, "steps": 4}.items()], expect=2)
    assert "already holds 8 training steps, more than steps=4" in " ".join(res.output.split())


def test_one_channel_from_colour_images_is_the_luminance_generation_reads():
    from PIL import Image

    from genaug.flow.train import to_model_space

    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    x = to_model_space(torch.from_numpy(rgb).permute(0, 3, 1, 2), 1)
    pil = np.stack([np.asarray(Image.fromarray(a).convert("L")) for a in rgb])[:, None]
    assert torch.equal(x, torch.from_numpy(pil).float() / 127.5 - 1)
    grey = torch.from_numpy(rgb[..., :1]).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
    assert torch.equal(to_model_space(grey, 1), grey[:, :1].float() / 127.5 - 1)  # grey: the image itself


def test_inversion_then_generation_reconstructs(tiny_flow, digits16):
    """Documented tolerance: with rk4 and 20 steps, invert -> generate returns the image within MSE 1e-4
    (pixels in [-1, 1]); Euler is first-order, its error shrinks as the steps grow."""
    flow = FlowModel.from_pretrained(tiny_flow)
    data = load_real(digits16, 16)
    x = data.images[:12, :1].float() / 127.5 - 1
    y = data.targets(flow.spec.classes)[:12]
    z = flow.invert(x, y, steps=20, solver="rk4")
    assert (flow.generate(z, y, steps=20, solver="rk4") - x).pow(2).mean() < 1e-4
    errs = [(flow.generate(flow.invert(x, y, steps=n), y, steps=n) - x).pow(2).mean() for n in (5, 40)]
    assert errs[1] < errs[0]


def _examples(digits16, n=6):
    from genaug.data import Source, load_example
    from genaug.data.images import InputConfig

    return [load_example(r, InputConfig()) for r in list(Source(digits16).records())[:: 90 // n]][:n]


@pytest.mark.parametrize("solver", ["euler", "dopri5"])
def test_a_row_is_the_same_whatever_rows_share_its_batch(solver, tiny_flow, digits16):
    # an adaptive solver picks its steps from an error estimate: over the whole batch, it made a row depend
    # on its batch-mates
    flow = FlowModel.from_pretrained(tiny_flow)
    data = load_real(digits16, 16)
    x = data.images[:3, :1].float() / 127.5 - 1
    y = data.targets(flow.spec.classes)[:3]
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    alone = flow.generate(z[:1], y[:1], steps=8, solver=solver, t_from=0.4)
    together = flow.generate(z, y, steps=8, solver=solver, t_from=0.4)
    others = flow.generate(torch.cat([z[:1], 3 * z[1:]]), y, steps=8, solver=solver, t_from=0.4)
    assert torch.equal(alone[0], together[0]) and torch.equal(alone[0], others[0])


def test_delta_zero_keeps_the_image_and_change_grows_with_delta(tiny_flow, digits16):
    examples = _examples(digits16)
    m = create_method("semantic_flow", {"model": str(tiny_flow), "steps": 20, "solver": "rk4"})

    def mean_change(delta):
        params = [{"seed": i, "mode": "latent", "t": 0.0, "delta": delta} for i in range(len(examples))]
        outs = m(examples, params)
        return np.mean([np.abs(np.asarray(o.image, float) - np.asarray(e.image.convert("RGB"), float)).mean()
                        for o, e in zip(outs, examples)])

    changes = [mean_change(d) for d in (0.0, 0.3, 1.0)]
    assert changes[0] < 1.0  # delta = 0: the image comes back (mean error under one grey level)
    assert changes[0] < changes[1] < changes[2]
    # guided generation inverts with the conditional field alone (the default), or with the same guidance
    # (invert_guided: the same field both ways, so at delta 0 the source comes back). This tiny model's
    # guidance barely moves its velocity, so the inversion's guidance is observed where it is asked for.
    for invert_guided, expected in ((False, 1.0), (True, 3.0)):
        m = create_method("semantic_flow", {"model": str(tiny_flow), "steps": 20, "solver": "rk4", "guidance": 3,
                                            "invert_guided": invert_guided})
        asked, invert = [], m.flow.invert
        m.flow.invert = lambda *a, **k: asked.append(k["guidance"]) or invert(*a, **k)
        assert mean_change(0.0) < 1.0 and asked == [expected]


def test_composition_draws_each_augmentation_with_its_probability(tiny_flow):
    p = [0.1, 0.2, 0.3, 0.4]
    m = create_method("semantic_flow", {"model": str(tiny_flow), "mode": "compose", "k": 4, "p": p})
    ex = Example("x", None, "0", "x")
    draws = [m.sample_params(ex, np.random.default_rng(s)) for s in range(4000)]
    freq = np.bincount([d["aug_index"] - 1 for d in draws], minlength=4) / len(draws)
    assert np.abs(freq - p).max() < 0.03
    assert all(d["t"] == d["aug_index"] / 4 and 0.3 <= d["delta"] <= 0.6 for d in draws)


def test_composition_uses_the_papers_strengths_i_over_k_for_i_1_to_k(tiny_flow, digits16, tmp_path):
    """Paper 3.4: D_1 .. D_k, D_i adds noise at t = i/k; so t = 0 (plain `latent`) is never drawn and
    D_k, at t = 1, perturbs the image itself (it is not a copy of the source)."""
    m = create_method("semantic_flow", {"model": str(tiny_flow), "mode": "compose", "k": 4})
    ex = Example("x", None, "0", "x")
    draws = [m.sample_params(ex, np.random.default_rng(s)) for s in range(400)]
    assert {d["t"] for d in draws} == {0.25, 0.5, 0.75, 1.0} and {d["aug_index"] for d in draws} == {1, 2, 3, 4}
    last = create_method("semantic_flow", {"model": str(tiny_flow), "mode": "compose", "k": 4, "p": [0, 0, 0, 1],
                                           "steps": 4})
    examples = _examples(digits16, 3)
    params = [{**last.sample_params(e, np.random.default_rng(i)), "seed": i} for i, e in enumerate(examples)]
    assert all(p["t"] == 1.0 and p["aug_index"] == 4 for p in params)
    for o, e in zip(last(examples, params), examples):
        assert np.abs(np.asarray(o.image, float) - np.asarray(e.image.convert("RGB"), float)).mean() > 5
    res = cli("augment", digits16, "--method", "semantic_flow", "--out", tmp_path / "o", f"model={tiny_flow}",
              "mode=compose", "compose_noise=path", expect=2)
    assert "D_k would return the source unchanged" in res.output


@pytest.mark.parametrize("mode", ["latent", "sdedit", "compose"])
def test_every_mode_end_to_end_with_its_params_recorded(mode, tiny_flow, digits16, tmp_path):
    out = tmp_path / mode
    cli("augment", digits16, "--method", "semantic_flow", "--out", out, "-n", 2, f"model={tiny_flow}",
        f"mode={mode}", "steps=4")
    rows = read_rows(out)
    assert len(rows) == 180 and all(r["params"]["mode"] == mode for r in rows)
    assert {"t"} <= set(rows[0]["params"]) and rows[0]["models"]["flow"]["revision"].startswith("sha:")
    if mode != "sdedit":
        assert all(0.3 <= r["params"]["delta"] <= 0.6 for r in rows)


@pytest.mark.parametrize("options, message", [
    ({}, "needs model=DIR"), ({"model": "/nonexistent"}, "not found"), ({"model": "/tmp"}, "not a genaug flow model"),
    ({"delta": [0.5, 0.1]}, "delta"), ({"mode": "compose", "k": 2, "p": [0.5, 0.6]}, "probabilities"),
])
def test_bad_semantic_flow_options(options, message, tiny_flow, digits16, tmp_path):
    opts = {"model": str(tiny_flow), **options} if "model" not in options and options else options
    res = cli("augment", digits16, "--method", "semantic_flow", "--out", tmp_path / "o",
              *[f"{k}={json.dumps(v)}" for k, v in opts.items()], expect=2)
    assert message in res.output


def test_unknown_class_is_refused_before_generating(tiny_flow, tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "7"))
    res = cli("augment", src, "--method", "semantic_flow", "--out", tmp_path / "o", f"model={tiny_flow}", expect=2)
    assert "knows no class ['7']" in res.output


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from genaug.testing.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("sd3"), ["sd3"])["sd3"]


@pytest.mark.parametrize("mode", ["latent", "sdedit", "compose"])
def test_pretrained_rectified_flow_pipeline(mode, tiny_sd3, tmp_path, digit_images):
    """The same method on a diffusers SD3 pipeline (tiny, random, saved and loaded like a real one)."""
    from conftest import png_bytes

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    args = ["--method", "semantic_flow", "-n", 2, f"model={tiny_sd3}", f"mode={mode}", "steps=4"]
    cli("augment", src, "--out", tmp_path / "a", "--batch-size", 3, *args)
    cli("augment", src, "--out", tmp_path / "b", "--batch-size", 8, *args)
    assert png_bytes(tmp_path / "a") == png_bytes(tmp_path / "b") and len(png_bytes(tmp_path / "a")) == 8
    rows = read_rows(tmp_path / "a")
    assert rows[0]["models"]["pipeline"]["id"] == str(tiny_sd3) and rows[0]["params"]["mode"] == mode
    from PIL import Image

    assert Image.open(tmp_path / "a" / rows[0]["file_name"]).size == (16, 16)  # back at the source size


def test_a_solver_a_pipeline_cannot_use_is_refused_before_it_loads(monkeypatch):
    from genaug.core.config import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="solver=midpoint needs a genaug flow model"):  # not "not in the cache"
        create_method("semantic_flow", {"model": "stabilityai/stable-diffusion-3-medium-diffusers",
                                        "solver": "midpoint"})


def test_pipeline_inversion_reconstructs_in_latent_space(tiny_sd3):
    from PIL import Image

    from genaug.flow.pipeline import PipelineFlow

    flow = PipelineFlow(str(tiny_sd3))
    x = flow.encode_images([Image.new("RGB", (20, 20), (30 * i, 90, 160)) for i in range(3)])
    cond = flow.condition(["cat", "dog", "cat"])
    errs = [(flow.generate(flow.invert(x, cond, steps=n), cond, steps=n) - x).pow(2).mean() for n in (4, 32)]
    assert errs[1] < errs[0] and errs[1] < 1e-3


def _masked_examples(digits16, n=4, size=16):
    """Digits with a dataset mask: a centred square subject (as an alpha cut-out or a `mask` column gives)."""
    from PIL import Image

    mask = np.zeros((size, size), np.uint8)
    mask[size * 5 // 16:size * 11 // 16, size * 5 // 16:size * 11 // 16] = 255
    return [Example(e.id, e.image.resize((size, size)), e.label, e.path, Image.fromarray(mask, "L"))
            for e in _examples(digits16, n)]


def _diff(a, b) -> np.ndarray:
    return np.abs(np.asarray(a.convert("RGB"), float) - np.asarray(b.convert("RGB"), float)).mean(-1)


@pytest.mark.parametrize("region", ["foreground", "background"])
def test_object_centric_editing_along_the_ode_keeps_the_rest_of_the_image(region, tiny_flow, digits16):
    """Paper 3.3: only the (dilated) masked region is regenerated along the ODE; the rest follows the source's
    own path, so it ends as the source even without pasting it back (composite=false)."""
    from genaug.components.segment import dilate

    examples = _masked_examples(digits16)
    grown = dilate(np.asarray(examples[0].mask) > 0, 2)
    inside = grown if region == "foreground" else ~grown
    for mode in ("latent", "sdedit"):
        opts = {"model": str(tiny_flow), "steps": 8, "mode": mode, "region": region, "masks": "dataset",
                "dilation": 2, "composite": False, "delta": [1.0, 1.0], "t0": [0.2]}
        m = create_method("semantic_flow", opts)
        params = [{**m.sample_params(e, np.random.default_rng(i)), "seed": i} for i, e in enumerate(examples)]
        assert all(p["region"] == region and p["mask_source"] == "dataset" and p["dilation"] == 2 for p in params)
        outs = m(examples, params)
        for o, e in zip(outs, examples):
            d = _diff(o.image, e.image)
            assert d[~inside].max() <= 1.0, (mode, d[~inside].max())  # kept: the source, to the grey level
            assert d[inside].mean() > 10, (mode, d[inside].mean())  # regenerated
            assert o.params["regenerated_fraction"] == round(float(inside.mean()), 6)
        again = m(examples[::-1], params[::-1])[::-1]  # another order, the same images
        assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(outs, again))


def test_object_centric_editing_on_a_rectified_flow_pipeline(tiny_sd3, digits16, tmp_path):
    """The same along the SD3 pipeline's ODE, in its VAE latent space: outside the dilated mask the latents end as
    the source's own, and after the paste-back the pixels there are exactly the source's; inside they change;
    the output is the same whatever the batch size."""
    import torch as th

    from genaug.flow.pipeline import PipelineFlow

    examples = _masked_examples(digits16, 3, size=32)
    opts = {"model": str(tiny_sd3), "steps": 4, "mode": "latent", "region": "background", "masks": "dataset",
            "dilation": 4}
    m = create_method("semantic_flow", opts)
    params = [{**m.sample_params(e, np.random.default_rng(i)), "seed": i} for i, e in enumerate(examples)]
    outs = m(examples, params)
    from genaug.components.segment import dilate

    kept = dilate(np.asarray(examples[0].mask) > 0, 4)
    for o, e in zip(outs, examples):
        d = _diff(o.image, e.image)
        assert d[kept].max() == 0 and d[~kept].mean() > 5
    one_by_one = [m([e], [p])[0] for e, p in zip(examples, params)]
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(outs, one_by_one))
    # in latent space: the kept cells are the source's latents, the others were regenerated along the ODE
    flow = PipelineFlow(str(tiny_sd3))
    x = flow.encode_images([e.image for e in examples])
    cond = flow.condition([e.label for e in examples])
    region = th.zeros_like(x[:, :1])
    region[..., :, :6] = 1
    z = flow.invert(x, cond, steps=4)
    out = flow.generate_inside(z + th.randn(z.shape, generator=th.Generator().manual_seed(0)), cond, region, z, x,
                               steps=4)
    assert th.equal(out[..., :, 6:], x[..., :, 6:]) and (out[..., :, :6] - x[..., :, :6]).abs().mean() > 0.1


def _tokens_run(tiny_sd3, src, out, *extra, expect=0):
    return cli("augment", src, "--out", out, "--method", "semantic_flow", "-n", 2, f"model={tiny_sd3}", "steps=4",
               "--seed", 3, *extra, expect=expect)


@pytest.fixture(scope="module")
def tiny_sd3_t5(tmp_path_factory):
    """The tiny SD3 with a tiny T5 as its third text encoder (SD3 proper has one; genaug's tiny SD3 leaves it out),
    saved and loaded like a real one."""
    from diffusers import StableDiffusion3Pipeline
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    from genaug.testing.tiny import make_sd3

    pipe, _ = make_sd3()
    words = ["\u2581a", "\u2581photo", "\u2581of", "\u2581the", "\u25810", "\u25811", "\u2581cat", "\u2581"]
    tok = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0 - i / 100) for i, w in
                                                                               enumerate(words)], extra_ids=0)
    torch.manual_seed(0)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok) + 4, d_model=64, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                 pad_token_id=0, eos_token_id=1)).eval()  # spare rows past the vocabulary, as T5's
    full = StableDiffusion3Pipeline(**{**pipe.components, "text_encoder_3": t5, "tokenizer_3": tok})
    out = tmp_path_factory.mktemp("sd3-t5") / "sd3"
    full.save_pretrained(out)
    return out


def _class_images(n=4, seed=0):
    from PIL import Image

    rs = np.random.RandomState(seed)
    return [Image.fromarray(rs.randint(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _embeddings(pipe):
    from genaug.components.textual_inversion import flow_text_encoders

    return {name: te.get_input_embeddings().weight.detach().clone() for name, (_, te) in
            flow_text_encoders(pipe).items()}


def test_textual_inversion_on_the_rectified_flow_pipeline_itself(tiny_sd3_t5):
    """Paper 3.2 on SD3 without another model: the token is learned through SD3's own flow-matching loss, in all
    three text encoders (T5 too); only its rows learn (every other row, of every embedding, byte for byte the same,
    the transformer untouched); the learned token lowers the class images' flow loss below the initialiser's."""
    from genaug.components.textual_inversion import initial_row, learn_flow_token
    from genaug.flow.pipeline import PipelineFlow

    flow = PipelineFlow(str(tiny_sd3_t5))
    pipe = flow.pipe
    before = _embeddings(pipe)
    transformer = {k: v.clone() for k, v in pipe.transformer.state_dict().items()}
    init = {name: initial_row(getattr(pipe, tok), getattr(pipe, name), "the") for name, tok in
            (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))}
    rows, losses = learn_flow_token(pipe, _class_images(), "<genaug-class-0>", "the", steps=4, lr=5e-2, seed=3)
    assert set(rows) == {"text_encoder", "text_encoder_2", "text_encoder_3"}
    assert all(rows[n].shape == init[n].shape and not torch.equal(rows[n], init[n].float()) for n in rows)
    after = _embeddings(pipe)
    for name, w in before.items():  # the tokenizers gained the token; no existing row changed, nor got written
        assert torch.equal(after[name][:len(w)], w), name
    assert all(torch.equal(v, pipe.transformer.state_dict()[k]) for k, v in transformer.items())
    assert losses["eval_after"] < losses["eval_before"]
    # loaded into the pipeline, the prompt with the token is encoded with the learned rows in every encoder
    flow.add_tokens({"cat": "<genaug-class-0>"}, {"<genaug-class-0>": rows})
    assert flow.prompt_for("cat") == "a photo of a <genaug-class-0>"
    for name, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                      ("text_encoder_3", "tokenizer_3")):
        token_id = getattr(pipe, tok).convert_tokens_to_ids("<genaug-class-0>")
        assert torch.equal(getattr(pipe, name).get_input_embeddings().weight[token_id], rows[name])
        assert token_id in getattr(pipe, tok)(flow.prompt_for("cat")).input_ids


def test_flow_textual_inversion_is_deterministic_given_its_seed(tiny_sd3):
    from genaug.components.textual_inversion import learn_flow_token
    from genaug.flow.pipeline import PipelineFlow

    def learn(seed):
        pipe = PipelineFlow(str(tiny_sd3)).pipe
        rows, losses = learn_flow_token(pipe, _class_images(), "<genaug-class-0>", "the", steps=3, lr=5e-2,
                                        batch_size=2, seed=seed)
        return rows, losses["train"]

    (a, la), (b, lb), (c, _) = learn(3), learn(3), learn(4)
    assert all(a[n].numpy().tobytes() == b[n].numpy().tobytes() for n in a) and la == lb
    assert not torch.equal(a["text_encoder"], c["text_encoder"])


def test_semantic_flow_learns_its_tokens_on_the_sd3_pipeline(tiny_sd3, tmp_path, digit_images):
    """`textual_inversion=true` on an SD3 pipeline: tokens learned on it (no SDXL), cached, in the prompt, recorded
    with their source; they shape every image; a rerun takes them from the cache (the same bytes)."""
    from conftest import png_bytes
    from genaug.data import Source

    src = make_imagefolder(tmp_path / "src", digit_images, per_class=2, classes=("0", "1"))
    ti = ["textual_inversion=true", "ti_steps=2", "ti_batch_size=2"]
    _tokens_run(tiny_sd3, src, tmp_path / "plain")
    _tokens_run(tiny_sd3, src, tmp_path / "a", *ti)
    _tokens_run(tiny_sd3, src, tmp_path / "b", *ti)
    plain, a = png_bytes(tmp_path / "plain"), png_bytes(tmp_path / "a")
    assert a == png_bytes(tmp_path / "b") and len(a) == 8
    assert all(a[k] != plain[k] for k in a)  # the tokens shaped every image
    rows = {r["label"]: r for r in read_rows(tmp_path / "a")}
    for i, label in enumerate(("0", "1")):
        p = rows[label]["params"]
        assert p["token"] == f"<genaug-class-{i}>" and p["prompt"] == f"a photo of a <genaug-class-{i}>"
        assert p["token_source"] == "sd3-flow-matching-1" and "tokens_from" not in rows[label]["models"]
    assert "token" not in read_rows(tmp_path / "plain")[0]["params"]  # off by default
    # the method's own pipeline knows the tokens, with the cached rows, and learned no SDXL anything
    m = create_method("semantic_flow", {"model": str(tiny_sd3), "textual_inversion": True, "ti_steps": 2,
                                        "ti_batch_size": 2})
    m.prepare(Source(src))
    pipe = m.flow.pipe
    for tok, te in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
        assert tok.tokenize("a photo of a <genaug-class-1>")[-1] == "<genaug-class-1>"
        assert te.get_input_embeddings().weight.shape[0] == len(tok)
    from safetensors import safe_open

    from genaug.data.cache import Cache

    files = [safe_open(str(f), "pt") for f in Cache("textual_inversion").dir.rglob("*.safetensors")]
    ours = [f for f in files if f.metadata().get("recipe") == "sd3-flow-matching-1" and f.metadata()["label"] == "1"]
    assert ours and set(ours[0].keys()) == {"clip_l", "clip_g"}  # no T5 in this pipeline
    te_id = pipe.tokenizer.convert_tokens_to_ids("<genaug-class-1>")
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[te_id], ours[0].get_tensor("clip_l"))


def test_textual_inversion_needs_a_pipeline_and_tokens_from_is_gone(tiny_sd3, tiny_flow, tmp_path, digit_images):
    src = make_imagefolder(tmp_path / "src", digit_images, per_class=1, classes=("0",))
    res = cli("augment", src, "--out", tmp_path / "o", "--method", "semantic_flow", f"model={tiny_flow}",
              "textual_inversion=true", expect=2)
    assert "textual_inversion needs a pipeline model" in res.output
    res = _tokens_run(tiny_sd3, src, tmp_path / "o2", "tokens_from=stabilityai/stable-diffusion-xl-base-1.0", expect=2)
    assert "tokens_from" in res.output  # unknown now: the tokens are learned on the SD3 pipeline itself


def _pool_manifest(src, path, shuffle_labels: bool):
    rows = list(csv.DictReader(open(src)))
    labels = [r["label"] for r in rows]
    if shuffle_labels:
        labels = labels[1:] + labels[:1]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": lab} for r, lab in zip(rows, labels))
    return path


def test_an_unlabelled_pool_trains_the_generator_without_its_labels(digits16, digit_images, tmp_path):
    """The pool's labels never reach training (permuted labels give the same weights byte for byte), a folder of
    loose images is a pool too, and the result and the checkpoint say what the generator saw."""
    from genaug.data.splits import write_manifest
    from genaug.data.sources import Source

    pool_dir = make_imagefolder(tmp_path / "pooldir", (digit_images[0][400:], digit_images[1][400:],
                                                       digit_images[2]), per_class=10)
    listed = write_manifest(list(Source(pool_dir).records()), tmp_path / "listed.csv")
    a = _pool_manifest(listed, tmp_path / "a.csv", shuffle_labels=False)
    b = _pool_manifest(listed, tmp_path / "b.csv", shuffle_labels=True)
    cfg = {**TINY_FLOW, "steps": 4, "unlabeled_share": 0.5}
    ra = fit_flow(digits16, tmp_path / "ma", cfg, progress=False, unlabeled=a)
    fit_flow(digits16, tmp_path / "mb", cfg, progress=False, unlabeled=b)
    wa, wb = load_file(tmp_path / "ma" / UNET), load_file(tmp_path / "mb" / UNET)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ra["n_unlabeled"] == 30 and ra["unlabeled"] == str(a.resolve()) and ra["n_images"] == 90
    fit_flow(digits16, tmp_path / "m0", {**cfg, "unlabeled_share": 0.0}, progress=False, unlabeled=a)
    w0 = load_file(tmp_path / "m0" / UNET)
    assert not all(torch.equal(wa[k], w0[k]) for k in wa)  # the pool's images did train it
    loose = tmp_path / "loose"
    loose.mkdir()
    for i, p in enumerate(sorted(pool_dir.rglob("*.png"))):
        (loose / f"{i:03d}.png").write_bytes(p.read_bytes())
    res = cli("fit-flow", digits16, "--out", tmp_path / "ml", "--unlabeled", loose,
              *[f"{k}={json.dumps(v)}" for k, v in cfg.items()])
    assert "+ 30 unlabelled" in res.output
    assert "another training run" in cli("fit-flow", digits16, "--out", tmp_path / "ma",
                                         *[f"{k}={json.dumps(v)}" for k, v in cfg.items()], expect=2).output
    fit_flow(digits16, tmp_path / "ma", {**cfg, "steps": 6}, progress=False, unlabeled=b)  # same images: resumes
    other = make_imagefolder(tmp_path / "otherpool", (digit_images[0][600:], digit_images[1][600:],
                                                      digit_images[2]), per_class=10)  # 30 other images
    res = cli("fit-flow", digits16, "--out", tmp_path / "ma", "--unlabeled", other,
              *[f"{k}={json.dumps(v)}" for k, v in {**cfg, "steps": 8}.items()], expect=2)
    assert "another training run (pool_digest:" in " ".join(res.output.split())
    assert "unlabeled pool not found" in cli("fit-flow", digits16, "--out", tmp_path / "mx", "--unlabeled",
                                             tmp_path / "nope", expect=2).output


def test_a_resumed_training_reports_all_its_seconds(digits16, tmp_path):
    cfg = {**TINY_FLOW, "steps": 6, "checkpoint_every": 3}
    first = fit_flow(digits16, tmp_path / "m", {**cfg, "steps": 3}, progress=False)
    second = fit_flow(digits16, tmp_path / "m", cfg, progress=False)
    with open(tmp_path / "m" / "train_log.csv") as f:
        logged = [float(r["seconds"]) for r in csv.DictReader(f)]
    # the log's clock runs on across the resume, and the result reports that clock, not the second call's
    assert len(logged) == 6 and logged == sorted(logged) and second["steps"] == 6
    assert second["seconds"] >= first["seconds"] and abs(second["seconds"] - logged[-1]) <= 0.5
    assert "call_seconds" in second
    # a finished training called again (a demo rerun) keeps its model and result: no weights rewritten
    def written():
        return {f: f.stat().st_mtime_ns for f in (tmp_path / "m").rglob("*") if f.is_file()}

    before = written()
    assert any(f.suffix == ".safetensors" for f in before)
    third = fit_flow(digits16, tmp_path / "m", cfg, progress=False)
    assert {k: v for k, v in third.items() if k != "call_seconds"} == {k: v for k, v in second.items()
                                                                       if k != "call_seconds"}
    assert written() == before


def test_bfloat16_training_and_generation_are_deterministic_and_recorded(digits16, tmp_path):
    """fit-flow and semantic_flow with precision=bfloat16 (the UNet in bfloat16 autocast, the rest float32): the same
    run gives the same bytes, other bytes than float32, and what it computed in is recorded; a pipeline refuses it."""
    cfg = {**TINY_FLOW, "steps": 4, "checkpoint_every": 4}
    fits = {p: fit_flow(digits16, tmp_path / p, {**cfg, "precision": p}, progress=False)
            for p in ("float32", "bfloat16")}
    fit_flow(digits16, tmp_path / "again", {**cfg, "precision": "bfloat16"}, progress=False)
    assert fits["bfloat16"]["precision"] == "bfloat16" and fits["float32"]["precision"] == "float32"
    weights = {p: (tmp_path / p / UNET).read_bytes() for p in ("float32", "bfloat16", "again")}
    assert weights["bfloat16"] == weights["again"] != weights["float32"]
    outs = {}
    for name, precision in (("a", "bfloat16"), ("b", "bfloat16"), ("c", "float32")):
        cli("augment", digits16, "--method", "semantic_flow", "--out", tmp_path / f"aug-{name}", "-n", "1",
            f"model={tmp_path / 'float32'}", "steps=4", f"precision={precision}")
        outs[name] = png_bytes(tmp_path / f"aug-{name}")
    assert outs["a"] == outs["b"] and outs["a"] != outs["c"] and len(outs["a"]) == 90
    import yaml

    assert yaml.safe_load((tmp_path / "aug-a" / "config.yaml").read_text())["options"]["precision"] == "bfloat16"


def test_a_pipeline_refuses_another_precision(tiny_sd3, tmp_path):
    from genaug.core.config import ConfigError

    with pytest.raises(ConfigError, match="precision=bfloat16 is for genaug flow models"):
        create_method("semantic_flow", {"model": str(tiny_sd3), "precision": "bfloat16"})
    # "auto" leaves the pipeline its own dtype (so the demo's options work on a pipeline too)
    assert create_method("semantic_flow", {"model": str(tiny_sd3), "precision": "auto"}).config.precision == "auto"


def test_auto_precision_is_resolved_recorded_and_never_continued_in_another(digits16, tmp_path, monkeypatch):
    """precision=auto means bfloat16 on a machine where it is fast, float32 elsewhere: a folder records what it
    resolved to, and a resume where it resolves otherwise is refused, for the generator and its images alike."""
    import yaml

    import genaug.core.devices as devices
    from genaug.core.config import ConfigError

    monkeypatch.setattr(devices, "fast_bfloat16", lambda device: True)
    cfg = {**TINY_FLOW, "steps": 2, "checkpoint_every": 2, "precision": "auto"}
    assert fit_flow(digits16, tmp_path / "m", cfg, progress=False)["precision"] == "bfloat16"
    args = ["augment", digits16, "--method", "semantic_flow", "--out", tmp_path / "aug", "-n", "1",
            f"model={tmp_path / 'm'}", "steps=4", "precision=auto"]
    cli(*args)
    assert yaml.safe_load((tmp_path / "aug" / "config.yaml").read_text())["options"]["precision"] == "bfloat16"
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device: False)
    with pytest.raises(ConfigError, match="precision: 'bfloat16' there, 'float32' now|precision: bfloat16 there"):
        fit_flow(digits16, tmp_path / "m", {**cfg, "steps": 4}, progress=False)
    res = cli(*args[:-1], "precision=auto", "-n", "2", expect=2)
    assert "precision" in res.output and "bfloat16" in res.output
    # what is compared is what a run computes in, not the setting: an explicit bfloat16 continues both
    assert fit_flow(digits16, tmp_path / "m", {**cfg, "steps": 4, "precision": "bfloat16"}, progress=False)["steps"] == 4
    cli(*args[:-1], "precision=bfloat16", "-n", "2")
    # a checkpoint written before the option existed (no precision anywhere: it trained in float32) resumes in
    # float32, and is refused, naming the fix, where auto means bfloat16
    old = tmp_path / "old"
    fit_flow(digits16, old, {**cfg, "precision": "float32"}, progress=False)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    del ckpt["config"]["precision"], ckpt["config"]["train"]["precision"]
    torch.save(ckpt, old / "checkpoint.pt")
    monkeypatch.setattr(devices, "fast_bfloat16", lambda device: True)
    with pytest.raises(ConfigError, match="precision=float32 continues the checkpoint"):
        fit_flow(digits16, old, {**cfg, "steps": 4}, progress=False)
    assert fit_flow(digits16, old, {**cfg, "steps": 4, "precision": "float32"}, progress=False)["steps"] == 4
