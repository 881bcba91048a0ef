"""Tabular ``features``: a head's feature schema (ordered names with training statistics), how a
request's named numbers become the standardised vector the head reads, and how training fits it.

A head reading ``features`` records in its manifest::

    "features": {"names": ["age", "income"], "mean": [41.2, 5200.0], "std": [12.1, 1800.0]}

Serving builds each row's vector in ``names`` order and standardises it as ``(x - mean) / std``,
exactly as training did with the training split's statistics. A row must give every name and
nothing else, each a finite number; otherwise it is refused (InvalidInput) naming the feature.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.common.errors import InvalidInput

FEATURE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_FEATURES = 4096
# A feature constant over the training rows standardises with std 1 (it carries nothing anyway).
MIN_STD = 1e-12


@dataclass(frozen=True)
class FeatureSchema:
    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def dim(self) -> int:
        return len(self.names)

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "std": list(self.std)}

    def vector(self, values: Mapping[str, Any], where: str) -> np.ndarray:
        """One row's named numbers -> its raw vector in schema order; InvalidInput naming the
        feature that is missing, unknown, not a number, NaN or infinite."""
        unknown = sorted(set(values) - set(self.names))
        if unknown:
            raise InvalidInput(
                f"{where}: unknown feature {unknown[0]!r}; this head reads {', '.join(self.names)}"
            )
        vector = np.empty(self.dim, dtype=np.float64)
        for index, name in enumerate(self.names):
            if name not in values:
                raise InvalidInput(
                    f"{where}: feature {name!r} is missing; this head reads {', '.join(self.names)}"
                )
            value = values[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"{where}: feature {name!r} must be a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise InvalidInput(f"{where}: feature {name!r} is {value}; features must be finite numbers")
            vector[index] = value
        return vector

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """Raw vectors [N, dim] -> what the head reads: (x - mean) / std, float32."""
        return ((raw - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


def fit_schema(names: Sequence[str], rows: np.ndarray) -> FeatureSchema:
    """The schema of ``names`` with the mean and standard deviation of ``rows`` [N, len(names)]
    (the training split's rows that carry features)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != len(names) or len(rows) == 0:
        raise ValueError(f"need at least one row of {len(names)} features to fit their statistics")
    std = rows.std(axis=0)
    return FeatureSchema(
        tuple(names),
        tuple(float(v) for v in rows.mean(axis=0)),
        tuple(float(v) if v > MIN_STD else 1.0 for v in std),
    )


def parse_schema(data: Any, dim: int | None) -> FeatureSchema:
    """A manifest's ``features`` entry, checked (ValueError naming the problem)."""
    if not isinstance(data, dict):
        raise ValueError("features must be an object with names, mean and std")
    names, mean, std = data.get("names"), data.get("mean"), data.get("std")
    if not isinstance(names, list) or not names or len(names) > MAX_FEATURES:
        raise ValueError(f"features.names must be a list of 1 to {MAX_FEATURES} names")
    for name in names:
        if not isinstance(name, str) or not FEATURE_NAME_RE.match(name):
            raise ValueError(f"features.names: {name!r} is not a valid name (letters, digits, '.', '_', '-')")
    if len(set(names)) != len(names):
        raise ValueError("features.names must be unique")
    for key, values in (("mean", mean), ("std", std)):
        if not isinstance(values, list) or len(values) != len(names):
            raise ValueError(f"features.{key} must list one number per name")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"features.{key} must hold finite numbers, got {value!r}")
    if any(value <= 0 for value in std):
        raise ValueError("features.std must be positive")
    if dim is not None and dim != len(names):
        raise ValueError(f"input_dims.features is {dim} but features.names lists {len(names)}")
    return FeatureSchema(tuple(names), tuple(float(v) for v in mean), tuple(float(v) for v in std))
