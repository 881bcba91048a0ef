"""Entity-level and token-level reports for BIO taggers.

Entity level: a predicted entity counts only when its type and its exact span match a true
one. Chunking follows seqeval: ``default`` is its default (conlleval-compatible) mode, where an
``I-X`` that does not continue an ``X`` entity starts a new one; ``strict`` is its
``mode="strict", scheme=IOB2``, where only ``B-X I-X*`` is an entity and a stray ``I-X`` is
ignored. Sentences never share an entity. Token level: per-tag scores over words.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from training.finetune.classification_metrics import (
    averages,
    format_scores_table,
    per_label_scores,
    scores,
)
from training.finetune.conll import OUTSIDE, entity_type

CHUNKING_MODES = ("default", "strict")
Entity = tuple[str, int, int]  # (type, first word, last word)

TOKEN_LEVEL_NOTE = (
    "token-level micro F1 with O counts every correctly predicted O and mostly measures that most "
    "words are O: it flatters the tagger; the figure without O and the entity-level F1 are the honest ones"
)


def _split(tag: str) -> tuple[str, str]:
    return (OUTSIDE, "") if tag == OUTSIDE else (tag[0], entity_type(tag))


def _entities_default(tags: Sequence[str]) -> list[Entity]:
    entities, start, previous_prefix, previous_type = [], 0, OUTSIDE, ""
    for index, tag in enumerate([*tags, OUTSIDE]):
        prefix, current_type = _split(tag)
        ends = previous_prefix != OUTSIDE and (prefix in ("B", OUTSIDE) or current_type != previous_type)
        if ends:
            entities.append((previous_type, start, index - 1))
        starts = prefix == "B" or (
            prefix == "I" and (previous_prefix == OUTSIDE or current_type != previous_type)
        )
        if starts:
            start = index
        previous_prefix, previous_type = prefix, current_type
    return entities


def _entities_strict(tags: Sequence[str]) -> list[Entity]:
    entities, index = [], 0
    while index < len(tags):
        prefix, current_type = _split(tags[index])
        if prefix != "B":
            index += 1
            continue
        end = index + 1
        while end < len(tags) and tags[end] == f"I-{current_type}":
            end += 1
        entities.append((current_type, index, end - 1))
        index = end
    return entities


def extract_entities(tags: Sequence[str], mode: str = "default") -> list[Entity]:
    """The entities of one BIO-tagged sentence, in order."""
    if mode == "default":
        return _entities_default(tags)
    if mode == "strict":
        return _entities_strict(tags)
    raise ValueError(f"unknown chunking mode {mode!r}; choose from {', '.join(CHUNKING_MODES)}")


def entity_report(
    true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], mode: str = "default"
) -> dict[str, Any]:
    """Per-type precision/recall/F1 with micro, macro and weighted averages (seqeval's figures).

    Types are those seen in either the truth or the predictions, as in seqeval, so a type only
    ever predicted falls into the macro average with F1 0.
    """
    if len(true) != len(predicted):
        raise ValueError(f"{len(true)} true sentences but {len(predicted)} predicted ones")
    correct, support, guessed = Counter(), Counter(), Counter()
    for number, (true_tags, predicted_tags) in enumerate(zip(true, predicted, strict=True)):
        if len(true_tags) != len(predicted_tags):
            raise ValueError(
                f"sentence {number}: {len(true_tags)} true tags but {len(predicted_tags)} predicted"
            )
        true_entities = set(extract_entities(true_tags, mode))
        predicted_entities = set(extract_entities(predicted_tags, mode))
        support.update(e[0] for e in true_entities)
        guessed.update(e[0] for e in predicted_entities)
        correct.update(e[0] for e in true_entities & predicted_entities)
    types = sorted(set(support) | set(guessed))
    per_type = {name: scores(correct[name], guessed[name], support[name]) for name in types}
    micro = scores(sum(correct.values()), sum(guessed.values()), sum(support.values()))
    return {"mode": mode, "per_type": per_type, "micro": micro, **averages(per_type)}


def token_report(
    true: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], labels: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-tag scores over words, and micro F1 with and without ``O``."""
    flat_true = [tag for sentence in true for tag in sentence]
    flat_predicted = [tag for sentence in predicted for tag in sentence]
    labels = list(labels) if labels is not None else sorted(set(flat_true) | set(flat_predicted))
    per_tag = per_label_scores(flat_true, flat_predicted, labels)
    entity_tags = [label for label in labels if label != OUTSIDE]
    return {
        "per_tag": per_tag,
        "micro_f1_with_o": _micro(per_tag, labels)["f1"],
        "micro_f1_without_o": _micro(per_tag, entity_tags)["f1"],
        "note": TOKEN_LEVEL_NOTE,
    }


def _micro(per_tag: Mapping[str, Mapping[str, float]], labels: Sequence[str]) -> dict[str, float]:
    rows = [per_tag[label] for label in labels]
    return scores(
        sum(row["correct"] for row in rows),
        sum(row["predicted"] for row in rows),
        sum(row["support"] for row in rows),
    )


def format_ner_report(report: Mapping[str, Any]) -> str:
    entity, token = report["entity"], report["token"]
    averages_rows = {f"{name} avg": entity[name] for name in ("micro", "macro", "weighted")}
    lines = [
        f"entity level ({entity['mode']} chunking: exact span and type)",
        format_scores_table("type", {**entity["per_type"], **averages_rows}),
        "",
        "token level (per word)",
        format_scores_table("tag", token["per_tag"]),
        f"token micro F1 without O {token['micro_f1_without_o']:.3f}",
        f"token micro F1 with O    {token['micro_f1_with_o']:.3f}",
        f"note: {token['note']}",
    ]
    return "\n".join(lines)
