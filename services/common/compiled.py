"""A model's forward pass compiled for CPU inference: onnxruntime, or a TorchScript trace.

Eager PyTorch runs Python around every op, and its CPU kernels are not always the fastest for a
model's shapes. A TorchScript trace records the ops once and later passes run them from C++,
with the GIL released; onnxruntime (services/common/onnx_forward.py) runs the same graph with its
own kernels and graph fusions. Measured in-process on one thread: MiniLM 5.5 ms onnxruntime, 10.3
torchscript, ~15 eager for one sentence; EfficientNet-Lite0 10.5-12 ms per image on onnxruntime
at batch 1, 8 and 32, against 33-38, 42-56 and 91-100 eager.

A compiled model records the ops its example took and must give the eager model's answer on a
second batch of other shapes before it is used. A runtime that fails or disagrees gives way to
the next (onnxruntime, then torchscript, then the eager model): compiling is an optimisation,
never a requirement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from services.common.onnx_forward import onnx_forward

_LOGGER = logging.getLogger(__name__)
# Largest difference from the eager model's output that still counts as the same model.
_TOLERANCE = 1e-4

Positional = Callable[..., torch.Tensor]
DynamicAxes = Mapping[str, Mapping[int, str]]


def torchscript_forward(
    positional: torch.nn.Module, example: tuple[torch.Tensor, ...], _names: Sequence[str], _axes: DynamicAxes
) -> Positional:
    return torch.jit.freeze(torch.jit.trace(positional, example, check_trace=False))


# The CPU runtimes, fastest first; "eager" runs the model as it is.
RUNTIMES: dict[
    str, Callable[[torch.nn.Module, tuple[torch.Tensor, ...], Sequence[str], DynamicAxes], Positional] | None
] = {
    "onnxruntime": onnx_forward,
    "torchscript": torchscript_forward,
    "eager": None,
}


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown CPU runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


@dataclasses.dataclass(frozen=True)
class Probe:
    """What a runtime compiles from (``example``) and is checked on (``check``, other shapes).
    ``dynamic_axes``: per input name, the axes that vary between calls (onnxruntime fixes others)."""

    names: tuple[str, ...]
    example: tuple[torch.Tensor, ...]
    check: tuple[torch.Tensor, ...]
    dynamic_axes: DynamicAxes


def largest_difference(eager: torch.Tensor, compiled: torch.Tensor) -> float:
    if eager.shape != compiled.shape:
        return float("inf")
    return float((eager - compiled).abs().max())


def compile_positional(
    positional: torch.nn.Module,
    probe: Callable[[], Probe],
    runtime: str,
    description: str,
    difference: Callable[[Probe, torch.Tensor, torch.Tensor], float] | None = None,
) -> Positional | None:
    """``positional`` (inputs in ``probe().names`` order -> one tensor) on ``runtime``, or on the
    next one down ``RUNTIMES`` that compiles and agrees with it; None to stay eager.
    ``difference(probe, eager, compiled)`` measures disagreement (default: the largest one)."""
    check_runtime(runtime)
    if runtime == "eager":
        return None
    try:
        built = probe()
        with torch.inference_mode():
            expected = positional(*built.check)
    except Exception as error:  # noqa: BLE001 - whatever the eager model refuses, it still runs eager
        _LOGGER.warning(
            "%s runs eager: its check batch failed (%s: %s)",
            description,
            type(error).__name__,
            _first_line(error),
        )
        return None
    for name in list(RUNTIMES)[list(RUNTIMES).index(runtime) :]:
        build = RUNTIMES[name]
        if build is None:
            break
        try:
            with torch.inference_mode(), _quietly():
                compiled = build(positional, built.example, built.names, built.dynamic_axes)
                output = compiled(*built.check)
                gap = (
                    difference(built, expected, output)
                    if difference
                    else largest_difference(expected, output)
                )
        except Exception as error:  # noqa: BLE001 - a model a runtime cannot take runs on the next
            _LOGGER.warning(
                "%s not on %s: it failed (%s: %s)",
                description,
                name,
                type(error).__name__,
                _first_line(error),
            )
            continue
        if not gap <= _TOLERANCE:
            _LOGGER.warning("%s not on %s: it differs from the eager model by %.2g", description, name, gap)
            continue
        _LOGGER.info("%s runs on %s (largest difference from eager: %.2g)", description, name, gap)
        return compiled
    _LOGGER.info("%s runs eager", description)
    return None


def _first_line(error: Exception) -> str:
    """The exporter's errors carry the whole traced graph after their first line."""
    return str(error).strip().split("\n", 1)[0][:500]


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """The tracer and the exporter read every attribute of the model, and transformers warns about
    some (an unused loss setting) in its own format; the tracer notes each Python value it records
    as a constant. Nothing in them concerns inference. (A process that never imported transformers,
    fusion with its own heads, has no transformers model to hear from.)"""
    hf_logging = sys.modules.get("transformers.utils.logging")
    verbosity = hf_logging.get_verbosity() if hf_logging else None
    if hf_logging:
        hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if hf_logging:
            hf_logging.set_verbosity(verbosity)
