"""Where models run: the best device unless the user names one; half precision on a GPU only."""
from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`None` or "auto": CUDA when available, else the CPU; otherwise the named device."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_dtype(device: torch.device) -> torch.dtype:
    """fp16 on a GPU (inference), fp32 on the CPU, where half precision is slow or unsupported."""
    return torch.float16 if device.type == "cuda" else torch.float32
