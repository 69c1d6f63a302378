"""Where models run: the best device unless the user names one; half precision on a GPU only."""
from __future__ import annotations

import contextlib
from typing import Literal

import torch

from .config import ConfigError

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
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return torch.cuda.is_bf16_supported()
        # compute capability 8 (Ampere) and later: below it (T4, V100) `is_bf16_supported` says True because torch
        # emulates bfloat16 there, slower than float32
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, hence guarded
        return bool(amx and amx())
    return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to: None (float32 throughout) for "float32", bfloat16 for "bfloat16", and
    for "auto" bfloat16 where `fast_bfloat16`, else None. Weights, optimiser state and the loss stay float32."""
    if precision == "bfloat16":
        if device.type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision=bfloat16: this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; "
                              "use precision=float32 or auto")
        return torch.bfloat16
    if precision == "auto" and fast_bfloat16(device):
        return torch.bfloat16
    return None


def resolved_precision(precision: str, device: torch.device) -> str:
    """What a `precision` setting computes in on `device`, for records, cache keys and resume checks: "bfloat16"
    or "float32" ("auto" resolved by `autocast_dtype`)."""
    return precision_name(autocast_dtype(precision, device))


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The forward pass's context: `dtype` autocast on `device`, or none at all for float32 (no autocast block, so
    a device type autocast does not know is no error and an enclosing autocast is left as it is)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """What a run computed in, for its records: "bfloat16" or "float32"."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
