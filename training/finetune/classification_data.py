"""Labelled texts for sequence classification: JSONL or CSV, with errors that name the file and line.

JSONL (``.jsonl``/``.json``): one object per line with a string ``text`` and a ``label`` (a
string or an integer, read as a string); blank lines are skipped. CSV (``.csv``): a header row
naming at least ``text`` and ``label`` columns; other columns are ignored.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

JSONL_SUFFIXES = (".jsonl", ".json")
CSV_SUFFIXES = (".csv",)


class TextDataError(ValueError):
    """A classification file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class LabelledText:
    text: str
    label: str
    line: int


def _example(text, label, where: str, known_labels: Collection[str] | None, line: int) -> LabelledText:
    if not isinstance(text, str) or not text.strip():
        raise TextDataError(f"{where}: 'text' must be a non-empty string")
    if isinstance(label, bool) or not isinstance(label, str | int) or str(label).strip() == "":
        raise TextDataError(f"{where}: 'label' must be a non-empty string or an integer")
    label = str(label).strip()
    if known_labels is not None and label not in known_labels:
        raise TextDataError(f"{where}: unknown label {label!r}; known: {', '.join(sorted(known_labels))}")
    return LabelledText(text, label, line)


def _read_jsonl(path: Path, known_labels: Collection[str] | None) -> list[LabelledText]:
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise TextDataError(f"{where}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "text" not in row or "label" not in row:
                raise TextDataError(f"{where}: expected an object with 'text' and 'label'")
            rows.append(_example(row["text"], row["label"], where, known_labels, number))
    return rows


def _read_csv(path: Path, known_labels: Collection[str] | None) -> list[LabelledText]:
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"text", "label"} - set(reader.fieldnames or ())
        if missing:
            raise TextDataError(f"{path}:1: the header lacks {', '.join(sorted(missing))} (need text,label)")
        for row in reader:
            # line_num is the reader's position after the row, right for multi-line quoted fields too.
            where = f"{path}:{reader.line_num}"
            if None in row:
                raise TextDataError(f"{where}: more fields than the header names")
            rows.append(_example(row["text"], row["label"], where, known_labels, reader.line_num))
    return rows


def read_labelled_texts(path: str | Path, known_labels: Collection[str] | None = None) -> list[LabelledText]:
    """Reads a JSONL or CSV file; ``known_labels`` (when given) refuses other labels."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = _read_jsonl(path, known_labels)
    elif suffix in CSV_SUFFIXES:
        rows = _read_csv(path, known_labels)
    else:
        raise TextDataError(f"{path}: unknown format; use {', '.join(JSONL_SUFFIXES + CSV_SUFFIXES)}")
    if not rows:
        raise TextDataError(f"{path}: no examples")
    return rows
