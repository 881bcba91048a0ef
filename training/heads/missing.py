"""How a trained head answers when a modality is missing, measured on its test split.

The test rows that carry both modalities are scored three times: as they are (``both``), with
the image masked (``text_only``) and with the text masked (``image_only``), through the head's
own missing-modality rule. Classification outputs get accuracy, NLL and mean confidence (the
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

# (rows, text_mask, image_mask) -> raw decision-layer outputs [len(rows), columns]
RawOutputs = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# case -> (text kept, image kept, the missing modality)
CASES = {"both": (True, True, None), "text_only": (True, False, "image"), "image_only": (False, True, "text")}


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
    raw_outputs: RawOutputs, tasks: Sequence[Task], rows: np.ndarray, both_present: np.ndarray
) -> dict[str, Any]:
    """Per case, per output metrics on the rows of ``rows`` that have both modalities."""
    rows = np.sort(rows[both_present[rows]])
    slices = column_slices([t.spec for t in tasks])
    cases: dict[str, Any] = {}
    for case, (text, image, missing) in CASES.items():
        if len(rows) == 0:
            break
        raw = raw_outputs(rows, np.full(len(rows), text), np.full(len(rows), image))
        cases[case] = {
            task.name: _case_metrics(task, raw, rows, columns, missing)
            for task, columns in zip(tasks, slices, strict=True)
        }
    return {"rows": len(rows), "split": "test", "cases": cases}


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

    return {
        "metric": metric,
        "text": score("both") - score("image_only"),
        "image": score("both") - score("text_only"),
    }
