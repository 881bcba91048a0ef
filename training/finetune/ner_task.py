"""Token classification: CoNLL sentences -> sub-token features, predictions -> word tags -> reports.

A word's label sits on its first sub-token; the other sub-tokens and the special tokens carry
-100, so the loss and the predictions are per word, as the CoNLL tags are.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoModelForTokenClassification

from training.finetune.batching import IGNORED_LABEL, Encoded, Feature, predicted_ids
from training.finetune.conll import OUTSIDE, Sentence, bio_labels, entity_type, entity_types, read_conll
from training.finetune.ner_metrics import entity_report, format_ner_report, token_report
from training.finetune.split import sentence_strata

_LOGGER = logging.getLogger(__name__)


def _unrepresented_words(sentences: Sequence[Sentence], tokenizer) -> set[str]:
    """Words the tokenizer turns into no token at all (control or zero-width characters)."""
    words = sorted({token for sentence in sentences for token in sentence.tokens})
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    return {word for word, word_ids in zip(words, ids, strict=True) if not word_ids}


class NerTask:
    name = "ner"
    model_class = AutoModelForTokenClassification
    score_name = "entity micro F1"

    def __init__(self, scheme: str = "auto", chunking: str = "default") -> None:
        self.scheme = scheme
        self.chunking = chunking

    def read(self, path: Path, known_labels: Collection[str] | None = None) -> list[Sentence]:
        known_types = None if known_labels is None else {entity_type(t) for t in known_labels} - {None}
        conll = read_conll(path, scheme=self.scheme, known_types=known_types)
        if conll.iob1_starts_converted:
            _LOGGER.info(
                "%s: %d entities began with I- (IOB1); now B- (BIO)", path, conll.iob1_starts_converted
            )
        return list(conll.sentences)

    def labels(self, examples: Sequence[Sentence]) -> list[str]:
        return bio_labels(entity_types(examples))

    def strata(self, examples: Sequence[Sentence]) -> list[str]:
        return sentence_strata(examples)

    def encode(
        self, examples: Sequence[Sentence], tokenizer, label2id: dict[str, int], max_length: int
    ) -> Encoded:
        # A word that tokenises to nothing would silently lose its tag; [UNK] keeps its slot.
        empty = _unrepresented_words(examples, tokenizer)
        words = [[tokenizer.unk_token if t in empty else t for t in s.tokens] for s in examples]
        encoding = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
        features, truncated = [], 0
        for row, sentence in enumerate(examples):
            word_ids = encoding.word_ids(row)
            labels, word_starts, previous = [], [], None
            for position, word in enumerate(word_ids):
                if word is None or word == previous:
                    labels.append(IGNORED_LABEL)
                else:
                    labels.append(label2id.get(sentence.tags[word], IGNORED_LABEL))
                    word_starts.append(position)
                previous = word
            truncated += len(word_starts) < len(sentence)
            features.append(Feature(tuple(encoding["input_ids"][row]), tuple(labels), tuple(word_starts)))
        return Encoded(features, truncated)

    def predict(
        self, model, encoded: Encoded, examples: Sequence[Sentence], id2label, batch_size: int, pad_id: int
    ):
        """Word tags per sentence; words cut off by truncation are predicted ``O``."""
        ids = predicted_ids(model, encoded.features, batch_size, pad_id)
        predictions = []
        for feature, row_ids, sentence in zip(encoded.features, ids, examples, strict=True):
            tags = [id2label[row_ids[position]] for position in feature.word_starts]
            predictions.append(tags + [OUTSIDE] * (len(sentence) - len(tags)))
        return predictions

    def report(self, examples: Sequence[Sentence], predictions, labels: Sequence[str]) -> dict[str, Any]:
        true = [list(s.tags) for s in examples]
        return {
            "task": self.name,
            "examples": len(examples),
            "entity": entity_report(true, predictions, self.chunking),
            "token": token_report(true, predictions, labels),
        }

    def score(self, report: dict[str, Any]) -> float:
        return report["entity"]["micro"]["f1"]

    def headline(self, report: dict[str, Any]) -> dict[str, float]:
        return {
            "entity_micro_f1": report["entity"]["micro"]["f1"],
            "entity_macro_f1": report["entity"]["macro"]["f1"],
            "token_micro_f1_without_o": report["token"]["micro_f1_without_o"],
            "token_micro_f1_with_o": report["token"]["micro_f1_with_o"],
        }

    def format_report(self, report: dict[str, Any]) -> str:
        return format_ner_report(report)
