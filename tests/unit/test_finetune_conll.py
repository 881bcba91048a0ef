"""CoNLL reading: layouts, -DOCSTART-, IOB1 -> BIO, and errors that name the file and line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from training.finetune.conll import ConllError, bio_labels, entity_types, read_conll


def _write(tmp_path: Path, text: str, name: str = "data.conll") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_two_column_file_with_whitespace_only_separators(tmp_path):
    # WNUT files separate sentences with a line holding only a tab.
    path = _write(tmp_path, "Empire\tB-facility\nState\tI-facility\n.\tO\n\t\nhi\tO\n")
    conll = read_conll(path)
    assert [s.tokens for s in conll.sentences] == [("Empire", "State", "."), ("hi",)]
    assert conll.sentences[0].tags == ("B-facility", "I-facility", "O")
    assert [s.line for s in conll.sentences] == [1, 5]


def test_four_column_file_takes_the_last_column_and_skips_docstart(tmp_path):
    path = _write(
        tmp_path,
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP B-MISC\n\n"
        "-DOCSTART- -X- -X- O\n\nPeter NNP B-NP B-PER\n",
    )
    conll = read_conll(path)
    assert [s.tokens for s in conll.sentences] == [("EU", "rejects", "German"), ("Peter",)]
    assert conll.sentences[0].tags == ("B-ORG", "O", "B-MISC")
    assert entity_types(conll.sentences) == ["MISC", "ORG", "PER"]


def test_iob1_is_converted_to_bio(tmp_path):
    # IOB1: I- starts an entity; B- only separates two adjacent entities of one type.
    path = _write(
        tmp_path,
        "U.N. I-ORG\nofficial O\nEkeus I-PER\nheads O\nfor O\nBaghdad I-LOC\nNew I-LOC\nYork B-LOC\n"
        "Bank I-ORG\nof I-ORG\nX I-PER\n",
    )
    conll = read_conll(path)
    assert conll.sentences[0].tags == (
        "B-ORG", "O", "B-PER", "O", "O", "B-LOC", "I-LOC", "B-LOC", "B-ORG", "I-ORG", "B-PER",
    )  # fmt: skip
    assert conll.iob1_starts_converted == 5


def test_bio_scheme_refuses_an_entity_that_starts_with_i(tmp_path):
    path = _write(tmp_path, "a O\nb O\nc I-PER\n")
    with pytest.raises(ConllError, match=re.escape(f"{path}:3: 'I-PER' does not continue")):
        read_conll(path, scheme="bio")


def test_bio_input_is_left_as_it_is(tmp_path):
    path = _write(tmp_path, "a B-PER\nb I-PER\nc B-PER\nd O\n")
    conll = read_conll(path, scheme="bio")
    assert conll.sentences[0].tags == ("B-PER", "I-PER", "B-PER", "O")
    assert conll.iob1_starts_converted == 0


@pytest.mark.parametrize("tag", ["PER", "X-PER", "B-", "b-PER", "I_PER"])
def test_malformed_tag_names_file_and_line(tmp_path, tag):
    path = _write(tmp_path, f"a O\n\nb O\nc {tag}\n")
    with pytest.raises(ConllError, match=re.escape(f"{path}:4: malformed tag")):
        read_conll(path)


def test_unknown_entity_type_names_file_and_line(tmp_path):
    path = _write(tmp_path, "a B-PER\n\nb B-ALIEN\n")
    with pytest.raises(ConllError, match=re.escape(f"{path}:3: unknown entity type 'ALIEN'")):
        read_conll(path, known_types={"PER", "LOC"})


def test_inconsistent_columns_and_missing_tags_name_the_line(tmp_path):
    path = _write(tmp_path, "a NN O\nb O\n")
    with pytest.raises(ConllError, match=re.escape(f"{path}:2: 2 columns where the file has 3")):
        read_conll(path)
    path = _write(tmp_path, "a O\nlonely\n", name="short.conll")
    with pytest.raises(ConllError, match=re.escape(f"{path}:2: expected a token and a tag")):
        read_conll(path)


@pytest.mark.parametrize("text", ["", "\n\n\t\n", "-DOCSTART- O\n\n"])
def test_a_file_without_sentences_is_refused(tmp_path, text):
    path = _write(tmp_path, text)
    with pytest.raises(ConllError, match=re.escape(f"{path}: no sentences")):
        read_conll(path)


def test_bio_labels_cover_both_prefixes_of_every_type():
    assert bio_labels(["PER", "LOC"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
