"""Trains fusion heads on embeddings (text, image, audio) and tabular features, and saves them for
the fusion service. A head's modalities are what its data carries (``--modalities`` picks some);
features are standardised with the training split's statistics, which the manifest records.

``python -m training.heads train --data data/demo/match.jsonl --strategy weighted_sum --name match``
trains one head; ``python -m training.heads demo --data data/demo`` trains the demo heads of a
``training.demo_data`` directory (``DEMO_HEADS``). ``--task`` picks what the head learns:
``classification`` (``label``), ``regression`` (``target`` / ``targets``), ``multitask``
(``labels``: one shared fusion trunk, one output per task) or ``alignment`` (a CLIP-style
alignment head trained with a symmetric InfoNCE loss).

Rows are split (stratified by the label, or the first classification task, by ``--seed``) into
train / validation / test; training stops early when the validation score (``--select-metric``;
ties: loss) has not improved for ``--patience`` epochs and keeps the best epoch. Fused
strategies train with modality dropout, so they learn to answer without one modality. After
training, a temperature per classification output is fitted on the validation split; the
held-out test split gives the metrics in the manifest (with ECE / Brier before and after
calibration, and the test split scored with each modality masked) and the ``report.json`` and
``history.json`` beside the weights. Embeddings are cached on disk (``--cache-dir``), so
re-training does not re-run the encoders. Same data + seed -> same head (on one machine and
torch thread count: float reductions differ between thread counts).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from services.fusion.features import FeatureSchema, fit_schema
from services.fusion.heads import save_head
from services.fusion.modalities import FEATURES, TEXT_IMAGE, encoded
from services.fusion.outputs import CLASSIFICATION, OutputSpec
from services.fusion.strategies import (
    ALIGNMENT_STRATEGY,
    DECISION_STRATEGIES,
    FUSED_STRATEGIES,
    AlignmentHead,
    FusionModel,
    WeightedSumFusion,
    build_head_module,
    contrastive_loss,
    resolve_config,
    strategy_modalities,
)
from training.data import EmbeddedSet, Splits, data_sha256, embed_examples, read_examples, split_indices
from training.embedders import Embedder, encoder_info
from training.heads.calibration import calibrate_task
from training.heads.loop import fit
from training.heads.missing import masked_modality_report, modality_contribution
from training.heads.tasks import (
    CLASS_WEIGHTS,
    LOSSES,
    SELECT_METRICS,
    Task,
    TaskLoss,
    check_select_metric,
    classification_task,
    column_slices,
    fit_to_training_rows,
    selection_score,
    target_tasks,
    task_metrics,
)
from training.options import choice, option
from training.reports import (
    classification_report,
    multitask_report,
    regression_report,
    retrieval_report,
    write_report,
)

_LOGGER = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression", "multitask", "alignment")
HISTORY_FILE = "history.json"
POLICIES = ("auto", "allow", "refuse")


@dataclass(frozen=True)
class DemoHead:
    name: str
    filename: str
    strategy: str
    task: str = "classification"
    baselines: bool = False


# The demo heads `demo --data <demo dir>` trains (training.demo_data describes each task). The
# region task is left out: no strategy beats the image alone on it (README, `compare`).
DEMO_HEADS = (
    DemoHead("match", "match.jsonl", "weighted_sum", baselines=True),
    DemoHead("shape_colour", "shape_colour.jsonl", "concat_mlp"),
    DemoHead("align", "align.jsonl", ALIGNMENT_STRATEGY, "alignment"),
    DemoHead("order_total", "order_total.jsonl", "weighted_sum", "regression"),
    DemoHead("order", "order.jsonl", "attention", "multitask"),
    DemoHead("risk", "risk.jsonl", "concat_mlp", baselines=True),
    DemoHead("sound_caption", "sound_caption.jsonl", "concat_mlp", baselines=True),
)
BASELINES = ("text_only", "image_only")


def single_baselines(modalities: Sequence[str]) -> tuple[str, ...]:
    """Each modality alone: the ``<modality>_only`` baselines of a head over ``modalities``."""
    return tuple(f"{m}_only" for m in modalities)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (strategy hyper-parameters live in the head's config); each field
    with help text is also a command-line flag (``training.options``)."""

    epochs: int = option(80, "Most training epochs.")
    lr: float = option(0.0, "AdamW learning rate; 0: the strategy's (1e-3; 5e-4 for attention).")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    batch_size: int = option(32, "Rows per optimisation step.")
    val_fraction: float = option(0.15, "Share of each label's rows held out for early stopping.")
    test_fraction: float = option(0.2, "Share of each label's rows held out for the report.")
    patience: int = option(
        0, "Epochs without improvement before stopping; 0: the strategy's (12; 20 for attention)."
    )
    seed: int = option(0, "Seed of the split, the initialisation and the batch order.")
    # 0.2: on the demo match task a weighted_sum head keeps 0.967 test accuracy (0.938 at 0.3,
    # 0.975 without); the temperatures fitted per missing modality keep its answers honest.
    modality_dropout: float = option(
        0.2,
        "Chance of masking one modality of a training row (fused strategies only; 0 turns it off), "
        "so the head learns to answer, honestly unsure where it must be, with one modality missing.",
    )
    loss: str = choice("mse", LOSSES, "Regression loss on the standardised targets: mse or huber.")
    class_weight: str = choice(
        "none", CLASS_WEIGHTS, "balanced: weight each class by n / (classes x count) in the loss."
    )
    select_metric: str = choice(
        "auto",
        SELECT_METRICS,
        "Validation metric early stopping keeps the best epoch by; auto: accuracy (classification), "
        "RMSE (regression), their weighted mean over a multi-task head's tasks.",
    )
    calibrate: bool = option(True, "Fit a temperature on the validation split (--no-calibrate: T = 1).")
    missing_modality: str = choice(
        "auto",
        POLICIES,
        "Missing-modality policy of the head; auto: allow when training saw rows with one modality "
        "(modality dropout or the data), else refuse.",
    )
    progress: bool = option(
        True, "Progress bars, or one log line per epoch when not on a terminal (--no-progress: neither)."
    )


# Optimisation defaults (what lr 0 and patience 0 mean) where the shared ones do not suit a
# strategy; the measurements behind attention's are in services.fusion.attention.
DEFAULT_OPTIMISATION = {"lr": 1e-3, "patience": 12}
STRATEGY_OPTIMISATION = {"attention": {"lr": 5e-4, "patience": 20}}


def resolve_optimisation(cfg: TrainConfig, strategy: str) -> TrainConfig:
    """``cfg`` with the strategy's learning rate and patience wherever it leaves them at 0."""
    chosen = {**DEFAULT_OPTIMISATION, **STRATEGY_OPTIMISATION.get(strategy, {})}
    return dataclasses.replace(cfg, lr=cfg.lr or chosen["lr"], patience=cfg.patience or chosen["patience"])


@dataclass
class TrainResult:
    model: FusionModel | AlignmentHead
    strategy: str
    config: dict[str, Any]
    labels: tuple[str, ...]
    splits: Splits
    report: dict[str, Any]  # on the test split
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    outputs: tuple[OutputSpec, ...] = ()
    missing_modality_policy: str = "allow"
    fusion_weights: dict[str, float] = field(default_factory=dict)
    modalities: tuple[str, ...] = TEXT_IMAGE  # the head's inputs
    features: FeatureSchema | None = None


def _tensors(data: EmbeddedSet, schema: FeatureSchema | None) -> tuple[dict, dict]:
    """Inputs and masks as tensors; features standardised with ``schema`` (zeros where absent)."""
    inputs = {}
    for modality, array in data.inputs.items():
        if modality == FEATURES:
            array = np.where(data.masks[modality][:, None], schema.standardise(array), 0).astype(np.float32)
        inputs[modality] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return inputs, {m: torch.from_numpy(mask) for m, mask in data.masks.items()}


def _feature_schema(data: EmbeddedSet, train: np.ndarray) -> FeatureSchema | None:
    """The features' statistics on the training split's rows that carry them."""
    if FEATURES not in data.inputs:
        return None
    rows = train[data.masks[FEATURES][train]]
    if len(rows) == 0:
        raise ValueError("no training row carries features")
    return fit_schema(data.feature_names, data.inputs[FEATURES][rows])


def _drop_modalities(
    masks: dict[str, torch.Tensor], p: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Masks one present modality (uniformly) of a share ``p`` of the rows carrying two or more."""
    if p <= 0:
        return masks
    present = torch.stack(list(masks.values()), dim=-1)
    count = present.sum(dim=-1)
    drop = (count >= 2) & (torch.rand(count.shape, generator=generator) < p)
    which = (torch.rand(count.shape, generator=generator) * count).long()  # the k-th present one
    chosen = present & (present.long().cumsum(dim=-1) - 1 == which.unsqueeze(-1)) & drop.unsqueeze(-1)
    return {m: mask & ~chosen[:, i] for i, (m, mask) in enumerate(masks.items())}


def _check_splits(splits: Splits, n: int) -> None:
    if len(splits.train) == 0 or len(splits.val) == 0:
        raise ValueError(f"{n} rows are too few for a train and a validation split")


def _run_summary(splits: Splits, history: list[dict[str, Any]], best_epoch: int) -> dict[str, int]:
    return {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_size": len(splits.train),
        "val_size": len(splits.val),
        "test_size": len(splits.test),
    }


def _policy(cfg: TrainConfig, strategy: str, data: EmbeddedSet, train: np.ndarray, dropout: float) -> str:
    """``allow`` only when training saw rows lacking one of the head's (two) modalities."""
    if cfg.missing_modality != "auto":
        return cfg.missing_modality
    if len(strategy_modalities(strategy, data.modalities)) < 2:
        return "refuse"  # a single-modality head cannot answer without its one modality
    partial = not data.all_present()[train].all()
    return "allow" if partial or dropout > 0 else "refuse"


def _stratify_by(tasks: Sequence[Task], n: int) -> list[str | None]:
    for task in tasks:
        if task.kind == CLASSIFICATION:
            return [task.spec.labels[i] if i >= 0 else None for i in task.targets]
    return [None] * n


def _test_report(tasks: Sequence[Task], raw: np.ndarray, rows: np.ndarray) -> dict[str, Any]:
    """The report.json of a decision head: classification, regression (every target), or one per task."""
    parts: dict[str, dict[str, Any]] = {}
    truth, values = {}, {}
    for task, columns in zip(tasks, column_slices([t.spec for t in tasks]), strict=True):
        present = task.present(rows)
        if task.kind == CLASSIFICATION:
            labels = task.spec.labels
            predicted = raw[present, columns].argmax(axis=1)
            parts[task.name] = classification_report(
                [labels[i] for i in task.targets[present]], [labels[i] for i in predicted], labels
            )
            continue
        truth[task.name] = task.targets[present]
        values[task.name] = raw[present, columns.start].astype(np.float64) * task.spec.std + task.spec.mean
        parts[task.name] = regression_report({task.name: truth[task.name]}, {task.name: values[task.name]})
    if len(tasks) == 1:
        return parts[tasks[0].name]
    if len(truth) == len(tasks):
        return regression_report(truth, values)
    return multitask_report(parts)


def _headline(
    tasks: Sequence[Task], report: dict[str, Any], per_task_val: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest's top-level figures: test_accuracy & co. (classification), test_rmse & co.
    (regression), one entry per task under ``tasks`` (multi-task)."""
    if len(tasks) == 1 and tasks[0].kind == CLASSIFICATION:
        return {
            "test_accuracy": report["accuracy"],
            "test_macro_f1": report["macro_avg"]["f1"],
            "val_accuracy": per_task_val[tasks[0].name]["accuracy"],
        }
    if report["task"] == "regression":
        return {
            "test_mae": report["mae"],
            "test_rmse": report["rmse"],
            "test_r2": report["r2"],
            "val_rmse": float(np.mean([per_task_val[t.name]["rmse"] for t in tasks])),
        }
    summary = {}
    for task in tasks:
        part = report["tasks"][task.name]
        if task.kind == CLASSIFICATION:
            summary[task.name] = {"test_accuracy": part["accuracy"], "test_macro_f1": part["macro_avg"]["f1"]}
        else:
            summary[task.name] = {"test_mae": part["mae"], "test_rmse": part["rmse"], "test_r2": part["r2"]}
    return {"tasks": summary}


def train_decision_head(
    data: EmbeddedSet,
    strategy: str,
    tasks: Sequence[Task],
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Trains a fusion head with one output per task; reports on the held-out test split."""
    if strategy not in DECISION_STRATEGIES:
        raise ValueError(
            f"{strategy!r} is not a classification strategy; known: {', '.join(DECISION_STRATEGIES)}"
        )
    check_select_metric(cfg.select_metric, tasks)
    cfg = resolve_optimisation(cfg, strategy)
    config = resolve_config(strategy, dict(hparams or {}))
    splits = split_indices(_stratify_by(tasks, len(data)), cfg.val_fraction, cfg.test_fraction, cfg.seed)
    _check_splits(splits, len(data))
    tasks = fit_to_training_rows(tasks, splits.train, cfg.class_weight)
    schema = _feature_schema(data, splits.train)
    inputs, masks = _tensors(data, schema)

    torch.manual_seed(cfg.seed)
    dims = {m: array.shape[1] for m, array in inputs.items()}
    model = build_head_module(strategy, dims, config, sum(t.spec.width for t in tasks))
    loss_fn = TaskLoss(tasks, cfg.loss)
    dropout = cfg.modality_dropout if strategy in FUSED_STRATEGIES else 0.0

    def batch_loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        kept = _drop_modalities({m: mask[rows] for m, mask in masks.items()}, dropout, generator)
        return loss_fn(model({m: x[rows] for m, x in inputs.items()}, kept), rows)[0]

    def raw_outputs(rows: np.ndarray, keep: dict[str, np.ndarray] | None = None):
        idx = torch.from_numpy(rows)
        row_masks = {m: mask[idx] for m, mask in masks.items()}
        if keep is not None:
            row_masks = {m: torch.from_numpy(keep[m]) & mask for m, mask in row_masks.items()}
        with torch.no_grad():
            return model({m: x[idx] for m, x in inputs.items()}, row_masks).double().numpy()

    all_rows = np.arange(len(data))
    slices = column_slices([t.spec for t in tasks])

    def per_task(raw_all: np.ndarray, rows: np.ndarray, specs: Sequence[Task]) -> dict[str, Any]:
        return {t.name: task_metrics(t, raw_all, rows, c) for t, c in zip(specs, slices, strict=True)}

    def validate() -> tuple[float, float, dict[str, Any]]:
        raw_all = raw_outputs(all_rows)
        val_raw = torch.from_numpy(raw_all[splits.val]).float()
        loss = float(loss_fn(val_raw, torch.from_numpy(splits.val))[0])
        metrics = per_task(raw_all, splits.val, tasks)
        return selection_score(tasks, metrics, loss, cfg.select_metric), loss, metrics

    history, best_epoch = fit(model, batch_loss, validate, splits.train, cfg, f"train {strategy}")
    val_score, val_loss, _ = validate()
    eval_rows = splits.test if len(splits.test) else splits.val
    raw_all = raw_outputs(all_rows)

    policy = _policy(cfg, strategy, data, splits.train, dropout)
    missing_cases = data.modalities if policy == "allow" and strategy in FUSED_STRATEGIES else ()
    calibration: dict[str, Any] = {}
    calibrated = []
    for task, columns in zip(tasks, slices, strict=True):
        if task.kind == CLASSIFICATION:
            task, calibration[task.name] = calibrate_task(
                task, columns, raw_all, raw_outputs, data, splits.val, eval_rows, missing_cases, cfg.calibrate
            )
        calibrated.append(task)
    tasks = calibrated

    report = _test_report(tasks, raw_all, eval_rows)
    val_metrics = per_task(raw_all, splits.val, tasks)
    masked = masked_modality_report(raw_outputs, tasks, eval_rows, data.all_present(), data.modalities)
    metrics: dict[str, Any] = {
        **_headline(tasks, report, val_metrics),
        "val_loss": val_loss,
        "val_score": val_score,
        "select_metric": cfg.select_metric,
        "calibration": calibration,
        "masked_modality": masked,
        "modality_contribution": modality_contribution(masked, tasks),
        **_run_summary(splits, history, best_epoch),
    }
    if len(tasks) > 1:
        metrics["task_weights"] = {t.name: t.weight for t in tasks}
    fusion_weights = model.fusion.learned_weights() if isinstance(model.fusion, WeightedSumFusion) else {}
    labels = tasks[0].spec.labels if len(tasks) == 1 and tasks[0].kind == CLASSIFICATION else ()
    return TrainResult(
        model,
        strategy,
        config,
        labels,
        splits,
        report,
        metrics,
        history,
        outputs=tuple(t.spec for t in tasks),
        missing_modality_policy=policy,
        fusion_weights=fusion_weights,
        modalities=data.modalities,
        features=schema,
    )


def train_classifier(
    data: EmbeddedSet,
    strategy: str,
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
) -> TrainResult:
    """Trains a fusion classifier on the rows' ``label`` with cross-entropy."""
    if strategy not in DECISION_STRATEGIES:
        raise ValueError(
            f"{strategy!r} is not a classification strategy; known: {', '.join(DECISION_STRATEGIES)}"
        )
    if any(label is None for label in data.labels):
        raise ValueError("every row needs a label to train a classifier")
    return train_decision_head(data, strategy, [classification_task(data.labels)], hparams, cfg)


def train_regression(
    data: EmbeddedSet,
    strategy: str,
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
    weights: Mapping[str, float] | None = None,
) -> TrainResult:
    """Trains a regression head on the rows' numeric ``target`` / ``targets`` (MSE or Huber)."""
    return train_decision_head(
        data, strategy, target_tasks(data, weights=weights, only_regression=True), hparams, cfg
    )


def train_multitask(
    data: EmbeddedSet,
    strategy: str,
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
    kinds: Mapping[str, str] | None = None,
    weights: Mapping[str, float] | None = None,
) -> TrainResult:
    """Trains one shared trunk with one output per task of the rows' ``labels`` (missing ones masked)."""
    return train_decision_head(data, strategy, target_tasks(data, kinds, weights), hparams, cfg)


def train_alignment(
    data: EmbeddedSet, hparams: Mapping[str, Any] | None = None, cfg: TrainConfig = TrainConfig()
) -> TrainResult:
    """Trains an alignment head with symmetric InfoNCE on (text, image) pairs.

    Validation and test score image->text retrieval top-1, where any caption with the image's
    label counts when rows carry labels (captions of one class are interchangeable).
    """
    if data.modalities != TEXT_IMAGE:
        raise ValueError(f"alignment aligns text and image; the data carries {', '.join(data.modalities)}")
    both = data.text_mask & data.image_mask
    if not both.all():
        raise ValueError(f"alignment needs text and image in every row; {int((~both).sum())} rows lack one")
    cfg = resolve_optimisation(cfg, ALIGNMENT_STRATEGY)
    config = resolve_config(ALIGNMENT_STRATEGY, dict(hparams or {}))
    splits = split_indices(data.labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    _check_splits(splits, len(data))
    inputs, _ = _tensors(data, None)
    text, image = inputs["text"], inputs["image"]

    torch.manual_seed(cfg.seed)
    model = build_head_module(ALIGNMENT_STRATEGY, {"text": text.shape[1], "image": image.shape[1]}, config)

    def batch_loss(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return contrastive_loss(model(text[rows], image[rows]))

    def report_for(rows: np.ndarray) -> dict[str, Any]:
        idx = torch.from_numpy(rows)
        return retrieval_report(
            model.project_text(text[idx]).numpy(),
            model.project_image(image[idx]).numpy(),
            [data.labels[i] for i in rows],
        )

    def validate() -> tuple[float, float, dict[str, Any]]:
        idx = torch.from_numpy(splits.val)
        loss = float(contrastive_loss(model(text[idx], image[idx])))
        return report_for(splits.val)["image_to_text_top1"], loss, {}

    history, best_epoch = fit(model, batch_loss, validate, splits.train, cfg, "train alignment")
    with torch.no_grad():
        val_top1, val_loss, _ = validate()
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


def train_on(
    data: EmbeddedSet,
    task: str,
    strategy: str,
    hparams: Mapping[str, Any] | None = None,
    cfg: TrainConfig = TrainConfig(),
    task_kinds: Mapping[str, str] | None = None,
    task_weights: Mapping[str, float] | None = None,
) -> TrainResult:
    """Trains the head ``task`` describes on embedded rows."""
    if task == "alignment":
        return train_alignment(data, hparams, cfg)
    if task == "classification":
        return train_classifier(data, strategy, hparams, cfg)
    if task == "regression":
        return train_regression(data, strategy, hparams, cfg, task_weights)
    if task == "multitask":
        return train_multitask(data, strategy, hparams, cfg, task_kinds, task_weights)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASK_TYPES)}")


def _baseline_figures(result: TrainResult) -> Any:
    """What a baseline is compared by: accuracy, R², or each task's of those."""
    metrics = result.metrics
    if "test_accuracy" in metrics:
        return metrics["test_accuracy"]
    if "test_r2" in metrics:
        return metrics["test_r2"]
    return {
        name: part.get("test_accuracy", part.get("test_r2"))
        for name, part in metrics.get("tasks", {}).items()
    }


def train_head(
    data_path: Path | str,
    name: str,
    strategy: str,
    out_dir: Path | str,
    embedder: Embedder,
    cfg: TrainConfig = TrainConfig(),
    hparams: Mapping[str, Any] | None = None,
    baselines: tuple[str, ...] | bool = (),
    task: str = "classification",
    task_kinds: Mapping[str, str] | None = None,
    task_weights: Mapping[str, float] | None = None,
    modalities: Sequence[str] | None = None,
) -> tuple[Path, TrainResult]:
    """Embeds a data file, trains one head, saves it (+ report.json, history.json) to ``out_dir/name``.

    ``baselines`` are strategies trained the same way on the same split only to record their
    test figures in this head's metrics (e.g. how a fused head compares with text_only); True
    means each of the head's modalities alone. ``modalities`` picks the head's inputs (default:
    what the data carries, ``training.data.data_modalities``).
    """
    data_path = Path(data_path)
    if strategy == ALIGNMENT_STRATEGY:
        task = "alignment"
    examples = read_examples(
        data_path, require_label=task == "classification", require_targets=task in ("regression", "multitask")
    )
    data = embed_examples(examples, embedder, progress=cfg.progress, modalities=modalities)
    result = train_on(data, task, strategy, hparams, cfg, task_kinds, task_weights)
    if baselines is True:
        baselines = single_baselines(data.modalities)
    if baselines and task != "alignment":
        key = {"classification": "baselines_test_accuracy", "regression": "baselines_test_r2"}.get(
            task, "baselines_test"
        )
        result.metrics[key] = {
            baseline: _baseline_figures(
                train_on(data, task, baseline, hparams, cfg, task_kinds, task_weights)
            )
            for baseline in baselines
        }
    metrics: dict[str, Any] = dict(result.metrics)
    used = resolve_optimisation(cfg, result.strategy)
    recorded = {k: v for k, v in dataclasses.asdict(used).items() if k != "progress"}
    metrics["training"] = {
        "data": str(data_path),
        "data_sha256": data_sha256(data_path),
        "task": task,
        **recorded,
    }
    head_dir = Path(out_dir) / name
    save_head(
        head_dir,
        result.model,
        strategy=result.strategy,
        input_dims={m: array.shape[1] for m, array in data.inputs.items()},
        config=result.config,
        encoders={
            m: {"model_id": info.model_id, "revision": info.revision}
            for m in encoded(data.modalities)
            for info in [encoder_info(embedder, m)]
        },
        outputs=result.outputs,
        missing_modality_policy=result.missing_modality_policy,
        fusion_weights=result.fusion_weights,
        metrics=metrics,
        features=result.features,
    )
    write_report(head_dir, {**result.report, "head": name, "data": str(data_path), "split": "test"})
    (head_dir / HISTORY_FILE).write_text(json.dumps(result.history, indent=1) + "\n", encoding="utf-8")
    _LOGGER.info("saved head %s (%s, %s) to %s", name, task, result.strategy, head_dir)
    return head_dir, result


def train_demo(
    data_dir: Path, out_dir: Path, embedder: Embedder, cfg: TrainConfig
) -> list[tuple[Path, TrainResult]]:
    """Trains the demo heads from a ``training.demo_data`` directory."""
    trained = []
    for demo in DEMO_HEADS:
        path = data_dir / demo.filename
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found; generate it with python -m training.demo_data --out {data_dir}"
            )
        baselines = True if demo.baselines else ()
        trained.append(
            train_head(
                path, demo.name, demo.strategy, out_dir, embedder, cfg, baselines=baselines, task=demo.task
            )
        )
    return trained
