"""What a decision head learns: its tasks (outputs), their targets, losses and validation scores.

A task is one output of the head (``services.fusion.outputs.OutputSpec``): a classification
over labels or one regression target. Targets are kept per row with missing ones marked (class
-1, value NaN), so a row without one task's label still trains the others; each task's loss is
the mean over the rows of the batch that have its label, and the total is their weighted sum.

Regression targets are standardised with the training split's mean and standard deviation
(stored in the manifest, undone at serving), so MSE / Huber losses and RMSE-based early
stopping mean the same for a price in cents and a score in [0, 1].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from services.fusion.outputs import (
    CLASSIFICATION,
    DEFAULT_CLASSIFICATION_OUTPUT,
    OUTPUT_NAME_RE,
    REGRESSION,
    OutputSpec,
)
from training.data import EmbeddedSet
from training.reports import regression_metrics

SELECT_METRICS = ("auto", "accuracy", "macro_f1", "loss", "rmse", "mae", "r2")
LOSSES = ("mse", "huber")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class Task:
    """One output with its per-row targets: class indices (-1 missing) or raw values (NaN missing)."""

    spec: OutputSpec
    targets: np.ndarray
    weight: float = 1.0
    class_weights: np.ndarray | None = None  # classification with --class-weight balanced

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def present(self, rows: np.ndarray) -> np.ndarray:
        """The rows among ``rows`` that have this task's label."""
        values = self.targets[rows]
        return rows[values >= 0] if self.kind == CLASSIFICATION else rows[np.isfinite(values)]


def classification_task(labels: Sequence[str | None], name: str = DEFAULT_CLASSIFICATION_OUTPUT) -> Task:
    """The one task of a classification head: its labels, sorted."""
    classes = tuple(sorted({label for label in labels if label is not None}))
    if len(classes) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {list(classes)}")
    index = {label: i for i, label in enumerate(classes)}
    targets = np.array([index[label] if label is not None else -1 for label in labels], dtype=np.int64)
    return Task(OutputSpec(name, CLASSIFICATION, classes), targets)


def _kind(name: str, values: list[Any], declared: str | None) -> str:
    numbers = all(isinstance(v, float) for v in values)
    if declared == REGRESSION and not numbers:
        raise ValueError(f"task {name!r} is declared regression but has non-numeric labels")
    if declared is not None:
        return declared
    if numbers:
        return REGRESSION
    if any(isinstance(v, float) for v in values):
        raise ValueError(
            f"task {name!r} mixes numbers and strings; declare it with --task-kind {name}=classification"
        )
    return CLASSIFICATION


def target_tasks(
    data: EmbeddedSet,
    kinds: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
    only_regression: bool = False,
) -> list[Task]:
    """The tasks named in the rows' ``targets`` (and ``label``, as task ``label``), in sorted order.

    A task whose values are all numbers is a regression unless ``kinds`` says classification
    (class ids written as numbers); strings make a classification.
    """
    kinds, weights = dict(kinds or {}), dict(weights or {})
    columns: dict[str, list[Any]] = {}
    rows = data.targets or ({},) * len(data)
    for i, row in enumerate(rows):
        for name, value in row.items():
            columns.setdefault(name, [None] * len(data))[i] = value
    if any(label is not None for label in data.labels) and not only_regression:
        if DEFAULT_CLASSIFICATION_OUTPUT in columns:
            raise ValueError(f"rows have both 'label' and a task named {DEFAULT_CLASSIFICATION_OUTPUT!r}")
        columns[DEFAULT_CLASSIFICATION_OUTPUT] = list(data.labels)
        kinds.setdefault(DEFAULT_CLASSIFICATION_OUTPUT, CLASSIFICATION)
    if not columns:
        raise ValueError("no row has a target (target, targets or labels)")
    unknown = sorted((set(kinds) | set(weights)) - set(columns))
    if unknown:
        raise ValueError(
            f"--task-kind / --task-weight name tasks the data lacks: {unknown}; tasks: {sorted(columns)}"
        )
    tasks = []
    for name in sorted(columns):
        if not OUTPUT_NAME_RE.match(name):
            raise ValueError(f"task name {name!r} is not valid (letters, digits, '.', '_', '-'; at most 64)")
        values = columns[name]
        given = [v for v in values if v is not None]
        kind = _kind(name, given, kinds.get(name))
        if only_regression and kind != REGRESSION:
            raise ValueError(f"target {name!r} is not numeric; a regression head needs numbers")
        if kind == CLASSIFICATION:
            texts = [None if v is None else (number_text(v) if isinstance(v, float) else v) for v in values]
            task = classification_task(texts, name)
        else:
            targets = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            task = Task(OutputSpec(name, REGRESSION), targets)
        weight = float(weights.get(name, 1.0))
        if not weight >= 0:
            raise ValueError(f"task weight of {name!r} must be a non-negative number, got {weight}")
        tasks.append(dataclasses.replace(task, weight=weight))
    return tasks


def number_text(value: float) -> str:
    """A numeric class id as the data wrote it: 1.0 -> "1", 2.5 -> "2.5"."""
    return str(int(value)) if value == int(value) else str(value)


def fit_to_training_rows(tasks: Sequence[Task], train: np.ndarray, class_weight: str) -> list[Task]:
    """Standardisation (regression) and class weights (classification) from the training rows only."""
    fitted = []
    for task in tasks:
        present = task.present(train)
        if len(present) == 0:
            raise ValueError(f"task {task.name!r} has no labelled row in the training split")
        if task.kind == REGRESSION:
            values = task.targets[present]
            std = float(values.std())
            spec = dataclasses.replace(task.spec, mean=float(values.mean()), std=std if std > 1e-12 else 1.0)
            fitted.append(dataclasses.replace(task, spec=spec))
            continue
        weights = None
        if class_weight == "balanced":
            counts = np.bincount(task.targets[present], minlength=len(task.spec.labels)).astype(np.float64)
            # sklearn's "balanced": n / (k * count); a class absent from training keeps weight 1.
            weights = np.where(counts > 0, len(present) / (len(counts) * np.maximum(counts, 1)), 1.0)
        fitted.append(dataclasses.replace(task, class_weights=weights))
    return fitted


def column_slices(specs: Sequence[OutputSpec]) -> list[slice]:
    slices, start = [], 0
    for spec in specs:
        slices.append(slice(start, start + spec.width))
        start += spec.width
    return slices


class TaskLoss:
    """The weighted sum of each task's mean loss over the rows that have its label."""

    def __init__(self, tasks: Sequence[Task], regression_loss: str = "mse") -> None:
        if regression_loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {regression_loss!r}")
        self.tasks = list(tasks)
        self.slices = column_slices([t.spec for t in tasks])
        self.regression_loss = regression_loss
        self._targets = []
        for task in tasks:
            if task.kind == CLASSIFICATION:
                self._targets.append(torch.from_numpy(task.targets))
            else:
                standardised = (task.targets - task.spec.mean) / task.spec.std
                self._targets.append(torch.from_numpy(standardised.astype(np.float32)))
        self._class_weights = [
            None if t.class_weights is None else torch.from_numpy(t.class_weights.astype(np.float32))
            for t in tasks
        ]

    def __call__(self, raw: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        total = raw.new_zeros(())
        parts: dict[str, float] = {}
        for task, columns, targets, weights in zip(
            self.tasks, self.slices, self._targets, self._class_weights, strict=True
        ):
            y = targets[rows]
            if task.kind == CLASSIFICATION:
                keep = y >= 0
                if not keep.any():
                    continue
                loss = F.cross_entropy(raw[keep, columns], y[keep], weight=weights)
            else:
                keep = torch.isfinite(y)
                if not keep.any():
                    continue
                predicted = raw[keep, columns.start]
                if self.regression_loss == "huber":
                    loss = F.huber_loss(predicted, y[keep], delta=1.0)
                else:
                    loss = F.mse_loss(predicted, y[keep])
            parts[task.name] = float(loss.detach())
            total = total + task.weight * loss
        return total, parts


def task_metrics(task: Task, raw: np.ndarray, rows: np.ndarray, columns: slice) -> dict[str, Any]:
    """Validation / test metrics of one task on the rows that have its label.

    Classification: accuracy, macro F1, NLL (with the spec's temperature). Regression: MAE,
    RMSE and R² in target units, plus RMSE in standard deviations (``rmse_std``).
    """
    present = task.present(rows)
    if task.kind == REGRESSION:
        predicted = raw[present, columns.start].astype(np.float64) * task.spec.std + task.spec.mean
        metrics = regression_metrics(task.targets[present], predicted)
        metrics["rmse_std"] = metrics["rmse"] / task.spec.std
        return metrics
    logits = raw[present, columns].astype(np.float64) / task.spec.temperature
    truth = task.targets[present]
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    predicted = logits.argmax(axis=1)
    k = len(task.spec.labels)
    f1 = []
    for c in range(k):
        tp = float(np.sum((predicted == c) & (truth == c)))
        denominator = float(np.sum(predicted == c) + np.sum(truth == c))
        f1.append(2 * tp / denominator if denominator else 0.0)
    return {
        "accuracy": float(np.mean(predicted == truth)) if len(truth) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "nll": float(0.0 - log_probs[np.arange(len(truth)), truth].mean()) if len(truth) else 0.0,
        "support": len(truth),
    }


def task_score(task: Task, metrics: Mapping[str, Any], select_metric: str) -> float:
    """Higher is better: the selected metric of one task (regression errors in standard deviations)."""
    if task.kind == CLASSIFICATION:
        return float(metrics["macro_f1" if select_metric == "macro_f1" else "accuracy"])
    if select_metric == "r2":
        return float(metrics["r2"] if metrics["r2"] is not None else 0.0)
    if select_metric == "mae":
        return -float(metrics["mae"]) / task.spec.std
    return -float(metrics["rmse_std"])


def selection_score(
    tasks: Sequence[Task], per_task: Mapping[str, Mapping[str, Any]], loss: float, select_metric: str
) -> float:
    """The one number early stopping maximises: the task-weighted mean of the tasks' scores, or -loss."""
    if select_metric == "loss":
        return -loss
    total_weight = sum(t.weight for t in tasks) or 1.0
    return sum(t.weight * task_score(t, per_task[t.name], select_metric) for t in tasks) / total_weight


def check_select_metric(select_metric: str, tasks: Sequence[Task]) -> None:
    if select_metric not in SELECT_METRICS:
        raise ValueError(f"select_metric must be one of {', '.join(SELECT_METRICS)}, got {select_metric!r}")
    kinds = {t.kind for t in tasks}
    fits = {
        "accuracy": CLASSIFICATION,
        "macro_f1": CLASSIFICATION,
        "rmse": REGRESSION,
        "mae": REGRESSION,
        "r2": REGRESSION,
    }
    if select_metric in fits and fits[select_metric] not in kinds:
        raise ValueError(
            f"select_metric {select_metric!r} needs a {fits[select_metric]} task; this head has none"
        )
