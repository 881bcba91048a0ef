"""A head's outputs: what each column of its decision layer means, and how raw columns become answers.

A fusion head ends in one linear layer whose columns are split among its outputs, in manifest
order (separate linear read-outs over a shared trunk are exactly one linear layer with their
columns side by side). A classification output takes ``len(labels)`` columns of logits,
divided by a fitted temperature before the softmax; a regression output takes one column,
trained on the standardised target and de-standardised here as ``raw * std + mean``.

Temperatures are fitted on the validation split per case: ``temperature`` for rows with every
modality the head reads, ``missing_temperatures[m]`` for rows without modality ``m`` (fitted on
validation rows with ``m`` masked). A head that learned nothing it can use from the text alone
thus answers a text-only row with the low confidence its validation accuracy there deserves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.fusion.modalities import NAMES as MODALITY_NAMES

CLASSIFICATION, REGRESSION = "classification", "regression"
OUTPUT_KINDS = (CLASSIFICATION, REGRESSION)
OUTPUT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The one output of a single-task classification head (format 1 heads have exactly this).
DEFAULT_CLASSIFICATION_OUTPUT = "label"


@dataclass(frozen=True)
class OutputSpec:
    """One output of a head; ``labels`` and ``temperature`` for classification, ``mean``/``std`` for regression."""

    name: str
    kind: str
    labels: tuple[str, ...] = ()
    temperature: float = 1.0
    missing_temperatures: Mapping[str, float] = field(default_factory=dict)  # missing modality -> T
    mean: float = 0.0
    std: float = 1.0

    @property
    def width(self) -> int:
        return len(self.labels) if self.kind == CLASSIFICATION else 1

    def temperature_for(self, missing: str | None) -> float:
        """The temperature of rows lacking modality ``missing`` (None: rows with all of them)."""
        return self.missing_temperatures.get(missing, self.temperature) if missing else self.temperature

    def to_json(self) -> dict[str, Any]:
        if self.kind == REGRESSION:
            return {"name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std}
        data = {
            "name": self.name,
            "kind": self.kind,
            "labels": list(self.labels),
            "temperature": self.temperature,
        }
        if self.missing_temperatures:
            data["missing_temperatures"] = dict(self.missing_temperatures)
        return data


def task_of(outputs: Sequence[OutputSpec]) -> str:
    """The head's task as its outputs define it: one classification output, only regression, or a mix."""
    if len(outputs) == 1 and outputs[0].kind == CLASSIFICATION:
        return CLASSIFICATION
    if outputs and all(o.kind == REGRESSION for o in outputs):
        return REGRESSION
    return "multitask"


def parse_output(data: Any, index: int) -> OutputSpec:
    """Validates one entry of a manifest's ``outputs``; raises ValueError naming the problem."""
    where = f"outputs[{index}]"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object")
    name, kind = data.get("name"), data.get("kind")
    if not isinstance(name, str) or not OUTPUT_NAME_RE.match(name):
        raise ValueError(f"{where}.name {name!r} is not a valid name (letters, digits, '.', '_', '-')")
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"{where}.kind must be one of {', '.join(OUTPUT_KINDS)}, got {kind!r}")
    if kind == CLASSIFICATION:
        labels = data.get("labels")
        if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
            raise ValueError(f"{where}.labels must be a list of non-empty strings")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"{where}.labels must hold at least 2 unique labels, got {labels!r}")
        temperature = _number(data.get("temperature", 1.0), f"{where}.temperature")
        if temperature <= 0:
            raise ValueError(f"{where}.temperature must be positive, got {temperature}")
        missing = data.get("missing_temperatures", {})
        if not isinstance(missing, dict) or set(missing) - set(MODALITY_NAMES):
            raise ValueError(
                f"{where}.missing_temperatures must map modalities ({', '.join(MODALITY_NAMES)}) to temperatures"
            )
        for modality, value in missing.items():
            if _number(value, f"{where}.missing_temperatures.{modality}") <= 0:
                raise ValueError(f"{where}.missing_temperatures.{modality} must be positive, got {value}")
        return OutputSpec(
            name,
            kind,
            tuple(labels),
            temperature=temperature,
            missing_temperatures={m: float(v) for m, v in missing.items()},
        )
    mean = _number(data.get("mean"), f"{where}.mean")
    std = _number(data.get("std"), f"{where}.std")
    if std <= 0:
        raise ValueError(f"{where}.std must be positive, got {std}")
    return OutputSpec(name, kind, mean=mean, std=std)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Outputs:
    """A head's answers for N rows: class probabilities and de-standardised values, by output name."""

    probabilities: Mapping[str, np.ndarray] = field(default_factory=dict)  # [N, len(labels)] float32
    values: Mapping[str, np.ndarray] = field(default_factory=dict)  # [N] float64, in target units
    attention: np.ndarray | None = None  # [N, 1 + M]: cls, then each modality (explain; attention heads)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def row_temperatures(
    spec: OutputSpec, n: int, masks: Mapping[str, np.ndarray | None] | None = None
) -> np.ndarray:
    """[N, 1] temperature of each row: by which modality (if any) it lacks. A row lacking several
    takes the highest of their temperatures (the least confident answer; a text + image head
    never answers a row lacking both)."""
    temperature = np.full((n, 1), spec.temperature)
    chosen = np.zeros((n, 1), dtype=bool)
    for modality, mask in (masks or {}).items():
        if mask is None or modality not in spec.missing_temperatures:
            continue
        lacking = ~np.asarray(mask, dtype=bool)[:, None]
        value = spec.missing_temperatures[modality]
        temperature = np.where(lacking & (~chosen | (temperature < value)), value, temperature)
        chosen |= lacking
    return temperature


def split_outputs(
    raw: np.ndarray, specs: Sequence[OutputSpec], masks: Mapping[str, np.ndarray | None] | None = None
) -> Outputs:
    """Raw decision-layer columns [N, sum of widths] -> probabilities and values per output.

    The masks (modality -> [N] bool, True: the row has it) pick each row's temperature; without
    them every row is treated as having all its modalities.
    """
    probabilities, values = {}, {}
    start = 0
    for spec in specs:
        block = raw[:, start : start + spec.width]
        start += spec.width
        if spec.kind == CLASSIFICATION:
            temperature = row_temperatures(spec, len(raw), masks)
            probabilities[spec.name] = softmax(block.astype(np.float64) / temperature).astype(np.float32)
        else:
            values[spec.name] = block[:, 0].astype(np.float64) * spec.std + spec.mean
    if start != raw.shape[1]:
        raise ValueError(f"the outputs take {start} columns but the decision layer has {raw.shape[1]}")
    return Outputs(probabilities, values)
