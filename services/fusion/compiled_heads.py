"""A decision head's forward pass on a CPU runtime (services/common/compiled.py): onnxruntime by
default, the eager module whenever in doubt.

A head is small (concat_mlp on MiniLM and EfficientNet-Lite0 is ~0.56 M parameters), so eager
PyTorch's per-op dispatch is most of its cost, and in the service it runs cold, once per request
between encoder calls. Measured on one thread, 1 row, raw outputs: eager 0.33-0.40 ms warm and
0.75 cold (caches flushed between calls), TorchScript 0.16 / 0.48-0.52, onnxruntime 0.07 / 0.24.

The compiled graph takes each input modality's rows and mask, in the manifest's order; it is
checked against the eager module on rows with every modality and rows with only the first or
only the last, so a strategy whose masking the trace cannot follow gives way to the next runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from services.common.compiled import Probe, compile_positional

Tensors = Mapping[str, torch.Tensor]
Decision = Callable[[Tensors, Tensors], torch.Tensor]


class _Positional(torch.nn.Module):
    """module(inputs, masks) with its dicts spread out: every modality's rows, then every mask."""

    def __init__(self, module: torch.nn.Module, modalities: Sequence[str]) -> None:
        super().__init__()
        self.module = module
        self.modalities = tuple(modalities)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        count = len(self.modalities)
        inputs = dict(zip(self.modalities, tensors[:count], strict=True))
        masks = dict(zip(self.modalities, tensors[count:], strict=True))
        return self.module(inputs, masks)


def compiled_decision(
    module: torch.nn.Module, input_dims: Mapping[str, int], runtime: str, description: str
) -> Decision | None:
    """``module(inputs, masks) -> raw outputs`` on ``runtime`` (or the next one down that compiles
    and agrees); None to stay eager. ``input_dims``: the head's inputs, in order, and widths."""
    modalities = tuple(input_dims)
    names = (*modalities, *(f"{m}_mask" for m in modalities))

    def probe() -> Probe:
        generator = torch.Generator().manual_seed(0)

        def batch(rows: Sequence[Sequence[bool]]) -> tuple[torch.Tensor, ...]:
            values = tuple(torch.randn(len(rows), input_dims[m], generator=generator) for m in modalities)
            masks = tuple(torch.tensor([row[i] for row in rows]) for i in range(len(modalities)))
            return values + masks

        every = [True] * len(modalities)
        first = [i == 0 for i in range(len(modalities))]
        last = [i == len(modalities) - 1 for i in range(len(modalities))]
        return Probe(
            names=names,
            example=batch([every, last]),
            check=batch([every, first, last]),
            dynamic_axes={name: {0: "batch"} for name in names},
        )

    compiled = compile_positional(_Positional(module, modalities).eval(), probe, runtime, description)
    if compiled is None:
        return None

    def decision(inputs: Tensors, masks: Tensors) -> torch.Tensor:
        return compiled(*(inputs[m] for m in modalities), *(masks[m] for m in modalities))

    return decision
