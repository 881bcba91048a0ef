"""Evaluation math, checked against small examples worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.reports import classification_report, format_classification_report, retrieval_report


def test_classification_report_matches_a_hand_worked_confusion() -> None:
    #            truth:  a  a  a  b  b  c
    #       prediction:  a  a  b  b  c  c
    # confusion (rows truth, cols prediction): a=[2,1,0] b=[0,1,1] c=[0,0,1]
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    report = classification_report(y_true, y_pred, ["a", "b", "c"])

    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # precision = TP / predicted: a 2/2, b 1/2, c 1/2; recall = TP / support: a 2/3, b 1/2, c 1/1
    # F1 = 2PR/(P+R): a (4/3)/(5/3) = 4/5, b 1/2, c 1/(3/2) = 2/3
    expected = {
        "a": (1.0, 2 / 3, 4 / 5, 3),
        "b": (1 / 2, 1 / 2, 1 / 2, 2),
        "c": (1 / 2, 1.0, 2 / 3, 1),
    }
    for label, (precision, recall, f1, support) in expected.items():
        row = report["classes"][label]
        assert row["precision"] == pytest.approx(precision)
        assert row["recall"] == pytest.approx(recall)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert report["accuracy"] == pytest.approx(4 / 6)
    # macro: plain means; F1 (4/5 + 1/2 + 2/3) / 3 = (59/30) / 3 = 59/90
    assert report["macro_avg"]["precision"] == pytest.approx(2 / 3)
    assert report["macro_avg"]["recall"] == pytest.approx(13 / 18)
    assert report["macro_avg"]["f1"] == pytest.approx(59 / 90)
    # weighted by support 3:2:1; weighted recall is accuracy by construction
    assert report["weighted_avg"]["precision"] == pytest.approx((3 * 1 + 2 * 0.5 + 1 * 0.5) / 6)
    assert report["weighted_avg"]["recall"] == pytest.approx(4 / 6)
    assert report["weighted_avg"]["f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 / 3) / 6)
    assert report["support"] == report["macro_avg"]["support"] == 6


def test_unseen_and_unpredicted_classes_score_zero_without_dividing_by_zero() -> None:
    report = classification_report(["x", "x", "y"], ["x", "x", "x"], ["x", "y", "z"])
    assert report["classes"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["classes"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["classes"]["x"]["precision"] == pytest.approx(2 / 3)
    # z (support 0) lowers the macro average but not the weighted one
    assert report["macro_avg"]["recall"] == pytest.approx(1 / 3)
    assert report["weighted_avg"]["recall"] == pytest.approx(2 / 3)


def test_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="not in the label list"):
        classification_report(["a"], ["q"], ["a", "b"])


def test_table_lists_every_class_and_the_averages() -> None:
    table = format_classification_report(classification_report(["a", "b"], ["a", "a"], ["a", "b"]))
    lines = table.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1", "support"]
    assert any(line.split() == ["a", "0.500", "1.000", "0.667", "1"] for line in lines)
    assert any(line.split() == ["accuracy", "0.500", "2"] for line in lines)
    assert any(line.startswith(" " * 3) and "macro avg" in line for line in lines)


def test_retrieval_report_on_a_hand_built_space() -> None:
    # Three images, three captions. Image 0 is nearest caption 1 (same label "red"),
    # image 1 nearest caption 1 (its own), image 2 nearest caption 0 (wrong label).
    texts = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    images = np.array([[0.1, 1.0], [0.0, 1.0], [1.0, 0.0]])
    labels = ["red", "red", "blue"]
    report = retrieval_report(texts, images, labels)
    assert report["image_to_text_top1"] == pytest.approx(2 / 3)
    # relevant texts per image: 2, 2, 1 of 3
    assert report["chance_top1"] == pytest.approx((2 + 2 + 1) / 9)
    # caption 0 -> image 2 (blue: wrong), caption 1 -> image 0 or 1 (red: right), caption 2 -> image 0 (red: wrong)
    assert report["text_to_image_top1"] == pytest.approx(1 / 3)
    # Without labels only the own caption counts: image 1 is the only hit.
    exact = retrieval_report(texts, images)
    assert exact["image_to_text_top1"] == pytest.approx(1 / 3)
    assert exact["chance_top1"] == pytest.approx(1 / 3)
    assert exact["image_to_text_top5"] == 1.0
