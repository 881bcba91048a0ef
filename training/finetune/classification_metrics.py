"""Per-class precision/recall/F1, averages and a confusion matrix, as plain dicts and text tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any


def _ratio(numerator: float, denominator: float) -> float:
    # An empty denominator scores 0, as scikit-learn's and seqeval's zero_division default does.
    return numerator / denominator if denominator else 0.0


def scores(correct: int, predicted: int, support: int) -> dict[str, float]:
    precision, recall = _ratio(correct, predicted), _ratio(correct, support)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "support": support,
        "predicted": predicted,
        "correct": correct,
    }


def averages(per_class: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Macro (unweighted mean over classes) and support-weighted means of precision/recall/F1."""
    total = sum(row["support"] for row in per_class.values())
    out = {}
    for name, weight in (
        ("macro", lambda row: 1 / len(per_class)),
        ("weighted", lambda row: _ratio(row["support"], total)),
    ):
        out[name] = {
            metric: sum(weight(row) * row[metric] for row in per_class.values()) if per_class else 0.0
            for metric in ("precision", "recall", "f1")
        }
        out[name]["support"] = total
    return out


def per_label_scores(
    true: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> dict[str, dict[str, float]]:
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true labels but {len(predicted)} predictions")
    correct = Counter(t for t, p in zip(true, predicted, strict=True) if t == p)
    support, guessed = Counter(true), Counter(predicted)
    return {label: scores(correct[label], guessed[label], support[label]) for label in labels}


def classification_report(
    true: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-class scores, accuracy, macro/weighted averages and the confusion matrix.

    ``labels`` fixes the classes and their order (default: every label seen, sorted); the
    matrix's rows are true classes and its columns predicted ones.
    """
    labels = list(labels) if labels is not None else sorted(set(true) | set(predicted))
    per_class = per_label_scores(true, predicted, labels)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for t, p in zip(true, predicted, strict=True):
        if t in index and p in index:
            matrix[index[t]][index[p]] += 1
    return {
        "per_class": per_class,
        "accuracy": _ratio(sum(t == p for t, p in zip(true, predicted, strict=True)), len(true)),
        **averages(per_class),
        "confusion_matrix": {"labels": labels, "rows_true_columns_predicted": matrix},
    }


def format_scores_table(title: str, rows: Mapping[str, Mapping[str, float]]) -> str:
    """A fixed-width precision/recall/F1/support table."""
    width = max([len(title), *(len(name) for name in rows)]) + 2
    lines = [f"{title:<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in rows.items():
        lines.append(
            f"{name:<{width}}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{int(row['support']):>10d}"
        )
    return "\n".join(lines)


def format_classification_report(report: Mapping[str, Any]) -> str:
    rows = dict(report["per_class"])
    table = format_scores_table(
        "class", {**rows, "macro avg": report["macro"], "weighted avg": report["weighted"]}
    )
    matrix = report["confusion_matrix"]
    labels = matrix["labels"]
    width = max(len(label) for label in labels) + 2
    cell = max(6, *(len(label) + 1 for label in labels))
    lines = [
        table,
        f"accuracy {report['accuracy']:.3f}",
        "",
        "confusion matrix (rows: true, columns: predicted)",
    ]
    lines.append(" " * width + "".join(f"{label:>{cell}}" for label in labels))
    for label, counts in zip(labels, matrix["rows_true_columns_predicted"], strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{count:>{cell}d}" for count in counts))
    return "\n".join(lines)
