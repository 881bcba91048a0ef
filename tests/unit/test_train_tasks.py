"""Regression and multi-task heads, calibration, missing-modality figures and training options, on
synthetic embeddings (no encoders)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.backend import EncoderInfo
from services.fusion.heads import load_head
from training.data import DataError, EmbeddedSet, read_examples, read_jsonl
from training.heads.calibration import (
    brier_score,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
)
from training.heads.tasks import classification_task, fit_to_training_rows, target_tasks
from training.heads.train import (
    HISTORY_FILE,
    TrainConfig,
    train_classifier,
    train_head,
    train_multitask,
    train_regression,
)

TEXT_DIM, IMAGE_DIM = 16, 24
FAST = TrainConfig(epochs=60, patience=10, progress=False, seed=0)
SMALL = {"fused_dim": 32, "hidden_dim": 64, "dropout": 0.0}
UNIT_PRICES = np.array([2.0, 3.0, 4.5, 6.0])


def _protos(seed: int, k: int, dim: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, dim))


def _order_task(n: int = 700, seed: int = 1, scale: float = 1.0, offset: float = 0.0):
    """The text names a quantity 1..6, the image a shape with a unit price: total = quantity x price."""
    rng = np.random.default_rng(seed)
    quantity = rng.integers(1, 7, n)
    shape = rng.integers(0, 4, n)
    text = _protos(10, 7, TEXT_DIM)[quantity] + 0.2 * rng.standard_normal((n, TEXT_DIM))
    image = _protos(11, 4, IMAGE_DIM)[shape] + 0.2 * rng.standard_normal((n, IMAGE_DIM))
    total = quantity * UNIT_PRICES[shape] * scale + offset
    ones = np.ones(n, dtype=bool)
    targets = tuple({"target": float(t)} for t in total)
    data = EmbeddedSet(
        text.astype(np.float32), image.astype(np.float32), ones, ones.copy(), (None,) * n, targets
    )
    return data, quantity, shape


@pytest.fixture(scope="module")
def order():
    return _order_task(scale=1000.0, offset=-2500.0)  # far from N(0, 1): standardisation must be undone


@pytest.fixture(scope="module")
def regression_results(order):
    data = order[0]
    return {s: train_regression(data, s, SMALL, FAST) for s in ("concat_mlp", "text_only", "image_only")}


def test_regression_needs_both_modalities_and_learns_the_product(regression_results) -> None:
    r2 = {s: r.metrics["test_r2"] for s, r in regression_results.items()}
    print("test R²:", r2)
    assert r2["concat_mlp"] > 0.9, r2
    assert max(r2["text_only"], r2["image_only"]) < 0.6, r2
    assert r2["concat_mlp"] > max(r2["text_only"], r2["image_only"]) + 0.3, r2
    fused = regression_results["concat_mlp"]
    assert fused.report["task"] == "regression" and set(fused.report["targets"]) == {"target"}
    # The masked-modality figures tell the same story from one head.
    cases = fused.metrics["masked_modality"]["cases"]
    assert cases["both"]["target"]["r2"] > cases["text_only"]["target"]["r2"] + 0.3
    assert fused.metrics["modality_contribution"]["metric"] == "r2"


def test_regression_head_serves_values_in_target_units(order, regression_results, tmp_path: Path) -> None:
    data, _, _ = order
    result = regression_results["concat_mlp"]
    (spec,) = result.outputs
    train_values = np.array([row["target"] for row in data.targets])[result.splits.train]
    assert spec.mean == pytest.approx(train_values.mean()) and spec.std == pytest.approx(train_values.std())
    from services.fusion.heads import save_head

    save_head(
        tmp_path / "total", result.model, strategy="concat_mlp", input_dims={"text": TEXT_DIM, "image": IMAGE_DIM},
        config=result.config, encoders={m: {"model_id": "fake", "revision": ""} for m in ("text", "image")},
        outputs=result.outputs, missing_modality_policy=result.missing_modality_policy,
    )  # fmt: skip
    head = load_head(tmp_path / "total")
    test = result.splits.test
    served = head.predict(data.text[test], data.image[test]).values["target"]
    truth = np.array([data.targets[i]["target"] for i in test])
    rmse = float(np.sqrt(np.mean((served - truth) ** 2)))
    assert rmse == pytest.approx(result.metrics["test_rmse"], rel=1e-4)
    assert rmse < 0.3 * truth.std()  # in thousands, like the targets: not in standard deviations


@pytest.mark.parametrize(
    "row,message",
    [
        ('{"text": "a", "target": NaN}', "target is nan; targets must be finite"),
        ('{"text": "a", "target": Infinity}', "target is inf"),
        ('{"text": "a", "targets": {"price": -Infinity}}', "targets.price is -inf"),
        ('{"text": "a", "target": "12"}', "target must be a number"),
        ('{"text": "a", "target": true}', "target must be a number"),
        ('{"text": "a", "labels": {"score": NaN}}', "labels.score is nan"),
        ('{"text": "a", "labels": {"x": ""}}', "labels.x must be a non-empty string or a number"),
        ('{"text": "a", "target": 1, "targets": {"target": 2}}', "'target' is given twice"),
        ('{"text": "a"}', "missing target"),
    ],
)
def test_bad_targets_are_refused_with_the_line(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine", "target": 1.5}\n' + row + "\n")
    with pytest.raises(DataError, match=rf"rows\.jsonl:2: {message}"):
        read_jsonl(path, require_label=False, require_targets=True)


def test_csv_targets_and_task_labels(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("text,target.price,label.kind,label.size\na,1.5,cheap,3\nb,,dear,\n")
    first, second = read_examples(path, require_label=False, require_targets=True)
    assert first.targets == {"price": 1.5, "kind": "cheap", "size": 3.0}
    assert second.targets == {"kind": "dear"}
    path.write_text("text,target\na,inf\n")
    with pytest.raises(DataError, match=r"rows\.csv:2: target is inf"):
        read_examples(path, require_label=False, require_targets=True)
    path.write_text("text,target\na,twelve\n")
    with pytest.raises(DataError, match="target must be a number"):
        read_examples(path, require_label=False, require_targets=True)


def test_numeric_labels_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 0}\n{"text": "c", "label": 2.5}\n')
    assert [e.label for e in read_jsonl(path)] == ["1", "0", "2.5"]


def _multitask(n: int = 800, seed: int = 3) -> tuple[EmbeddedSet, np.ndarray, np.ndarray]:
    """Task "variant" (colour from the text x shape from the image) labels only the first half of the
    rows, task "total" (a regression) only the second half: each must train through its own rows."""
    rng = np.random.default_rng(seed)
    colour, shape, quantity = rng.integers(0, 3, n), rng.integers(0, 4, n), rng.integers(1, 7, n)
    text = (
        _protos(20, 3, TEXT_DIM)[colour]
        + _protos(21, 7, TEXT_DIM)[quantity]
        + 0.2 * rng.standard_normal((n, TEXT_DIM))
    )
    image = _protos(22, 4, IMAGE_DIM)[shape] + 0.2 * rng.standard_normal((n, IMAGE_DIM))
    targets = tuple(
        {"variant": f"c{colour[i]}-s{shape[i]}"}
        if i < n // 2
        else {"total": float(quantity[i] * UNIT_PRICES[shape[i]])}
        for i in range(n)
    )
    ones = np.ones(n, dtype=bool)
    data = EmbeddedSet(
        text.astype(np.float32), image.astype(np.float32), ones, ones.copy(), (None,) * n, targets
    )
    return data, colour, shape


def test_multitask_rows_missing_a_label_train_the_other_task() -> None:
    data, _, _ = _multitask()
    result = train_multitask(data, "concat_mlp", SMALL, FAST)
    tasks = result.metrics["tasks"]
    print("multi-task test figures:", tasks)
    assert [o.name for o in result.outputs] == ["total", "variant"]
    assert tasks["variant"]["test_accuracy"] > 0.9 and tasks["total"]["test_r2"] > 0.85
    assert result.report["task"] == "multitask" and set(result.report["tasks"]) == {"total", "variant"}
    assert result.report["tasks"]["variant"]["support"] + result.report["tasks"]["total"]["support"] == len(
        result.splits.test
    )
    # A task weighted 0 is not learned: the weights reach the loss.
    unweighted = train_multitask(data, "concat_mlp", SMALL, FAST, weights={"variant": 0.0})
    assert unweighted.metrics["tasks"]["variant"]["test_accuracy"] < 0.5
    assert unweighted.metrics["task_weights"] == {"total": 1.0, "variant": 0.0}


def test_task_kinds_are_inferred_and_can_be_declared() -> None:
    targets = ({"grade": 1.0, "name": "x"}, {"grade": 2.0, "name": "y"}, {"grade": 1.0})
    data = EmbeddedSet(np.zeros((3, 2), np.float32), np.zeros((3, 2), np.float32), np.ones(3, bool),
                       np.ones(3, bool), (None,) * 3, targets)  # fmt: skip
    tasks = {t.name: t for t in target_tasks(data)}
    assert tasks["grade"].kind == "regression" and tasks["name"].kind == "classification"
    assert tasks["name"].targets.tolist() == [0, 1, -1]  # the missing label is masked
    declared = {t.name: t for t in target_tasks(data, kinds={"grade": "classification"})}
    assert declared["grade"].spec.labels == ("1", "2")
    with pytest.raises(ValueError, match="name tasks the data lacks"):
        target_tasks(data, weights={"nope": 1.0})
    with pytest.raises(ValueError, match="not numeric"):
        target_tasks(data, only_regression=True)


def test_balanced_class_weights_come_from_the_training_rows() -> None:
    task = classification_task(["a"] * 8 + ["b"] * 2)
    (fitted,) = fit_to_training_rows([task], np.arange(10), "balanced")
    np.testing.assert_allclose(fitted.class_weights, [10 / (2 * 8), 10 / (2 * 2)])
    (plain,) = fit_to_training_rows([task], np.arange(10), "none")
    assert plain.class_weights is None


def _noisy_classes(n: int = 900, seed: int = 4, flip: float = 0.3) -> EmbeddedSet:
    """Four classes, a third of the labels flipped: a head that fits them is overconfident."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 4, n)
    label = np.where(rng.random(n) < flip, rng.integers(0, 4, n), k)
    text = _protos(30, 4, TEXT_DIM)[k] + 0.8 * rng.standard_normal((n, TEXT_DIM))
    image = _protos(31, 4, IMAGE_DIM)[k] + 0.8 * rng.standard_normal((n, IMAGE_DIM))
    ones = np.ones(n, dtype=bool)
    return EmbeddedSet(text.astype(np.float32), image.astype(np.float32), ones, ones.copy(),
                       tuple(f"c{x}" for x in label))  # fmt: skip


def test_temperature_fitted_on_validation_lowers_ece_on_held_out_rows() -> None:
    """An overconfident classifier (its logits 3x too large), calibrated on one split, scored on another."""
    rng = np.random.default_rng(7)
    true_logits = rng.standard_normal((3000, 4)) * 1.5
    probabilities = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(4, p=p) for p in probabilities])
    logits = true_logits * 3
    val, test = slice(0, 1000), slice(1000, None)
    temperature = fit_temperature(logits[val], targets[val])
    summary = calibration_summary(logits[test], targets[test], temperature)
    print("calibration:", summary)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert summary["ece_after"] < summary["ece_before"] / 2
    assert summary["brier_after"] < summary["brier_before"] and summary["nll_after"] < summary["nll_before"]


def test_training_records_calibration_per_case_on_the_test_split() -> None:
    overfit = TrainConfig(epochs=60, patience=60, progress=False, lr=3e-3)
    result = train_classifier(
        _noisy_classes(), "concat_mlp", {"fused_dim": 64, "hidden_dim": 128, "dropout": 0.0}, overfit
    )
    calibration = result.metrics["calibration"]["label"]
    print("calibration:", calibration)
    assert {"temperature", "ece_before", "ece_after", "brier_before", "brier_after"} <= set(calibration)
    assert calibration["support"] == len(result.splits.test)
    assert result.outputs[0].temperature == calibration["temperature"]
    # Without one modality the head is off its training distribution: its own temperature helps.
    for missing in ("image", "text"):
        part = calibration["missing"][missing]
        assert part["ece_after"] < part["ece_before"], missing
        assert result.outputs[0].missing_temperatures[missing] == part["temperature"]
    uncalibrated = train_classifier(
        _noisy_classes(), "concat_mlp", SMALL, TrainConfig(epochs=3, progress=False, calibrate=False)
    )
    assert uncalibrated.outputs[0].temperature == 1.0


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4000, 5)) * 3
    probabilities = np.exp(logits / 2.5)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(5, p=p) for p in probabilities])
    assert fit_temperature(logits, targets) == pytest.approx(2.5, rel=0.1)
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    sure = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert (
        expected_calibration_error(sure, np.array([1, 0])) == 0.0
        and brier_score(sure, np.array([1, 0])) == 0.0
    )
    assert brier_score(sure, np.array([0, 1])) == pytest.approx(2.0)


def test_missing_modality_answers_are_as_unsure_as_they_are_wrong() -> None:
    """On a task neither modality decides alone, a text-only answer must be ~0.5, not confident."""
    rng = np.random.default_rng(5)
    n, k = 800, 4
    a, b = rng.integers(0, k, n), rng.integers(0, k, n)
    same = rng.random(n) < 0.5
    b = np.where(same, a, (a + rng.integers(1, k, n)) % k)
    text = _protos(40, k, TEXT_DIM)[a] + 0.3 * rng.standard_normal((n, TEXT_DIM))
    image = _protos(41, k, IMAGE_DIM)[b] + 0.3 * rng.standard_normal((n, IMAGE_DIM))
    ones = np.ones(n, dtype=bool)
    data = EmbeddedSet(text.astype(np.float32), image.astype(np.float32), ones, ones.copy(),
                       tuple("yes" if s else "no" for s in same))  # fmt: skip
    result = train_classifier(data, "weighted_sum", SMALL, FAST)
    cases = result.metrics["masked_modality"]["cases"]
    print("masked:", cases)
    assert cases["both"]["label"]["accuracy"] > 0.9
    for case in ("text_only", "image_only"):
        assert cases[case]["label"]["accuracy"] < 0.65
        assert cases[case]["label"]["mean_confidence"] < 0.65, case
    assert result.missing_modality_policy == "allow"  # modality dropout showed it single-modality rows
    assert result.fusion_weights["text"] + result.fusion_weights["image"] == pytest.approx(1.0)
    no_dropout = TrainConfig(epochs=5, progress=False, modality_dropout=0.0)
    assert train_classifier(data, "weighted_sum", SMALL, no_dropout).missing_modality_policy == "refuse"
    partial = EmbeddedSet(data.text, data.image, data.text_mask, np.arange(n) % 3 > 0, data.labels)
    assert train_classifier(partial, "weighted_sum", SMALL, no_dropout).missing_modality_policy == "allow"


def test_options_are_checked() -> None:
    data, _, _ = _order_task(n=100)
    with pytest.raises(ValueError, match="select_metric 'accuracy' needs a classification task"):
        train_regression(
            data, "concat_mlp", SMALL, TrainConfig(epochs=1, progress=False, select_metric="accuracy")
        )
    with pytest.raises(ValueError, match="loss must be one of"):
        train_regression(data, "concat_mlp", SMALL, TrainConfig(epochs=1, progress=False, loss="l1"))
    huber = train_regression(
        data, "concat_mlp", SMALL, TrainConfig(epochs=2, progress=False, loss="huber", select_metric="r2")
    )
    assert huber.metrics["select_metric"] == "r2"


class PrototypeEmbedder:
    """A text "q<k>" or an image whose first byte is k embeds as prototype k."""

    text_info = EncoderInfo("fake-text", "t1", TEXT_DIM)
    image_info = EncoderInfo("fake-image", "i1", IMAGE_DIM)

    def embed_texts(self, texts):
        return np.stack([_protos(10, 7, TEXT_DIM)[int(t[1:])] for t in texts]).astype(np.float32)

    def embed_images(self, images):
        return np.stack([_protos(11, 4, IMAGE_DIM)[data[0]] for data in images]).astype(np.float32)

    def close(self) -> None:
        pass


def test_train_head_writes_a_regression_head_with_its_history(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(300):
        quantity, shape = int(rng.integers(1, 7)), int(rng.integers(0, 4))
        (tmp_path / f"{index}.png").write_bytes(bytes([shape]) + b"fake")
        rows.append(
            {"text": f"q{quantity}", "image": f"{index}.png", "target": quantity * UNIT_PRICES[shape]}
        )
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig(epochs=8, patience=8, progress=True, seed=0)  # progress, but no terminal: log lines
    with caplog.at_level(logging.INFO, logger="training.heads.loop"):
        head_dir, result = train_head(data, "orders", "weighted_sum", tmp_path / "heads", PrototypeEmbedder(), cfg, SMALL,
                                      task="regression")  # fmt: skip
    assert "train weighted_sum epoch 1/8: train_loss" in caplog.text
    history = json.loads((head_dir / HISTORY_FILE).read_text())
    assert len(history) == result.metrics["epochs_run"] and {"epoch", "train_loss", "val_loss", "val"} <= set(
        history[0]
    )
    head = load_head(head_dir)
    manifest = head.manifest
    assert manifest.task == "regression" and manifest.outputs[0].name == "target"
    assert manifest.metrics["training"]["task"] == "regression" and "test_r2" in manifest.metrics
    assert set(manifest.fusion_weights) == {"text", "image"}
    torch.testing.assert_close(
        torch.tensor(sum(manifest.fusion_weights.values())), torch.tensor(1.0), rtol=1e-5, atol=1e-6
    )
