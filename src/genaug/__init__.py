"""genaug: generative data augmentation for image classification."""
from .core.version import __version__  # noqa: E402
from .methods import create_method, get_method_class, list_methods, register_method  # noqa: E402
from .core.records import Example, Synthetic  # noqa: E402


def augment(*args, **kwargs):
    """See `genaug.pipeline.augment` (imported lazily: it pulls in torch)."""
    from .pipeline import augment as _augment

    return _augment(*args, **kwargs)


__all__ = ["__version__", "Example", "Synthetic", "augment", "create_method", "get_method_class", "list_methods", "register_method"]
