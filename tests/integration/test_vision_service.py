"""The vision encoder as a separate process over real gRPC, with the default real model."""

from __future__ import annotations

import io
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from mmserve.v1 import common_pb2, vision_pb2, vision_pb2_grpc
from scripts.stack import ServiceProcess, health_status, start_service
from services.common.matrix import from_matrix
from services.vision.decoding import ImageLimits
from services.vision.efficientnet_lite import EfficientNetLiteModel, imagenet_labels
from services.vision.preprocessing import prepare_image
from tests.support.metrics import sample_value, scrape


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def synthetic_images() -> list[bytes]:
    """Different enough pictures: gradients, stripes, blobs, noise; PNG, JPEG, WebP and GIF."""
    rng = np.random.default_rng(3)
    x, y = np.meshgrid(np.linspace(0, 1, 160), np.linspace(0, 1, 120))
    gradient = np.stack([x, y, 1 - x], -1)
    stripes = np.repeat(((np.sin(x * 40) > 0)[..., None] * [255, 200, 0]), 1, -1)
    blob = np.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) * 20)[..., None] * [40, 120, 255]
    noise = rng.integers(0, 256, (120, 160, 3))
    return [
        encode(Image.fromarray((gradient * 255).astype(np.uint8))),
        encode(Image.fromarray(stripes.astype(np.uint8)), "JPEG", quality=90),
        encode(Image.fromarray(blob.astype(np.uint8)), "WEBP", lossless=True),
        encode(Image.fromarray(noise.astype(np.uint8)), "GIF"),
        encode(Image.fromarray((gradient[::-1] * 200).astype(np.uint8)).resize((90, 200))),
    ]


IMAGES = synthetic_images()


def png_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes whose header claims width x height 1-bit pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def stub(vision_service: ServiceProcess):
    with grpc.insecure_channel(vision_service.address) as channel:
        yield vision_pb2_grpc.VisionEncoderServiceStub(channel)


@pytest.fixture(scope="module")
def in_process() -> EfficientNetLiteModel:
    backend = EfficientNetLiteModel(device="cpu", dtype="float32", cpu_runtime="eager")  # the reference
    backend.load()
    return backend


def embed(stub, images: list[bytes]) -> np.ndarray:
    return from_matrix(stub.Embed(vision_pb2.EmbedImageRequest(images=images), timeout=30).embeddings)


def classify(stub, images: list[bytes], top_k: int = 0) -> vision_pb2.ClassifyImageResponse:
    return stub.Classify(vision_pb2.ClassifyImageRequest(images=images, top_k=top_k), timeout=30)


def test_served_embeddings_equal_the_in_process_model(
    stub, in_process: EfficientNetLiteModel, vision_service: ServiceProcess
) -> None:
    assert "vision model efficientnet-lite0 runs on onnxruntime" in vision_service.log_path.read_text()
    served = embed(stub, IMAGES)
    local = in_process.embed(
        np.stack([prepare_image(data, ImageLimits(), in_process.transform) for data in IMAGES])
    )
    assert served.shape == (len(IMAGES), 1280) and served.dtype == np.float32
    cosines = np.sum(served * local, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1)
    )
    assert cosines.min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    # Different pictures give clearly different vectors.
    similarity = served @ served.T
    assert similarity[~np.eye(len(IMAGES), dtype=bool)].max() < 0.99


def test_a_jpeg_embedded_for_training_equals_the_served_embedding(stub) -> None:
    """Training embeds in-process on the service's own image path (serving limits, JPEG draft
    scaling): a head sees at training time exactly the vectors it is served."""
    from training.embedders import InProcessEmbedder

    rng = np.random.default_rng(11)
    photo = rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)  # large enough to decode at 1/2 scale
    jpeg = encode(Image.fromarray(photo), "JPEG", quality=85)
    served = embed(stub, [jpeg])
    trained_on = InProcessEmbedder().embed_images([jpeg])
    np.testing.assert_allclose(trained_on, served, atol=1e-5)
    full_size = Image.open(io.BytesIO(jpeg)).convert("RGB")  # what training decoded before
    in_process = EfficientNetLiteModel(device="cpu", dtype="float32")
    in_process.load()
    skewed = in_process.embed(in_process.transform(full_size)[None])
    assert not np.allclose(skewed, served, atol=1e-5), "draft scaling should change the vector"


def test_a_batch_equals_single_calls(stub) -> None:
    batch = embed(stub, IMAGES)
    singles = np.vstack([embed(stub, [image]) for image in IMAGES])
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_classify_returns_human_readable_imagenet_labels(stub, in_process: EfficientNetLiteModel) -> None:
    names = set(imagenet_labels())
    reply = classify(stub, IMAGES[:3])
    assert reply.model_id == "efficientnet-lite0" and len(reply.results) == 3
    local = in_process.classify(
        np.stack([prepare_image(data, ImageLimits(), in_process.transform) for data in IMAGES[:3]]), 5
    )
    for result, expected in zip(reply.results, local, strict=True):
        labels = [entry.label for entry in result.labels]
        scores = [entry.score for entry in result.labels]
        assert len(labels) == 5 and set(labels) <= names
        assert not any(re.fullmatch(r"n\d{8}|LABEL_\d+|\d+", label) for label in labels)  # names, not ids
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
        assert labels == [label for label, _ in expected]
    everything = classify(stub, IMAGES[:1], top_k=5000).results[0].labels
    assert len(everything) == 1000 and {entry.label for entry in everything} == names
    assert sum(entry.score for entry in everything) == pytest.approx(1.0, abs=1e-3)
    assert len(classify(stub, IMAGES[:1], top_k=3).results[0].labels) == 3


def test_model_info_reports_model_device_and_dtype(stub) -> None:
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert info.model_id == "efficientnet-lite0" and info.modality == common_pb2.MODALITY_IMAGE
    assert info.embedding_dim == 1280 and info.num_labels == 1000
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.revision.startswith("sha256:") and info.max_batch_size == 16


BAD_REQUESTS = [
    ([], "images must contain at least one image"),
    ([b""], "images[0]: image is empty"),
    ([IMAGES[0], b"definitely not an image"], "images[1]: could not read image"),
    ([IMAGES[0][: len(IMAGES[0]) // 2]], "images[0]: PNG image is truncated"),
    ([encode(Image.new("RGB", (1, 1)))], "each side must be at least 8 pixels"),
    ([png_claiming(30_000, 30_000)], "900000000 pixels; the limit is 40000000 pixels"),
    (
        [encode(Image.new("RGB", (32, 32)), "BMP")],
        "unsupported image format BMP; supported: PNG, JPEG, WebP, GIF",
    ),
    ([encode(Image.new("RGB", (32, 32)), "TIFF")], "unsupported image format TIFF"),
    ([IMAGES[0]] * 33, "too many images: 33 (limit 32 per request)"),
]
BAD_IDS = [
    "empty-list",
    "empty-bytes",
    "not-an-image",
    "truncated-png",
    "1x1",
    "png-bomb",
    "bmp",
    "tiff",
    "too-many",
]


@pytest.mark.parametrize(("images", "message"), BAD_REQUESTS, ids=BAD_IDS)
@pytest.mark.parametrize("rpc", ["Embed", "Classify"])
def test_bad_input_is_invalid_argument_and_service_keeps_serving(stub, rpc, images, message) -> None:
    began = time.perf_counter()
    with pytest.raises(grpc.RpcError) as caught:
        if rpc == "Embed":
            embed(stub, images)
        else:
            classify(stub, images)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert time.perf_counter() - began < 5
    assert embed(stub, IMAGES[:1]).shape == (1, 1280)


def test_negative_top_k_is_invalid(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        classify(stub, IMAGES[:1], top_k=-1)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in caught.value.details()


def test_a_bad_image_fails_only_its_own_request(stub) -> None:
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(embed, stub, IMAGES[:2]) for _ in range(6)]
        bad = [pool.submit(embed, stub, [IMAGES[0], b"GIF89a broken"]) for _ in range(6)]
        assert all(future.result().shape == (2, 1280) for future in good)
        for future in bad:
            with pytest.raises(grpc.RpcError) as caught:
                future.result()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_callers_share_batches(stub, vision_service: ServiceProcess) -> None:
    metrics_url = f"http://127.0.0.1:{vision_service.metrics_port}/metrics"
    labels = {"task": "embed"}
    before = scrape(metrics_url)
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda i: embed(stub, [IMAGES[i % len(IMAGES)]]), range(128)))
    assert all(reply.shape == (1, 1280) for reply in replies)
    after = scrape(metrics_url)

    def delta(name: str, **extra: str) -> float:
        return sample_value(after, name, **labels, **extra) - sample_value(before, name, **labels, **extra)

    passes, items = delta("mmserve_batch_size_count"), delta("mmserve_batch_size_sum")
    singles = delta("mmserve_batch_size_bucket", le="1.0")
    assert items == 128
    assert passes < 128 and singles < passes, "some forward passes must hold more than one request"


def test_health_is_serving_only_after_load_and_warmup(log_dir) -> None:
    service = start_service("vision", log_dir=log_dir, wait=False)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = health_status(service.address, timeout_s=0.5)
            if status is not None and (not seen or seen[-1] != status):
                seen.append(status)
            if status == 1:  # SERVING
                break
            time.sleep(0.02)
        assert seen[-1] == 1, f"never SERVING: {service.log_tail()}"
        assert seen[0] == 2, "the server reports NOT_SERVING while the model loads"
        warm = scrape(f"http://127.0.0.1:{service.metrics_port}/metrics")
        assert sample_value(warm, "mmserve_inference_duration_seconds_count", task="embed") >= 1
        assert sample_value(warm, "mmserve_inference_duration_seconds_count", task="classify") >= 1
    finally:
        service.stop()
