"""Built-in methods. Adding one = a new module here + one import line in `registry._ensure_builtin`."""
from .base import Method
from .registry import create_method, get_method_class, list_methods, register_method

__all__ = ["Method", "create_method", "get_method_class", "list_methods", "register_method"]
