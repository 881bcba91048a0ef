"""The text encoders compiled for CPU (onnxruntime, a TorchScript trace): the eager model's
answers, and the next runtime down, finally the eager model, whenever in doubt."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from services.common import compiled, device, onnx_forward
from services.common.device import PassThreads
from services.text import compiled as text_compiled
from services.text.classifier import TextClassifier
from services.text.embedding import TextEmbedder
from tests.support.tiny_text_models import save_tiny_classifier

TEXTS = [
    "one",
    "a sentence of middling length",
    "and a much longer sentence than the others, so that the batch is padded well beyond them",
]
COMPILED = ("onnxruntime", "torchscript")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def eager(tiny_model: Path) -> TextEmbedder:
    return embedder(tiny_model, "eager")


def embedder(model: Path, runtime: str) -> TextEmbedder:
    backend = TextEmbedder(str(model), device="cpu", cpu_runtime=runtime)
    backend.load()
    return backend


def assert_same_embeddings(got: TextEmbedder, expected: TextEmbedder) -> None:
    for batch in ([TEXTS[0]], TEXTS, TEXTS * 5, [TEXTS[2], "x " * 300]):  # the last one truncated
        want, have = expected.process(batch), got.process(batch)
        np.testing.assert_allclose(have.vectors, want.vectors, atol=1e-5)
        np.testing.assert_array_equal(have.token_counts, want.token_counts)
        np.testing.assert_array_equal(have.truncated, want.truncated)


@pytest.mark.parametrize("runtime", COMPILED)
def test_a_compiled_model_embeds_every_batch_shape_like_the_eager_one(
    tiny_model: Path, eager: TextEmbedder, runtime: str, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        backend = embedder(tiny_model, runtime)
    assert f"runs on {runtime}" in caplog.text
    assert backend._first_output != backend._eager_first_output
    assert backend._model is None  # its eager weights are not kept beside the compiled graph's
    assert_same_embeddings(backend, eager)


@pytest.mark.parametrize("runtime", COMPILED)
def test_a_compiled_classifier_scores_like_the_eager_one(tiny_model: Path, runtime: str) -> None:
    reference, backend = (
        TextClassifier(str(tiny_model), device="cpu", cpu_runtime=r) for r in ("eager", runtime)
    )
    reference.load()
    backend.load()
    assert backend._logits != backend._eager_logits and backend._model is None
    items = [(text, 3) for text in TEXTS] + [("x " * 300, 2)]  # the last one truncated
    for got, expected in zip(backend.process(items), reference.process(items), strict=True):
        assert [label for label, _ in got] == [label for label, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-5)


def test_onnxruntime_has_a_session_for_each_pass_thread_count(
    tiny_model: Path, eager: TextEmbedder, monkeypatch
) -> None:
    threads = PassThreads(alone=2, beside=1)
    monkeypatch.setattr(device, "_pass_threads", threads)
    made, ran = [], []
    create = onnx_forward.create_session

    def recording(model, where, count):
        made.append(count)
        session = create(model, where, count)
        run = session.run
        session.run = lambda *args, **kwargs: (ran.append(count), run(*args, **kwargs))[1]
        return session

    monkeypatch.setattr(onnx_forward, "create_session", recording)
    backend = embedder(tiny_model, "onnxruntime")
    assert sorted(made) == [1, 2]
    ran.clear()  # the load's own check

    seen: dict[int, tuple] = {}

    def lone_and_beside() -> None:  # a lane thread: its count is what its pass set
        for count in (2, 1):
            threads._use(count)
            del ran[:]
            seen[count] = (device.current_pass_threads(), backend.process(TEXTS).vectors, list(ran))

    lane = threading.Thread(target=lone_and_beside)
    lane.start()
    lane.join()
    expected = eager.process(TEXTS).vectors
    for count in (2, 1):  # each pass ran on the session made for its thread count
        current, vectors, sessions_run = seen[count]
        assert current == count
        assert sessions_run == [count]
        np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_a_runtime_that_fails_gives_way_to_the_next(
    tiny_model: Path, eager: TextEmbedder, monkeypatch, caplog
) -> None:
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot export this model")

    monkeypatch.setitem(compiled.RUNTIMES, "onnxruntime", refuse)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        backend = embedder(tiny_model, "onnxruntime")
    assert "not on onnxruntime: it failed (RuntimeError: cannot export this model)" in caplog.text
    assert "runs on torchscript" in caplog.text
    assert_same_embeddings(backend, eager)


def test_a_model_no_runtime_can_take_stays_eager(tiny_model: Path, monkeypatch, caplog) -> None:
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot compile this model")

    monkeypatch.setattr(compiled.torch.jit, "trace", refuse)
    monkeypatch.setattr(onnx_forward.torch.onnx, "export", refuse)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        backend = embedder(tiny_model, "onnxruntime")
    assert backend._first_output == backend._eager_first_output
    assert "not on torchscript: it failed (RuntimeError: cannot compile this model)" in caplog.text
    assert "runs eager" in caplog.text


def test_a_compiled_model_that_disagrees_with_the_eager_one_is_not_used(
    tiny_model: Path, monkeypatch, caplog
) -> None:
    monkeypatch.setattr(compiled, "_TOLERANCE", -1.0)  # no difference, not even none, is small enough
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        backend = embedder(tiny_model, "onnxruntime")
    assert backend._first_output == backend._eager_first_output
    assert caplog.text.count("differs from the eager model") == 2  # onnxruntime, then torchscript
    assert backend.process(TEXTS).vectors.shape == (3, 32)


def test_eager_and_torchscript_skip_the_runtimes_above_them(tiny_model: Path, monkeypatch) -> None:
    def unexpected(*_args, **_kwargs):
        raise AssertionError("onnxruntime was not asked for")

    monkeypatch.setitem(compiled.RUNTIMES, "onnxruntime", unexpected)
    backend = embedder(tiny_model, "torchscript")
    assert backend._first_output != backend._eager_first_output
    backend = embedder(tiny_model, "eager")
    assert backend._first_output == backend._eager_first_output


def test_an_unknown_runtime_is_refused() -> None:
    with pytest.raises(
        ValueError, match="unknown CPU runtime 'tensorrt'; choose from onnxruntime, torchscript, eager"
    ):
        TextEmbedder(cpu_runtime="tensorrt")


def test_a_model_that_refuses_the_check_batch_stays_eager(tiny_model: Path, monkeypatch, caplog) -> None:
    from transformers import AutoModel, AutoTokenizer

    # Longer than the tiny model's 128 positions, and its tokenizer sets no limit of its own.
    monkeypatch.setattr(text_compiled, "_CHECK_TEXTS", ("one " * 400,))
    model, tokenizer = AutoModel.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model)
    with caplog.at_level(logging.WARNING, logger=compiled.__name__):
        assert text_compiled.compiled_forward(model, tokenizer, "onnxruntime") is None
    assert "runs eager: its check batch failed" in caplog.text


def test_the_check_batch_is_cut_to_the_tokens_the_service_gives_the_model(
    tiny_model: Path, eager: TextEmbedder, monkeypatch, caplog
) -> None:
    # The same text, through the embedder: it truncates to what the model takes (a tiny CLIP's
    # tokenizer, too, has no limit of its own), so the model compiles.
    monkeypatch.setattr(text_compiled, "_CHECK_TEXTS", ("one " * 400,))
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        backend = embedder(tiny_model, "onnxruntime")
    assert "runs on onnxruntime" in caplog.text
    assert_same_embeddings(backend, eager)
