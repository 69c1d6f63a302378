"""The methods: one paper = one module, registered by name. Adding one = a new module here + one import line
in `_ensure_builtin`."""
from __future__ import annotations

from typing import Any

from ..core.config import ConfigError, build_config
from .base import Method
from .registry import _METHODS, register_method

__all__ = ["Method", "create_method", "get_method_class", "list_methods", "register_method"]


def _ensure_builtin() -> None:
    # Imported on first use, not with the package: `import genaug` stays light.
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
