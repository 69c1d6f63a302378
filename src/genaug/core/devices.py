"""Where models run: the best device unless the user names one; half precision on a GPU only."""
from __future__ import annotations

from typing import Literal

import torch

# training precision: float32, bfloat16 autocast, or "auto" (bfloat16 where it is fast: `fast_bfloat16`)
Precision = Literal["float32", "bfloat16", "auto"]


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """`None` or "auto": CUDA when available, else the CPU; otherwise the named device."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_dtype(device: torch.device) -> torch.dtype:
    """fp16 on a GPU (inference), fp32 on the CPU, where half precision is slow or unsupported."""
    return torch.float16 if device.type == "cuda" else torch.float32


def fast_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 convolutions and matmuls are faster than float32 on `device`: a GPU that supports
    bfloat16, or a CPU with AMX tiles (Intel Xeon 4th generation and later), where oneDNN runs them on the tile
    unit. On a CPU without AMX they are emulated and slower (a fit-flow step 3.2x slower on AVX-512 alone)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence guarded
        return bool(amx and amx())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to: None (float32 throughout) for "float32", bfloat16 for "bfloat16", and
    for "auto" bfloat16 where `fast_bfloat16`, else None. Weights, optimiser state and the loss stay float32."""
    if precision == "bfloat16" or (precision == "auto" and fast_bfloat16(device)):
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    """What a run computed in, for its records: "bfloat16" or "float32"."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
