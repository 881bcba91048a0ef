"""Picks the torch device and dtype: CUDA + float16 when a GPU is present, CPU + float32 otherwise.

torch is imported inside the functions: ``services.common`` also ships in the torch-free
gateway image, and only model processes call these.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from services.common.cpu_budget import available_cpus

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = ("float32", "float16", "bfloat16")
GIL_SWITCH_INTERVAL_S = 0.0005
MAX_DEFAULT_LANES = 4


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


def forward_lanes(requested: int, on_gpu: bool) -> int:
    """How many forward passes a model runs at once: ``requested``, or with 0 one per CPU this
    process may use on CPU (each single-threaded: more items per CPU second than one forward on
    every core, see services/common/batcher.py), at most ``MAX_DEFAULT_LANES`` (each lane holds
    a batch's activations; more CPUs give each lane more threads), and one on a GPU, which
    batches better than it overlaps."""
    if requested > 0:
        return requested
    return 1 if on_gpu else min(available_cpus(), MAX_DEFAULT_LANES)


def torch_uses_cuda(device: str) -> bool:
    """Whether torch models run on a GPU with this device setting (auto: when CUDA is there)."""
    return device != "cpu" and resolve_device(device)[0].type == "cuda"


def threads_per_lane(requested: int, lanes: int) -> int:
    """Intra-op threads of each forward pass: ``requested``, or with 0 the CPUs this process may
    really use (its cgroup quota and affinity, not the node's core count) shared among ``lanes``."""
    return requested if requested > 0 else max(1, available_cpus() // lanes)


def configure_threads(torch_threads: int, lanes: int = 1) -> int:
    """Sets torch's intra-op threads of each forward pass (``threads_per_lane``). Returns the count."""
    import torch

    threads = threads_per_lane(torch_threads, lanes)
    torch.set_num_threads(threads)
    if lanes > 1:
        # Forward lanes run Python between torch ops and hand the GIL over only every switch
        # interval; at the default 5 ms the event loop, waiting behind two of them, fell so far
        # behind that calls queued in gRPC went unserved (and were cancelled at shutdown).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return threads
