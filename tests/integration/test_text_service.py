"""The text encoder as a separate process over real gRPC, with the default real models."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from mmserve.v1 import common_pb2, text_pb2, text_pb2_grpc
from scripts.stack import ServiceProcess, health_status, start_service
from services.common.matrix import from_matrix
from services.text.embedding import TextEmbedder
from tests.support.metrics import sample_value, scrape

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
]


@pytest.fixture(scope="module")
def stub(text_service: ServiceProcess):
    with grpc.insecure_channel(text_service.address) as channel:
        yield text_pb2_grpc.TextEncoderServiceStub(channel)


@pytest.fixture(scope="module")
def in_process() -> TextEmbedder:
    embedder = TextEmbedder(cpu_runtime="eager")  # the reference for the compiled one served
    embedder.load()
    return embedder


def embed(stub, texts: list[str]) -> text_pb2.EmbedTextResponse:
    return stub.Embed(text_pb2.EmbedTextRequest(texts=texts), timeout=30)


def test_served_embeddings_equal_the_in_process_model(
    stub, in_process: TextEmbedder, text_service: ServiceProcess
) -> None:
    assert "text model BertModel runs on onnxruntime" in text_service.log_path.read_text()
    served = from_matrix(embed(stub, SENTENCES).embeddings)
    local = in_process.process(SENTENCES).vectors
    assert served.shape == (len(SENTENCES), 384)
    cosines = np.sum(served * local, axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(local, axis=1)
    )
    assert cosines.min() >= 0.9999


def test_a_batch_equals_single_calls(stub) -> None:
    batch = from_matrix(embed(stub, SENTENCES).embeddings)
    singles = np.vstack([from_matrix(embed(stub, [s]).embeddings) for s in SENTENCES])
    np.testing.assert_allclose(batch, singles, atol=1e-4)


def test_related_sentences_score_higher_than_unrelated(stub) -> None:
    vectors = from_matrix(embed(stub, SENTENCES).embeddings)
    related = float(vectors[0] @ vectors[1])
    unrelated = max(float(vectors[0] @ vectors[2]), float(vectors[0] @ vectors[4]))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert related > unrelated + 0.3, (related, unrelated)


def test_token_counts_and_truncation_flag(stub) -> None:
    reply = embed(stub, ["short text", "word " * 2000])
    assert list(reply.truncated) == [False, True]
    assert reply.token_counts[0] < 10
    assert reply.token_counts[1] == 256


def test_named_entities_with_offsets(stub) -> None:
    text = "Tim Cook visited the Apple office in London on Monday."
    reply = stub.ExtractEntities(text_pb2.ExtractEntitiesRequest(texts=[text, "nothing here"]), timeout=30)
    assert len(reply.results) == 2
    found = {(e.text, e.label) for e in reply.results[0].entities}
    assert ("Tim Cook", "PERSON") in found and ("London", "GPE") in found
    for entity in reply.results[0].entities:
        assert text[entity.start_char : entity.end_char] == entity.text


def test_model_info_reports_model_device_and_dtype(stub) -> None:
    info = stub.GetModelInfo(common_pb2.GetModelInfoRequest(), timeout=10)
    assert info.model_id.endswith("all-MiniLM-L6-v2")
    assert info.embedding_dim == 384 and info.modality == common_pb2.MODALITY_TEXT
    assert (info.device, info.dtype) == ("cpu", "float32")
    assert info.revision.startswith("sha256:") and info.max_input_tokens == 256


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ([], "at least one text"),
        ([""], "texts[0] is empty"),
        (["ok", "   "], "texts[1] is empty"),
        (["x" * 1_000_000], "characters (limit"),
        (["hi"] * 65, "too many texts"),
    ],
    ids=["empty-list", "empty-string", "blank-string", "1MB-text", "too-many-items"],
)
def test_bad_input_is_invalid_argument_and_service_keeps_serving(stub, texts, message) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, texts)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    assert from_matrix(embed(stub, ["still serving"]).embeddings).shape == (1, 384)


def test_concurrent_callers_share_batches(stub, text_service: ServiceProcess) -> None:
    metrics_url = f"http://127.0.0.1:{text_service.metrics_port}/metrics"
    labels = {"task": "embed"}
    before = scrape(metrics_url)
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda i: embed(stub, [f"sentence number {i} about batching"]), range(256)))
    assert all(len(r.token_counts) == 1 for r in replies)
    after = scrape(metrics_url)
    passes = sample_value(after, "mmserve_batch_size_count", **labels) - sample_value(
        before, "mmserve_batch_size_count", **labels
    )
    items = sample_value(after, "mmserve_batch_size_sum", **labels) - sample_value(
        before, "mmserve_batch_size_sum", **labels
    )
    singles = sample_value(after, "mmserve_batch_size_bucket", le="1.0", **labels) - sample_value(
        before, "mmserve_batch_size_bucket", le="1.0", **labels
    )
    assert items == 256
    assert passes < 256 and singles < passes, "some forward passes must hold more than one request"


def test_health_is_serving_only_after_load_and_warmup(log_dir) -> None:
    service = start_service("text", log_dir=log_dir, wait=False)
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status = health_status(service.address, timeout_s=0.5)
            if status is not None and (not seen or seen[-1] != status):
                seen.append(status)
            if status == 1:  # SERVING
                break
            time.sleep(0.05)
        assert seen[-1] == 1, f"never SERVING: {service.log_tail()}"
        assert seen[0] == 2, "the server reports NOT_SERVING while the model loads"
        warm = scrape(f"http://127.0.0.1:{service.metrics_port}/metrics")
        assert sample_value(warm, "mmserve_inference_duration_seconds_count", task="embed") >= 1
    finally:
        service.stop()


def test_sigterm_finishes_in_flight_requests_and_exits_cleanly(log_dir) -> None:
    service = start_service("text", log_dir=log_dir)
    try:
        with grpc.insecure_channel(service.address) as channel:
            own = text_pb2_grpc.TextEncoderServiceStub(channel)
            futures = [
                own.Embed.future(text_pb2.EmbedTextRequest(texts=[f"request {i}"] * 8), timeout=30)
                for i in range(24)
            ]
            time.sleep(0.05)
            service.process.send_signal(signal.SIGTERM)
            codes = []
            for future in futures:
                try:
                    future.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        assert service.process.wait(30) == 0
        assert grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
    finally:
        service.stop()


def test_named_health_is_served_and_reflection_is_off_by_default(text_service: ServiceProcess) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    assert health_status(text_service.address, "mmserve.v1.TextEncoderService") == 1
    with grpc.insecure_channel(text_service.address) as channel, pytest.raises(grpc.RpcError) as caught:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_ner_work_per_request_is_bounded(stub) -> None:
    """An 800 KB NER request used to hold the NER worker for ~13 s; now it is refused at once, and
    the largest accepted one leaves a small request beside it well within its deadline."""
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        stub.ExtractEntities(
            text_pb2.ExtractEntitiesRequest(texts=["Paris is big. " * 6000] * 10), timeout=10
        )
    assert (
        caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "characters in all" in caught.value.details()
    )
    assert time.monotonic() - began < 2

    largest = ["Angela Merkel met Emmanuel Macron in Paris. " * 450] * 5  # 99,000 characters
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(stub.ExtractEntities, text_pb2.ExtractEntitiesRequest(texts=largest), timeout=30)
        time.sleep(0.05)
        small = stub.ExtractEntities(text_pb2.ExtractEntitiesRequest(texts=["Tim Cook in London"]), timeout=8)
        assert {e.text for e in small.results[0].entities} >= {"London"}
        assert len(big.result().results) == 5


def test_oversized_messages_are_refused_by_the_transport(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        embed(stub, ["y" * 90_000] * 100)  # 9 MB: over the text service's 8 MiB message limit
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert from_matrix(embed(stub, ["still serving"]).embeddings).shape == (1, 384)
