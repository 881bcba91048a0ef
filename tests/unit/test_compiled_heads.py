"""Heads' decision layers compiled for CPU (onnxruntime, a TorchScript trace): the eager module's
answers for every strategy, mask pattern and batch size, and the eager module whenever in doubt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common import compiled
from services.fusion.compiled_heads import compiled_decision
from services.fusion.heads import Head, load_head, save_head
from services.fusion.outputs import OutputSpec
from services.fusion.registry import HeadRegistry
from services.fusion.strategies import CLASSIFICATION_STRATEGIES, build_head_module, build_model

TEXT_DIM, IMAGE_DIM = 12, 20
OUTPUTS = (
    OutputSpec("colour", "classification", ("blue", "green", "red"), missing_temperatures={"image": 4.0}),
    OutputSpec("price", "regression", mean=50.0, std=4.0),
)
ENCODERS = {"text": {"model_id": "t", "revision": "1"}, "image": {"model_id": "i", "revision": "2"}}
# Per batch, which rows carry text and which an image: mixed rows, a modality absent from a whole
# batch, one row.
MASKS = (
    ([1, 1, 0, 1, 0], [1, 0, 1, 1, 1]),
    ([1, 1, 1], [0, 0, 0]),
    ([1], [1]),
)


def _head(directory: Path, strategy: str) -> Head:
    torch.manual_seed(0)
    config = {"fused_dim": 8, "hidden_dim": 16}
    module = build_model(strategy, TEXT_DIM, IMAGE_DIM, config, num_outputs=sum(o.width for o in OUTPUTS))
    with torch.no_grad():  # off the initial values, so a compiled graph that lost a weight shows
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    save_head(
        directory, module, strategy=strategy, input_dims={"text": TEXT_DIM, "image": IMAGE_DIM},
        config=config, encoders=ENCODERS, outputs=OUTPUTS,
    )  # fmt: skip
    return load_head(directory)


def _assert_same_answers(fast: Head, eager: Head) -> None:
    rng = np.random.default_rng(3)
    for text_rows, image_rows in MASKS:
        n = len(text_rows)
        text = rng.standard_normal((n, TEXT_DIM)).astype(np.float32)
        image = rng.standard_normal((n, IMAGE_DIM)).astype(np.float32)
        masks = np.array(text_rows, bool), np.array(image_rows, bool)
        expected, got = eager.predict(text, image, *masks), fast.predict(text, image, *masks)
        np.testing.assert_allclose(got.probabilities["colour"], expected.probabilities["colour"], atol=1e-5)
        np.testing.assert_allclose(got.values["price"], expected.values["price"], rtol=1e-5)


@pytest.mark.parametrize("strategy", CLASSIFICATION_STRATEGIES)
def test_a_compiled_head_predicts_like_its_eager_module(tmp_path: Path, strategy: str, caplog) -> None:
    eager = _head(tmp_path / strategy, strategy)
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        fast = eager.compiled_for("onnxruntime")
    assert fast is not eager and fast.manifest == eager.manifest
    assert f"head '{strategy}' runs on onnxruntime" in caplog.text  # attention too: its plain ops
    assert torch.backends.mha.get_fastpath_enabled()  # the export's switch is back as it was
    _assert_same_answers(fast, eager)


def test_three_modalities_compile_in_the_manifest_order() -> None:
    dims = {"text": 6, "audio": 5, "features": 3}
    torch.manual_seed(0)
    module = build_head_module("concat_mlp", dims, {"fused_dim": 8, "hidden_dim": 16}, num_outputs=2).eval()
    decision = compiled_decision(module, dims, "onnxruntime", "head 'three'")
    assert decision is not None
    g = torch.Generator().manual_seed(1)
    inputs = {m: torch.randn(4, d, generator=g) for m, d in dims.items()}
    masks = {
        "text": torch.tensor([True, False, True, False]),
        "audio": torch.tensor([True, True, False, False]),
        "features": torch.tensor([False, True, True, True]),
    }
    with torch.inference_mode():
        torch.testing.assert_close(decision(inputs, masks), module(inputs, masks), atol=1e-5, rtol=1e-5)


def test_a_head_no_runtime_can_take_stays_eager(tmp_path: Path, monkeypatch, caplog) -> None:
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot compile this head\nwith the traced graph after it")

    monkeypatch.setitem(compiled.RUNTIMES, "onnxruntime", refuse)
    monkeypatch.setitem(compiled.RUNTIMES, "torchscript", refuse)
    eager = _head(tmp_path / "plain", "concat_mlp")
    with caplog.at_level(logging.INFO, logger=compiled.__name__):
        assert eager.compiled_for("onnxruntime") is eager
    assert (
        "head 'plain' not on torchscript: it failed (RuntimeError: cannot compile this head)" in caplog.text
    )
    assert "traced graph" not in caplog.text  # only an error's first line is logged
    assert "head 'plain' runs eager" in caplog.text


def test_eager_and_alignment_heads_are_left_as_they_are(tmp_path: Path) -> None:
    eager = _head(tmp_path / "plain", "concat_mlp")
    assert eager.compiled_for("eager") is eager
    module = build_model("alignment", TEXT_DIM, IMAGE_DIM, {"fused_dim": 8})
    save_head(
        tmp_path / "align", module, strategy="alignment", input_dims={"text": TEXT_DIM, "image": IMAGE_DIM},
        config={"fused_dim": 8}, encoders=ENCODERS,
    )  # fmt: skip
    alignment = load_head(tmp_path / "align")
    assert alignment.compiled_for("onnxruntime") is alignment


def test_the_registry_refuses_an_unknown_runtime(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown CPU runtime 'tensorrt'"):
        HeadRegistry(tmp_path, lambda: None, 1.0, cpu_runtime="tensorrt")
