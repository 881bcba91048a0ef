"""The modalities fusion heads can read, and how each reaches a head: the one list of them.

A modality's name is also its field in ``MultimodalInput`` (fusion.proto), its key in a head
manifest's ``input_dims`` / ``encoders``, its key in the masks strategies take and its
``Modality`` enum value (``MODALITY_<NAME>``, common.proto). ``encoder`` names the encoder
client that embeds it (``services.fusion.clients``); ``features`` has none: its numbers reach
the head as they are, standardised with the training statistics in the head's manifest
(``services.fusion.features``).

Heads fuse their modalities in the order listed here (a head's type embeddings, weights and
concatenation follow it), so text + image heads keep the layout they were trained with; new
modalities are appended, never inserted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Modality:
    name: str
    encoder: str | None  # the encoder client that embeds it; None: the request carries the vector
    # Encoder embeddings differ in scale (unit-norm text, ReLU6 image features), so strategies
    # LayerNorm them; a LayerNorm across a handful of standardised features would erase them.
    layer_norm: bool = True


FEATURES = "features"
MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("text", "text"),
        Modality("image", "vision"),
        Modality("audio", "audio"),
        Modality(FEATURES, None, layer_norm=False),
    )
}
NAMES = tuple(MODALITIES)
# What every head read before modalities became a list (manifest formats 1 and 2).
TEXT_IMAGE = ("text", "image")
ENCODED = tuple(name for name, m in MODALITIES.items() if m.encoder is not None)


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` in fusion order; ValueError naming any unknown or repeated one."""
    names = list(names)
    unknown = [n for n in names if n not in MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; known: {', '.join(NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"modalities must be unique, got {names}")
    return tuple(n for n in NAMES if n in names)


def encoded(names: Iterable[str]) -> tuple[str, ...]:
    """The modalities among ``names`` that an encoder embeds (all but features)."""
    return tuple(n for n in names if MODALITIES[n].encoder is not None)


def joined(names: Iterable[str]) -> str:
    """ "text, audio and features": for messages."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
