"""Trains fusion heads on text + image embeddings and saves them for the fusion service.

``python -m training.heads train --data data/demo/match.jsonl --strategy weighted_sum --name match``
trains one head; ``python -m training.heads demo --data data/demo`` trains the demo heads of a
``training.demo_data`` directory: ``match`` (fused), ``shape_colour`` (fused multiclass) and
``align`` (alignment). ``--strategy alignment`` (or ``--task alignment``) trains a CLIP-style
alignment head with a symmetric InfoNCE loss instead of a classifier.

Rows are split (stratified, by ``--seed``) into train / validation / test; training stops
early when validation accuracy (ties: loss) has not improved for ``--patience`` epochs and
keeps the best epoch. The held-out test split gives the metrics in the manifest and the
``report.json`` beside the weights. Embeddings are cached on disk (``--cache-dir``), so
re-training does not re-run the encoders. Same data + seed -> same head (on one machine
and torch thread count: float reductions differ between thread counts).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from services.fusion.heads import save_head
from services.fusion.strategies import (
    ALIGNMENT_STRATEGY,
    CLASSIFICATION_STRATEGIES,
    AlignmentHead,
    FusionClassifier,
    build_model,
    contrastive_loss,
    resolve_config,
)
from training.data import EmbeddedSet, Splits, data_sha256, embed_examples, read_examples, split_indices
from training.embedders import Embedder
from training.options import option
from training.reports import classification_report, retrieval_report, write_report

_LOGGER = logging.getLogger(__name__)

# The demo heads `--data <demo dir>` trains: (head name, JSONL file, strategy).
DEMO_HEADS = (
    ("match", "match.jsonl", "weighted_sum"),
    ("shape_colour", "shape_colour.jsonl", "concat_mlp"),
    ("align", "align.jsonl", ALIGNMENT_STRATEGY),
)
BASELINES = ("text_only", "image_only")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (strategy hyper-parameters live in the head's config); each field
    with help text is also a command-line flag (``training.options``)."""

    epochs: int = option(80, "Most training epochs.")
    lr: float = option(1e-3, "AdamW learning rate.")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    batch_size: int = option(32, "Rows per optimisation step.")
    val_fraction: float = option(0.15, "Share of each label's rows held out for early stopping.")
    test_fraction: float = option(0.2, "Share of each label's rows held out for the report.")
    patience: int = option(12, "Epochs without improvement before stopping.")
    seed: int = option(0, "Seed of the split, the initialisation and the batch order.")
    modality_dropout: float = option(
        0.0,
        "Chance of masking one modality of a training row, so the head also learns to answer "
        "when serving gets only one of them.",
    )
    progress: bool = option(True, "Progress bars (--no-progress turns them off).")


@dataclass
class TrainResult:
    model: FusionClassifier | AlignmentHead
    strategy: str
    config: dict[str, Any]
    labels: tuple[str, ...]
    splits: Splits
    report: dict[str, Any]  # on the test split
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)


def _tensors(data: EmbeddedSet) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(data.text),
        torch.from_numpy(data.image),
        torch.from_numpy(data.text_mask),
        torch.from_numpy(data.image_mask),
    )


def _drop_modalities(
    text_mask: torch.Tensor, image_mask: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    if p <= 0:
        return text_mask, image_mask
    both = text_mask & image_mask
    drop = both & (torch.rand(text_mask.shape, generator=generator) < p)
    drop_text = drop & (torch.rand(text_mask.shape, generator=generator) < 0.5)
    return text_mask & ~drop_text, image_mask & ~(drop & ~drop_text)


# Smallest drop in validation loss that counts as progress; below it (a saturated, ever more
# confident model) further epochs only overfit.
MIN_LOSS_DELTA = 1e-3


def _improved(score: float, loss: float, best: tuple[float, float] | None) -> bool:
    """Higher validation score wins; an equal score wins with a clearly lower validation loss."""
    if best is None:
        return True
    return score > best[0] + 1e-9 or (abs(score - best[0]) <= 1e-9 and loss < best[1] - MIN_LOSS_DELTA)


def _fit(
    model: torch.nn.Module,
    batch_loss,
    evaluate_val,
    train_rows: np.ndarray,
    cfg: TrainConfig,
    desc: str,
) -> tuple[list[dict[str, float]], int]:
    """Shared loop: AdamW, shuffled mini-batches, early stopping on (val score, val loss)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rows = torch.from_numpy(train_rows)
    best: tuple[float, float] | None = None
    best_state, best_epoch, stale = None, 0, 0
    history = []
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay readable.
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=None if cfg.progress else True)
    for epoch in bar:
        model.train()
        total, seen = 0.0, 0
        for batch in rows[torch.randperm(len(rows), generator=generator)].split(cfg.batch_size):
            loss = batch_loss(batch, generator)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
            seen += len(batch)
        model.eval()
        with torch.no_grad():
            val_score, val_loss = evaluate_val()
        history.append(
            {"epoch": epoch, "train_loss": total / seen, "val_loss": val_loss, "val_score": val_score}
        )
        bar.set_postfix(loss=f"{total / seen:.3f}", val_loss=f"{val_loss:.3f}", val=f"{val_score:.3f}")
        if _improved(val_score, val_loss, best):
            best, best_epoch, stale = (val_score, val_loss), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return history, best_epoch


def _check_splits(splits: Splits, n: int) -> None:
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"{n} rows are too few for a train and a validation split")


def train_classifier(
    data: EmbeddedSet,
    strategy: str,
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Trains a fusion classifier with cross-entropy; reports on the held-out test split."""
    if strategy not in CLASSIFICATION_STRATEGIES:
        raise ValueError(
            f"{strategy!r} is not a classification strategy; known: {', '.join(CLASSIFICATION_STRATEGIES)}"
        )
    if any(label is None for label in data.labels):
        raise ValueError("every row needs a label to train a classifier")
    labels = tuple(sorted(set(data.labels)))
    if len(labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {list(labels)}")
    config = resolve_config(strategy, dict(hparams or {}))
    splits = split_indices(data.labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    _check_splits(splits, len(data))
    text, image, text_mask, image_mask = _tensors(data)
    targets = torch.tensor([labels.index(label) for label in data.labels])

    torch.manual_seed(cfg.seed)
    model = build_model(strategy, text.shape[1], image.shape[1], config, num_labels=len(labels))

    def batch_loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        t_mask, i_mask = _drop_modalities(text_mask[rows], image_mask[rows], cfg.modality_dropout, generator)
        return F.cross_entropy(model(text[rows], image[rows], t_mask, i_mask), targets[rows])

    def logits_for(rows: np.ndarray) -> torch.Tensor:
        idx = torch.from_numpy(rows)
        return model(text[idx], image[idx], text_mask[idx], image_mask[idx])

    def evaluate_val() -> tuple[float, float]:
        logits = logits_for(splits.val)
        truth = targets[torch.from_numpy(splits.val)]
        return float((logits.argmax(1) == truth).float().mean()), float(F.cross_entropy(logits, truth))

    history, best_epoch = _fit(model, batch_loss, evaluate_val, splits.train, cfg, f"train {strategy}")
    with torch.no_grad():
        val_accuracy, val_loss = evaluate_val()
        eval_rows = splits.test if len(splits.test) else splits.val
        predicted = logits_for(eval_rows).argmax(1).numpy()
    report = classification_report(
        [data.labels[i] for i in eval_rows], [labels[i] for i in predicted], labels
    )
    metrics = {
        "test_accuracy": report["accuracy"],
        "test_macro_f1": report["macro_avg"]["f1"],
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        **_run_summary(splits, history, best_epoch),
    }
    return TrainResult(model, strategy, config, labels, splits, report, metrics, history)


def _run_summary(splits: Splits, history: list[dict[str, float]], best_epoch: int) -> dict[str, int]:
    return {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_size": len(splits.train),
        "val_size": len(splits.val),
        "test_size": len(splits.test),
    }


def train_alignment(
    data: EmbeddedSet, hparams: Mapping[str, Any] | None = None, cfg: TrainConfig = TrainConfig()
) -> TrainResult:
    """Trains an alignment head with symmetric InfoNCE on (text, image) pairs.

    Validation and test score image->text retrieval top-1, where any caption with the image's
    label counts when rows carry labels (captions of one class are interchangeable).
    """
    both = data.text_mask & data.image_mask
    if not both.all():
        raise ValueError(f"alignment needs text and image in every row; {int((~both).sum())} rows lack one")
    config = resolve_config(ALIGNMENT_STRATEGY, dict(hparams or {}))
    splits = split_indices(data.labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    _check_splits(splits, len(data))
    text, image, _, _ = _tensors(data)

    torch.manual_seed(cfg.seed)
    model = build_model(ALIGNMENT_STRATEGY, text.shape[1], image.shape[1], config)

    def batch_loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return contrastive_loss(model(text[rows], image[rows]))

    def report_for(rows: np.ndarray) -> dict[str, Any]:
        idx = torch.from_numpy(rows)
        return retrieval_report(
            model.project_text(text[idx]).numpy(),
            model.project_image(image[idx]).numpy(),
            [data.labels[i] for i in rows],
        )

    def evaluate_val() -> tuple[float, float]:
        idx = torch.from_numpy(splits.val)
        loss = float(contrastive_loss(model(text[idx], image[idx])))
        return report_for(splits.val)["image_to_text_top1"], loss

    history, best_epoch = _fit(model, batch_loss, evaluate_val, splits.train, cfg, "train alignment")
    with torch.no_grad():
        val_top1, val_loss = evaluate_val()
        report = report_for(splits.test if len(splits.test) else splits.val)
    metrics = {
        "test_image_to_text_top1": report["image_to_text_top1"],
        "test_text_to_image_top1": report["text_to_image_top1"],
        "test_chance_top1": report["chance_top1"],
        "val_image_to_text_top1": val_top1,
        "val_loss": val_loss,
        "logit_scale": model.logit_scale.item(),
        **_run_summary(splits, history, best_epoch),
    }
    return TrainResult(model, ALIGNMENT_STRATEGY, config, (), splits, report, metrics, history)


def train_head(
    data_path: Path | str,
    name: str,
    strategy: str,
    out_dir: Path | str,
    embedder: Embedder,
    cfg: TrainConfig = TrainConfig(),
    hparams: Mapping[str, Any] | None = None,
    baselines: tuple[str, ...] = (),
) -> tuple[Path, TrainResult]:
    """Embeds a JSONL file, trains one head, saves it (+ report.json) to ``out_dir/name``.

    ``baselines`` are strategies trained the same way on the same split only to record their
    test accuracy in this head's metrics (e.g. how a fused head compares with text_only).
    """
    data_path = Path(data_path)
    alignment = strategy == ALIGNMENT_STRATEGY
    examples = read_examples(data_path, require_label=not alignment)
    data = embed_examples(examples, embedder, progress=cfg.progress)
    if alignment:
        result = train_alignment(data, hparams, cfg)
    else:
        result = train_classifier(data, strategy, hparams, cfg)
    if baselines and not alignment:
        result.metrics["baselines_test_accuracy"] = {
            baseline: train_classifier(data, baseline, hparams, cfg).metrics["test_accuracy"]
            for baseline in baselines
        }
    metrics: dict[str, Any] = dict(result.metrics)
    recorded = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    metrics["training"] = {"data": str(data_path), "data_sha256": data_sha256(data_path), **recorded}
    head_dir = Path(out_dir) / name
    save_head(
        head_dir,
        result.model,
        strategy=strategy,
        input_dims={"text": embedder.text_info.embedding_dim, "image": embedder.image_info.embedding_dim},
        config=result.config,
        encoders={
            "text": {"model_id": embedder.text_info.model_id, "revision": embedder.text_info.revision},
            "image": {"model_id": embedder.image_info.model_id, "revision": embedder.image_info.revision},
        },
        labels=result.labels,
        metrics=metrics,
    )
    write_report(head_dir, {**result.report, "head": name, "data": str(data_path), "split": "test"})
    _LOGGER.info("saved head %s (%s) to %s", name, strategy, head_dir)
    return head_dir, result


def train_demo(
    data_dir: Path, out_dir: Path, embedder: Embedder, cfg: TrainConfig
) -> list[tuple[Path, TrainResult]]:
    """Trains the demo heads from a ``training.demo_data`` directory."""
    trained = []
    for name, filename, strategy in DEMO_HEADS:
        path = data_dir / filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; generate it with python -m training.demo_data --out {data_dir}"
            )
        baselines = BASELINES if name == "match" else ()
        trained.append(train_head(path, name, strategy, out_dir, embedder, cfg, baselines=baselines))
    return trained
