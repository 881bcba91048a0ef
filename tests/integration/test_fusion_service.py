"""The fusion service as a separate process, in front of the real default encoders."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from mmserve.v1 import fusion_pb2, fusion_pb2_grpc, text_pb2, text_pb2_grpc, vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess, start_service
from services.common.matrix import from_matrix
from services.fusion.heads import load_head
from tests.support.polling import wait_until

pytestmark = pytest.mark.slow


def served_heads(stub) -> set[str]:
    return {h.name for h in stub.ListHeads(fusion_pb2.ListHeadsRequest(), timeout=5).heads}


@pytest.fixture(scope="module")
def fusion(fusion_service: ServiceProcess):
    with grpc.insecure_channel(fusion_service.address) as channel:
        yield fusion_pb2_grpc.FusionServiceStub(channel)


@pytest.fixture(scope="module")
def served_demo_heads(fusion, demo_heads: Path, heads_dir: Path) -> Path:
    """The demo heads dropped into the running service's heads directory (no restart)."""
    for name in ("match", "align"):
        shutil.copytree(demo_heads / name, heads_dir / name, dirs_exist_ok=True)
    wait_until(lambda: {"match", "align"} <= served_heads(fusion), what="heads to be picked up")
    return heads_dir


@pytest.fixture(scope="module")
def demo_rows(demo_workdir: Path) -> list[dict]:
    directory = demo_workdir / "demo"
    rows = [json.loads(line) for line in (directory / "match.jsonl").read_text().splitlines()[:12]]
    for row in rows:
        row["image_bytes"] = (directory / row["image"]).read_bytes()
    return rows


def inputs_of(rows: list[dict], text: bool = True, image: bool = True) -> list[fusion_pb2.MultimodalInput]:
    return [
        fusion_pb2.MultimodalInput(
            text=row["text"] if text else None, image=row["image_bytes"] if image else None
        )
        for row in rows
    ]


def encoder_embeddings(text_service, vision_service, rows) -> tuple[np.ndarray, np.ndarray]:
    with grpc.insecure_channel(text_service.address) as t, grpc.insecure_channel(vision_service.address) as v:
        texts = text_pb2_grpc.TextEncoderServiceStub(t).Embed(
            text_pb2.EmbedTextRequest(texts=[r["text"] for r in rows]), timeout=30
        )
        images = vision_pb2_grpc.VisionEncoderServiceStub(v).Embed(
            vision_pb2.EmbedImageRequest(images=[r["image_bytes"] for r in rows]), timeout=30
        )
    return from_matrix(texts.embeddings), from_matrix(images.embeddings)


def test_predict_and_embed_over_grpc_equal_the_in_process_head(
    fusion, served_demo_heads, demo_rows, text_service, vision_service
) -> None:
    head = load_head(served_demo_heads / "match")
    text, image = encoder_embeddings(text_service, vision_service, demo_rows)
    reply = fusion.Predict(fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows), head="match"), timeout=30)
    served = np.array([[s.score for s in p.scores] for p in reply.predictions])
    np.testing.assert_allclose(served, head.predict_proba(text, image), atol=1e-5)
    assert [p.label for p in reply.predictions] == [head.labels[i] for i in served.argmax(axis=1)]
    accuracy = np.mean([p.label == row["label"] for p, row in zip(reply.predictions, demo_rows, strict=True)])
    assert accuracy >= 0.75

    fused = fusion.Embed(
        fusion_pb2.FusionEmbedRequest(inputs=inputs_of(demo_rows[:4]), head="match"), timeout=30
    )
    np.testing.assert_allclose(from_matrix(fused.embeddings), head.embed(text[:4], image[:4]), atol=1e-5)


def test_a_missing_modality_follows_the_head_rule(
    fusion, served_demo_heads, demo_rows, text_service, vision_service
) -> None:
    head = load_head(served_demo_heads / "match")
    text, _ = encoder_embeddings(text_service, vision_service, demo_rows[:3])
    reply = fusion.Predict(
        fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:3], image=False), head="match"), timeout=30
    )
    served = np.array([[s.score for s in p.scores] for p in reply.predictions])
    np.testing.assert_allclose(served, head.predict_proba(text, None), atol=1e-5)


def test_similarity_needs_a_shared_space(fusion, served_demo_heads, demo_rows) -> None:
    request = fusion_pb2.SimilarityRequest(texts=["a red circle"], images=[demo_rows[0]["image_bytes"]])
    with pytest.raises(grpc.RpcError) as caught:
        fusion.Similarity(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "do not share an embedding space" in caught.value.details()


def test_alignment_head_ranks_matching_captions_first(fusion, served_demo_heads, demo_workdir: Path) -> None:
    directory = demo_workdir / "demo"
    rows = [json.loads(line) for line in (directory / "align.jsonl").read_text().splitlines()[-20:]]
    captions = [r["text"] for r in rows]
    images = [(directory / r["image"]).read_bytes() for r in rows]
    reply = fusion.Similarity(
        fusion_pb2.SimilarityRequest(texts=captions, images=images, head="align"), timeout=60
    )
    scores = from_matrix(reply.scores)  # [texts, images]
    top1 = float(np.mean(scores.argmax(axis=0) == np.arange(len(rows))))
    print(f"\nalignment head through gRPC: image -> caption top-1 = {top1:.2f} over {len(rows)} images")
    assert reply.space == "align" and top1 >= 0.6


def test_bad_requests_are_refused_with_clear_codes(fusion, served_demo_heads, demo_rows) -> None:
    cases = [
        (
            fusion_pb2.PredictRequest(inputs=[], head="match"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "at least one",
        ),
        (
            fusion_pb2.PredictRequest(inputs=[fusion_pb2.MultimodalInput()], head="match"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "needs a text",
        ),
        (
            fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:1]), head="nope"),
            grpc.StatusCode.NOT_FOUND,
            "no head named",
        ),
        (
            fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:1]), head="align"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "alignment",
        ),
        (
            fusion_pb2.PredictRequest(
                inputs=[fusion_pb2.MultimodalInput(text="x", image=b"not an image")], head="match"
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "images[0]",
        ),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            fusion.Predict(request, timeout=30)
        assert caught.value.code() == code and message in caught.value.details(), caught.value.details()


def test_heads_for_other_encoders_and_corrupt_heads_are_refused(
    fusion, served_demo_heads: Path, demo_rows
) -> None:
    foreign = served_demo_heads / "foreign"
    shutil.copytree(served_demo_heads / "match", foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["name"] = "foreign"
    manifest["encoders"]["text"]["model_id"] = "BAAI/bge-small-en-v1.5"
    (foreign / "manifest.json").write_text(json.dumps(manifest))

    hot = served_demo_heads / "hot"
    shutil.copytree(served_demo_heads / "match", hot)
    manifest = json.loads((hot / "manifest.json").read_text())
    manifest["name"] = "hot"
    (hot / "manifest.json").write_text(json.dumps(manifest))
    wait_until(lambda: "hot" in served_heads(fusion), what="the new head")

    request = fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:2]), head="foreign")
    with pytest.raises(grpc.RpcError) as caught:
        fusion.Predict(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "was trained on text encoder BAAI/bge-small-en-v1.5" in caught.value.details()
    assert "foreign" not in served_heads(fusion)

    before = fusion.Predict(
        fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:2]), head="hot"), timeout=30
    )
    (hot / "head.safetensors").write_bytes(b"\x00garbage, not safetensors")
    time.sleep(1.5)  # three rescans
    after = fusion.Predict(fusion_pb2.PredictRequest(inputs=inputs_of(demo_rows[:2]), head="hot"), timeout=30)
    assert "hot" in served_heads(fusion), "the previous version keeps serving"
    assert [p.score for p in after.predictions] == [p.score for p in before.predictions]


@pytest.fixture(scope="module")
def other_vision_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP vision tower: an image encoder the demo heads were not trained on."""
    import torch
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    directory = tmp_path_factory.mktemp("other-vision-model")
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30,
        patch_size=10, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}).save_pretrained(
        directory
    )
    return directory


def test_vision_down_fails_fast_a_changed_model_is_refused_and_recovery_needs_no_restart(
    text_service, demo_heads: Path, other_vision_model: Path, tmp_path: Path, log_dir
) -> None:
    shutil.copytree(demo_heads / "match", tmp_path / "match")
    vision = start_service("vision", log_dir=log_dir)
    fusion_process = start_service(
        "fusion",
        args=[
            "--text-address",
            text_service.address,
            "--vision-address",
            vision.address,
            "--heads-dir",
            str(tmp_path),
            # Long enough that no periodic rescan can be what notices the encoder's new model.
            "--heads-reload-interval-s",
            "600",
        ],  # fmt: skip
        log_dir=log_dir,
    )
    rows = [{"text": "a red circle", "image_bytes": _png()}]
    try:
        with grpc.insecure_channel(fusion_process.address) as channel:
            stub = fusion_pb2_grpc.FusionServiceStub(channel)
            assert "match" in served_heads(stub)
            both = fusion_pb2.PredictRequest(inputs=inputs_of(rows), head="match")
            text_only = fusion_pb2.PredictRequest(inputs=inputs_of(rows, image=False), head="match")
            assert stub.Predict(both, timeout=30).predictions
            vision.kill()
            began = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(both, timeout=10)
            elapsed = time.monotonic() - began
            print(f"\nvision down: UNAVAILABLE after {elapsed * 1000:.0f} ms (deadline 10 s)")
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and elapsed < 1.0
            assert stub.Predict(text_only, timeout=30).predictions, "text-only requests still work"

            # Back on the same port with another model: refused at once, never run through the head.
            other = start_service(
                "vision", port=vision.port, args=["--model", str(other_vision_model)], log_dir=log_dir
            )
            try:
                codes = []
                wait_until(
                    lambda: (
                        codes.append(_code(stub, both)) or codes[-1][0] == grpc.StatusCode.FAILED_PRECONDITION
                    ),
                    what="the new vision model to be refused",
                )
                assert grpc.StatusCode.OK not in [code for code, _ in codes]
                assert "was trained on image encoder efficientnet" in codes[-1][1]
            finally:
                other.stop()

            vision.spawn().wait_ready(120)
            wait_until(lambda: _code(stub, both)[0] == grpc.StatusCode.OK, what="image requests to recover")
    finally:
        fusion_process.stop()
        vision.stop()


def _code(stub, request) -> tuple[grpc.StatusCode, str]:
    try:
        stub.Predict(request, timeout=5)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (96, 96), (220, 20, 20)).save(buffer, format="PNG")
    return buffer.getvalue()
