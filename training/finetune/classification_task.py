"""Sequence classification: labelled texts -> features, predictions -> labels -> reports."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification

from training.finetune.batching import Encoded, Feature, predicted_ids
from training.finetune.classification_data import LabelledText, read_labelled_texts
from training.finetune.classification_metrics import classification_report, format_classification_report


class ClassificationTask:
    name = "classify"
    model_class = AutoModelForSequenceClassification
    score_name = "macro F1"

    def read(self, path: Path, known_labels: Collection[str] | None = None) -> list[LabelledText]:
        return read_labelled_texts(path, known_labels)

    def labels(self, examples: Sequence[LabelledText]) -> list[str]:
        return sorted({example.label for example in examples})

    def strata(self, examples: Sequence[LabelledText]) -> list[str]:
        return [example.label for example in examples]

    def encode(
        self, examples: Sequence[LabelledText], tokenizer, label2id: dict[str, int], max_length: int
    ) -> Encoded:
        texts = [example.text for example in examples]
        encoding = tokenizer(texts, truncation=True, max_length=max_length)
        full_lengths = tokenizer(texts, add_special_tokens=False, return_length=True)["length"]
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        truncated = sum(length + specials > max_length for length in full_lengths)
        features = [
            Feature(tuple(ids), label2id[example.label])
            for ids, example in zip(encoding["input_ids"], examples, strict=True)
        ]
        return Encoded(features, truncated)

    def predict(self, model, encoded: Encoded, examples, id2label, batch_size: int, pad_id: int) -> list[str]:
        return [id2label[i] for i in predicted_ids(model, encoded.features, batch_size, pad_id)]

    def report(self, examples: Sequence[LabelledText], predictions, labels: Sequence[str]) -> dict[str, Any]:
        report = classification_report([e.label for e in examples], predictions, labels)
        return {"task": self.name, "examples": len(examples), **report}

    def score(self, report: dict[str, Any]) -> float:
        return report["macro"]["f1"]

    def headline(self, report: dict[str, Any]) -> dict[str, float]:
        return {
            "accuracy": report["accuracy"],
            "macro_f1": report["macro"]["f1"],
            "weighted_f1": report["weighted"]["f1"],
        }

    def format_report(self, report: dict[str, Any]) -> str:
        return format_classification_report(report)
