"""Training data for heads: files -> examples -> embedded arrays, and deterministic stratified splits.

Three layouts, picked by ``read_examples`` from the path:

- JSONL: each line an object with ``text`` (string or null), ``image`` and what the head
  learns: ``label`` (a string or a number, used as its text; classification), ``target`` (a
  number; regression), ``targets`` (``{name: number}``; regression with several targets) or
  ``labels`` (``{task: value}``; multi-task, a string or number per task, tasks may be missing
  from a row). ``image`` is one of: a path relative to the JSONL file (or absolute) ending in
  .png/.jpg/.jpeg/.webp/.gif, a ``data:image/...;base64,`` URL, raw base64, or null.
- CSV with a header row naming ``text``, ``image`` and the answers: a ``label`` column,
  a ``target`` column, ``target.<name>`` columns and/or ``label.<task>`` columns (same values
  as JSONL; an empty cell is null; a ``label.<task>`` cell that parses as a number is one).
- An image folder: ``<dir>/<label>/<image file>``, one sub-directory per class (image only).

A row may lack one modality; it then trains with that modality masked out. ``target``,
``targets`` and ``labels`` meet in ``Example.targets`` (``target`` is the target named
``target``); a NaN or infinite number is refused with the file and line.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from training.embedders import Embedder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


class DataError(ValueError):
    """A training file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    text: str | None
    image: bytes | None
    label: str | None
    # Regression targets and multi-task labels by name: a float, or a string class label.
    targets: Mapping[str, str | float] = field(default_factory=dict)


@dataclass(frozen=True)
class EmbeddedSet:
    """Embeddings of a list of examples; absent modalities are zero rows with a False mask."""

    text: np.ndarray  # [N, Dt] float32
    image: np.ndarray  # [N, Di] float32
    text_mask: np.ndarray  # [N] bool
    image_mask: np.ndarray  # [N] bool
    labels: tuple[str | None, ...]
    targets: tuple[Mapping[str, str | float], ...] = ()  # per row; () when no row has any

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _read_image(value: str, base_dir: Path, where: str) -> bytes:
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header or not payload:
            raise DataError(f"{where}: image data URL must be base64-encoded (data:image/png;base64,...)")
        return _b64(payload, where)
    if value.lower().endswith(IMAGE_SUFFIXES):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"{where}: cannot read image {path}: {exc.strerror or exc}") from None
    return _b64(value, where)


def _b64(payload: str, where: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(
            f"{where}: image is neither a path ending in {'/'.join(IMAGE_SUFFIXES)} nor valid base64"
        ) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: Any, name: str, where: str) -> float:
    if not _is_number(value):
        raise DataError(f"{where}: {name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise DataError(f"{where}: {name} is {value!r}; targets must be finite numbers")
    return float(value)


def _label_text(value: Any, name: str, where: str) -> str:
    """A class label: a non-empty string, or a number used as its text (``1`` -> ``"1"``)."""
    if _is_number(value):
        if not math.isfinite(value):
            raise DataError(f"{where}: {name} is {value!r}; a label must be finite")
        return str(value)
    if not (isinstance(value, str) and value):
        raise DataError(f"{where}: {name} must be a non-empty string or a number")
    return value


def _targets(row: dict, where: str) -> dict[str, str | float]:
    """``target``, ``targets`` and ``labels`` of a row, merged by name and checked."""
    found: dict[str, str | float] = {}

    def add(name: Any, value: str | float) -> None:
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: target and task names must be non-empty strings")
        if name in found:
            raise DataError(f"{where}: {name!r} is given twice (target, targets and labels share names)")
        found[name] = value

    if row.get("target") is not None:
        add("target", _finite(row["target"], "target", where))
    for key in ("targets", "labels"):
        values = row.get(key)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise DataError(f"{where}: {key} must be an object of name -> value")
        for name, value in values.items():
            if value is None:
                continue  # a missing label: masked out of that task's loss
            if key == "targets":
                add(name, _finite(value, f"targets.{name}", where))
            elif _is_number(value):
                add(name, _finite(value, f"labels.{name}", where))
            else:
                add(name, _label_text(value, f"labels.{name}", where))
    return found


def _example(
    row: dict, base_dir: Path, where: str, require_label: bool, require_targets: bool = False
) -> Example:
    """One row of any layout, checked; raises DataError naming the file and line."""
    text, image, label = row.get("text"), row.get("image"), row.get("label")
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}: text must be a string or null")
    if image is not None and not isinstance(image, str):
        raise DataError(f"{where}: image must be a string (path, data URL or base64) or null")
    if label is not None:
        label = _label_text(label, "label", where)
    if require_label and label is None:
        raise DataError(f"{where}: missing label")
    targets = _targets(row, where)
    if require_targets and not targets and label is None:
        raise DataError(f"{where}: missing target (give target, targets or labels)")
    if text is None and image is None:
        raise DataError(f"{where}: a row needs text, image or both")
    image_bytes = _read_image(image, base_dir, where) if image is not None else None
    return Example(text, image_bytes, label, targets)


def _nonempty(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def read_jsonl(path: Path | str, require_label: bool = True, require_targets: bool = False) -> list[Example]:
    """Parses a JSONL training file; raises DataError naming the first bad line."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON: {exc.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: each line must be a JSON object")
            examples.append(_example(row, path.parent, where, require_label, require_targets))
    return _nonempty(examples, path)


def _csv_cell(value: str) -> str | float:
    """A ``label.<task>`` cell: a number when it parses as one, else the string."""
    try:
        return float(value)
    except ValueError:
        return value


def read_csv(path: Path | str, require_label: bool = True, require_targets: bool = False) -> list[Example]:
    """Parses a CSV file with a header (``text``, ``image``, ``label``, ``target``,
    ``target.<name>`` and ``label.<task>`` columns; others ignored)."""
    path = Path(path)
    examples = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not columns & {"text", "image"}:
            raise DataError(f"{path}:1: the header needs a text or image column; found {sorted(columns)}")
        target_columns = sorted(c for c in columns if c.startswith("target."))
        task_columns = sorted(c for c in columns if c.startswith("label."))
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values: dict[str, Any] = {key: (row.get(key) or None) for key in ("text", "image", "label")}
            if row.get("target"):
                values["target"] = _csv_number(row["target"], "target", where)
            values["targets"] = {
                c.removeprefix("target."): _csv_number(row[c], c, where) for c in target_columns if row.get(c)
            }
            values["labels"] = {
                c.removeprefix("label."): _csv_cell(row[c]) for c in task_columns if row.get(c)
            }
            examples.append(_example(values, path.parent, where, require_label, require_targets))
    return _nonempty(examples, path)


def _csv_number(value: str, column: str, where: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: {column} must be a number, got {value!r}") from None


def read_image_folder(path: Path | str) -> list[Example]:
    """``<dir>/<label>/<image>``: every image file under a class directory, in sorted order."""
    path = Path(path)
    examples = []
    for class_dir in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for image in sorted(class_dir.iterdir()):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                examples.append(Example(None, image.read_bytes(), class_dir.name))
    return _nonempty(examples, path)


def read_examples(
    path: Path | str, require_label: bool = True, require_targets: bool = False
) -> list[Example]:
    """Reads any supported layout: a directory of class folders, a .csv file, or JSONL.

    ``require_label``: every row needs ``label`` (classification); ``require_targets``: every
    row needs at least one target or task label (regression, multi-task).
    """
    path = Path(path)
    if path.is_dir():
        return read_image_folder(path)
    if path.suffix.lower() == ".csv":
        return read_csv(path, require_label, require_targets)
    return read_jsonl(path, require_label, require_targets)


def data_sha256(path: Path | str) -> str:
    """The sha256 of a data file, or of an image folder's relative paths and contents."""
    path = Path(path)
    if not path.is_dir():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def file_sha256(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def embed_examples(
    examples: Sequence[Example], embedder: Embedder, chunk_size: int = 64, progress: bool = True
) -> EmbeddedSet:
    """Embeds every present text and image, in chunks (the progress bar advances per chunk)."""
    n = len(examples)
    text = np.zeros((n, embedder.text_info.embedding_dim), dtype=np.float32)
    image = np.zeros((n, embedder.image_info.embedding_dim), dtype=np.float32)
    text_rows = np.array([i for i, e in enumerate(examples) if e.text is not None], dtype=np.int64)
    image_rows = np.array([i for i, e in enumerate(examples) if e.image is not None], dtype=np.int64)
    with tqdm(
        total=len(text_rows) + len(image_rows),
        desc="embedding",
        unit="item",
        disable=None if progress else True,
    ) as bar:
        for start in range(0, len(text_rows), chunk_size):
            rows = text_rows[start : start + chunk_size]
            text[rows] = embedder.embed_texts([examples[i].text for i in rows])
            bar.update(len(rows))
        for start in range(0, len(image_rows), chunk_size):
            rows = image_rows[start : start + chunk_size]
            image[rows] = embedder.embed_images([examples[i].image for i in rows])
            bar.update(len(rows))
    text_mask = np.zeros(n, dtype=bool)
    text_mask[text_rows] = True
    image_mask = np.zeros(n, dtype=bool)
    image_mask[image_rows] = True
    targets = tuple(dict(e.targets) for e in examples) if any(e.targets for e in examples) else ()
    return EmbeddedSet(text, image, text_mask, image_mask, tuple(e.label for e in examples), targets)


def split_indices(
    labels: Sequence[str | None], val_fraction: float, test_fraction: float, seed: int
) -> Splits:
    """Stratified (per label) train/val/test split, deterministic given the labels and seed.

    Each label contributes round(fraction * count) rows to val and test, so small classes are
    represented in every split when they can be.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    groups: dict[str | None, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    train, val, test = [], [], []
    for label in sorted(groups, key=lambda x: (x is None, x or "")):
        rows = np.array(groups[label])
        rng.shuffle(rows)
        n_test = int(round(test_fraction * len(rows)))
        n_val = int(round(val_fraction * len(rows)))
        test.extend(rows[:n_test])
        val.extend(rows[n_test : n_test + n_val])
        train.extend(rows[n_test + n_val :])
    return Splits(*(np.sort(np.array(part, dtype=np.int64)) for part in (train, val, test)))
