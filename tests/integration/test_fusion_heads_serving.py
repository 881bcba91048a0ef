"""Regression, multi-task and attention heads, missing-modality policies and a format 1 head, served
by the real fusion service (gRPC) and gateway (HTTP) in front of the real default encoders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from mmserve.v1 import common_pb2, fusion_pb2, fusion_pb2_grpc
from scripts.stack import ServiceProcess
from services.fusion.heads import MANIFEST_FILE, WEIGHTS_FILE, load_head
from services.fusion.strategies import build_model
from tests.integration.test_fusion_service import encoder_embeddings, inputs_of, served_heads
from tests.support.polling import wait_until
from tests.support.traffic import post_json

pytestmark = pytest.mark.slow

HEADS = ("match", "match_strict", "order_total", "order", "legacy")


def _strict_copy(source: Path, target: Path) -> None:
    """The match head with policy refuse (weights unchanged, so their sha256 still holds)."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    manifest = json.loads((target / MANIFEST_FILE).read_text())
    manifest.update(name=target.name, missing_modality_policy="refuse")
    (target / MANIFEST_FILE).write_text(json.dumps(manifest))


def _format1_head(directory: Path, encoders: dict) -> None:
    """A head as the format 1 code wrote it: a "labels" list, no outputs, policy or branch_norm."""
    import hashlib

    torch.manual_seed(0)
    config = {"fused_dim": 8, "hidden_dim": 16, "dropout": 0.1}
    module = build_model("weighted_sum", 384, 1280, {**config, "branch_norm": 0}, num_outputs=2)
    blob = save_safetensors({k: v.contiguous() for k, v in module.state_dict().items()})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / WEIGHTS_FILE).write_bytes(blob)
    manifest = {
        "format_version": 1, "name": directory.name, "task": "classification", "strategy": "weighted_sum",
        "labels": ["no", "yes"], "input_dims": {"text": 384, "image": 1280}, "config": config,
        "encoders": encoders, "metrics": {"test_accuracy": 0.5},
        "weights_sha256": hashlib.sha256(blob).hexdigest(), "created_at": "2026-01-01T00:00:00+00:00",
    }  # fmt: skip
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def fusion(fusion_service: ServiceProcess):
    with grpc.insecure_channel(fusion_service.address) as channel:
        yield fusion_pb2_grpc.FusionServiceStub(channel)


@pytest.fixture(scope="module")
def served(fusion, demo_heads: Path, heads_dir: Path) -> Path:
    for name in ("match", "order_total", "order"):
        shutil.copytree(demo_heads / name, heads_dir / name, dirs_exist_ok=True)
    _strict_copy(demo_heads / "match", heads_dir / "match_strict")
    encoders = json.loads((demo_heads / "match" / MANIFEST_FILE).read_text())["encoders"]
    _format1_head(heads_dir / "legacy", encoders)
    wait_until(lambda: set(HEADS) <= served_heads(fusion), timeout_s=20, what="heads to be picked up")
    return heads_dir


@pytest.fixture(scope="module")
def rows(demo_workdir: Path) -> dict[str, list[dict]]:
    directory = demo_workdir / "demo"
    found = {}
    for task in ("match", "order_total", "order"):
        lines = (directory / f"{task}.jsonl").read_text().splitlines()[-8:]
        found[task] = [json.loads(line) for line in lines]
        for row in found[task]:
            row["image_bytes"] = (directory / row["image"]).read_bytes()
    return found


def _http(gateway: ServiceProcess, payload: dict) -> tuple[int, dict]:
    outcome = post_json(gateway.url + "/v1/predict", payload)
    return outcome.status, json.loads(outcome.body)


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def test_refuse_and_allow_over_grpc(fusion, served: Path, rows) -> None:
    text_only = inputs_of(rows["match"][:2], image=False)
    with pytest.raises(grpc.RpcError) as caught:
        fusion.Predict(fusion_pb2.PredictRequest(inputs=text_only, head="match_strict"), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(
        "inputs[0] has no image: head 'match_strict' needs text and image"
    )

    allowed = fusion.Predict(fusion_pb2.PredictRequest(inputs=text_only, head="match"), timeout=30)
    for prediction in allowed.predictions:
        assert list(prediction.modalities) == [common_pb2.MODALITY_TEXT]
        # The caption alone says nothing about a match: the calibrated answer says so.
        assert prediction.score < 0.75, prediction
    both = fusion.Predict(
        fusion_pb2.PredictRequest(inputs=inputs_of(rows["match"]), head="match_strict"), timeout=30
    )
    assert all(
        list(p.modalities) == [common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE] for p in both.predictions
    )
    accuracy = np.mean([p.label == r["label"] for p, r in zip(both.predictions, rows["match"], strict=True)])
    assert accuracy >= 0.75


def test_refuse_and_allow_over_http(gateway_service: ServiceProcess, served: Path, rows) -> None:
    row = rows["match"][0]
    status, body = _http(gateway_service, {"text": row["text"], "head": "match_strict"})
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert "inputs[0] has no image" in body["error"]["message"]
    status, body = _http(gateway_service, {"image": _b64(row["image_bytes"]), "head": "match_strict"})
    assert status == 400 and "inputs[0] has no text" in body["error"]["message"]
    status, body = _http(gateway_service, {"text": row["text"], "head": "match"})
    assert status == 200 and body["predictions"][0]["modalities"] == ["text"]
    status, body = _http(
        gateway_service, {"text": row["text"], "image": _b64(row["image_bytes"]), "head": "match"}
    )
    assert status == 200 and body["predictions"][0]["modalities"] == ["text", "image"]


def test_regression_values_are_served_in_target_units(
    fusion, gateway_service, served: Path, rows, text_service, vision_service, fusion_service
) -> None:
    # Served from its compiled decision layer; the reference below is the eager module.
    assert "head 'order_total' runs on onnxruntime" in fusion_service.log_path.read_text()
    batch = rows["order_total"]
    head = load_head(served / "order_total")
    text, image = encoder_embeddings(text_service, vision_service, batch)
    expected = head.predict(text, image).values["target"]
    reply = fusion.Predict(fusion_pb2.PredictRequest(inputs=inputs_of(batch), head="order_total"), timeout=30)
    served_values = np.array([p.values["target"] for p in reply.predictions])
    np.testing.assert_allclose(served_values, expected, rtol=1e-5)
    truth = np.array([r["target"] for r in batch])
    print(f"\norder_total: served {np.round(served_values, 2)} for {truth}")
    assert np.abs(served_values - truth).mean() < 2.0  # prices (2 to 36), not standard deviations
    assert all(not p.label and not p.scores for p in reply.predictions)
    status, body = _http(
        gateway_service, {"inputs": [{"text": r["text"], "image": _b64(r["image_bytes"])} for r in batch[:2]],
                          "head": "order_total"},
    )  # fmt: skip
    assert status == 200 and set(body["predictions"][0]) == {"values", "modalities"}
    assert body["predictions"][0]["values"]["target"] == pytest.approx(served_values[0], rel=1e-6)


def test_multitask_attention_head_answers_every_task_and_explains(
    gateway_service, served: Path, rows
) -> None:
    batch = rows["order"]
    payload = {"inputs": [{"text": r["text"], "image": _b64(r["image_bytes"])} for r in batch], "head": "order",
               "explain": True}  # fmt: skip
    status, body = _http(gateway_service, payload)
    assert status == 200, body
    correct = 0
    for prediction, row in zip(body["predictions"], batch, strict=True):
        assert set(prediction) == {"tasks", "values", "modalities", "attention"}
        assert sum(prediction["attention"].values()) == pytest.approx(1.0, abs=1e-5)
        variant = prediction["tasks"]["variant"]
        assert sum(variant["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        if "variant" in row["labels"]:
            correct += variant["label"] == row["labels"]["variant"]
        if "total" in row["labels"]:
            assert prediction["values"]["total"] == pytest.approx(row["labels"]["total"], abs=4.0)
    assert correct >= sum("variant" in r["labels"] for r in batch) - 1
    status, body = _http(gateway_service, {"text": batch[0]["text"], "head": "match", "explain": True})
    assert status == 400 and "explain needs an attention head" in body["error"]["message"]


def test_format1_head_still_loads_and_serves(
    fusion, gateway_service, served: Path, rows, text_service, vision_service
) -> None:
    listed = {h.name: h for h in fusion.ListHeads(fusion_pb2.ListHeadsRequest(), timeout=5).heads}
    assert listed["legacy"].format_version == 1 and listed["legacy"].missing_modality_policy == "allow"
    assert listed["match"].format_version == 3 and set(listed["match"].fusion_weights) == {"text", "image"}
    batch = rows["match"][:3]
    text, image = encoder_embeddings(text_service, vision_service, batch)
    reply = fusion.Predict(fusion_pb2.PredictRequest(inputs=inputs_of(batch), head="legacy"), timeout=30)
    served_probs = np.array([[s.score for s in p.scores] for p in reply.predictions])
    np.testing.assert_allclose(
        served_probs, load_head(served / "legacy").predict_proba(text, image), atol=1e-5
    )
    status, body = _http(gateway_service, {"text": batch[0]["text"], "head": "legacy"})
    assert status == 200 and set(body["predictions"][0]["scores"]) == {"no", "yes"}
    heads = {
        h["name"]: h for h in json.loads(post_json(gateway_service.url + "/v1/heads", None).body)["heads"]
    }
    assert heads["legacy"]["format_version"] == 1
    match = heads["match"]
    assert match["fusion_weights"]["text"] + match["fusion_weights"]["image"] == pytest.approx(1.0, abs=1e-5)
    assert set(match["modality_contribution"]) == {"metric", "text", "image"}
    assert (
        match["missing_modality_policy"] == "allow"
        and heads["match_strict"]["missing_modality_policy"] == "refuse"
    )
