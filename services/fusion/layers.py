"""Small torch pieces every fusion strategy shares: masking absent rows, normalising an input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from services.fusion.modalities import MODALITIES

Tensors = dict[str, torch.Tensor]


def masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zeroes rows whose mask is False (also hides NaN/garbage a caller left in absent rows)."""
    return torch.where(mask.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def input_norm(modality: str, dim: int) -> nn.Module:
    """LayerNorm of an encoder's embedding; nothing for standardised features (``Modality.layer_norm``).

    nn.Identity has no parameters, so a Sequential starting with it keeps the state-dict keys
    (``proj_x.1.weight``) of one starting with a LayerNorm.
    """
    return nn.LayerNorm(dim) if MODALITIES[modality].layer_norm else nn.Identity()


def any_present(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """[N] bool: the rows that carry at least one of the modalities."""
    stacked = torch.stack(list(masks.values()), dim=-1)
    return stacked.any(dim=-1)


def as_inputs(args: Sequence) -> tuple[Tensors, Tensors]:
    """``(inputs, masks)`` dicts, from themselves or from the text + image shorthand
    ``(text, image, text_mask, image_mask)``."""
    if len(args) == 2:
        return dict(args[0]), dict(args[1])
    if len(args) == 4:
        text, image, text_mask, image_mask = args
        return {"text": text, "image": image}, {"text": text_mask, "image": image_mask}
    raise TypeError("pass (inputs, masks) dicts or (text, image, text_mask, image_mask)")
