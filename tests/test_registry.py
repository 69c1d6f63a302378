"""The method registry and the method contract, parametrised over everything registered."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from genaug import Example, create_method, get_method_class, list_methods, register_method
from genaug.core.config import ConfigError, parse_overrides
from genaug.methods import Method


@pytest.mark.parametrize("name", list_methods())
def test_every_method_has_a_strict_config_with_defaults(name, method_options):
    cls = get_method_class(name)
    assert cls.description
    m = create_method(name, method_options.get(name))  # defaults (plus where its model is) make a working method
    fields = [f.name for f in dataclasses.fields(m.config)]
    with pytest.raises(ConfigError, match="unknown option 'not_a_knob'"):
        create_method(name, {**method_options.get(name, {}), "not_a_knob": 1})
    typed = [f.name for f in dataclasses.fields(m.config) if "str" not in str(f.type)]  # fields a word can't fill
    if typed:
        with pytest.raises(ConfigError, match=repr(typed[0])):
            create_method(name, {**method_options.get(name, {}), typed[0]: "certainly not valid"})
    assert fields


@pytest.mark.parametrize("name", list_methods())
def test_generators_are_pure_given_their_params(name, digit_images, method_options, imagefolder):
    from genaug.data import Source

    images, labels, _ = digit_images
    m = create_method(name, method_options.get(name))
    m.prepare(Source(imagefolder))  # per-dataset work first (class tokens, caches), as the engine does
    ex = Example(id="a/b.png", image=images[0], label="0", path="a/b.png")
    p = {"seed": 123, **m.sample_params(ex, np.random.default_rng(123))}
    a, b = m([ex], [p])[0], m([ex, ex], [p, {**p, "seed": 9}])[0]
    assert a.image.tobytes() == b.image.tobytes() and a.params == b.params
    assert a.label == "0" and a.source_id == "a/b.png" and "seed" not in a.params


@pytest.mark.parametrize("name", ["cutmix", "mixup"])
def test_batch_mixes_give_soft_labels(name):
    from genaug.train.transforms import BATCH_TRANSFORMS

    def make(p):
        cls = BATCH_TRANSFORMS[name]
        return cls(cls.Config(p=p)).make_transform(num_classes=5)

    assert name not in list_methods()  # training transforms, not generators
    mix = make(1.0)
    x, y = mix(torch.rand(8, 3, 16, 16), torch.arange(8) % 5)
    assert x.shape == (8, 3, 16, 16) and y.shape == (8, 5)
    assert torch.allclose(y.sum(1), torch.ones(8))
    keep = make(0.0)
    x0 = torch.rand(4, 3, 8, 8)
    x1, y1 = keep(x0, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(x1, x0) and torch.equal(y1, torch.eye(5)[:4])


def test_registering_twice_or_without_description_fails():
    with pytest.raises(ValueError, match="already registered"):
        register_method("randaugment")(type("Other", (Method,), {"description": "x", "__call__": lambda *a: []}))
    with pytest.raises(ValueError, match="description"):
        register_method("nameless")(type("Nameless", (Method,), {"__call__": lambda *a: []}))


def test_overrides_parse_as_yaml_values():
    assert parse_overrides(["a=1", "b=0.5", "c=[0.25, 0.5]", "d=true", "e=text", "input.min_side=4"]) == {
        "a": 1, "b": 0.5, "c": [0.25, 0.5], "d": True, "e": "text", "input": {"min_side": 4}}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_overrides_keep_what_was_typed_where_yaml_1_1_would_change_it():
    """A shell strips quotes, so `ti_init={label}` arrives bare: it is text, not a mapping; `#` in a prompt is
    not a comment; `010` is ten, not octal eight; `1:30` is not ninety; `5e-1` is a number."""
    typed = ["ti_init={label}", "prompt=a photo of a {label}, #1 pick", "seed=010", "t=1:30", "lr=5e-1",
             "s=[0.25, 5e-1]", "q='quoted #'"]
    assert parse_overrides(typed) == {"ti_init": "{label}", "prompt": "a photo of a {label}, #1 pick", "seed": 10,
                                      "t": "1:30", "lr": 0.5, "s": [0.25, 0.5], "q": "quoted #"}
    from genaug.core.config import build_config
    from genaug.methods import get_method_class

    assert build_config(get_method_class("da_fusion").Config, parse_overrides(["ti_init={label}"]),
                        "da_fusion").ti_init == "{label}"


def test_tuple_options_validate(digit_images):
    m = create_method("cutout", {"scale": [0.1, 0.2]})
    assert m.config.scale == (0.1, 0.2)
    with pytest.raises(ConfigError):
        create_method("cutout", {"value": 300})
    img = Image.new("RGB", (16, 16), (255, 255, 255))
    out = m([Example("x", img, "l", "x")], [{"seed": 1}])[0]
    box = out.params["erase"]
    arr = np.asarray(out.image)
    assert (arr[box["top"]:box["top"] + box["height"], box["left"]:box["left"] + box["width"]] == 0).all()
    assert 0.1 * 256 <= box["height"] * box["width"] <= 0.2 * 256 + 16
