"""Fine-tuning runs end to end: read and split the data, train, report on test, save; and re-evaluation."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from services.common.model_source import model_revision
from training.finetune.classification_task import ClassificationTask
from training.finetune.loop import TrainConfig, fit
from training.finetune.ner_task import NerTask
from training.finetune.saving import load_finetuned, save_finetuned
from training.finetune.split import stratified_split

_LOGGER = logging.getLogger(__name__)

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class DataFiles:
    data: Path
    dev: Path | None = None  # a file here wins over a split of ``data``
    test: Path | None = None
    dev_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass(frozen=True)
class BaseModel:
    source: str  # a local directory or a hub id
    model_id: str  # what the manifest calls it (the hub id of a packaged default)
    revision: str = ""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_threads() -> int:
    """Every core this process may use: on a small CPU box the forward pass wants them all."""
    return max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def model_length_limit(config, tokenizer) -> int:
    """The longest input the model's position embeddings and tokenizer allow."""
    candidates = [getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    return int(min(c for c in candidates if c and c < 1_000_000))


def _split_data(task, files: DataFiles, seed: int) -> tuple[dict[str, list], list[str], dict[str, Any]]:
    """Train/dev/test examples and the label set, which the ``data`` file defines.

    Given dev/test files win; the rest is a seeded, stratified split of ``data``.
    """
    examples = task.read(files.data)
    labels = task.labels(examples)
    dev_fraction = 0.0 if files.dev else files.dev_fraction
    test_fraction = 0.0 if files.test else files.test_fraction
    parts = stratified_split(task.strata(examples), dev_fraction, test_fraction, seed)
    splits = {name: [examples[i] for i in getattr(parts, name)] for name in ("train", "dev", "test")}
    for name in ("dev", "test"):
        path = getattr(files, name)
        if path:
            # Labels the training data never shows cannot be learnt: refuse them with their line.
            splits[name] = task.read(path, known_labels=labels)
    for name, rows in splits.items():
        if not rows:
            raise ValueError(f"the {name} split is empty; give more data or a --{name} file")
    provenance = {
        "files": {
            name: {"path": str(path), "sha256": file_sha256(path)}
            for name, path in (("data", files.data), ("dev", files.dev), ("test", files.test))
            if path
        },
        "split": {
            "seed": seed,
            "dev": "file" if files.dev else f"{dev_fraction:g} of data, stratified",
            "test": "file" if files.test else f"{test_fraction:g} of data, stratified",
        },
        "sizes": {name: len(rows) for name, rows in splits.items()},
    }
    return splits, labels, provenance


def _print_report(task, report: dict[str, Any], title: str) -> None:
    print(f"\n== {title} ==\n{task.format_report(report)}\n", flush=True)


def finetune(
    task: NerTask | ClassificationTask,
    files: DataFiles,
    base: BaseModel,
    out: Path,
    cfg: TrainConfig | None = None,
    threads: int | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Trains, reports on the held-out test split and saves the folder; returns the manifest."""
    cfg = cfg or TrainConfig()
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    splits, labels, provenance = _split_data(task, files, cfg.seed)
    label2id = {label: i for i, label in enumerate(labels)}
    id2label = dict(enumerate(labels))

    tokenizer = AutoTokenizer.from_pretrained(base.source, revision=base.revision or None)
    if not tokenizer.is_fast:
        raise ValueError(f"{base.source}: needs a fast tokenizer (word alignment comes from it)")
    config = AutoConfig.from_pretrained(base.source, revision=base.revision or None)
    max_length = min(cfg.max_length, model_length_limit(config, tokenizer))
    encoded = {name: task.encode(rows, tokenizer, label2id, max_length) for name, rows in splits.items()}
    truncated = {name: e.truncated for name, e in encoded.items()}
    for name, count in truncated.items():
        if count:
            _LOGGER.info(
                "%s: %d of %d examples truncated to %d tokens", name, count, len(splits[name]), max_length
            )

    # The seed fixes the new head's initialisation as well as the shuffling and dropout.
    transformers.set_seed(cfg.seed)
    model = task.model_class.from_pretrained(
        base.source,
        revision=base.revision or None,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        dtype=torch.float32,  # the master weights, whatever the checkpoint stores (--bf16 autocasts)
    )
    pad_id = tokenizer.pad_token_id

    def evaluate(name: str) -> dict[str, Any]:
        predictions = task.predict(model, encoded[name], splits[name], id2label, cfg.batch_size, pad_id)
        return task.report(splits[name], predictions, labels)

    _LOGGER.info(
        "fine-tuning %s for %s: %s examples, %d labels, %d threads",
        base.model_id,
        task.name,
        provenance["sizes"],
        len(labels),
        threads,
    )
    started = time.perf_counter()
    result = fit(
        model,
        encoded["train"].features,
        lambda: task.score(evaluate("dev")),
        cfg,
        pad_id,
        score_name=task.score_name,
        progress=progress,
    )
    training_seconds = time.perf_counter() - started
    report = evaluate("test")
    report["truncated_examples"] = truncated["test"]
    report["max_length"] = max_length
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "task": task.name,
        "labels": labels,
        "base_model": {
            "id": base.model_id,
            "source": base.source,
            "revision": model_revision(base.source, base.revision),
        },
        "data": {**provenance, "truncated": truncated, "max_length": max_length},
        "hyperparameters": asdict(cfg),
        "seed": cfg.seed,
        "threads": threads,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "training_seconds": round(training_seconds, 1),
        "metrics": {
            "dev_best": {"metric": task.score_name, "value": result.best_score, "epoch": result.best_epoch},
            "test": task.headline(report),
        },
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if task.name == "ner":
        manifest["chunking"] = task.chunking
    save_finetuned(out, model, tokenizer, manifest, report)
    _print_report(task, report, f"{task.name} test report ({len(splits['test'])} examples)")
    _LOGGER.info("saved %s (best epoch %d, %.0f s of training)", out, result.best_epoch, training_seconds)
    return manifest


def evaluate_folder(
    path: Path, data: Path, batch_size: int = 32, threads: int | None = None
) -> dict[str, Any]:
    """Re-runs the report of a fine-tuned folder on a data file; returns and prints it."""
    torch.set_num_threads(threads or default_threads())
    loaded = load_finetuned(path)
    manifest = loaded.manifest
    task = (
        NerTask(chunking=manifest.get("chunking", "default"))
        if loaded.task == "ner"
        else ClassificationTask()
    )
    examples = task.read(data, known_labels=loaded.labels)
    label2id = {label: i for i, label in enumerate(loaded.labels)}
    max_length = manifest.get("data", {}).get("max_length") or model_length_limit(
        loaded.model.config, loaded.tokenizer
    )
    encoded = task.encode(examples, loaded.tokenizer, label2id, max_length)
    id2label = dict(enumerate(loaded.labels))
    predictions = task.predict(
        loaded.model, encoded, examples, id2label, batch_size, loaded.tokenizer.pad_token_id
    )
    report = task.report(examples, predictions, list(loaded.labels))
    report["truncated_examples"] = encoded.truncated
    report["max_length"] = max_length
    report["data"] = {"path": str(data), "sha256": file_sha256(data)}
    _print_report(task, report, f"{task.name} report on {data} ({len(examples)} examples)")
    return report
