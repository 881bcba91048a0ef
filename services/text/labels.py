"""The label names a fine-tuned text model must carry before it is served."""

from __future__ import annotations

from typing import Any

from services.common.labels import real_labels

_TAG_PREFIXES = ("B-", "I-", "E-", "S-", "L-", "U-")


def checked_labels(config: Any, source: str) -> list[str]:
    """``config.id2label`` in index order; refuses a model without real label names, so a
    service never starts serving LABEL_0, LABEL_1, ... or a half-saved folder."""
    labels = real_labels(config)
    if not labels:
        raise RuntimeError(
            f"{source}: the model has no label names (config.json id2label is missing, broken or "
            "LABEL_n placeholders); save it with id2label, as python -m training.finetune does"
        )
    return labels


def entity_types(tags: list[str]) -> list[str]:
    """BIO / IOBES tags -> the entity types they mark, in first-seen order (O dropped)."""
    types: list[str] = []
    for tag in tags:
        name = tag[2:] if tag.startswith(_TAG_PREFIXES) else tag
        if name != "O" and name not in types:
            types.append(name)
    return types
