"""Training data for heads: files -> examples -> embedded arrays, and deterministic stratified splits.

Three layouts, picked by ``read_examples`` from the path:

- JSONL: each line an object with any of ``text`` (string or null), ``image``, ``audio``,
  ``features`` and what the head learns: ``label`` (a string or a number, used as its text; classification), ``target`` (a
  number; regression), ``targets`` (``{name: number}``; regression with several targets) or
  ``labels`` (``{task: value}``; multi-task, a string or number per task, tasks may be missing
  from a row). ``image`` is one of: a path relative to the JSONL file (or absolute) ending in
  .png/.jpg/.jpeg/.webp/.gif, a ``data:image/...;base64,`` URL, raw base64, or null; ``audio``
  likewise, a path ending in .wav/.flac/.ogg/.mp3/.m4a; ``features`` is ``{name: number}``
  (tabular features: every row that has them gives the same names, finite numbers).
- CSV with a header row naming ``text``, ``image``, ``audio``, ``feature.<name>`` columns and
  the answers: a ``label`` column, a ``target`` column, ``target.<name>`` columns and/or
  ``label.<task>`` columns (same values as JSONL; an empty cell is null; a ``label.<task>``
  cell that parses as a number is one).
- An image folder: ``<dir>/<label>/<image file>``, one sub-directory per class (image only).

A row may carry any subset of the modalities; it then trains with the others masked out. A
head's modalities are what the data carries (``--modalities`` picks a subset); data with only
text and/or image trains a text + image head, as every head did before modalities were a list. ``target``,
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

from services.fusion.modalities import FEATURES, NAMES, TEXT_IMAGE, ordered
from training.embedders import Embedder, embed_with, encoder_info

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".m4a")
_SUFFIXES = {"image": IMAGE_SUFFIXES, "audio": AUDIO_SUFFIXES}


class DataError(ValueError):
    """A training file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    text: str | None
    image: bytes | None
    label: str | None
    # Regression targets and multi-task labels by name: a float, or a string class label.
    targets: Mapping[str, str | float] = field(default_factory=dict)
    audio: bytes | None = None
    features: Mapping[str, float] | None = None

    def has(self, modality: str) -> bool:
        return getattr(self, modality) is not None


class EmbeddedSet:
    """Embeddings of a list of examples: per modality an array [N, D] (zero rows where absent)
    and a mask [N] (False where absent); ``features`` hold the raw numbers, in ``feature_names``
    order. ``text``, ``image``, ``text_mask`` and ``image_mask`` build (and read) a text + image set."""

    def __init__(
        self,
        text: np.ndarray | None = None,
        image: np.ndarray | None = None,
        text_mask: np.ndarray | None = None,
        image_mask: np.ndarray | None = None,
        labels: Sequence[str | None] = (),
        targets: Sequence[Mapping[str, str | float]] = (),  # per row; () when no row has any
        *,
        inputs: Mapping[str, np.ndarray] | None = None,
        masks: Mapping[str, np.ndarray] | None = None,
        feature_names: Sequence[str] = (),
    ) -> None:
        inputs, masks = dict(inputs or {}), dict(masks or {})
        for modality, array, mask in (("text", text, text_mask), ("image", image, image_mask)):
            if array is not None:
                inputs[modality] = array
                masks[modality] = mask if mask is not None else np.ones(len(array), dtype=bool)
        self.inputs = {m: inputs[m] for m in ordered(inputs)}
        self.masks = {m: np.asarray(masks[m], dtype=bool) for m in self.inputs}
        self.labels = tuple(labels)
        self.targets = tuple(targets)
        self.feature_names = tuple(feature_names)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.inputs)

    text = property(lambda self: self.inputs["text"])
    image = property(lambda self: self.inputs["image"])
    text_mask = property(lambda self: self.masks["text"])
    image_mask = property(lambda self: self.masks["image"])

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> EmbeddedSet:
        return EmbeddedSet(
            labels=[self.labels[i] for i in rows],
            targets=[self.targets[i] for i in rows] if self.targets else (),
            inputs={m: array[rows] for m, array in self.inputs.items()},
            masks={m: mask[rows] for m, mask in self.masks.items()},
            feature_names=self.feature_names,
        )

    def all_present(self, modalities: Sequence[str] | None = None) -> np.ndarray:
        """[N] bool: the rows that carry every one of ``modalities`` (default: all of the set's)."""
        names = self.modalities if modalities is None else modalities
        return np.all(np.stack([self.masks[m] for m in names]), axis=0)


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def _read_media(value: str, base_dir: Path, where: str, modality: str) -> bytes:
    """An image or audio file given as a path (by its suffix), a base64 data URL or raw base64."""
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if ";base64" not in header or not payload:
            raise DataError(f"{where}: {modality} data URL must be base64-encoded (data:<type>;base64,...)")
        return _b64(payload, where, modality)
    if value.lower().endswith(_SUFFIXES[modality]):
        path = Path(value) if Path(value).is_absolute() else base_dir / value
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(f"{where}: cannot read {modality} {path}: {exc.strerror or exc}") from None
    return _b64(value, where, modality)


def _b64(payload: str, where: str, modality: str = "image") -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(
            f"{where}: {modality} is neither a path ending in {'/'.join(_SUFFIXES[modality])} nor valid base64"
        ) from None


def _features(value: Any, where: str) -> dict[str, float]:
    if not isinstance(value, dict) or not value:
        raise DataError(f"{where}: features must be an object of name -> number")
    features = {}
    for name, number in value.items():
        if not isinstance(name, str) or not name:
            raise DataError(f"{where}: feature names must be non-empty strings")
        if not _is_number(number) or not math.isfinite(number):
            raise DataError(f"{where}: feature {name!r} must be a finite number, got {number!r}")
        features[name] = float(number)
    return features


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
    audio, features = row.get("audio"), row.get("features")
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}: text must be a string or null")
    for modality, value in (("image", image), ("audio", audio)):
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: {modality} must be a string (path, data URL or base64) or null")
    if label is not None:
        label = _label_text(label, "label", where)
    if require_label and label is None:
        raise DataError(f"{where}: missing label")
    targets = _targets(row, where)
    if require_targets and not targets and label is None:
        raise DataError(f"{where}: missing target (give target, targets or labels)")
    if text is None and image is None and audio is None and features is None:
        raise DataError(f"{where}: a row needs text, image, audio or features (any of them)")
    return Example(
        text,
        _read_media(image, base_dir, where, "image") if image is not None else None,
        label,
        targets,
        audio=_read_media(audio, base_dir, where, "audio") if audio is not None else None,
        features=_features(features, where) if features is not None else None,
    )


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
        feature_columns = [c for c in reader.fieldnames or () if c.startswith("feature.")]
        if not columns & {"text", "image", "audio"} and not feature_columns:
            raise DataError(
                f"{path}:1: the header needs a text or image column (or audio, feature.<name>); found {sorted(columns)}"
            )
        target_columns = sorted(c for c in columns if c.startswith("target."))
        task_columns = sorted(c for c in columns if c.startswith("label."))
        for row in reader:
            where = f"{path}:{reader.line_num}"
            values: dict[str, Any] = {
                key: (row.get(key) or None) for key in ("text", "image", "audio", "label")
            }
            if any(row.get(c) for c in feature_columns):
                values["features"] = {
                    c.removeprefix("feature."): _csv_number(row.get(c) or "", c, where)
                    for c in feature_columns
                }
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


def data_modalities(examples: Sequence[Example], wanted: Sequence[str] | None = None) -> tuple[str, ...]:
    """The head's modalities: ``wanted`` (checked against the data), else those the data carries;
    data with only text and/or image gives a text + image head, as heads always were."""
    carried = ordered(m for m in NAMES if any(e.has(m) for e in examples))
    if wanted:
        try:
            chosen = ordered(wanted)
        except ValueError as exc:
            raise DataError(str(exc)) from None
        absent = [m for m in chosen if m not in carried]
        if absent:
            raise DataError(f"no row carries {', '.join(absent)}; the data carries {', '.join(carried)}")
        if not any(any(e.has(m) for m in chosen) for e in examples):
            raise DataError("no row carries any of the chosen modalities")
        return chosen
    return TEXT_IMAGE if set(carried) <= set(TEXT_IMAGE) else carried


def feature_names(examples: Sequence[Example]) -> tuple[str, ...]:
    """The feature names rows give, in the first such row's order; every row with features gives
    the same names (DataError naming the row otherwise)."""
    names: tuple[str, ...] = ()
    for index, example in enumerate(examples):
        if example.features is None:
            continue
        if not names:
            names = tuple(example.features)
        elif set(example.features) != set(names):
            differ = sorted(set(example.features) ^ set(names))
            raise DataError(f"row {index + 1}: its features differ from the first row's in {differ}")
    return names


def embed_examples(
    examples: Sequence[Example],
    embedder: Embedder,
    chunk_size: int = 64,
    progress: bool = True,
    modalities: Sequence[str] | None = None,
) -> EmbeddedSet:
    """Embeds every present item of the head's modalities (``data_modalities``), in chunks (the
    progress bar advances per chunk); features are kept as raw numbers."""
    n = len(examples)
    chosen = data_modalities(examples, modalities)
    rows = {m: np.array([i for i, e in enumerate(examples) if e.has(m)], dtype=np.int64) for m in chosen}
    names = feature_names(examples) if FEATURES in chosen else ()
    inputs: dict[str, np.ndarray] = {}
    with tqdm(
        total=sum(len(r) for m, r in rows.items() if m != FEATURES),
        desc="embedding",
        unit="item",
        disable=None if progress else True,
    ) as bar:
        for modality in chosen:
            if modality == FEATURES:
                inputs[modality] = np.zeros((n, len(names)), dtype=np.float64)
                for i in rows[modality]:
                    inputs[modality][i] = [examples[i].features[name] for name in names]
                continue
            inputs[modality] = np.zeros((n, encoder_info(embedder, modality).embedding_dim), dtype=np.float32)
            for start in range(0, len(rows[modality]), chunk_size):
                part = rows[modality][start : start + chunk_size]
                inputs[modality][part] = embed_with(
                    embedder, modality, [getattr(examples[i], modality) for i in part]
                )
                bar.update(len(part))
    masks = {}
    for modality in chosen:
        masks[modality] = np.zeros(n, dtype=bool)
        masks[modality][rows[modality]] = True
    carried = np.any(np.stack(list(masks.values())), axis=0)
    if not carried.all():
        empty = int(np.flatnonzero(~carried)[0])
        raise DataError(f"row {empty + 1} carries none of the head's modalities ({', '.join(chosen)})")
    targets = tuple(dict(e.targets) for e in examples) if any(e.targets for e in examples) else ()
    return EmbeddedSet(
        labels=tuple(e.label for e in examples),
        targets=targets,
        inputs=inputs,
        masks=masks,
        feature_names=names,
    )


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
