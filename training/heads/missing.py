"""How a trained head answers when a modality is missing, measured on its test split.

The test rows that carry every modality of the head are scored as they are and with each
modality masked in turn, through the head's own missing-modality rule. For a text + image head
the cases are ``both``, ``text_only`` (image masked) and ``image_only`` (text masked); for more
modalities ``all`` and ``without_<modality>`` (``case_names``). Classification outputs get accuracy, NLL and mean confidence (the
probability of the predicted class) with the temperature fitted for that case; regression
outputs get MAE, RMSE and R². An honest head is as unsure without a modality as its accuracy
then deserves.

A modality's *contribution* is how much the head's primary metric (accuracy; R² for regression;
their mean over a multi-task head's outputs) drops when that modality is masked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from services.fusion.outputs import CLASSIFICATION
from training.heads.calibration import log_softmax
from training.heads.tasks import Task, column_slices
from training.reports import regression_metrics

# (rows, {modality: kept [len(rows)] bool}) -> raw decision-layer outputs [len(rows), columns]
RawOutputs = Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]


def case_names(modalities: Sequence[str]) -> dict[str, str | None]:
    """Case name -> the modality it masks (None: the case with all of them), in report order."""
    modalities = tuple(modalities)
    if len(modalities) == 2:
        first, second = modalities
        return {"both": None, f"{first}_only": second, f"{second}_only": first}
    return {"all": None, **{f"without_{m}": m for m in modalities}}


def case_title(case: str, modalities: Sequence[str]) -> str:
    """How a summary names a case: "text + image", "image masked"."""
    masked = case_names(modalities)[case]
    return " + ".join(modalities) if masked is None else f"{masked} masked"


def _case_metrics(
    task: Task, raw: np.ndarray, rows: np.ndarray, columns: slice, missing: str | None
) -> dict[str, Any]:
    keep = task.present(rows)
    position = np.searchsorted(rows, keep)
    if task.kind == CLASSIFICATION:
        truth = task.targets[keep]
        temperature = task.spec.temperature_for(missing)
        log_probs = log_softmax(raw[position, columns].astype(np.float64) / temperature)
        return {
            "accuracy": float(np.mean(log_probs.argmax(axis=1) == truth)) if len(truth) else 0.0,
            "nll": float(0.0 - log_probs[np.arange(len(truth)), truth].mean()) if len(truth) else 0.0,
            "mean_confidence": float(np.exp(log_probs.max(axis=1)).mean()) if len(truth) else 0.0,
            "support": len(truth),
        }
    predicted = raw[position, columns.start].astype(np.float64) * task.spec.std + task.spec.mean
    return regression_metrics(task.targets[keep], predicted)


def primary(task: Task, metrics: dict[str, Any]) -> float:
    if task.kind == CLASSIFICATION:
        return float(metrics["accuracy"])
    return float(metrics["r2"]) if metrics["r2"] is not None else 0.0


def masked_modality_report(
    raw_outputs: RawOutputs,
    tasks: Sequence[Task],
    rows: np.ndarray,
    complete: np.ndarray,
    modalities: Sequence[str] = ("text", "image"),
) -> dict[str, Any]:
    """Per case, per output metrics on the rows of ``rows`` that have every modality (``complete``)."""
    rows = np.sort(rows[complete[rows]])
    slices = column_slices([t.spec for t in tasks])
    cases: dict[str, Any] = {}
    for case, missing in case_names(modalities).items():
        if len(rows) == 0:
            break
        raw = raw_outputs(rows, {m: np.full(len(rows), m != missing) for m in modalities})
        cases[case] = {
            task.name: _case_metrics(task, raw, rows, columns, missing)
            for task, columns in zip(tasks, slices, strict=True)
        }
    return {"rows": len(rows), "split": "test", "modalities": list(modalities), "cases": cases}


def modality_contribution(report: dict[str, Any], tasks: Sequence[Task]) -> dict[str, Any]:
    """How much the primary metric drops when each modality is masked (mean over the outputs)."""
    cases = report["cases"]
    if not cases:
        return {}
    kinds = {t.kind for t in tasks}
    metric = (
        "accuracy" if kinds == {CLASSIFICATION} else "r2" if CLASSIFICATION not in kinds else "accuracy / r2"
    )

    def score(case: str) -> float:
        return float(np.mean([primary(t, cases[case][t.name]) for t in tasks]))

    names = case_names(report["modalities"])
    complete = next(case for case, masked in names.items() if masked is None)
    return {
        "metric": metric,
        **{masked: score(complete) - score(case) for case, masked in names.items() if masked is not None},
    }
