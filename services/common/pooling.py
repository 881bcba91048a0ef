"""Unit vectors and their means: how an item cut into parts (a clip into audio segments, a video
into frames) gets one embedding, the same way in every service."""

from __future__ import annotations

import numpy as np


def l2_normalised(rows: np.ndarray) -> np.ndarray:
    """float32 rows (or one vector) scaled to unit length; a zero row stays zero."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def mean_pooled(rows: np.ndarray) -> np.ndarray:
    """One embedding for a set of rows: their mean, L2-normalised."""
    return l2_normalised(np.asarray(rows, dtype=np.float32).mean(axis=0))
