"""genaug: generative data augmentation for image classification."""
__version__ = "0.1.0"

from .registry import create_method, get_method_class, list_methods, register_method  # noqa: E402
from .types import Example, Synthetic  # noqa: E402


def augment(*args, **kwargs):
    """See `genaug.engine.local.augment` (imported lazily: it pulls in torch)."""
    from .engine import augment as _augment

    return _augment(*args, **kwargs)


__all__ = ["Example", "Synthetic", "augment", "create_method", "get_method_class", "list_methods", "register_method"]
