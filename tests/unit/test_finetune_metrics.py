"""The in-house reports agree with seqeval (entities) and scikit-learn (classes, tokens)."""

from __future__ import annotations

import random

import pytest
from seqeval.metrics import classification_report as seqeval_report
from seqeval.scheme import IOB2
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from training.finetune.classification_metrics import classification_report, format_classification_report
from training.finetune.ner_metrics import entity_report, extract_entities, format_ner_report, token_report

# Messy predictions on purpose: I- without B-, I- of another type, an entity at the end, a
# type only ever predicted (MISC), a type never predicted (ORG).
TRUE = [
    ["B-PER", "I-PER", "O", "B-LOC", "O"],
    ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
    ["B-LOC", "B-LOC", "I-LOC", "O"],
    ["O", "O", "O"],
    ["B-PER", "O", "B-geo-loc", "I-geo-loc"],
]
PREDICTED = [
    ["B-PER", "I-PER", "O", "I-LOC", "O"],
    ["O", "I-ORG", "I-PER", "I-ORG", "O", "B-PER"],
    ["B-LOC", "I-LOC", "I-LOC", "O"],
    ["B-MISC", "I-MISC", "O"],
    ["I-PER", "I-PER", "B-geo-loc", "I-geo-loc"],
]


def _random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]) for _ in range(n)]


def _fuzz_cases():
    rng = random.Random(7)
    true = [_random_tags(rng, rng.randint(1, 12)) for _ in range(200)]
    predicted = [_random_tags(rng, len(sentence)) for sentence in true]
    return true, predicted


def _assert_matches_seqeval(ours: dict, theirs: dict) -> None:
    for name, row in ours["per_type"].items():
        assert row["precision"] == pytest.approx(theirs[name]["precision"])
        assert row["recall"] == pytest.approx(theirs[name]["recall"])
        assert row["f1"] == pytest.approx(theirs[name]["f1-score"])
        assert row["support"] == theirs[name]["support"]
    assert set(ours["per_type"]) == {k for k in theirs if not k.endswith("avg")}
    for ours_key, theirs_key in (
        ("micro", "micro avg"),
        ("macro", "macro avg"),
        ("weighted", "weighted avg"),
    ):
        assert ours[ours_key]["precision"] == pytest.approx(theirs[theirs_key]["precision"])
        assert ours[ours_key]["recall"] == pytest.approx(theirs[theirs_key]["recall"])
        assert ours[ours_key]["f1"] == pytest.approx(theirs[theirs_key]["f1-score"])


@pytest.mark.parametrize("cases", [(TRUE, PREDICTED), _fuzz_cases()], ids=["fixed", "fuzz"])
def test_default_chunking_equals_seqeval_default_mode(cases):
    true, predicted = cases
    theirs = seqeval_report(true, predicted, output_dict=True, zero_division=0)
    _assert_matches_seqeval(entity_report(true, predicted, "default"), theirs)


@pytest.mark.parametrize("cases", [(TRUE, PREDICTED), _fuzz_cases()], ids=["fixed", "fuzz"])
def test_strict_chunking_equals_seqeval_strict_iob2(cases):
    true, predicted = cases
    theirs = seqeval_report(true, predicted, output_dict=True, zero_division=0, mode="strict", scheme=IOB2)
    _assert_matches_seqeval(entity_report(true, predicted, "strict"), theirs)


def test_chunking_of_stray_inside_tags():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "I-LOC"]
    assert extract_entities(tags, "default") == [("PER", 0, 1), ("LOC", 3, 3), ("PER", 4, 4), ("LOC", 5, 5)]
    assert extract_entities(tags, "strict") == [("LOC", 3, 3)]


def test_fixed_predictions_figures():
    report = entity_report(TRUE, PREDICTED)
    # 8 true entities, 10 predicted; 4 match exactly: PER (0, 0-1), LOC (0, 3: a lone I-LOC starts
    # it), PER (1, 5), geo-loc (4, 2-3). LOC (2, 0-2) swallows two true entities; PER (4, 0-1) is too long.
    assert report["micro"]["support"] == 8 and report["micro"]["correct"] == 4
    assert report["micro"]["predicted"] == 10
    assert report["per_type"]["ORG"]["recall"] == 0.0
    assert report["per_type"]["MISC"]["support"] == 0 and report["per_type"]["MISC"]["f1"] == 0.0


def test_token_report_matches_scikit_learn():
    true, predicted = _fuzz_cases()
    flat_true = [t for s in true for t in s]
    flat_predicted = [t for s in predicted for t in s]
    labels = sorted(set(flat_true) | set(flat_predicted))
    report = token_report(true, predicted, labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        flat_true, flat_predicted, labels=labels, zero_division=0
    )
    for i, label in enumerate(labels):
        assert report["per_tag"][label]["f1"] == pytest.approx(f1[i])
        assert report["per_tag"][label]["support"] == support[i]
    without_o = [label for label in labels if label != "O"]
    for key, subset in (("micro_f1_with_o", labels), ("micro_f1_without_o", without_o)):
        expected = precision_recall_fscore_support(
            flat_true, flat_predicted, labels=subset, average="micro", zero_division=0
        )[2]
        assert report[key] == pytest.approx(expected)
    assert report["micro_f1_with_o"] > report["micro_f1_without_o"]


def test_classification_report_matches_scikit_learn():
    rng = random.Random(3)
    labels = ["business", "sport", "tech"]
    true = [rng.choice(labels) for _ in range(300)]
    predicted = [t if rng.random() < 0.7 else rng.choice(labels) for t in true]
    report = classification_report(true, predicted, labels)
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(
            true, predicted, labels=labels, average=average
        )
        assert report[average]["precision"] == pytest.approx(precision)
        assert report[average]["recall"] == pytest.approx(recall)
        assert report[average]["f1"] == pytest.approx(f1)
    assert (
        report["confusion_matrix"]["rows_true_columns_predicted"]
        == confusion_matrix(true, predicted, labels=labels).tolist()
    )
    assert report["accuracy"] == pytest.approx(
        sum(t == p for t, p in zip(true, predicted, strict=True)) / len(true)
    )
    assert "confusion matrix" in format_classification_report(report)


def test_reports_format_as_text():
    report = {"entity": entity_report(TRUE, PREDICTED), "token": token_report(TRUE, PREDICTED)}
    text = format_ner_report(report)
    assert "micro avg" in text and "geo-loc" in text and "flatters" in text
