"""A text model's forward pass compiled for CPU inference: onnxruntime, or a TorchScript trace.

An eager transformers model runs Python around every op; for MiniLM on one thread that is about
30 % of a one-sentence pass's CPU (11.8-13.5 against 17.1-18.9 ms) and 8 % at eight sentences.
A TorchScript trace records the ops once and later passes run them from C++, with the GIL
released; onnxruntime (services/text/onnx_forward.py) runs the same graph in less CPU still.

Both record the ops the example took, so the example is a padded batch (the masked attention
path, which is right for unpadded batches too), and a compiled model must give the eager
model's answer on a second batch of other shapes before it is used. A runtime that fails or
disagrees gives way to the next (onnxruntime, then torchscript, then the eager model): compiling
is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers.utils import logging as hf_logging

from services.text.onnx_forward import onnx_forward

_LOGGER = logging.getLogger(__name__)
# Sentences of different lengths: the first batch is the example (padded), the second checks other shapes.
_EXAMPLE_TEXTS = ("a short one", "a longer sentence, with more words in it, so that the first one is padded")
_CHECK_TEXTS = (
    "mmserve checks the compiled model",
    "on a batch of another size",
    "and with longer sentences than the example it was compiled from, so the sequence length differs too",
)
# Largest difference from the eager model's output that still counts as the same model.
_TOLERANCE = 1e-4

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]
Positional = Callable[..., torch.Tensor]


def torchscript_forward(
    positional: torch.nn.Module, example: tuple[torch.Tensor, ...], _names: Sequence[str]
) -> Positional:
    return torch.jit.freeze(torch.jit.trace(positional, example, check_trace=False))


# The CPU runtimes, fastest first; "eager" runs the transformers model as it is.
RUNTIMES: dict[
    str, Callable[[torch.nn.Module, tuple[torch.Tensor, ...], Sequence[str]], Positional] | None
] = {
    "onnxruntime": onnx_forward,
    "torchscript": torchscript_forward,
    "eager": None,
}


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown CPU runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")


class _Positional(torch.nn.Module):
    """The model with its inputs in a fixed order and its first output as the only one (an
    encoder's last hidden state, a classifier's logits): what a trace or an export can record."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)))[0]


@contextlib.contextmanager
def _quietly() -> Iterator[None]:
    """The tracer and the exporter read every attribute of the model, and transformers warns about
    some (an unused loss setting) in its own format; the tracer notes each Python value it records
    as a constant. Nothing in them concerns inference."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def compiled_forward(model: torch.nn.Module, tokenizer, runtime: str = "onnxruntime") -> Forward | None:
    """``inputs -> the model's first output`` on ``runtime``, or on the next one down ``RUNTIMES``
    that compiles and agrees with the eager model; None to stay eager."""
    check_runtime(runtime)
    if runtime == "eager":
        return None
    try:
        # Truncated to the tokenizer's limit: a model may take fewer tokens than these texts have.
        example = tokenizer(list(_EXAMPLE_TEXTS), padding=True, truncation=True, return_tensors="pt")
        names = tuple(example.keys())
        positional = _Positional(model, names).eval()
        check = tokenizer(list(_CHECK_TEXTS), padding=True, truncation=True, return_tensors="pt")
        check_inputs = tuple(check[n] for n in names)
        with torch.inference_mode():
            expected = positional(*check_inputs)
    except Exception as error:  # noqa: BLE001 - whatever the eager model refuses, it still runs eager
        _LOGGER.warning(
            "%s runs eager: its check batch failed (%s: %s)", _name(model), type(error).__name__, error
        )
        return None
    candidates = list(RUNTIMES)[list(RUNTIMES).index(runtime) :]
    for name in candidates:
        build = RUNTIMES[name]
        if build is None:
            break
        try:
            with torch.inference_mode(), _quietly():
                compiled = build(positional, tuple(example[n] for n in names), names)
                difference = _largest_difference(expected, compiled(*check_inputs), check["attention_mask"])
        except Exception as error:  # noqa: BLE001 - a model a runtime cannot take runs on the next
            _LOGGER.warning(
                "%s not on %s: it failed (%s: %s)", _name(model), name, type(error).__name__, error
            )
            continue
        if not difference <= _TOLERANCE:
            _LOGGER.warning(
                "%s not on %s: it differs from the eager model by %.2g", _name(model), name, difference
            )
            continue
        _LOGGER.info("%s runs on %s (largest difference from eager: %.2g)", _name(model), name, difference)

        def forward(inputs: dict[str, torch.Tensor], compiled: Positional = compiled) -> torch.Tensor:
            return compiled(*(inputs[n] for n in names))

        return forward
    _LOGGER.info("%s runs eager", _name(model))
    return None


def _largest_difference(eager: torch.Tensor, compiled: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Per token outputs are compared where the mask holds a token (padding is free to differ)."""
    if eager.shape != compiled.shape:
        return float("inf")
    difference = (eager - compiled).abs()
    if difference.dim() == 3:
        difference = difference * attention_mask.unsqueeze(-1)
    return float(difference.max())


def _name(model: torch.nn.Module) -> str:
    return f"text model {type(model).__name__}"
