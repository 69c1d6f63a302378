"""Built-in methods. Adding one = a new module here + one import line below."""
from . import aga, classical, da_fusion, diagen, inpaint, real_guidance, semantic_flow, sgid  # noqa: F401
from .base import Method

__all__ = ["Method"]
