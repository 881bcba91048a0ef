"""The traced text encoder: the eager model's answers, and the eager model whenever in doubt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from services.text import traced
from services.text.classifier import TextClassifier
from services.text.embedding import TextEmbedder
from tests.support.tiny_text_models import save_tiny_classifier

TEXTS = [
    "one",
    "a sentence of middling length",
    "and a much longer sentence than the others, so that the batch is padded well beyond them",
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"))


def embedder(model: Path, trace: bool) -> TextEmbedder:
    backend = TextEmbedder(str(model), device="cpu", trace=trace)
    backend.load()
    return backend


def test_the_traced_model_embeds_every_batch_shape_like_the_eager_one(tiny_model: Path) -> None:
    eager, compiled = embedder(tiny_model, trace=False), embedder(tiny_model, trace=True)
    assert compiled._hidden_states != compiled._eager_hidden_states  # the trace is in use
    for batch in ([TEXTS[0]], TEXTS, TEXTS * 5, [TEXTS[2], "x " * 300]):  # the last one truncated
        expected, got = eager.process(batch), compiled.process(batch)
        np.testing.assert_allclose(got.vectors, expected.vectors, atol=1e-5)
        np.testing.assert_array_equal(got.token_counts, expected.token_counts)
        np.testing.assert_array_equal(got.truncated, expected.truncated)


def test_the_traced_classifier_scores_like_the_eager_one(tiny_model: Path) -> None:
    eager, compiled = (TextClassifier(str(tiny_model), device="cpu", trace=trace) for trace in (False, True))
    eager.load()
    compiled.load()
    assert compiled._logits != compiled._eager_logits  # the trace is in use
    items = [(text, 3) for text in TEXTS] + [("x " * 300, 2)]  # the last one truncated
    for got, expected in zip(compiled.process(items), eager.process(items), strict=True):
        assert [label for label, _ in got] == [label for label, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


def test_a_trace_that_disagrees_with_the_eager_model_is_not_used(
    tiny_model: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(traced, "_TOLERANCE", -1.0)  # no difference, not even none, is small enough
    with caplog.at_level(logging.WARNING, logger=traced.__name__):
        backend = embedder(tiny_model, trace=True)
    assert backend._hidden_states == backend._eager_hidden_states
    assert "kept eager: its trace differs" in caplog.text
    assert backend.process(TEXTS).vectors.shape == (3, 32)


def test_a_model_the_tracer_cannot_follow_stays_eager(tiny_model: Path, monkeypatch, caplog) -> None:
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(traced.torch.jit, "trace", refuse)
    with caplog.at_level(logging.WARNING, logger=traced.__name__):
        backend = embedder(tiny_model, trace=True)
    assert backend._hidden_states == backend._eager_hidden_states
    assert "tracing failed (RuntimeError: cannot trace this model)" in caplog.text
