"""Reports on a held-out split: per-class precision/recall/F1 (classification), MAE / RMSE / R²
(regression), one of those per task (multi-task) and retrieval top-k (alignment), as JSON-able
dicts, printable tables and ``report.json`` files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPORT_FILE = "report.json"


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support; macro and support-weighted averages; accuracy.

    A class never predicted has precision 0; one never present has recall 0 (and support 0,
    so it counts in the macro average but not in the weighted one).
    """
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({y for y in [*y_true, *y_pred] if y not in index})
    if unknown:
        raise ValueError(f"labels not in the label list: {unknown}")
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)  # rows: truth, cols: prediction
    for truth, pred in zip(y_true, y_pred, strict=True):
        confusion[index[truth], index[pred]] += 1
    true_pos = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    total = int(support.sum())
    weights = support / total if total else np.zeros_like(true_pos)
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "task": "classification",
        "classes": per_class,
        "macro_avg": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "support": total,
        },
        "weighted_avg": {
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
            "support": total,
        },
        "accuracy": float(true_pos.sum() / total) if total else 0.0,
        "support": total,
        "labels": list(labels),
        "confusion_matrix": confusion.tolist(),
    }


def format_classification_report(report: dict[str, Any]) -> str:
    width = max(12, *(len(label) for label in report["classes"]))
    lines = [f"{'':>{width}}  precision     recall         f1    support", ""]
    for label, row in report["classes"].items():
        lines.append(
            f"{label:>{width}}  {row['precision']:9.3f}  {row['recall']:9.3f}  {row['f1']:9.3f}  {row['support']:9d}"
        )
    lines.append("")
    lines.append(f"{'accuracy':>{width}}  {'':9}  {'':9}  {report['accuracy']:9.3f}  {report['support']:9d}")
    for name in ("macro_avg", "weighted_avg"):
        row = report[name]
        label = name.replace("_", " ")
        lines.append(
            f"{label:>{width}}  {row['precision']:9.3f}  {row['recall']:9.3f}  {row['f1']:9.3f}  {row['support']:9d}"
        )
    return "\n".join(lines)


def retrieval_report(
    text_vectors: np.ndarray, image_vectors: np.ndarray, labels: Sequence[str | None] | None = None
) -> dict[str, Any]:
    """Cross-modal retrieval among N paired items (row i's text describes image i).

    A retrieved text counts as correct for an image when it is the image's own caption or,
    when labels are given, any caption with the image's label (captions of one class are
    interchangeable). ``chance_top1`` is what a random ranking would score.
    """
    n = len(text_vectors)
    if labels is not None and all(label is not None for label in labels):
        keys = np.asarray(labels, dtype=object)
        relevant = keys[:, None] == keys[None, :]
    else:
        relevant = np.eye(n, dtype=bool)
    scores = image_vectors @ text_vectors.T  # [images, texts]
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_relevant = np.take_along_axis(relevant, order, axis=1)
    order_t = np.argsort(-scores.T, axis=1, kind="stable")
    ranked_relevant_t = np.take_along_axis(relevant.T, order_t, axis=1)
    return {
        "task": "alignment",
        "support": n,
        "image_to_text_top1": float(ranked_relevant[:, 0].mean()),
        "image_to_text_top5": float(ranked_relevant[:, :5].any(axis=1).mean()),
        "text_to_image_top1": float(ranked_relevant_t[:, 0].mean()),
        "chance_top1": float(relevant.sum(axis=1).mean() / n),
    }


def format_retrieval_report(report: dict[str, Any]) -> str:
    keys = ("image_to_text_top1", "image_to_text_top5", "text_to_image_top1", "chance_top1")
    return (
        "\n".join(f"{key:>20}  {report[key]:.3f}" for key in keys) + f"\n{'support':>20}  {report['support']}"
    )


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R² (None when the truth is constant: R² is undefined) and the row count."""
    y_true, y_pred = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    n = len(y_true)
    if n == 0:
        return {"mae": 0.0, "rmse": 0.0, "r2": None, "support": 0}
    error = y_pred - y_true
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "r2": 1.0 - float(np.sum(error**2)) / total if total > 0 else None,
        "support": n,
    }


def regression_report(y_true: Mapping[str, np.ndarray], y_pred: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per target MAE / RMSE / R²; the overall figures are their means over the targets."""
    targets = {name: regression_metrics(y_true[name], y_pred[name]) for name in y_true}
    r2 = [t["r2"] for t in targets.values() if t["r2"] is not None]
    return {
        "task": "regression",
        "targets": targets,
        "mae": float(np.mean([t["mae"] for t in targets.values()])) if targets else 0.0,
        "rmse": float(np.mean([t["rmse"] for t in targets.values()])) if targets else 0.0,
        "r2": float(np.mean(r2)) if r2 else None,
        "support": max((t["support"] for t in targets.values()), default=0),
    }


def _r2(value: float | None) -> str:
    return f"{value:9.3f}" if value is not None else f"{'n/a':>9}"


def format_regression_report(report: dict[str, Any]) -> str:
    width = max(12, *(len(name) for name in report["targets"]))
    lines = [f"{'':>{width}}        mae       rmse         r2    support", ""]
    for name, row in report["targets"].items():
        lines.append(
            f"{name:>{width}}  {row['mae']:9.3f}  {row['rmse']:9.3f}  {_r2(row['r2'])}  {row['support']:9d}"
        )
    if len(report["targets"]) > 1:
        lines.append("")
        lines.append(
            f"{'mean':>{width}}  {report['mae']:9.3f}  {report['rmse']:9.3f}  {_r2(report['r2'])}  {report['support']:9d}"
        )
    return "\n".join(lines)


def multitask_report(tasks: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """One report per task (classification or regression), each on the rows with its label."""
    return {"task": "multitask", "tasks": dict(tasks)}


def format_report(report: dict[str, Any]) -> str:
    if report["task"] == "alignment":
        return format_retrieval_report(report)
    if report["task"] == "regression":
        return format_regression_report(report)
    if report["task"] == "multitask":
        return "\n\n".join(
            f"task {name} ({part['task']}):\n{format_report(part)}" for name, part in report["tasks"].items()
        )
    return format_classification_report(report)


def write_report(head_dir: Path, report: dict[str, Any]) -> Path:
    path = Path(head_dir) / REPORT_FILE
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path
