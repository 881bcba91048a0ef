"""Tiny random BERT checkpoints with real label names, built in a test: a token classifier and a
sequence classifier that share the packaged MiniLM tokenizer (so real words tokenize)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertForTokenClassification

from services.text.embedding import default_model_dir

NER_TAGS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
CLASSES = ("sports", "politics", "tech")


def _config(labels: tuple[str, ...]) -> BertConfig:
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    return BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )


def save_tiny_ner(out: Path, favour: str = "B-PER") -> Path:
    """A token classifier whose bias makes every word a ``favour`` entity (deterministic output)."""
    torch.manual_seed(0)
    model = BertForTokenClassification(_config(NER_TAGS))
    with torch.no_grad():
        model.classifier.bias.zero_()
        model.classifier.bias[NER_TAGS.index(favour)] = 20.0
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(out)
    return out


def save_tiny_classifier(out: Path, safetensors: bool = True, labels: tuple[str, ...] = CLASSES) -> Path:
    torch.manual_seed(1)
    model = BertForSequenceClassification(_config(labels))
    model.save_pretrained(out, safe_serialization=safetensors)
    AutoTokenizer.from_pretrained(default_model_dir()).save_pretrained(out)
    return out
