"""Training on synthetic embeddings (no encoders): fusion learns what one modality cannot, deterministically."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.backend import EncoderInfo
from services.fusion.heads import load_head
from training.data import EmbeddedSet, file_sha256, split_indices
from training.heads.evaluate import evaluate_head, subset
from training.heads.train import TrainConfig, train_alignment, train_classifier, train_head
from training.reports import REPORT_FILE

TEXT_DIM, IMAGE_DIM, CLASSES = 16, 24, 4
FAST = TrainConfig(epochs=40, patience=8, progress=False, seed=0)
SMALL = {"fused_dim": 32, "hidden_dim": 64, "dropout": 0.0}


def _prototypes(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((CLASSES, TEXT_DIM)), rng.standard_normal((CLASSES, IMAGE_DIM))


def _matching_task(n: int = 600, seed: int = 1) -> EmbeddedSet:
    """Text names class k, image shows class j; the label is whether k == j (half the time)."""
    text_protos, image_protos = _prototypes()
    rng = np.random.default_rng(seed)
    k = rng.integers(0, CLASSES, n)
    same = rng.random(n) < 0.5
    j = np.where(same, k, (k + rng.integers(1, CLASSES, n)) % CLASSES)
    text = text_protos[k] + 0.3 * rng.standard_normal((n, TEXT_DIM))
    image = image_protos[j] + 0.3 * rng.standard_normal((n, IMAGE_DIM))
    labels = tuple("match" if s else "mismatch" for s in same)
    ones = np.ones(n, dtype=bool)
    return EmbeddedSet(text.astype(np.float32), image.astype(np.float32), ones, ones.copy(), labels)


@pytest.fixture(scope="module")
def matching() -> EmbeddedSet:
    return _matching_task()


@pytest.fixture(scope="module")
def results(matching: EmbeddedSet):
    strategies = ("weighted_sum", "concat_mlp", "gated", "attention", "text_only", "image_only")
    return {s: train_classifier(matching, s, SMALL, FAST) for s in strategies}


@pytest.mark.parametrize("strategy", ["weighted_sum", "concat_mlp", "gated", "attention"])
def test_fusion_solves_what_no_single_modality_can(results, strategy: str) -> None:
    fused = results[strategy].metrics["test_accuracy"]
    singles = [results[s].metrics["test_accuracy"] for s in ("text_only", "image_only")]
    assert fused > 0.9, results[strategy].report
    assert max(singles) < 0.7 and fused > max(singles) + 0.2, (fused, singles)


def test_metrics_describe_the_best_epoch_on_a_held_out_split(results, matching: EmbeddedSet) -> None:
    result = results["weighted_sum"]
    metrics = result.metrics
    assert metrics["train_size"] + metrics["val_size"] + metrics["test_size"] == len(matching)
    assert metrics["test_size"] == len(result.splits.test) == result.report["support"]
    assert set(result.splits.test).isdisjoint(result.splits.train)
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= FAST.epochs
    best = result.history[metrics["best_epoch"] - 1]
    assert metrics["val_accuracy"] == pytest.approx(
        best["val_score"]
    )  # the kept weights are the best epoch's
    assert result.labels == ("match", "mismatch")


def test_early_stopping_stops_after_patience(matching: EmbeddedSet) -> None:
    cfg = TrainConfig(epochs=200, patience=3, progress=False)
    result = train_classifier(matching, "weighted_sum", SMALL, cfg)
    assert result.metrics["epochs_run"] == result.metrics["best_epoch"] + 3 < 200


def test_training_is_deterministic_given_the_seed(matching: EmbeddedSet, results) -> None:
    again = train_classifier(matching, "gated", SMALL, FAST)
    first = results["gated"].model.state_dict()
    for key, value in again.model.state_dict().items():
        assert torch.equal(value, first[key]), key
    other = train_classifier(matching, "gated", SMALL, TrainConfig(epochs=3, progress=False, seed=1))
    assert not torch.equal(other.model.state_dict()["classifier.0.weight"], first["classifier.0.weight"])


def test_modality_dropout_teaches_the_head_to_cope_with_a_missing_modality() -> None:
    """Redundant modalities (both show the class): with dropout, either one alone suffices."""
    text_protos, image_protos = _prototypes()
    rng = np.random.default_rng(5)
    n = 600
    k = rng.integers(0, CLASSES, n)
    text = (text_protos[k] + 0.3 * rng.standard_normal((n, TEXT_DIM))).astype(np.float32)
    image = (image_protos[k] + 0.3 * rng.standard_normal((n, IMAGE_DIM))).astype(np.float32)
    ones = np.ones(n, dtype=bool)
    data = EmbeddedSet(text, image, ones, ones.copy(), tuple(f"c{x}" for x in k))
    cfg = TrainConfig(epochs=40, patience=8, progress=False, modality_dropout=0.5)
    result = train_classifier(data, "concat_mlp", SMALL, cfg)
    test = torch.from_numpy(result.splits.test)
    truth = torch.from_numpy(k[result.splits.test])
    yes, no = torch.ones(len(test), dtype=torch.bool), torch.zeros(len(test), dtype=torch.bool)
    with torch.no_grad():
        t, i = torch.from_numpy(text)[test], torch.from_numpy(image)[test]
        text_alone = (result.model(t, i, yes, no).argmax(1) == truth).float().mean()
        image_alone = (result.model(t, i, no, yes).argmax(1) == truth).float().mean()
    assert text_alone > 0.9 and image_alone > 0.9


def test_alignment_learns_a_shared_space() -> None:
    text_protos, image_protos = _prototypes()
    rng = np.random.default_rng(2)
    n = 400
    k = rng.integers(0, CLASSES, n)
    text = (text_protos[k] + 0.2 * rng.standard_normal((n, TEXT_DIM))).astype(np.float32)
    image = (image_protos[k] + 0.2 * rng.standard_normal((n, IMAGE_DIM))).astype(np.float32)
    ones = np.ones(n, dtype=bool)
    data = EmbeddedSet(text, image, ones, ones.copy(), tuple(f"c{x}" for x in k))
    result = train_alignment(data, {"fused_dim": 16}, FAST)
    assert result.report["image_to_text_top1"] > 0.9
    assert result.report["chance_top1"] < 0.4
    assert result.metrics["test_image_to_text_top1"] == result.report["image_to_text_top1"]
    missing = EmbeddedSet(text, image, ones, np.zeros(n, dtype=bool), data.labels)
    with pytest.raises(ValueError, match="needs text and image in every row"):
        train_alignment(missing, {}, FAST)


def test_classifier_refuses_unusable_data(matching: EmbeddedSet) -> None:
    with pytest.raises(ValueError, match="not a classification strategy"):
        train_classifier(matching, "alignment", {}, FAST)
    single = EmbeddedSet(
        matching.text, matching.image, matching.text_mask, matching.image_mask, ("a",) * len(matching)
    )
    with pytest.raises(ValueError, match="at least 2 labels"):
        train_classifier(single, "gated", {}, FAST)


class PrototypeEmbedder:
    """Deterministic fake encoders: a text or image names its class, embedded as that class's prototype."""

    text_info = EncoderInfo("fake-text", "t1", TEXT_DIM)
    image_info = EncoderInfo("fake-image", "i1", IMAGE_DIM)

    def __init__(self) -> None:
        self.text_protos, self.image_protos = _prototypes()

    def embed_texts(self, texts):
        return np.stack([self.text_protos[int(t[-1])] for t in texts]).astype(np.float32)

    def embed_images(self, images):
        return np.stack([self.image_protos[data[0]] for data in images]).astype(np.float32)

    def close(self) -> None:
        pass


def test_train_head_saves_a_loadable_head_with_its_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for index in range(240):
        k, j = int(rng.integers(0, CLASSES)), int(rng.integers(0, CLASSES))
        image = tmp_path / f"{index}.png"
        image.write_bytes(bytes([j]) + b"fake")
        rows.append({"text": f"class {k}", "image": image.name, "label": "same" if k == j else "different"})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    head_dir, result = train_head(
        data,
        "pairs",
        "concat_mlp",
        tmp_path / "heads",
        PrototypeEmbedder(),
        FAST,
        SMALL,
        baselines=("text_only",),
    )
    head = load_head(head_dir)
    manifest = head.manifest
    assert head_dir == tmp_path / "heads" / "pairs" and head.name == "pairs"
    assert manifest.strategy == "concat_mlp" and manifest.labels == ("different", "same")
    assert manifest.input_dims == {"text": TEXT_DIM, "image": IMAGE_DIM}
    assert manifest.encoders["text"].model_id == "fake-text" and manifest.encoders["image"].revision == "i1"
    assert manifest.config == SMALL
    training = manifest.metrics["training"]
    assert training["data_sha256"] == file_sha256(data) and training["seed"] == FAST.seed
    assert "text_only" in manifest.metrics["baselines_test_accuracy"]

    report = json.loads((head_dir / REPORT_FILE).read_text())
    assert report["accuracy"] == manifest.metrics["test_accuracy"] == result.report["accuracy"]
    # The loaded head, fed the same held-out rows, reproduces the saved report exactly.
    labels = [r["label"] for r in rows]
    split = split_indices(labels, training["val_fraction"], training["test_fraction"], training["seed"])
    assert np.array_equal(split.test, result.splits.test)
    embedder = PrototypeEmbedder()
    full = EmbeddedSet(
        embedder.embed_texts([r["text"] for r in rows]),
        embedder.embed_images([(tmp_path / r["image"]).read_bytes() for r in rows]),
        np.ones(len(rows), dtype=bool),
        np.ones(len(rows), dtype=bool),
        tuple(labels),
    )
    assert evaluate_head(head, subset(full, split.test))["confusion_matrix"] == report["confusion_matrix"]
