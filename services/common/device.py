"""Picks the torch device and dtype: CUDA + float16 when a GPU is present, CPU + float32 otherwise."""

from __future__ import annotations

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dtype == "auto":
        return resolved, torch.float16 if resolved.type == "cuda" else torch.float32
    try:
        return resolved, _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def configure_threads(torch_threads: int) -> None:
    """Caps torch's intra-op threads; 0 keeps torch's default (one per core)."""
    if torch_threads > 0:
        torch.set_num_threads(torch_threads)
