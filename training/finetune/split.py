"""Seeded, stratified train/dev/test splits of one file, and the stratum of a tagged sentence."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

    Deterministic given the keys and the seed, so a run is reproducible from ``--seed``.
    """
    if not (0 <= dev_fraction < 1 and 0 <= test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError("dev and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    train, dev, test = [], [], []
    for key in sorted(groups):
        rows = np.array(groups[key])
        rng.shuffle(rows)
        n_test = int(round(test_fraction * len(rows)))
        n_dev = int(round(dev_fraction * len(rows)))
        test.extend(rows[:n_test])
        dev.extend(rows[n_test : n_test + n_dev])
        train.extend(rows[n_test + n_dev :])
    return Splits(*(np.sort(np.array(part, dtype=np.int64)) for part in (train, dev, test)))


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
