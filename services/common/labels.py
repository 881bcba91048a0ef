"""Label names of a transformers classifier (image, text or token classification)."""

from __future__ import annotations

import re
from typing import Any

_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")


def real_labels(config: Any) -> list[str]:
    """The classifier's label names in index order, or [] when there are only placeholders
    (LABEL_0, LABEL_1, ...: a head saved without names) or the mapping is broken."""
    id2label = getattr(config, "id2label", None) or {}
    try:
        labels = [str(id2label[i]) for i in range(len(id2label))]
    except KeyError:
        return []
    if not labels or all(_PLACEHOLDER_LABEL.fullmatch(label) for label in labels):
        return []
    return labels
