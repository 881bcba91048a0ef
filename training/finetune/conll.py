"""CoNLL files -> tagged sentences in BIO, with errors that name the file and line.

One token per line, the token first and its tag last, so the 2-column layout (WNUT: ``token
tag``) and the 4-column one (CoNLL-2003: ``token POS chunk tag``) both read; a blank (or
whitespace-only) line ends a sentence and ``-DOCSTART-`` lines are skipped. Tags are ``O``,
``B-TYPE`` or ``I-TYPE``. IOB1 files (an entity may start with ``I-``) are converted to BIO.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

OUTSIDE = "O"
SCHEMES = ("auto", "bio", "iob1")
_TAG = re.compile(r"^(?P<prefix>[BI])-(?P<type>\S+)$")


class ConllError(ValueError):
    """A CoNLL file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class Sentence:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]  # BIO
    line: int  # where the sentence starts in its file, for messages

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class ConllFile:
    path: Path
    sentences: tuple[Sentence, ...]
    iob1_starts_converted: int  # entities that began with I- and now begin with B-


def entity_type(tag: str) -> str | None:
    """``B-PER`` -> ``PER``; ``O`` -> None."""
    return None if tag == OUTSIDE else tag[2:]


def entity_types(sentences: Collection[Sentence]) -> list[str]:
    return sorted({entity_type(tag) for s in sentences for tag in s.tags} - {None})


def bio_labels(types: Collection[str]) -> list[str]:
    """The label set a tagger predicts: ``O``, then ``B-`` and ``I-`` of every type."""
    return [OUTSIDE] + [f"{prefix}-{name}" for name in sorted(types) for prefix in "BI"]


def _check_tag(tag: str, where: str, known_types: Collection[str] | None) -> None:
    if tag == OUTSIDE:
        return
    match = _TAG.match(tag)
    if match is None:
        raise ConllError(f"{where}: malformed tag {tag!r}; expected O, B-TYPE or I-TYPE")
    if known_types is not None and match["type"] not in known_types:
        raise ConllError(
            f"{where}: unknown entity type {match['type']!r} (tag {tag!r}); known: {', '.join(sorted(known_types))}"
        )


def _to_bio(tags: list[str], scheme: str, where_of) -> tuple[list[str], int]:
    """Turns every ``I-X`` that does not continue an ``X`` entity into ``B-X`` (IOB1 -> BIO).

    In BIO such a tag is an annotation error; ``scheme="bio"`` refuses it, ``auto`` repairs it.
    """
    converted, out = 0, []
    previous_type = None
    for index, tag in enumerate(tags):
        current_type = entity_type(tag)
        if tag.startswith("I-") and current_type != previous_type:
            if scheme == "bio":
                raise ConllError(f"{where_of(index)}: {tag!r} does not continue an entity (not BIO)")
            tag, converted = "B-" + current_type, converted + 1
        out.append(tag)
        previous_type = current_type
    return out, converted


def read_conll(
    path: str | Path, scheme: str = "auto", known_types: Collection[str] | None = None
) -> ConllFile:
    """Reads a CoNLL file; ``known_types`` (when given) refuses entity types outside it."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown tagging scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    path = Path(path)
    sentences: list[Sentence] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    columns: int | None = None
    converted = 0

    def flush() -> None:
        nonlocal converted
        if not tokens:
            return
        first_lines = list(lines)
        bio, n = _to_bio(tags, scheme, lambda i: f"{path}:{first_lines[i]}")
        converted += n
        sentences.append(Sentence(tuple(tokens), tuple(bio), lines[0]))
        for pending in (tokens, tags, lines):
            pending.clear()

    with path.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            fields = raw.split()
            if not fields:
                flush()
                continue
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            where = f"{path}:{number}"
            if len(fields) < 2:
                raise ConllError(f"{where}: expected a token and a tag, got {raw.strip()!r}")
            if columns is None:
                columns = len(fields)
            elif len(fields) != columns:
                raise ConllError(f"{where}: {len(fields)} columns where the file has {columns}")
            _check_tag(fields[-1], where, known_types)
            tokens.append(fields[0])
            tags.append(fields[-1])
            lines.append(number)
    flush()
    if not sentences:
        raise ConllError(f"{path}: no sentences")
    return ConllFile(path, tuple(sentences), converted)
