"""A CLIP pair end to end: the text tower in the text service and the vision tower in the vision
service, both from one small CLIP checkpoint the test builds; fusion compares them natively."""

from __future__ import annotations

import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizerFast

from mmserve.v1 import fusion_pb2, fusion_pb2_grpc
from scripts.stack import start_service
from services.common.matrix import from_matrix
from tests.support.logs import assert_json_lines

WORDS = ["a", "photo", "of", "red", "blue", "cat", "dog", "circle", "square"]
TEXTS = ["a photo of a cat", "a blue square", "a red circle"]
LABELS = ["cat", "dog", "square"]


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-clip")
    tokens = ["<|startoftext|>", "<|endoftext|>", *[f"{w}</w>" for w in WORDS], *"abcdefghijklmnopqrstuvwxyz"]
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizerFast(
        vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt")
    ).save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        directory
    )
    text = {"vocab_size": len(tokens), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 24, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}  # fmt: skip
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(
        directory
    )
    return directory


def in_process_similarity(clip_dir: Path, texts: list[str], images: list[bytes]) -> np.ndarray:
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = CLIPTokenizerFast.from_pretrained(clip_dir)
    processor = CLIPImageProcessorPil.from_pretrained(clip_dir)
    pixels = processor([Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**tokenizer(texts, padding=True, return_tensors="pt"))
        image = model.get_image_features(**pixels)
    text = getattr(text, "pooler_output", text)
    image = getattr(image, "pooler_output", image)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    return (text @ image.T).numpy()


def test_clip_pair_similarity_and_zero_shot_match_the_in_process_model(
    clip_dir: Path, tmp_path: Path, log_dir
) -> None:
    started = []
    try:
        text = start_service("text", args=["--model", str(clip_dir)], log_dir=log_dir)
        started.append(text)
        vision = start_service("vision", args=["--model", str(clip_dir)], log_dir=log_dir)
        started.append(vision)
        fusion = start_service(
            "fusion",
            args=[
                "--text-address",
                text.address,
                "--vision-address",
                vision.address,
                "--heads-dir",
                str(tmp_path),
            ],
            log_dir=log_dir,
        )
        started.append(fusion)
        # The text tower is served compiled; the reference below is the eager CLIPModel.
        assert "text model CLIPTextModelWithProjection runs on onnxruntime" in text.log_path.read_text()
        for tower in (text, vision):  # a tower loaded from the whole checkpoint: its load report is JSON too
            assert_json_lines(tower)
        images = [png(seed) for seed in range(3)]
        with grpc.insecure_channel(fusion.address) as channel:
            stub = fusion_pb2_grpc.FusionServiceStub(channel)
            reply = stub.Similarity(
                fusion_pb2.SimilarityRequest(texts=TEXTS, images=images, candidate_labels=LABELS),
                timeout=60,
            )
        assert reply.space == "native"
        np.testing.assert_allclose(
            from_matrix(reply.scores), in_process_similarity(clip_dir, TEXTS, images), atol=1e-4
        )
        assert len(reply.zero_shot) == len(images)
        # Zero-shot is CLIP's recipe: prompts, softmax over labels at CLIP's logit scale (100).
        prompts = [f"a photo of a {label}." for label in LABELS]
        logits = 100.0 * in_process_similarity(clip_dir, prompts, images).T  # [images, labels]
        expected = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected /= expected.sum(axis=1, keepdims=True)
        for result, row in zip(reply.zero_shot, expected, strict=True):
            assert {label.label: label.score for label in result.labels} == pytest.approx(
                dict(zip(LABELS, row.tolist(), strict=True)), abs=1e-3
            )
        for result in reply.zero_shot:
            assert {label.label for label in result.labels} == set(LABELS)
            assert sum(label.score for label in result.labels) == pytest.approx(1.0, abs=1e-4)
            assert [label.score for label in result.labels] == sorted(
                (label.score for label in result.labels), reverse=True
            )
    finally:
        for service in reversed(started):
            service.stop()
