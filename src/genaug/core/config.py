"""Configuration: strict dataclasses (pydantic validates them), YAML files and `key=value` overrides.

Every config class is declared with `@config_dataclass`: its fields are the knobs, their defaults the
papers' values; unknown keys and wrong types are errors with a one-line message, never ignored.
Range options (`[low, high]`) and lists of values are declared with `range_option` / `values_option`, so
their order, bounds and emptiness are checked here, not by a torch error deep inside a method.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass
from pydantic_core import core_schema


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLI prints the message without a traceback."""


def config_dataclass(cls):
    return _pydantic_dataclass(cls, config=ConfigDict(extra="forbid", validate_assignment=True))


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """The `Annotated` metadata of a range / values option: it validates the option, and tells its kind and bounds
    to whoever looks (`option_specs`: the tests, `genaug methods NAME`)."""

    kind: Literal["range", "values"]
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    allow_empty: bool = False

    def admits(self, x: float) -> bool:
        # written so that NaN fails every bound
        return ((self.gt is None or x > self.gt) and (self.ge is None or x >= self.ge)
                and (self.lt is None or x < self.lt) and (self.le is None or x <= self.le))

    @property
    def bounds(self) -> str:
        lo = ("(", self.gt) if self.gt is not None else ("[", self.ge) if self.ge is not None else None
        hi = (")", self.lt) if self.lt is not None else ("]", self.le) if self.le is not None else None
        if lo and hi:
            return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
        if lo:
            return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
        if hi:
            return f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
        return "any number"

    @property
    def rule(self) -> str:
        if self.kind == "range":
            return f"must be [low, high] with low <= high, both {self.bounds}"
        return f"must be a {'' if self.allow_empty else 'non-empty '}list of values, each {self.bounds}"

    def __str__(self) -> str:  # the "allowed" column of `genaug methods NAME`
        if self.kind == "range":
            return f"[low, high], low <= high, both {self.bounds}"
        return f"{'' if self.allow_empty else 'non-empty, '}each {self.bounds}"

    def check(self, v: tuple) -> tuple:
        ok = all(self.admits(x) for x in v) and (
            v[0] <= v[1] if self.kind == "range" else bool(v) or self.allow_empty)
        if not ok:
            raise ValueError(self.rule)
        return v

    def _two(self, v):
        if isinstance(v, (list, tuple)) and len(v) != 2:
            raise ValueError(self.rule)
        return v

    def __get_pydantic_core_schema__(self, source, handler):
        # after the type's own validation (numbers parsed) the rule is checked; a range's length is checked before
        # it, so that `scale=[0.5]` gets the rule rather than pydantic's "Field required" on `scale.1`
        schema = core_schema.no_info_after_validator_function(self.check, handler(source))
        return core_schema.no_info_before_validator_function(self._two, schema) if self.kind == "range" else schema


def range_option(*, gt=None, ge=None, lt=None, le=None):
    """The type of a `[low, high]` option of numbers: two values, low <= high, both within the bounds."""
    return Annotated[tuple[float, float], OptionSpec("range", gt, ge, lt, le)]


def values_option(*, gt=None, ge=None, lt=None, le=None, item: type = float, allow_empty: bool = False):
    """The type of a list-of-values option (one drawn per image, …): non-empty, each value within the bounds."""
    return Annotated[tuple[item, ...], OptionSpec("values", gt, ge, lt, le, allow_empty)]


def option_specs(cls) -> dict[str, OptionSpec]:
    """`{field name: OptionSpec}` of a config class's range and values options (optional ones included)."""
    out = {}
    for name, hint in get_type_hints(cls, include_extras=True).items():
        if get_origin(hint) in (Union, types.UnionType):  # an optional option: `range_option(...) | None`
            hint = next((a for a in get_args(hint) if a is not type(None)), hint)
        spec = next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, OptionSpec)), None)
        if spec is not None:
            out[name] = spec
    return out


def build_config(cls, values: dict[str, Any], where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(values).__name__}")
    try:
        return cls(**values)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, cls, where)) from None
    except TypeError as e:  # pydantic reports unknown keyword arguments of plain signatures this way
        raise ConfigError(f"{where}: {e}") from None


def _format_validation(e: ValidationError, cls, where: str) -> str:
    known = ", ".join(f.name for f in dataclasses.fields(cls))
    lines = []
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            lines.append(f"{where}: unknown option {key!r} (valid options: {known})")
        else:
            msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix to a validator's ValueError
            lines.append(f"{where}: option {key!r}: {msg} (got {err.get('input')!r})")
    return "\n".join(lines)


def to_dict(cfg) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def config_hash(d: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(d, sort_keys=True).encode(), digest_size=8).hexdigest()


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["magnitude=12", "input.min_side=4"]` -> `{"magnitude": 12, "input": {"min_side": 4}}`.

    Values are parsed as YAML scalars / flow lists, so `0.5`, `true`, `[0.25, 0.5]` mean what they say —
    except where YAML 1.1 would silently change what was typed (`_value`).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        value = _value(raw)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[leaf] = value
    return out


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _value(raw: str) -> Any:
    """A `key=value` value as YAML reads it, but as typed where YAML 1.1 would change it: unquoted text is kept
    whole (`a photo #1`: no comment), `{label}` is text (not a mapping), `5e-1` is a number, an integer is
    decimal (`010` is 10), and `1:30` or `0o17` stay text (no base-60 or octal numbers)."""
    text = raw.strip()
    if not text:
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return text
    if "\n" in text:  # a YAML document (e.g. yaml.safe_dump's "0.5\n...\n"), not something typed on a line
        return value
    quoted = text[0] in "'\""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(text) if re.fullmatch(r"[-+]?\d+", text) else text
    if isinstance(value, float):
        return value if _NUMBER.fullmatch(text) or text.lower().lstrip("+-") in (".inf", ".nan") else text
    if isinstance(value, str):
        return value if quoted else float(text) if _NUMBER.fullmatch(text) else text
    if isinstance(value, dict) and text.startswith("{") and all(v is None for v in value.values()):
        return text  # "{label}": a placeholder, not a mapping of nulls
    if isinstance(value, list):
        return [float(v) if isinstance(v, str) and _NUMBER.fullmatch(v) else v for v in value]
    return value


ABSENT = object()  # a setting one side of a comparison does not hold


def differences(path: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """`(dotted key, old, new)` for every leaf where two settings differ; dicts compared key by key, so a message
    names `options.guidance`, not the whole options."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(f"{path}.{k}", old.get(k, ABSENT), new.get(k, ABSENT))]
    return [] if old == new else [(path, old, new)]


def shown_differences(differ: list[tuple[str, Any, Any]]) -> str:
    """`differences` as one line: `options.guidance: 2 there, 3 now; ...`."""
    def shown(value: Any) -> str:
        return "absent" if value is ABSENT else repr(value)

    return "; ".join(f"{k}: {shown(a)} there, {shown(b)} now" for k, a, b in differ)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `over` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
