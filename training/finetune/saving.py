"""Fine-tuned output folders: writing them, and checking and loading them for serving.

A folder holds ``save_pretrained`` weights (safetensors), the tokenizer, a config whose
``id2label``/``label2id`` name the labels, ``manifest.json`` (how it was trained) and
``report.json`` (its held-out test report). ``load_finetuned`` needs only torch and
transformers, so a server can use it without the training code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_FILE = "manifest.json"
REPORT_FILE = "report.json"
CONFIG_FILE = "config.json"
SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = "pytorch_model.bin"
TASKS = ("ner", "classify")
_ARCHITECTURE_SUFFIX = {"ner": "ForTokenClassification", "classify": "ForSequenceClassification"}
_BIO_LABEL = re.compile(r"^(O|[BI]-\S+)$")
_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


@dataclass(frozen=True)
class FinetunedModel:
    path: Path
    task: str  # "ner" or "classify"
    labels: tuple[str, ...]  # index = class id
    model: Any  # a transformers PreTrainedModel, in eval mode
    tokenizer: Any
    manifest: dict[str, Any]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _labels_from_config(config: dict[str, Any], where: Path) -> tuple[str, ...]:
    id2label, label2id = config.get("id2label"), config.get("label2id")
    if not isinstance(id2label, dict) or not id2label:
        raise ValueError(f"{where}: no id2label: the folder is not a fine-tuned classifier")
    try:
        by_id = {int(key): value for key, value in id2label.items()}
    except ValueError:
        raise ValueError(f"{where}: id2label keys must be integers") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"{where}: id2label ids must be 0..{len(by_id) - 1}, got {sorted(by_id)}")
    labels = tuple(by_id[i] for i in range(len(by_id)))
    if any(not isinstance(label, str) or not label for label in labels) or len(set(labels)) != len(labels):
        raise ValueError(f"{where}: id2label names must be distinct non-empty strings")
    if all(_DEFAULT_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{where}: id2label holds only placeholder names (LABEL_0, ...): labels were never set"
        )
    if not isinstance(label2id, dict) or {k: int(v) for k, v in label2id.items()} != {
        label: i for i, label in enumerate(labels)
    }:
        raise ValueError(f"{where}: label2id is not the inverse of id2label")
    if "num_labels" in config and config["num_labels"] != len(labels):
        raise ValueError(f"{where}: num_labels {config['num_labels']} but id2label has {len(labels)}")
    return labels


def _task_from_architectures(config: dict[str, Any], where: Path) -> str:
    for architecture in config.get("architectures") or ():
        for task, suffix in _ARCHITECTURE_SUFFIX.items():
            if architecture.endswith(suffix):
                return task
    raise ValueError(
        f"{where}: architectures {config.get('architectures')} are neither token nor sequence classifiers"
    )


def check_finetuned(path: str | Path) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """Validates a folder without loading weights; returns (task, labels, manifest) or raises ValueError."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a directory")
    if not any((path / name).is_file() for name in SAFETENSORS_FILES):
        extra = (
            f" ({PICKLE_WEIGHTS} is not loaded: pickled weights can run code)"
            if (path / PICKLE_WEIGHTS).exists()
            else ""
        )
        raise ValueError(f"{path}: no safetensors weights ({' or '.join(SAFETENSORS_FILES)}){extra}")
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path}: no {CONFIG_FILE}")
    config = _read_json(path / CONFIG_FILE)
    labels = _labels_from_config(config, path / CONFIG_FILE)
    task = _task_from_architectures(config, path / CONFIG_FILE)
    manifest = _read_json(path / MANIFEST_FILE) if (path / MANIFEST_FILE).is_file() else {}
    if manifest:
        if manifest.get("task") != task:
            raise ValueError(
                f"{path}: {MANIFEST_FILE} says task {manifest.get('task')!r}, the config {task!r}"
            )
        if tuple(manifest.get("labels", ())) != labels:
            raise ValueError(f"{path}: {MANIFEST_FILE} labels differ from the config's id2label")
    if task == "ner" and not all(_BIO_LABEL.match(label) for label in labels):
        raise ValueError(
            f"{path}: a token classifier's labels must be O, B-TYPE or I-TYPE; got {list(labels)}"
        )
    return task, labels, manifest


def load_finetuned(path: str | Path, device: str = "cpu") -> FinetunedModel:
    """Loads a fine-tuned folder after ``check_finetuned``; raises ValueError on an invalid one."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    path = Path(path)
    task, labels, manifest = check_finetuned(path)
    model_class = AutoModelForTokenClassification if task == "ner" else AutoModelForSequenceClassification
    model = model_class.from_pretrained(path, use_safetensors=True).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return FinetunedModel(path, task, labels, model, tokenizer, manifest)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def _readable_as_other_files(folder: Path) -> None:
    """transformers writes the weights through a 0600 temporary file; give them the umask's mode,
    so a server running as another user (the model image) can read what training wrote."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def save_finetuned(
    out: str | Path, model, tokenizer, manifest: dict[str, Any], report: dict[str, Any]
) -> Path:
    """Writes the folder next to ``out`` and swaps it in, so a reader never sees half of one.

    An existing ``out`` is replaced only when it is an earlier output (it has a manifest), so a
    mistyped ``--out`` cannot wipe an unrelated folder.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise ValueError(f"{out}: exists and is not an earlier fine-tuning output; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    _write_json(staging / MANIFEST_FILE, manifest)
    _write_json(staging / REPORT_FILE, report)
    _readable_as_other_files(staging)
    check_finetuned(staging)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
