"""Picks the torch device and dtype: CUDA + float16 when a GPU is present, CPU + float32 otherwise.

torch is imported inside the functions: ``services.common`` also ships in the torch-free
gateway image, and only model processes call these.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

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


class PassThreads:
    """Intra-op threads of each forward pass, set on the thread that runs it (under OpenMP torch's
    thread count is a per-thread setting). A pass that starts while no other runs in the process
    gets ``alone`` threads, so a lone request may use the CPUs the idle lanes leave; a pass that
    starts beside another keeps ``beside``, its lane's share."""

    def __init__(self, alone: int, beside: int) -> None:
        self.alone = alone
        self.beside = beside
        self._running = 0
        self._lock = threading.Lock()
        self._thread = threading.local()  # the count last set on each lane thread

    def around(self, process: Callable[[Sequence[Any]], Any]) -> Callable[[Sequence[Any]], Any]:
        """``process`` run with the thread count its start calls for."""
        if self.alone == self.beside:
            return process

        @functools.wraps(process)
        def run(items: Sequence[Any]) -> Any:
            with self._lock:
                self._running += 1
                threads = self.alone if self._running == 1 else self.beside
            try:
                self._use(threads)
                return process(items)
            finally:
                with self._lock:
                    self._running -= 1

        return run

    def current(self) -> int:
        """The count this thread's last pass ran with (``beside`` before its first)."""
        return getattr(self._thread, "threads", self.beside)

    def _use(self, threads: int) -> None:
        if getattr(self._thread, "threads", None) != threads:
            import torch

            torch.set_num_threads(threads)
            self._thread.threads = threads


_pass_threads: PassThreads | None = None  # this process's, once configure_threads ran


def pass_thread_counts() -> tuple[int, ...]:
    """The intra-op thread counts this process's forward passes run with (lone and beside)."""
    if _pass_threads is None:
        import torch

        return (torch.get_num_threads(),)
    return tuple(sorted({_pass_threads.alone, _pass_threads.beside}))


def current_pass_threads() -> int:
    """The intra-op thread count of the pass running on this thread: what a runtime with thread
    pools of its own (onnxruntime) should use, where torch reads its per-thread setting."""
    if _pass_threads is None:
        import torch

        return torch.get_num_threads()
    return _pass_threads.current()


def widen_lone_passes(process: Callable[[Sequence[Any]], Any], device: str) -> Callable[[Sequence[Any]], Any]:
    """A CPU model's ``process`` under this process's PassThreads (see ``configure_threads``); a
    GPU model's, or one in a process that configured no torch threads (ONNX), as it is."""
    if _pass_threads is None or device.startswith("cuda"):
        return process
    return _pass_threads.around(process)


def configure_threads(torch_threads: int, lanes: int = 1, lone_pass_threads: int = 0) -> int:
    """Sets torch's intra-op threads of each forward pass (``threads_per_lane``), and of a pass that
    runs alone (``lone_pass_threads``; 0: every lane's; at least a lane's). Returns the per-lane count."""
    import torch

    global _pass_threads
    threads = threads_per_lane(torch_threads, lanes)
    torch.set_num_threads(threads)
    # A lone pass never gets fewer threads than its lane's share (one lane: every pass is lone).
    _pass_threads = PassThreads(max(lone_pass_threads or threads * lanes, threads), threads)
    if lanes > 1:
        # Forward lanes run Python between torch ops and hand the GIL over only every switch
        # interval; at the default 5 ms the event loop, waiting behind two of them, fell so far
        # behind that calls queued in gRPC went unserved (and were cancelled at shutdown).
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return threads
