"""The demo heads trained end to end on the real default encoders (MiniLM text, EfficientNet-Lite0 image).

The training CLI runs as ``make train-demo`` runs it; the tests then load the saved heads the
way the fusion service does and score them on their held-out test splits.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.fusion.heads import check_compatible, load_head
from training import demo_data
from training.data import EmbeddedSet, embed_examples, read_jsonl, split_indices
from training.embedders import InProcessEmbedder
from training.embedding_cache import CachedEmbedder
from training.heads.evaluate import evaluate_head, stratify_keys, subset
from training.heads.train import TrainConfig, train_classifier
from training.reports import REPORT_FILE, format_report

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=540, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def workdir(demo_workdir: Path) -> Path:
    return demo_workdir


@pytest.fixture(scope="module")
def heads(demo_heads: Path) -> Path:
    """The heads `python -m training.heads demo --data <demo dir>` trained (tests/conftest.py)."""
    return demo_heads


@pytest.fixture(scope="module")
def embedder(workdir: Path, heads: Path):
    # Same cache as the CLI run: every embedding is a hit, only the models load.
    embedder = CachedEmbedder(InProcessEmbedder(), workdir / "cache")
    yield embedder
    embedder.close()


def _held_out(head_dir: Path, embedder) -> tuple[EmbeddedSet, EmbeddedSet]:
    """All rows of the head's training file and its test split, embedded as training saw them."""
    head = load_head(head_dir)
    training = head.manifest.metrics["training"]
    examples = read_jsonl(training["data"], require_label=head.task in ("classification", "alignment"))
    data = embed_examples(examples, embedder, progress=False)
    keys = stratify_keys(head, examples)
    split = split_indices(keys, training["val_fraction"], training["test_fraction"], training["seed"])
    return data, subset(data, split.test)


def test_fused_head_beats_each_single_modality_on_the_matching_task(heads: Path, embedder) -> None:
    head = load_head(heads / "match")
    check_compatible(head.manifest, embedder.text_info, embedder.image_info)
    assert head.manifest.encoders["text"].model_id == "sentence-transformers/all-MiniLM-L6-v2"
    assert head.manifest.encoders["image"].model_id == "efficientnet-lite0"
    data, test = _held_out(heads / "match", embedder)

    report = evaluate_head(head, test)  # through the serving path: load_head + predict_proba
    print(
        f"\nmatch head ({head.manifest.strategy}) on {report['support']} held-out rows:\n{format_report(report)}"
    )
    assert report["accuracy"] == pytest.approx(head.manifest.metrics["test_accuracy"])
    assert json.loads((heads / "match" / REPORT_FILE).read_text())["accuracy"] == report["accuracy"]

    # Every fusion strategy and both single-modality baselines, trained the same way on the same split.
    cfg = TrainConfig(progress=False)
    accuracy = {"weighted_sum (saved head)": report["accuracy"]}
    for strategy in ("concat_mlp", "gated", "attention", "text_only", "image_only"):
        accuracy[strategy] = train_classifier(data, strategy, {}, cfg).metrics["test_accuracy"]
    print("held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    # The CLI recorded its own baselines (same split; floats may differ with the thread count).
    recorded = head.manifest.metrics["baselines_test_accuracy"]
    assert set(recorded) == {"text_only", "image_only"} and max(recorded.values()) < 0.7
    best_single = max(accuracy["text_only"], accuracy["image_only"])
    assert best_single < 0.7  # the task really needs both modalities
    for strategy in ("weighted_sum (saved head)", "concat_mlp", "gated", "attention"):
        assert accuracy[strategy] > 0.9, strategy
        assert accuracy[strategy] > best_single + 0.2, strategy

    # Readable weights, and the same story told by the saved head with each modality masked.
    manifest = head.manifest
    assert sum(manifest.fusion_weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0.2 < manifest.fusion_weights["text"] < 0.8  # both modalities count on this task
    cases = manifest.metrics["masked_modality"]["cases"]
    for case in ("text_only", "image_only"):
        assert cases[case]["label"]["accuracy"] < 0.7
        assert cases[case]["label"]["mean_confidence"] < 0.7, (case, cases[case])  # honest: unsure
    contribution = manifest.metrics["modality_contribution"]
    assert contribution["text"] > 0.2 and contribution["image"] > 0.2
    assert manifest.missing_modality_policy == "allow"
    assert manifest.metrics["calibration"]["label"]["ece_after"] <= 0.1


def test_multiclass_head_combines_colour_from_text_and_shape_from_image(heads: Path, embedder) -> None:
    head = load_head(heads / "shape_colour")
    data, test = _held_out(heads / "shape_colour", embedder)
    report = evaluate_head(head, test)
    print(f"\nshape_colour head ({head.manifest.strategy}):\n{format_report(report)}")
    assert len(head.labels) == len(demo_data.COLOURS) * len(demo_data.SHAPES)
    assert report["accuracy"] > 0.9 and report["macro_avg"]["f1"] > 0.9
    cfg = TrainConfig(progress=False)
    for strategy in ("text_only", "image_only"):
        single = train_classifier(data, strategy, {}, cfg).metrics["test_accuracy"]
        print(f"{strategy}: {single:.3f}")
        assert single < 0.5  # one modality gives one attribute: at best ~1/4 or ~1/5 of the classes


def test_alignment_head_ranks_the_matching_caption_first(heads: Path, embedder) -> None:
    head = load_head(heads / "align")
    assert head.task == "alignment"
    _, test = _held_out(heads / "align", embedder)
    texts, images = head.project_text(test.text), head.project_image(test.image)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    scores = images @ texts.T
    labels = np.array(test.labels)
    top1 = float(np.mean(labels[scores.argmax(axis=1)] == labels))
    chance = float(np.mean([np.mean(labels == label) for label in labels]))
    print(
        f"\nalign head: image->caption top-1 {top1:.3f} over {len(labels)} held-out images (chance {chance:.3f})"
    )
    assert top1 >= 0.5 and top1 >= 5 * chance
    assert head.manifest.metrics["test_image_to_text_top1"] == pytest.approx(top1)
    assert head.logit_scale > 1.0


def test_evaluate_cli_rescores_the_held_out_split(heads: Path, workdir: Path) -> None:
    report_path = heads / "match" / REPORT_FILE
    report_path.unlink()
    out = _run(
        ["training.heads", "evaluate", "--head", str(heads / "match"), "--cache-dir", str(workdir / "cache")]
    )
    print(out)
    report = json.loads(report_path.read_text())
    assert report["split"] == "test"
    assert report["accuracy"] == pytest.approx(load_head(heads / "match").manifest.metrics["test_accuracy"])
    assert "weighted avg" in out and "mismatch" in out


def test_regression_head_learns_a_product_of_both_modalities(heads: Path, embedder) -> None:
    head = load_head(heads / "order_total")
    assert head.task == "regression" and head.manifest.outputs[0].name == "target"
    _, test = _held_out(heads / "order_total", embedder)
    report = evaluate_head(head, test)  # through the serving path: values in target units
    print(f"\norder_total head ({head.manifest.strategy}):\n{format_report(report)}")
    metrics = head.manifest.metrics
    assert report["rmse"] == pytest.approx(metrics["test_rmse"], rel=1e-4)
    cases = metrics["masked_modality"]["cases"]
    singles = [cases[c]["target"]["r2"] for c in ("text_only", "image_only")]
    print(
        f"R² with text + image {metrics['test_r2']:.3f}; image masked {singles[0]:.3f}; text masked {singles[1]:.3f}"
    )
    assert metrics["test_r2"] > 0.9 and metrics["test_r2"] > max(singles) + 0.3
    assert report["rmse"] < 2.0  # in price units (totals from 2 to 36)


def test_multitask_attention_head_learns_both_tasks_despite_missing_labels(heads: Path, embedder) -> None:
    head = load_head(heads / "order")
    assert head.task == "multitask" and head.manifest.strategy == "attention" and head.can_explain
    assert [(o.name, o.kind) for o in head.outputs] == [
        ("total", "regression"),
        ("variant", "classification"),
    ]
    data, test = _held_out(heads / "order", embedder)
    assert any(len(row) == 1 for row in data.targets)  # some rows lack one task's label
    report = evaluate_head(head, test)
    print(f"\norder head:\n{format_report(report)}")
    variant, total = report["tasks"]["variant"], report["tasks"]["total"]
    assert variant["accuracy"] > 0.9 and variant["accuracy"] > 5 / len(head.outputs[1].labels)  # chance 1/20
    assert total["r2"] > 0.9
    outputs = head.predict(test.text[:5], test.image[:5], explain=True)
    np.testing.assert_allclose(outputs.attention.sum(axis=1), 1.0, rtol=1e-5)


def test_evaluate_cli_scores_a_regression_head(heads: Path, workdir: Path) -> None:
    out = _run(
        [
            "training.heads",
            "evaluate",
            "--head",
            str(heads / "order_total"),
            "--cache-dir",
            str(workdir / "cache"),
        ]
    )
    report = json.loads((heads / "order_total" / REPORT_FILE).read_text())
    assert report["split"] == "test" and "rmse" in out
    assert report["r2"] == pytest.approx(
        load_head(heads / "order_total").manifest.metrics["test_r2"], rel=1e-4
    )
