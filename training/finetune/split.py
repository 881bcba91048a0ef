"""Seeded, stratified train/dev/test splits of one file, and the stratum of a tagged sentence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.data import split_indices
from training.finetune.conll import Sentence, entity_type

NO_ENTITY = "<none>"


@dataclass(frozen=True)
class Splits:
    """Row indices into the file, each sorted."""

    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray


def stratified_split(keys: Sequence[str], dev_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Per key, round(fraction * count) rows go to dev and to test; the rest train.

    The same split as the fusion heads' (``training.data.split_indices``), so a run is reproducible
    from ``--seed`` in the same way everywhere.
    """
    shared = split_indices(keys, dev_fraction, test_fraction, seed)
    return Splits(shared.train, shared.val, shared.test)


def sentence_strata(sentences: Sequence[Sentence]) -> list[str]:
    """Each sentence's rarest entity type (by entity count in the file), or ``<none>``.

    Stratifying on the rarest type spreads the rare types over every split, which a split on
    "has an entity" would not.
    """
    counts = Counter(
        entity_type(tag) for sentence in sentences for tag in sentence.tags if tag.startswith("B-")
    )
    strata = []
    for sentence in sentences:
        types = {entity_type(tag) for tag in sentence.tags if tag.startswith("B-")}
        strata.append(min(types, key=lambda t: (counts[t], t)) if types else NO_ENTITY)
    return strata
