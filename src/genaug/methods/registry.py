"""Method registry: plain dicts, a decorator, and `create_method` (timm's `_registry.py` pattern).

Every registered method is a generator: it writes new images offline (`genaug augment`), one per (source
image, variant). Training-time transforms (CutMix, MixUp, online RandAugment, …) are `genaug.train.transforms`.
"""
from __future__ import annotations

from typing import Any

from ..core.config import ConfigError, build_config

_METHODS: dict[str, type] = {}


def register_method(name: str):
    """Class decorator: `@register_method("randaugment")`. The class needs `Config` and `description`."""

    def wrap(cls):
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_METHODS[name].__qualname__}")
        if not getattr(cls, "description", ""):
            raise ValueError(f"method {name!r} needs a one-line description")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def _ensure_builtin() -> None:
    from . import aga, classical, da_fusion, diagen, inpaint, real_guidance, semantic_flow, sgid  # noqa: F401


def list_methods() -> list[str]:
    _ensure_builtin()
    return sorted(_METHODS)


def get_method_class(name: str) -> type:
    _ensure_builtin()
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(list_methods())}") from None


def create_method(name: str, config: dict[str, Any] | None = None, components: Any = None):
    """Build a registered method from a dict of config overrides (unknown keys are errors)."""
    cls = get_method_class(name)
    return cls(build_config(cls.Config, config or {}, where=f"method {name!r}"), components)
