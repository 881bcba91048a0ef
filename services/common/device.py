"""Picks the torch device and dtype: CUDA + float16 when a GPU is present, CPU + float32 otherwise.

torch is imported inside the functions: ``services.common`` also ships in the torch-free
gateway image, and only model processes call these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.cpu_budget import available_cpus

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if dtype == "auto":
        return resolved, torch.float16 if resolved.type == "cuda" else torch.float32
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from auto, {', '.join(DTYPE_NAMES)}")
    return resolved, getattr(torch, dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def configure_threads(torch_threads: int) -> int:
    """Sets torch's intra-op threads: ``torch_threads``, or with 0 the CPUs this process may
    really use (its cgroup quota and affinity, not the node's core count). Returns the count."""
    import torch

    threads = torch_threads if torch_threads > 0 else available_cpus()
    torch.set_num_threads(threads)
    return threads
