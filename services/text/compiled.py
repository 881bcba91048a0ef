"""A text model's forward pass compiled for CPU inference (services/common/compiled.py):
onnxruntime, a TorchScript trace, or the eager transformers model.

An eager transformers model runs Python around every op; for MiniLM on one thread that is about
30 % of a one-sentence pass's CPU (11.8-13.5 against 17.1-18.9 ms) and 8 % at eight sentences.

Both compiled runtimes record the ops the example took, so the example is a padded batch (the
masked attention path, which is right for unpadded batches too); the check batch has another
size and longer sentences, so the sequence length differs too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from services.common.compiled import Probe, compile_positional

# Sentences of different lengths: the first batch is the example (padded), the second checks other shapes.
_EXAMPLE_TEXTS = ("a short one", "a longer sentence, with more words in it, so that the first one is padded")
_CHECK_TEXTS = (
    "mmserve checks the compiled model",
    "on a batch of another size",
    "and with longer sentences than the example it was compiled from, so the sequence length differs too",
)

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class _Positional(torch.nn.Module):
    """The model with its inputs in a fixed order and its first output as the only one (an
    encoder's last hidden state, a classifier's logits): what a trace or an export can record."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True)))[0]


def compiled_forward(
    model: torch.nn.Module, tokenizer, runtime: str = "onnxruntime", max_length: int | None = None
) -> Forward | None:
    """``inputs -> the model's first output`` on ``runtime``, or on the next CPU runtime down that
    compiles and agrees with the eager model; None to stay eager. ``max_length``: the most tokens
    the service gives the model (else the tokenizer's own limit)."""
    # Truncated: a model may take fewer tokens than these texts have.
    encode = {"padding": True, "truncation": True, "max_length": max_length, "return_tensors": "pt"}
    example = tokenizer(list(_EXAMPLE_TEXTS), **encode)
    names = tuple(example.keys())

    def probe() -> Probe:
        check = tokenizer(list(_CHECK_TEXTS), **encode)
        return Probe(
            names=names,
            example=tuple(example[n] for n in names),
            check=tuple(check[n] for n in names),
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
        )

    compiled = compile_positional(
        _Positional(model, names).eval(),
        probe,
        runtime,
        f"text model {type(model).__name__}",
        _masked_difference,
    )
    if compiled is None:
        return None

    def forward(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return compiled(*(inputs[n] for n in names))

    return forward


def _masked_difference(probe: Probe, eager: torch.Tensor, compiled: torch.Tensor) -> float:
    """Per token outputs are compared where the mask holds a token (padding is free to differ)."""
    if eager.shape != compiled.shape:
        return float("inf")
    difference = (eager - compiled).abs()
    if difference.dim() == 3:
        mask = probe.check[probe.names.index("attention_mask")]
        difference = difference * mask.unsqueeze(-1)
    return float(difference.max())
