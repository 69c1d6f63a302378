"""The flow-matching generator and the semantic_flow method (Shivashankar & Miller)."""
import csv
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_FLOW, cli, make_imagefolder, read_rows
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


def test_resumed_training_equals_an_uninterrupted_one(digits16, tmp_path):
    cfg = {**TINY_FLOW, "steps": 8, "checkpoint_every": 4}
    fit_flow(digits16, tmp_path / "straight", cfg, progress=False)
    fit_flow(digits16, tmp_path / "resumed", {**cfg, "steps": 4}, progress=False)
    res = cli("fit-flow", digits16, "--out", tmp_path / "resumed", *[f"{k}={json.dumps(v)}" for k, v in cfg.items()])
    assert "steps 8" in res.output
    a, b = load_file(tmp_path / "straight" / UNET), load_file(tmp_path / "resumed" / UNET)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    res = cli("fit-flow", digits16, "--out", tmp_path / "resumed", "lr=0.5", expect=2)
    assert "another training run" in res.output


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


def test_composition_draws_each_augmentation_with_its_probability(tiny_flow):
    p = [0.1, 0.2, 0.3, 0.4]
    m = create_method("semantic_flow", {"model": str(tiny_flow), "mode": "compose", "k": 4, "p": p})
    ex = Example("x", None, "0", "x")
    draws = [m.sample_params(ex, np.random.default_rng(s)) for s in range(4000)]
    freq = np.bincount([d["aug_index"] for d in draws], minlength=4) / len(draws)
    assert np.abs(freq - p).max() < 0.03
    assert all(d["t"] == d["aug_index"] / 4 and 0.3 <= d["delta"] <= 0.6 for d in draws)


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


def test_pipeline_inversion_reconstructs_in_latent_space(tiny_sd3):
    from PIL import Image

    from genaug.flow.pipeline import PipelineFlow

    flow = PipelineFlow(str(tiny_sd3))
    x = flow.encode_images([Image.new("RGB", (20, 20), (30 * i, 90, 160)) for i in range(3)])
    cond = flow.condition(["cat", "dog", "cat"])
    errs = [(flow.generate(flow.invert(x, cond, steps=n), cond, steps=n) - x).pow(2).mean() for n in (4, 32)]
    assert errs[1] < errs[0] and errs[1] < 1e-3
