"""The torch steps every vision backend shares: batch in, normalised vectors and top-k labels out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from services.common.compiled import Positional, Probe, compile_positional
from services.vision.backend import LabelScores


def to_input(batch: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(N, 3, H, W) float32 numpy -> a tensor on the model's device and dtype."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a batch of shape (N, 3, H, W), got {batch.shape}")
    return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(device=device, dtype=dtype)


def compiled_pixels_forward(
    module: torch.nn.Module, image_hw: tuple[int, int], runtime: str, description: str
) -> Positional | None:
    """``module`` (pixels (N, 3, H, W) -> (N, D)) on a CPU runtime (services/common/compiled.py),
    checked on random pixels at another batch size; None to stay eager."""

    def probe() -> Probe:
        generator = torch.Generator().manual_seed(0)
        return Probe(
            names=("pixels",),
            example=(torch.randn(2, 3, *image_hw, generator=generator),),
            check=(torch.randn(3, 3, *image_hw, generator=generator),),
            dynamic_axes={"pixels": {0: "batch"}},
        )

    return compile_positional(module.eval(), probe, runtime, description)


def normalised_rows(vectors: torch.Tensor) -> np.ndarray:
    """L2-normalised float32 rows on the CPU (normalised in float32, whatever the model dtype)."""
    return torch.nn.functional.normalize(vectors.float(), p=2, dim=1).cpu().numpy()


def top_labels(
    logits: torch.Tensor, labels: Sequence[str], top_k: int, multi_label: bool = False
) -> list[LabelScores]:
    """Best ``top_k`` labels per row: softmax probabilities, or sigmoids for multi-label heads."""
    logits = logits.float()
    scores = torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)
    k = max(1, min(top_k, scores.shape[-1]))
    values, indices = scores.topk(k, dim=-1)
    return [
        [(labels[i], float(v)) for v, i in zip(row_values.tolist(), row_indices.tolist(), strict=True)]
        for row_values, row_indices in zip(values, indices, strict=True)
    ]


def device_name(device: torch.device) -> str:
    """'cpu' or 'cuda:N' (with the index even when the setting said just 'cuda')."""
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)
