"""Configuration: strict dataclasses (pydantic validates them), YAML files and `key=value` overrides.

Every config class is declared with `@config_dataclass`: its fields are the knobs, their defaults the
papers' values; unknown keys and wrong types are errors with a one-line message, never ignored.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass


class ConfigError(ValueError):
    """A user-facing configuration mistake; the CLI prints the message without a traceback."""


def config_dataclass(cls):
    return _pydantic_dataclass(cls, config=ConfigDict(extra="forbid", validate_assignment=True))


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
            lines.append(f"{where}: option {key!r}: {err['msg']} (got {err.get('input')!r})")
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

    Values are parsed as YAML scalars / flow lists, so `0.5`, `true`, `[0.25, 0.5]` mean what they say.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[leaf] = value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `over` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
