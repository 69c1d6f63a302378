"""Method registry: a plain dict and the `register_method` decorator (timm's `_registry.py` pattern); the
look-ups (`list_methods`, `get_method_class`, `create_method`) are in `genaug.methods`, which imports the
built-in methods on first use.

Every registered method is a generator: it writes new images offline (`genaug augment`), one per (source
image, variant). Training-time transforms (CutMix, MixUp, online RandAugment, …) are `genaug.train.transforms`.
"""
from __future__ import annotations

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
