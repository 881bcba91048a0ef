"""A head over text + audio + tabular features, trained here on a small generated task that needs
all three, served by the real fusion service (with the real text and audio encoders) and gateway
over HTTP; a head whose modality's encoder is missing or unreachable is refused with a message
naming it."""

from __future__ import annotations

import base64
import json
import random
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from mmserve.v1 import fusion_pb2, fusion_pb2_grpc
from scripts.stack import ServiceProcess, free_port, start_service
from tests.integration.test_fusion_service import served_heads
from tests.support.polling import wait_until
from tests.support.traffic import post_json
from training.demo_data import draw_sound, wav_bytes
from training.embedders import GrpcEmbedder
from training.heads.train import TrainConfig, train_head

pytestmark = pytest.mark.slow

HEAD = "alert"
URGENT = ("this is urgent", "an emergency, act now", "critical: respond immediately")
ROUTINE = ("just a routine note", "nothing special here", "a regular status update")
# A small, quick run: a few hundred rows of three bits, learned in seconds on one thread.
FAST = TrainConfig(epochs=60, patience=15, progress=False, seed=0)


def _rows(directory: Path, n: int, seed: int = 0) -> list[dict]:
    """The label is the majority of three signals, one per modality (urgent wording, a whistle
    rather than a hum, a positive ``pressure``): each alone is right about 3 times in 4."""
    rng, waves = random.Random(seed), np.random.default_rng(seed)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        urgent, shrill, pressure = rng.random() < 0.5, rng.random() < 0.5, rng.uniform(-1, 1)
        path = f"audio/{index:04d}.wav"
        (directory / path).write_bytes(wav_bytes(draw_sound("whistle" if shrill else "hum", waves)))
        votes = int(urgent) + int(shrill) + int(pressure > 0)
        rows.append(
            {
                "text": rng.choice(URGENT if urgent else ROUTINE),
                "audio": path,
                "features": {"pressure": round(pressure, 3), "noise": round(rng.gauss(0, 1), 3)},
                "label": "alert" if votes >= 2 else "calm",
            }
        )
    return rows


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
    text_service: ServiceProcess,
    vision_service: ServiceProcess,
    audio_service: ServiceProcess,
) -> tuple[Path, list[dict], dict]:
    """The alert head, trained through the real encoder services (the models fusion serves)."""
    work = tmp_path_factory.mktemp("modalities")
    rows = _rows(work, 320)
    data = work / "alert.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    embedder = GrpcEmbedder(text_service.address, vision_service.address, audio_address=audio_service.address)
    try:
        head_dir, result = train_head(
            data, HEAD, "concat_mlp", work / "heads", embedder, FAST, {"fused_dim": 32, "hidden_dim": 32},
            baselines=True,
        )  # fmt: skip
    finally:
        embedder.close()
    return head_dir, rows, result.metrics


def test_a_head_over_text_audio_and_features_beats_each_modality_alone(trained) -> None:
    head_dir, _, metrics = trained
    manifest = json.loads((head_dir / "manifest.json").read_text())
    assert manifest["modalities"] == ["text", "audio", "features"]
    assert manifest["features"]["names"] == ["pressure", "noise"]
    assert set(manifest["encoders"]) == {"text", "audio"}
    alone = metrics["baselines_test_accuracy"]
    assert set(alone) == {"text_only", "audio_only", "features_only"}
    assert max(alone.values()) < 0.88, alone
    assert metrics["test_accuracy"] >= max(alone.values()) + 0.1, (metrics["test_accuracy"], alone)


def _input(directory: Path, row: dict) -> dict:
    audio = base64.b64encode((directory / row["audio"]).read_bytes()).decode()
    return {"text": row["text"], "audio": audio, "features": row["features"]}


def test_the_head_serves_over_http_and_refuses_bad_features(
    trained, heads_dir: Path, fusion_service: ServiceProcess, gateway_service: ServiceProcess
) -> None:
    head_dir, rows, _ = trained
    shutil.copytree(head_dir, heads_dir / HEAD)
    with grpc.insecure_channel(fusion_service.address) as channel:
        wait_until(
            lambda: HEAD in served_heads(fusion_pb2_grpc.FusionServiceStub(channel)), 20, "alert served"
        )
    listed = {
        h["name"]: h for h in json.loads(post_json(f"{gateway_service.url}/v1/heads", None).body)["heads"]
    }
    assert listed[HEAD]["modalities"] == ["text", "audio", "features"]
    assert (
        listed[HEAD]["feature_names"] == ["pressure", "noise"] and listed[HEAD]["audio_model_id"] == "yamnet"
    )
    url = f"{gateway_service.url}/v1/predict"
    sample = rows[:12]
    reply = post_json(url, {"head": HEAD, "inputs": [_input(head_dir.parent.parent, r) for r in sample]}, 60)
    assert reply.status == 200, reply.body
    predictions = json.loads(reply.body)["predictions"]
    assert [p["modalities"] for p in predictions] == [["text", "audio", "features"]] * len(sample)
    right = sum(p["label"] == r["label"] for p, r in zip(predictions, sample, strict=True))
    assert right >= 10, [(p["label"], r["label"]) for p, r in zip(predictions, sample, strict=True)]

    # One input inline; the head answers without its audio (policy allow) from the rest.
    inline = post_json(url, {"head": HEAD, "text": rows[0]["text"], "features": rows[0]["features"]}, 30)
    assert inline.status == 200, inline.body
    assert json.loads(inline.body)["predictions"][0]["modalities"] == ["text", "features"]

    bad = {
        "missing": ({"pressure": 0.5}, "feature 'noise' is missing"),
        "unknown": ({"pressure": 0.5, "noise": 0.1, "wind": 1}, "unknown feature 'wind'"),
    }
    for features, message in bad.values():
        refused = post_json(url, {"head": HEAD, "text": "urgent", "features": features}, 30)
        error = json.loads(refused.body)["error"]
        assert refused.status == 400 and error["status"] == "INVALID_ARGUMENT", refused.body
        assert message in error["message"], error
    # NaN is no JSON number: the gateway refuses it as JSON. Over gRPC (a double may be NaN) the
    # fusion service refuses it by name.
    request = urllib.request.Request(
        url, data=b'{"head": "alert", "features": {"pressure": NaN, "noise": 0}}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        urllib.request.urlopen(request, timeout=30)
        raise AssertionError("NaN was accepted")
    except urllib.error.HTTPError as error:
        body = json.loads(error.read())
        assert error.code == 400 and "not valid JSON" in body["error"]["message"], body
    features = fusion_pb2.Features(values={"pressure": float("nan"), "noise": 0.0})
    with grpc.insecure_channel(fusion_service.address) as channel, pytest.raises(grpc.RpcError) as refused:
        fusion_pb2_grpc.FusionServiceStub(channel).Predict(
            fusion_pb2.PredictRequest(
                head=HEAD, inputs=[fusion_pb2.MultimodalInput(text="urgent", features=features)]
            ),
            timeout=30,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "pressure" in refused.value.details(), refused.value.details()


@pytest.mark.parametrize("audio_address", ["", "unreachable"])
def test_a_head_whose_encoder_is_missing_is_refused_with_a_clear_message(
    trained, tmp_path: Path, text_service: ServiceProcess, vision_service: ServiceProcess,
    log_dir: Path, audio_address: str,
) -> None:  # fmt: skip
    head_dir, rows, _ = trained
    shutil.copytree(head_dir, tmp_path / HEAD)
    address = f"127.0.0.1:{free_port()}" if audio_address == "unreachable" else ""
    fusion = start_service(
        "fusion",
        args=[
            "--text-address", text_service.address, "--vision-address", vision_service.address,
            "--audio-address", address, "--heads-dir", str(tmp_path), "--default-deadline-s", "3",
        ],
        log_dir=log_dir,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(fusion.address) as channel:
            stub = fusion_pb2_grpc.FusionServiceStub(channel)
            item = fusion_pb2.MultimodalInput(
                text=rows[0]["text"],
                audio=(head_dir.parent.parent / rows[0]["audio"]).read_bytes(),
                features=fusion_pb2.Features(values=rows[0]["features"]),
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.Predict(fusion_pb2.PredictRequest(inputs=[item], head=HEAD), timeout=30)
    finally:
        fusion.stop()
    if audio_address == "":
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "reads audio, but this fusion service has no audio encoder" in refused.value.details()
    else:
        assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert refused.value.details().startswith("audio encoder"), refused.value.details()
