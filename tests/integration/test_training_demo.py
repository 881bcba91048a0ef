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
from training.heads.evaluate import evaluate_head, subset
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
    training = load_head(head_dir).manifest.metrics["training"]
    examples = read_jsonl(training["data"])
    data = embed_examples(examples, embedder, progress=False)
    split = split_indices(data.labels, training["val_fraction"], training["test_fraction"], training["seed"])
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
    for strategy in ("concat_mlp", "gated", "text_only", "image_only"):
        accuracy[strategy] = train_classifier(data, strategy, {}, cfg).metrics["test_accuracy"]
    print("held-out accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items()))
    # The CLI recorded its own baselines (same split; floats may differ with the thread count).
    recorded = head.manifest.metrics["baselines_test_accuracy"]
    assert set(recorded) == {"text_only", "image_only"} and max(recorded.values()) < 0.7
    best_single = max(accuracy["text_only"], accuracy["image_only"])
    assert best_single < 0.7  # the task really needs both modalities
    for strategy in ("weighted_sum (saved head)", "concat_mlp", "gated"):
        assert accuracy[strategy] > 0.9, strategy
        assert accuracy[strategy] > best_single + 0.2, strategy


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
