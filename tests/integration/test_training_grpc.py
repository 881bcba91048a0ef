"""Training through the running encoder services gives what in-process training gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scripts.stack import free_port
from services.common.errors import InvalidInput, NotReady
from training import demo_data
from training.embedders import GrpcEmbedder, InProcessEmbedder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[bytes]]:
    out = tmp_path_factory.mktemp("demo")
    demo_data.generate(out, n=10, seed=1)
    rows = [json.loads(line) for line in (out / "align.jsonl").read_text().splitlines()]
    return [row["text"] for row in rows], [(out / row["image"]).read_bytes() for row in rows]


@pytest.fixture(scope="module")
def grpc_embedder(text_service, vision_service):
    # A batch smaller than the sample count, so results are stitched from several calls.
    embedder = GrpcEmbedder(text_service.address, vision_service.address, batch_size=4)
    yield embedder
    embedder.close()


def test_grpc_and_in_process_embeddings_agree(grpc_embedder: GrpcEmbedder, samples) -> None:
    texts, images = samples
    local = InProcessEmbedder()
    # Same model ids, revisions and dims: a head trained either way passes the service's check.
    assert grpc_embedder.text_info == local.text_info
    assert grpc_embedder.image_info == local.image_info
    remote_text = grpc_embedder.embed_texts(texts)
    remote_image = grpc_embedder.embed_images(images)
    assert remote_text.shape == (10, local.text_info.embedding_dim) and remote_text.dtype == np.float32
    assert remote_image.shape == (10, local.image_info.embedding_dim)
    np.testing.assert_allclose(remote_text, local.embed_texts(texts), atol=1e-4)
    np.testing.assert_allclose(remote_image, local.embed_images(images), atol=1e-4)


def test_grpc_errors_name_the_encoder(grpc_embedder: GrpcEmbedder, vision_service) -> None:
    with pytest.raises(InvalidInput, match=f"image encoder at {vision_service.address}: INVALID_ARGUMENT"):
        grpc_embedder.embed_images([b"not an image"])


def test_unreachable_encoder_is_reported_not_ready(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(NotReady, match=f"text encoder at {address}"):
        GrpcEmbedder(address, address, deadline_s=1.0)
