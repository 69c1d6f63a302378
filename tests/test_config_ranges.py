"""Range and list-of-values options are checked where the config is built: order, bounds, emptiness."""
import types
import typing

import pytest

from conftest import cli
from genaug.core.config import ConfigError, build_config, option_specs
from genaug.flow.train import FlowTrainConfig
from genaug.methods import get_method_class, list_methods
from genaug.train.trainer import TrainConfig

CONFIGS = {f"method {n!r}": get_method_class(n).Config for n in list_methods()}
CONFIGS |= {"fit-flow": FlowTrainConfig, "train": TrainConfig}
FIELDS = [(where, name, spec) for where, cls in CONFIGS.items() for name, spec in option_specs(cls).items()]
IDS = [f"{where.split()[-1].strip(chr(39))}.{name}" for where, name, _ in FIELDS]


def inside(spec) -> tuple[float, float]:
    """Two values within the bounds, low < high, the closed bounds themselves where there are any."""
    lo, hi = spec.gt if spec.gt is not None else spec.ge, spec.lt if spec.lt is not None else spec.le
    if lo is not None and hi is not None:
        a, b = lo + (hi - lo) / 4, lo + 3 * (hi - lo) / 4
    elif lo is not None:
        a, b = lo + 1, lo + 2
    else:
        a, b = (hi - 2, hi - 1) if hi is not None else (0, 1)
    return (spec.ge if spec.ge is not None else a), (spec.le if spec.le is not None else b)


def outside(spec) -> list[float]:
    """One value past each bound (an open bound's own value is past it)."""
    out = [spec.gt] if spec.gt is not None else [spec.ge - 1] if spec.ge is not None else []
    out += [spec.lt] if spec.lt is not None else [spec.le + 1] if spec.le is not None else []
    return out


def rejects(where, name, value, spec):
    with pytest.raises(ConfigError) as e:
        build_config(CONFIGS[where], {name: value}, where=where)
    msg = str(e.value)
    assert msg.startswith(f"{where}: option {name!r}: {spec.rule}"), msg
    assert "\n" not in msg and "Value error" not in msg


def test_the_issue_examples_are_found():
    found = {(where, name) for where, name, _ in FIELDS}
    assert {("method 'flipcrop'", "scale"), ("method 'cutout'", "scale"), ("method 'aga'", "rotation"),
            ("method 'semantic_flow'", "delta"), ("method 'semantic_flow'", "t0"),
            ("method 'da_fusion'", "strengths"), ("method 'diagen'", "noise_stds")} <= found


@pytest.mark.parametrize("where", CONFIGS)
def test_no_undeclared_numeric_lists(where):
    """A tuple / list of numbers is a range or a list of values: it must say which, with its bounds."""
    specs = option_specs(CONFIGS[where])
    for name, hint in typing.get_type_hints(CONFIGS[where]).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
        for a in args:
            if typing.get_origin(a) in (tuple, list) and set(typing.get_args(a)) & {int, float}:
                assert name in specs, f"{where}: {name} ({hint}) is a numeric list without range_option/values_option"


@pytest.mark.parametrize("where", CONFIGS)
def test_defaults_pass(where):
    build_config(CONFIGS[where], {}, where=where)


@pytest.mark.parametrize(("where", "name", "spec"), FIELDS, ids=IDS)
def test_in_bounds_passes(where, name, spec):
    lo, hi = inside(spec)
    cfg = build_config(CONFIGS[where], {name: [lo, hi]}, where=where)
    assert list(getattr(cfg, name)) == [lo, hi]
    if spec.kind == "range":
        build_config(CONFIGS[where], {name: [lo, lo]}, where=where)  # low == high: a fixed value


@pytest.mark.parametrize(("where", "name", "spec"), FIELDS, ids=IDS)
def test_out_of_bounds_is_named(where, name, spec):
    lo, hi = inside(spec)
    bad = outside(spec)
    assert bad, f"{where}: {name} has no bounds"
    for x in bad:
        value = [x, x] if spec.kind == "range" else [lo, x]
        rejects(where, name, value, spec)
    with pytest.raises(ConfigError, match=f"option '{name}"):  # NaN passes no bound (an int item: no NaN at all)
        build_config(CONFIGS[where], {name: [float("nan"), hi]}, where=where)


@pytest.mark.parametrize(("where", "name", "spec"), FIELDS, ids=IDS)
def test_reversed_wrong_length_or_empty_is_named(where, name, spec):
    lo, hi = inside(spec)
    if spec.kind == "range":
        for value in ([hi, lo], [lo], [lo, lo, hi], []):
            rejects(where, name, value, spec)
    elif spec.allow_empty:
        assert list(getattr(build_config(CONFIGS[where], {name: []}, where=where), name)) == []
    else:
        rejects(where, name, [], spec)


@pytest.mark.parametrize(("method", "value"), [("flipcrop", "[2,1]"), ("cutout", "[0.5,0.1]"), ("cutout", "[0,2]")])
def test_cli_names_a_bad_range(imagefolder, tmp_path, method, value):
    res = cli("augment", imagefolder, "--method", method, "--out", tmp_path / "out", f"scale={value}", expect=2)
    assert f"method {method!r}: option 'scale': must be [low, high] with low <= high, both in (0, 1]" in res.output
    assert "Traceback" not in res.output and "RuntimeError" not in res.output
    assert not list((tmp_path / "out").rglob("*.png"))
