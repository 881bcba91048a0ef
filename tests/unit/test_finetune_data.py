"""Classification files (JSONL, CSV) and the seeded, stratified split."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from training.finetune.classification_data import TextDataError, read_labelled_texts
from training.finetune.conll import Sentence
from training.finetune.split import NO_ENTITY, sentence_strata, stratified_split


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_and_csv_read_the_same_examples(tmp_path):
    jsonl = _write(
        tmp_path, "a.jsonl", '{"text": "good film", "label": "pos"}\n\n{"text": "bad", "label": 0}\n'
    )
    csv = _write(tmp_path, "a.csv", 'id,text,label\n1,good film,pos\n2,"bad",0\n')
    for path in (jsonl, csv):
        rows = read_labelled_texts(path)
        assert [(r.text, r.label) for r in rows] == [("good film", "pos"), ("bad", "0")]


def test_csv_with_a_quoted_multi_line_text(tmp_path):
    path = _write(tmp_path, "a.csv", 'text,label\n"line one\nline two",x\nthird,y\n')
    rows = read_labelled_texts(path)
    assert [r.text for r in rows] == ["line one\nline two", "third"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.jsonl", '{"text": "ok", "label": "a"}\n{"text": "x"\n', ":2: not JSON"),
        ("a.jsonl", '{"text": "ok", "label": "a"}\n["x", "a"]\n', ":2: expected an object"),
        ("a.jsonl", '{"text": "", "label": "a"}\n', ":1: 'text' must be"),
        ("a.jsonl", '{"text": "ok", "label": null}\n', ":1: 'label' must be"),
        ("a.csv", "sentence,label\nok,a\n", ":1: the header lacks text"),
        ("a.csv", "text,label\nok,a\nok,a,extra\n", ":3: more fields"),
        ("a.txt", "ok\ta\n", ": unknown format"),
        ("a.jsonl", "\n\n", ": no examples"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, name, text, message):
    path = _write(tmp_path, name, text)
    with pytest.raises(TextDataError, match=re.escape(f"{path}{message}")):
        read_labelled_texts(path)


def test_unknown_label_names_file_and_line(tmp_path):
    path = _write(tmp_path, "dev.jsonl", '{"text": "a", "label": "pos"}\n{"text": "b", "label": "meh"}\n')
    with pytest.raises(TextDataError, match=re.escape(f"{path}:2: unknown label 'meh'")):
        read_labelled_texts(path, known_labels={"pos", "neg"})


def _labels() -> list[str]:
    return ["a"] * 500 + ["b"] * 300 + ["c"] * 40 + ["d"] * 3


def test_split_is_reproducible_from_the_seed():
    first = stratified_split(_labels(), 0.1, 0.1, seed=5)
    again = stratified_split(_labels(), 0.1, 0.1, seed=5)
    other = stratified_split(_labels(), 0.1, 0.1, seed=6)
    for name in ("train", "dev", "test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.test, other.test)


def test_split_is_a_stratified_partition():
    labels = _labels()
    splits = stratified_split(labels, 0.1, 0.1, seed=0)
    all_rows = np.concatenate([splits.train, splits.dev, splits.test])
    assert sorted(all_rows.tolist()) == list(range(len(labels)))
    for part in (splits.dev, splits.test):
        counts = Counter(labels[i] for i in part)
        assert counts == {"a": 50, "b": 30, "c": 4}  # "d" (3 rows) rounds to none: it trains
    assert Counter(labels[i] for i in splits.train)["d"] == 3


def test_split_without_dev_or_test():
    splits = stratified_split(_labels(), 0.0, 0.2, seed=0)
    assert len(splits.dev) == 0 and len(splits.test) == 100 + 60 + 8 + 1


def test_split_refuses_fractions_that_leave_no_training_data():
    with pytest.raises(ValueError, match="sum to less than 1"):
        stratified_split(_labels(), 0.5, 0.5, seed=0)


def test_sentences_are_stratified_by_their_rarest_entity_type():
    def sentence(*tags: str) -> Sentence:
        return Sentence(tuple("w" * len(tags)), tags, 1)

    sentences = [
        sentence("B-PER", "O"),
        sentence("B-PER", "B-movie"),
        sentence("O", "O"),
        sentence("B-PER", "I-PER"),
    ]
    assert sentence_strata(sentences) == ["PER", "movie", NO_ENTITY, "PER"]
