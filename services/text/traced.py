"""A text model's forward pass traced to TorchScript, for CPU inference.

An eager transformers model runs Python around every op; for MiniLM on one thread that is about
30 % of a one-sentence pass's CPU (11.8-13.5 against 17.1-18.9 ms) and 8 % at eight sentences.
Tracing records the ops once and later passes run them from C++, with the GIL released.

A trace keeps whatever Python branch its example took, so the example is a padded batch (the
masked attention path, which is right for unpadded batches too), and the traced model must give
the eager model's answer on a second batch of other shapes before it is used. Any failure keeps
the eager model: tracing is an optimisation, never a requirement.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence

import torch
from transformers.utils import logging as hf_logging

_LOGGER = logging.getLogger(__name__)
# Sentences of different lengths: the first batch traces (padded), the second checks other shapes.
_TRACE_TEXTS = ("a short one", "a longer sentence, with more words in it, so that the first one is padded")
_CHECK_TEXTS = (
    "mmserve checks the traced model",
    "on a batch of another size",
    "and with longer sentences than the example it was traced on, so the sequence length differs too",
)
# Largest difference from the eager model's output that still counts as the same model.
_TOLERANCE = 1e-4

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class _Positional(torch.nn.Module):
    """The model with its inputs in a fixed order and its first output as the only one (an
    encoder's last hidden state, a classifier's logits): what a trace can record."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)))[0]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The tracer reads every attribute of the model, and transformers warns about some it reads
    (an unused loss setting), in its own format; nothing in them concerns inference."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def traced_forward(model: torch.nn.Module, tokenizer) -> Forward | None:
    """``inputs -> the model's first output`` through a checked TorchScript trace, or None to stay
    eager."""
    try:
        example = tokenizer(list(_TRACE_TEXTS), padding=True, return_tensors="pt")
        names = tuple(example.keys())
        positional = _Positional(model, names).eval()
        with torch.inference_mode(), warnings.catch_warnings(), _quiet_transformers():
            warnings.simplefilter("ignore")  # the tracer's notes on Python values it records as constants
            traced = torch.jit.freeze(
                torch.jit.trace(positional, tuple(example[n] for n in names), check_trace=False)
            )
            check = tokenizer(list(_CHECK_TEXTS), padding=True, return_tensors="pt")
            inputs = tuple(check[n] for n in names)
            difference = _largest_difference(positional(*inputs), traced(*inputs), check["attention_mask"])
    except Exception as error:  # noqa: BLE001 - any model the tracer cannot follow stays eager
        _LOGGER.warning("%s kept eager: tracing failed (%s: %s)", _name(model), type(error).__name__, error)
        return None
    if not difference <= _TOLERANCE:
        _LOGGER.warning("%s kept eager: its trace differs from it by %.2g", _name(model), difference)
        return None

    _LOGGER.info("%s traced to TorchScript (largest difference from eager: %.2g)", _name(model), difference)

    def forward(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return traced(*(inputs[n] for n in names))

    return forward


def _largest_difference(eager: torch.Tensor, traced: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Per token outputs are compared where the mask holds a token (padding is free to differ)."""
    difference = (eager - traced).abs()
    if difference.dim() == 3:
        difference = difference * attention_mask.unsqueeze(-1)
    return float(difference.max())


def _name(model: torch.nn.Module) -> str:
    return f"text model {type(model).__name__}"
