"""Heads with regression and multi-task outputs, calibrated temperatures, missing-modality policies,
attention explanations, and format 1 heads (written by the code before format 2) loading unchanged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from services.common.errors import FailedPrecondition, InvalidInput
from services.fusion.heads import MANIFEST_FILE, HeadLoadError, load_head, save_head, update_metrics
from services.fusion.outputs import OutputSpec, split_outputs
from services.fusion.strategies import build_model

TEXT_DIM, IMAGE_DIM = 12, 20
ENCODERS = {
    "text": {"model_id": "fake-text", "revision": "t1"},
    "image": {"model_id": "fake-image", "revision": "i1"},
}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "heads_v1"
COLOUR = OutputSpec("colour", "classification", ("blue", "green", "red"), temperature=2.0,
                    missing_temperatures={"image": 10.0})  # fmt: skip
PRICE = OutputSpec("price", "regression", mean=50.0, std=4.0)
WEIGHT = OutputSpec("weight", "regression", mean=-3.0, std=0.5)


def _save(directory: Path, strategy: str, outputs, policy: str = "allow", seed: int = 0):
    torch.manual_seed(seed)
    config = {"fused_dim": 8, "hidden_dim": 16}
    module = build_model(strategy, TEXT_DIM, IMAGE_DIM, config, num_outputs=sum(o.width for o in outputs))
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    manifest = save_head(
        directory, module, strategy=strategy, input_dims={"text": TEXT_DIM, "image": IMAGE_DIM}, config=config,
        encoders=ENCODERS, outputs=outputs, missing_modality_policy=policy,
    )  # fmt: skip
    return module.eval(), manifest


def _inputs(n: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((n, TEXT_DIM)).astype(np.float32),
        rng.standard_normal((n, IMAGE_DIM)).astype(np.float32),
    )


def _raw(module, text, image, text_mask=None, image_mask=None) -> np.ndarray:
    n = len(text)
    t = torch.ones(n, dtype=torch.bool) if text_mask is None else torch.from_numpy(text_mask)
    i = torch.ones(n, dtype=torch.bool) if image_mask is None else torch.from_numpy(image_mask)
    with torch.no_grad():
        return module(torch.from_numpy(text), torch.from_numpy(image), t, i).double().numpy()


def test_regression_head_destandardises_its_values(tmp_path: Path) -> None:
    module, manifest = _save(tmp_path / "reg", "concat_mlp", (PRICE, WEIGHT))
    head = load_head(tmp_path / "reg")
    assert manifest.task == "regression" and head.manifest == manifest and head.labels == ()
    text, image = _inputs()
    raw = _raw(module, text, image)
    values = head.predict(text, image).values
    np.testing.assert_allclose(values["price"], raw[:, 0] * 4.0 + 50.0, rtol=1e-6)
    np.testing.assert_allclose(values["weight"], raw[:, 1] * 0.5 - 3.0, rtol=1e-6)
    with pytest.raises(FailedPrecondition, match="regression head; read its outputs with predict"):
        head.predict_proba(text, image)


def test_multitask_head_answers_every_task(tmp_path: Path) -> None:
    module, manifest = _save(tmp_path / "multi", "gated", (COLOUR, PRICE))
    head = load_head(tmp_path / "multi")
    assert manifest.task == "multitask" and manifest.num_outputs == 4
    text, image = _inputs()
    raw = _raw(module, text, image)
    outputs = head.predict(text, image)
    logits = raw[:, :3] / 2.0  # the fitted temperature of rows with both modalities
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        outputs.probabilities["colour"], expected / expected.sum(1, keepdims=True), rtol=1e-5
    )
    np.testing.assert_allclose(outputs.values["price"], raw[:, 3] * 4.0 + 50.0, rtol=1e-6)


def test_each_row_gets_the_temperature_of_its_missing_modality() -> None:
    raw = np.array([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    has_text, has_image = np.array([True, True, False]), np.array([True, False, True])
    masks = {"text": has_text, "image": has_image}
    probabilities = split_outputs(raw, [COLOUR], masks).probabilities["colour"]
    for row, temperature in zip(
        probabilities, (2.0, 10.0, 2.0), strict=True
    ):  # no text-missing T: the default
        exp = np.exp(np.array([2.0, 0.0, 0.0]) / temperature)
        np.testing.assert_allclose(row, exp / exp.sum(), rtol=1e-6)
    assert probabilities[1].max() < probabilities[0].max()  # without the image: less sure


def test_missing_modality_policy_refuses_or_allows_naming_the_modality(tmp_path: Path) -> None:
    _save(tmp_path / "strict", "weighted_sum", (COLOUR,), policy="refuse")
    _save(tmp_path / "lenient", "weighted_sum", (COLOUR,), policy="allow")
    strict, lenient = load_head(tmp_path / "strict"), load_head(tmp_path / "lenient")
    strict.check_modalities([True, True], [True, True])
    with pytest.raises(InvalidInput, match=r"inputs\[1\] has no image: head 'strict' needs text and image"):
        strict.check_modalities([True, True], [True, False])
    with pytest.raises(InvalidInput, match=r"inputs\[0\] has no text"):
        strict.check_modalities([False], [True])
    lenient.check_modalities([True, False], [False, True])
    assert lenient.modalities_used([True, True, False], [True, False, True]) == [
        ("text", "image"),
        ("text",),
        ("image",),
    ]
    # A single-modality head reads one modality: an input without it is refused under any policy.
    _save(tmp_path / "words", "text_only", (COLOUR,), policy="allow")
    words = load_head(tmp_path / "words")
    with pytest.raises(InvalidInput, match=r"inputs\[0\] has no text: head 'words' reads text"):
        words.check_modalities([False], [True])
    assert words.modalities_used([True], [True]) == [("text",)]


def test_attention_head_explains_with_weights_that_sum_to_one(tmp_path: Path) -> None:
    _save(tmp_path / "att", "attention", (COLOUR,))
    head = load_head(tmp_path / "att")
    text, image = _inputs(4)
    text_mask, image_mask = np.array([True, True, False, True]), np.array([True, False, True, True])
    outputs = head.predict(text, image, text_mask, image_mask, explain=True)
    np.testing.assert_allclose(outputs.attention.sum(axis=1), 1.0, rtol=1e-5)
    assert outputs.attention[1, 2] == 0 and outputs.attention[2, 1] == 0
    # The masked modality's values do not matter: the row equals the row sent without it.
    alone = head.predict(text[1:2], None).probabilities["colour"]
    np.testing.assert_allclose(outputs.probabilities["colour"][1], alone[0], rtol=1e-5)
    assert head.predict(text, image).attention is None
    _save(tmp_path / "plain", "concat_mlp", (COLOUR,))
    with pytest.raises(InvalidInput, match="explain needs an attention head"):
        load_head(tmp_path / "plain").predict(text, image, explain=True)


def test_manifest_records_policy_and_fusion_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_model("weighted_sum", TEXT_DIM, IMAGE_DIM, {"fused_dim": 8}, num_outputs=3)
    save_head(
        tmp_path / "ws", module, strategy="weighted_sum", input_dims={"text": TEXT_DIM, "image": IMAGE_DIM},
        config={"fused_dim": 8}, encoders=ENCODERS, outputs=(COLOUR,), missing_modality_policy="refuse",
        fusion_weights=module.fusion.learned_weights(),
    )  # fmt: skip
    manifest = load_head(tmp_path / "ws").manifest
    assert manifest.format_version == 3 and manifest.missing_modality_policy == "refuse"
    assert manifest.fusion_weights == pytest.approx({"text": 0.5, "image": 0.5})
    assert manifest.config["branch_norm"] == 1 and manifest.labels == COLOUR.labels


# --------------------------------------------------------------------------- format 1 heads


def _expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(_expected()["heads"]))
def test_format1_heads_load_and_compute_what_they_did(name: str) -> None:
    """Heads written by the format 1 code (tests/fixtures/heads_v1) give the outputs recorded then."""
    expected = _expected()
    inputs = {
        k: np.array(v, dtype=bool if k.endswith("mask") else np.float32)
        for k, v in expected["inputs"].items()
    }
    head = load_head(FIXTURES / name)
    recorded = expected["heads"][name]
    masks = (
        {}
        if name.endswith("text_only")
        else {"text_mask": inputs["text_mask"], "image_mask": inputs["image_mask"]}
    )
    assert head.manifest.format_version == 1 and head.manifest.missing_modality_policy == "allow"
    np.testing.assert_allclose(
        head.embed(inputs["text"], inputs["image"], **masks), recorded["embed"], atol=1e-6
    )
    if "proba" in recorded:
        np.testing.assert_allclose(
            head.predict_proba(inputs["text"], inputs["image"], **masks), recorded["proba"], atol=1e-6
        )
        assert head.labels == ("a", "b", "c") and head.task == "classification"
    else:
        np.testing.assert_allclose(head.project_text(inputs["text"]), recorded["project_text"], atol=1e-6)
        assert head.logit_scale == pytest.approx(recorded["logit_scale"])


def test_format1_manifest_rules_and_metric_updates(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "v1_gated", tmp_path / "v1_gated")
    update_metrics(tmp_path / "v1_gated", {"note": 1})
    data = json.loads((tmp_path / "v1_gated" / MANIFEST_FILE).read_text())
    assert data["format_version"] == 1 and "outputs" not in data  # written back as it was
    assert load_head(tmp_path / "v1_gated").manifest.metrics["note"] == 1
    for change, message in (
        ({"task": "regression"}, "unknown task 'regression' for format 1"),
        ({"labels": ["only"]}, "at least 2 labels"),
        ({"strategy": "attention"}, "format 1 has no attention strategy"),
    ):
        (tmp_path / "v1_gated" / MANIFEST_FILE).write_text(json.dumps({**data, **change}))
        with pytest.raises(HeadLoadError, match=message):
            load_head(tmp_path / "v1_gated")
