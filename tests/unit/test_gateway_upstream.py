"""The gateway against small in-test gRPC backends (real grpc servers on port 0, no models):
what reaches the backends, what comes back, and how their failures are answered."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import numpy as np
import openai
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from gateway.app import create_app
from gateway.errors import HTTP_STATUS
from mmserve.v1 import (
    audio_pb2,
    audio_pb2_grpc,
    common_pb2,
    fusion_pb2,
    fusion_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    vision_pb2,
    vision_pb2_grpc,
)
from services.common.matrix import to_matrix
from services.common.settings import GatewaySettings

DEADLINE_S = 2.0


def vector(data: bytes, dim: int) -> np.ndarray:
    """A deterministic unit vector per input, so tests can tell which input produced which row."""
    seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    row = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return row / np.linalg.norm(row)


def text_vector(text: str) -> np.ndarray:
    return vector(text.encode(), 8)


def image_vector(image: bytes) -> np.ndarray:
    return vector(image, 12)


def audio_vector(clip: bytes) -> np.ndarray:
    return vector(clip, 6)


@dataclass
class Backends:
    """What the fake backends saw, and how they are told to misbehave."""

    calls: list[tuple[str, object, dict, float]] = field(default_factory=list)
    fail: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)  # "text.Embed" -> status
    delay_s: dict[str, float] = field(default_factory=dict)
    health: dict[str, health.HealthServicer] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    def enter(self, name: str, request, context: grpc.ServicerContext) -> None:
        self.calls.append((name, request, dict(context.invocation_metadata()), context.time_remaining()))
        time.sleep(self.delay_s.get(name, 0.0))
        if name in self.fail:
            context.abort(*self.fail[name])

    def requests(self, name: str) -> list:
        return [request for called, request, _, _ in self.calls if called == name]


class FakeText(text_pb2_grpc.TextEncoderServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def Embed(self, request, context):
        self.b.enter("text.Embed", request, context)
        rows = np.stack([text_vector(t) for t in request.texts])
        return text_pb2.EmbedTextResponse(
            embeddings=to_matrix(rows), token_counts=[len(t.split()) + 2 for t in request.texts],
            truncated=[len(t) > 100 for t in request.texts], model_id="fake-text",
        )  # fmt: skip

    def ExtractEntities(self, request, context):
        self.b.enter("text.ExtractEntities", request, context)
        results = []
        for t in request.texts:
            word = t.split()[0]
            results.append(
                text_pb2.EntityList(
                    entities=[text_pb2.Entity(text=word, label="WORD", start_char=0, end_char=len(word))]
                )
            )
        return text_pb2.ExtractEntitiesResponse(results=results, model_id="fake-ner")

    def ClassifyText(self, request, context):
        self.b.enter("text.ClassifyText", request, context)
        k = request.top_k or 2
        ranked = [("positive", 0.75), ("negative", 0.25)][:k]
        return text_pb2.ClassifyTextResponse(
            results=[
                text_pb2.TextClassification(
                    labels=[common_pb2.LabelScore(label=n, score=v) for n, v in ranked]
                )
                for _ in request.texts
            ],
            model_id="fake-classifier",
        )

    def GetModelInfo(self, request, context):
        self.b.enter("text.GetModelInfo", request, context)
        labels = ["PER", "LOC"] if request.include_labels else []
        tasks = [common_pb2.TaskModel(task="embed", model_id="fake-text"),
                 common_pb2.TaskModel(task="ner", model_id="fake-ner", num_labels=2, labels=labels),
                 common_pb2.TaskModel(task="classify", model_id="fake-classifier")]  # fmt: skip
        return common_pb2.ModelInfo(
            model_id="fake-text", embedding_dim=8, modality=common_pb2.MODALITY_TEXT, tasks=tasks
        )


class FakeVision(vision_pb2_grpc.VisionEncoderServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def Embed(self, request, context):
        self.b.enter("vision.Embed", request, context)
        return vision_pb2.EmbedImageResponse(
            embeddings=to_matrix(np.stack([image_vector(i) for i in request.images])), model_id="fake-vision"
        )

    def Classify(self, request, context):
        self.b.enter("vision.Classify", request, context)
        k = request.top_k or 5
        labels = [common_pb2.LabelScore(label=f"label-{j}", score=1.0 / (j + 2)) for j in range(k)]
        return vision_pb2.ClassifyImageResponse(
            results=[vision_pb2.ImageClassification(labels=labels) for _ in request.images],
            model_id="fake-vision",
        )

    def EmbedVideo(self, request, context):
        """A video's vector is its bytes' image vector; two frames each, at 0 and 0.5 s."""
        self.b.enter("vision.EmbedVideo", request, context)
        rows = np.stack([image_vector(v) for v in request.videos])
        frames = [vision_pb2.VideoFrames(embeddings=to_matrix(np.stack([row, row])), timestamps_s=[0.0, 0.5])
                  for row in rows] if request.include_frames else []  # fmt: skip
        return vision_pb2.EmbedVideoResponse(
            embeddings=to_matrix(rows), duration_s=[1.0] * len(rows), num_frames=[2] * len(rows),
            frames=frames, model_id="fake-vision",
        )  # fmt: skip

    def GetModelInfo(self, request, context):
        self.b.enter("vision.GetModelInfo", request, context)
        return common_pb2.ModelInfo(
            model_id="fake-vision", embedding_dim=12, modality=common_pb2.MODALITY_IMAGE, num_labels=10
        )


class FakeAudio(audio_pb2_grpc.AudioEncoderServiceServicer):
    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def Embed(self, request, context):
        self.b.enter("audio.Embed", request, context)
        rows = np.stack([audio_vector(c) for c in request.clips])
        segments = [audio_pb2.AudioSegments(embeddings=to_matrix(row[None]), start_s=[0.0], end_s=[0.25])
                    for row in rows] if request.include_segments else []  # fmt: skip
        return audio_pb2.EmbedAudioResponse(
            embeddings=to_matrix(rows),
            duration_s=[0.25] * len(rows),
            segments=segments,
            model_id="fake-audio",
        )

    def Classify(self, request, context):
        self.b.enter("audio.Classify", request, context)
        labels = [common_pb2.LabelScore(label=n, score=v) for n, v in (("Speech", 0.75), ("Music", 0.5))]
        return audio_pb2.ClassifyAudioResponse(
            results=[
                audio_pb2.AudioClassification(labels=labels[: request.top_k or 2]) for _ in request.clips
            ],
            model_id="fake-audio",
        )

    def GetModelInfo(self, request, context):
        self.b.enter("audio.GetModelInfo", request, context)
        tasks = [common_pb2.TaskModel(task="embed", model_id="fake-audio"),
                 common_pb2.TaskModel(task="classify", model_id="fake-audio", num_labels=2)]  # fmt: skip
        return common_pb2.ModelInfo(
            model_id="fake-audio", embedding_dim=6, modality=common_pb2.MODALITY_AUDIO, tasks=tasks
        )


class FakeFusion(fusion_pb2_grpc.FusionServiceServicer):
    """Fused vector of an input: [has text, has image, len(text), len(image)]."""

    def __init__(self, backends: Backends) -> None:
        self.b = backends

    def Embed(self, request, context):
        self.b.enter("fusion.Embed", request, context)
        rows = [[x.HasField("text"), x.HasField("image"), len(x.text), len(x.image)] for x in request.inputs]
        return fusion_pb2.FusionEmbedResponse(
            embeddings=to_matrix(np.array(rows, np.float32)), head=request.head
        )

    def Predict(self, request, context):
        self.b.enter("fusion.Predict", request, context)
        predictions = []
        for x in request.inputs:
            p = 0.75 if x.HasField("image") else 0.25
            scores = [
                common_pb2.LabelScore(label="match", score=p),
                common_pb2.LabelScore(label="mismatch", score=1 - p),
            ]
            best = scores[0] if p >= 0.5 else scores[1]
            predictions.append(fusion_pb2.Prediction(label=best.label, score=best.score, scores=scores))
        return fusion_pb2.PredictResponse(predictions=predictions, head=request.head)

    def Similarity(self, request, context):
        self.b.enter("fusion.Similarity", request, context)
        scores = np.array(
            [[text_vector(t)[:8] @ image_vector(i)[:8] for i in request.images] for t in request.texts],
            np.float32,
        )
        zero_shot = [
            fusion_pb2.ZeroShotResult(labels=[common_pb2.LabelScore(label=lb, score=1.0 / len(request.candidate_labels)) for lb in request.candidate_labels])
            for _ in request.images
        ] if request.candidate_labels else []  # fmt: skip
        return fusion_pb2.SimilarityResponse(
            scores=to_matrix(scores.reshape(len(request.texts), len(request.images))),
            zero_shot=zero_shot,
            space=request.head or "native",
        )

    def ListHeads(self, request, context):
        self.b.enter("fusion.ListHeads", request, context)
        head = fusion_pb2.HeadInfo(name="match", task="classification", strategy="weighted_sum", labels=["match", "mismatch"],
                                   metrics_json='{"accuracy": 0.9, "loss": NaN}')  # fmt: skip
        return fusion_pb2.ListHeadsResponse(heads=[head])


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    state = Backends()
    servers = []
    for name, servicer, add in (
        ("text", FakeText, text_pb2_grpc.add_TextEncoderServiceServicer_to_server),
        ("vision", FakeVision, vision_pb2_grpc.add_VisionEncoderServiceServicer_to_server),
        ("fusion", FakeFusion, fusion_pb2_grpc.add_FusionServiceServicer_to_server),
        ("audio", FakeAudio, audio_pb2_grpc.add_AudioEncoderServiceServicer_to_server),
    ):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        add(servicer(state), server)
        state.health[name] = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(state.health[name], server)
        state.addresses[name] = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
        server.start()
        servers.append(server)
    yield state
    for server in servers:
        server.stop(None)


@pytest.fixture
def b(backends: Backends) -> Iterator[Backends]:
    """The shared backends, with a clean record and no injected faults."""
    backends.calls.clear()
    yield backends
    backends.fail.clear()
    backends.delay_s.clear()


def gateway_app(backends: Backends, **overrides):
    options = {"deadline_s": DEADLINE_S, "max_items_per_request": 8, **overrides}
    settings = GatewaySettings(
        text_address=backends.addresses["text"], vision_address=backends.addresses["vision"],
        fusion_address=backends.addresses["fusion"], audio_address=backends.addresses["audio"], **options,
    )  # fmt: skip
    return create_app(settings, CollectorRegistry())


@pytest.fixture(scope="module")
def client(backends: Backends):
    return gateway_app(backends).test_client()


def ok(response) -> dict:
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def png(tag: str) -> bytes:
    """Bytes the gateway must pass on untouched (it never decodes images itself)."""
    return b"\x89PNG\r\n\x1a\n" + tag.encode() + bytes(range(256))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def decode_b64_row(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def test_text_embeddings_are_the_backends_vectors_exactly(client, b) -> None:
    texts = ["a photo of a cat", "stock markets fell"]
    body = ok(client.post("/v1/embed/text", json={"texts": texts}))
    assert b.requests("text.Embed")[0].texts == texts
    expected = np.stack([text_vector(t) for t in texts])
    np.testing.assert_array_equal(np.array(body["embeddings"], dtype=np.float32), expected)
    assert (
        body["token_counts"] == [7, 5]
        and body["truncated"] == [False, False]
        and body["model"] == "fake-text"
    )
    packed = ok(client.post("/v1/embed/text", json={"texts": texts, "encoding_format": "base64"}))
    np.testing.assert_array_equal(np.stack([decode_b64_row(r) for r in packed["embeddings"]]), expected)


def test_openai_route_keeps_order_and_sends_each_modality_to_its_encoder(client, b) -> None:
    cat, dog = png("cat"), png("dog")
    items = ["first text", {"type": "image", "image": b64(cat)}, {"type": "text", "text": "second text"},
             {"type": "image", "image": "data:image/png;base64," + b64(dog)}]  # fmt: skip
    body = ok(client.post("/v1/embeddings", json={"input": items, "model": "fake-text+fake-vision"}))
    assert b.requests("text.Embed")[0].texts == ["first text", "second text"]
    assert list(b.requests("vision.Embed")[0].images) == [cat, dog]  # raw bytes, untouched
    expected = [text_vector("first text"), image_vector(cat), text_vector("second text"), image_vector(dog)]
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3] and {d["object"] for d in body["data"]} == {
        "embedding"
    }
    for row, want in zip(body["data"], expected, strict=True):
        np.testing.assert_array_equal(np.array(row["embedding"], dtype=np.float32), want)
    assert body["object"] == "list" and body["model"] == "fake-text+fake-vision"
    assert body["usage"] == {"prompt_tokens": 4 + 4, "total_tokens": 8}


def test_openai_dimensions_keep_leading_components_renormalised(client, b) -> None:
    body = ok(
        client.post("/v1/embeddings", json={"input": "short", "dimensions": 3, "encoding_format": "base64"})
    )
    row = decode_b64_row(body["data"][0]["embedding"])
    full = text_vector("short")
    np.testing.assert_allclose(row, full[:3] / np.linalg.norm(full[:3]), rtol=1e-6)
    too_many = client.post("/v1/embeddings", json={"input": "short", "dimensions": 9})
    # Refused by the documented limit: the smallest width served (the fakes embed 6 and 8 wide).
    assert too_many.status_code == 400 and "between 1 and 6" in too_many.get_json()["error"]["message"]


def test_mixed_inputs_call_both_encoders_in_parallel(client, b) -> None:
    b.delay_s.update({"text.Embed": 0.4, "vision.Embed": 0.4})
    began = time.monotonic()
    ok(client.post("/v1/embeddings", json={"input": ["a", {"type": "image", "image": b64(png("x"))}]}))
    assert time.monotonic() - began < 0.7


@pytest.fixture(scope="module")
def http_url(backends: Backends) -> Iterator[str]:
    app = gateway_app(backends, api_keys="sk-test", model_aliases="all-MiniLM-L6-v2=fake-text, m=fake-text")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_the_official_openai_client_works_unchanged(http_url, b) -> None:
    client = openai.OpenAI(base_url=http_url + "/v1", api_key="sk-test", max_retries=0, timeout=10)
    texts = ["a photo of a cat", "a dog"]
    reply = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client asks for base64
    assert b.requests("text.Embed")[-1].texts == texts
    np.testing.assert_array_equal(np.array([d.embedding for d in reply.data], dtype=np.float32),
                                  np.stack([text_vector(t) for t in texts]))  # fmt: skip
    assert reply.usage.prompt_tokens == 7 + 4 and reply.model == "fake-text"
    as_floats = client.embeddings.create(model="m", input="one", encoding_format="float")
    np.testing.assert_array_equal(np.array(as_floats.data[0].embedding, dtype=np.float32), text_vector("one"))
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=http_url + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="m", input="x"
        )
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="m", input="")
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert unknown.value.body["reason"] == "model_not_found" and unknown.value.body["param"] == "model"


def test_model_names_are_served_ids_or_declared_aliases(backends, b) -> None:
    client = gateway_app(backends, model_aliases="small=fake-text,eyes=fake-vision").test_client()
    for name in ("fake-text", "small"):  # an id, an alias
        assert ok(client.post("/v1/embeddings", json={"input": "a", "model": name}))["model"] == "fake-text"
    mixed = {"input": ["a", {"type": "image", "image": b64(png("m"))}]}
    ok(client.post("/v1/embeddings", json={**mixed, "model": "small+eyes"}))
    unknown = client.post("/v1/embeddings", json={"input": "a", "model": "text-embedding-3-small"})
    error = unknown.get_json()["error"]
    assert unknown.status_code == 404 and (error["status"], error["reason"], error["param"]) == (
        "NOT_FOUND",
        "model_not_found",
        "model",
    )
    called = len(b.requests("text.Embed"))
    wrong_modality = client.post("/v1/embeddings", json={**mixed, "model": "small"})
    assert wrong_modality.status_code == 400 and "not image" in wrong_modality.get_json()["error"]["message"]
    assert len(b.requests("text.Embed")) == called, "a refused name costs no forward pass"
    listed = {m["id"]: m for m in ok(client.get("/v1/models"))["data"]}
    assert listed["small"]["alias_of"] == "fake-text" and listed["small"]["embedding_dim"] == 8
    assert listed["eyes"]["alias_of"] == "fake-vision" and "alias_of" not in listed["fake-text"]


@pytest.mark.parametrize("aliases", ["nope", "a=", "a=b=c", "a=b,a=c", "a=a", "a b=c"])
def test_malformed_aliases_stop_the_gateway(backends, aliases: str) -> None:
    with pytest.raises(ValueError, match="model alias"):
        gateway_app(backends, model_aliases=aliases)


def test_multipart_upload_sends_the_files_bytes_untouched(client, b) -> None:
    files = [png("one"), b"\xff\xfe not utf-8 \x00"]
    form = {"image": [(io.BytesIO(data), f"f{i}.png") for i, data in enumerate(files)]}
    uploaded = ok(client.post("/v1/embed/image", data=form, content_type="multipart/form-data"))
    assert list(b.requests("vision.Embed")[0].images) == files
    as_json = ok(client.post("/v1/embed/image", json={"images": [b64(f) for f in files]}))
    assert uploaded == as_json
    wrapped = base64.encodebytes(files[0]).decode()  # MIME style: a newline every 76 characters
    assert "\n" in wrapped.strip()
    ok(client.post("/v1/embed/image", json={"images": [wrapped]}))
    assert b.requests("vision.Embed")[-1].images[0] == files[0]
    top = ok(client.post("/v1/classify/image", data={"image": [(io.BytesIO(files[0]), "a.png")], "top_k": "2"},
                         content_type="multipart/form-data"))  # fmt: skip
    assert b.requests("vision.Classify")[0].top_k == 2 and len(top["results"][0]["labels"]) == 2


def test_request_id_and_deadline_travel_with_every_call(client, b) -> None:
    response = client.post("/v1/embed/text", json={"texts": ["x"]}, headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
    _, _, metadata, remaining = b.calls[-1]
    assert metadata["x-request-id"] == "trace-42"
    assert 0 < remaining < DEADLINE_S + 0.1  # the request's deadline (gRPC's own rounding adds a few ms)
    generated = client.post("/v1/embed/text", json={"texts": ["x"]}).headers["X-Request-ID"]
    assert b.calls[-1][2]["x-request-id"] == generated


FAILING = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]


@pytest.mark.parametrize("code", FAILING, ids=lambda c: c.name)
def test_backend_status_codes_become_http_statuses_through_one_table(client, b, code) -> None:
    b.fail["text.Embed"] = (code, f"told to fail with {code.name}")
    response = client.post("/v1/embed/text", json={"texts": ["x"]})
    error = response.get_json()["error"]
    # A backend that cancels a call is shutting down: retried, then answered as unavailable.
    answered = grpc.StatusCode.UNAVAILABLE if code is grpc.StatusCode.CANCELLED else code
    assert (response.status_code, error["code"], error["status"]) == (
        HTTP_STATUS[answered],
        HTTP_STATUS[answered],
        answered.name,
    )
    if answered not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert error["message"] == f"told to fail with {code.name}"  # the backend's words reach the caller
    wants_retry = answered in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    assert (response.headers.get("Retry-After") == "1") == wants_retry


def test_a_slow_backend_is_a_504_at_the_deadline(backends, b) -> None:
    fast = gateway_app(backends, deadline_s=0.3).test_client()
    b.delay_s["fusion.Predict"] = 1.5
    began = time.monotonic()
    response = fast.post("/v1/predict", json={"text": "a", "head": "match"})
    assert response.status_code == 504 and "within the deadline" in response.get_json()["error"]["message"]
    assert time.monotonic() - began < 1.0


def test_predict_shorthand_equals_the_list_form(client, b) -> None:
    image = png("circle")
    single = ok(
        client.post("/v1/predict", json={"text": "a red circle", "image": b64(image), "head": "match"})
    )
    listed = ok(
        client.post(
            "/v1/predict", json={"inputs": [{"text": "a red circle", "image": b64(image)}], "head": "match"}
        )
    )
    assert single == listed
    sent = b.requests("fusion.Predict")[0]
    assert sent.head == "match" and sent.inputs[0].text == "a red circle" and sent.inputs[0].image == image
    assert single["predictions"] == [
        {"label": "match", "score": 0.75, "scores": {"match": 0.75, "mismatch": 0.25}, "modalities": []}
    ]
    text_only = ok(
        client.post("/v1/predict", json={"inputs": [{"text": "words", "image": None}], "head": "match"})
    )
    assert not b.requests("fusion.Predict")[-1].inputs[0].HasField("image")
    assert text_only["predictions"][0]["label"] == "mismatch"


def test_fused_embed_similarity_ner_models_and_heads(client, b) -> None:
    image = png("img")
    fused = ok(
        client.post("/v1/embed", json={"inputs": [{"text": "abc"}, {"image": b64(image)}], "head": "h"})
    )
    assert fused == {"head": "h", "embeddings": [[1, 0, 3, 0], [0, 1, 0, len(image)]]}
    similar = ok(
        client.post(
            "/v1/similarity",
            json={"texts": ["a", "b"], "images": [b64(image)], "candidate_labels": ["x", "y"]},
        )
    )
    assert similar["space"] == "native" and np.array(similar["scores"]).shape == (2, 1)
    assert similar["zero_shot"] == [[{"label": "x", "score": 0.5}, {"label": "y", "score": 0.5}]]
    assert list(b.requests("fusion.Similarity")[0].candidate_labels) == ["x", "y"]
    entities = ok(client.post("/v1/ner", json={"texts": ["Paris is big"]}))
    assert entities["results"][0]["entities"] == [
        {"text": "Paris", "label": "WORD", "start_char": 0, "end_char": 5, "score": None}
    ]
    models = ok(client.get("/v1/models"))["data"]
    assert [(m["id"], m["modality"], m["task"], m["embedding_dim"]) for m in models] == [
        ("fake-text", "text", "embed", 8),
        ("fake-ner", "text", "ner", 0),
        ("fake-classifier", "text", "classify", 0),
        ("fake-vision", "image", "embed", 12),
        ("fake-audio", "audio", "embed", 6),
        ("fake-audio", "audio", "classify", 0),
    ]
    assert models[1]["labels"] == ["PER", "LOC"] and b.requests("text.GetModelInfo")[-1].include_labels
    heads = ok(client.get("/v1/heads"))["heads"]
    assert heads[0]["name"] == "match" and heads[0]["metrics"] == {"accuracy": 0.9, "loss": None}


def test_readyz_is_ready_while_any_backend_serves_and_lists_each_state(client, b) -> None:
    serving = {"text": "SERVING", "vision": "SERVING", "fusion": "SERVING", "audio": "SERVING"}
    assert ok(client.get("/readyz")) == {"status": "ready", "backends": serving}
    try:
        b.health["vision"].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        # One modality down: the gateway stays ready (text and fusion still serve) and says which.
        assert ok(client.get("/readyz")) == {
            "status": "ready",
            "backends": {**serving, "vision": "NOT_SERVING"},
        }
        b.health["text"].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        b.health["fusion"].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        b.health["audio"].set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        response = client.get("/readyz")
        assert response.status_code == 503 and response.get_json() == {
            "status": "not_ready",
            "backends": dict.fromkeys(serving, "NOT_SERVING"),
        }
    finally:
        for name in serving:
            b.health[name].set("", health_pb2.HealthCheckResponse.SERVING)
    assert client.get("/readyz").status_code == 200


def test_upstream_calls_are_timed_by_service_method_and_code(client, b) -> None:
    ok(client.post("/v1/ner", json={"texts": ["Oslo"]}))
    b.fail["text.ExtractEntities"] = (grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
    assert client.post("/v1/ner", json={"texts": ["Oslo"]}).status_code == 429
    families = text_string_to_metric_families(client.get("/metrics").data.decode())
    counts = {
        tuple(sorted(s.labels.items())): s.value
        for f in families for s in f.samples if s.name == "mmserve_upstream_request_duration_seconds_count"
    }  # fmt: skip
    for code in ("OK", "RESOURCE_EXHAUSTED"):
        assert counts[(("code", code), ("method", "ExtractEntities"), ("service", "text"))] >= 1


def test_text_classification_routes(client, b) -> None:
    body = ok(client.post("/v1/classify/text", json={"texts": ["great film", "dull"], "top_k": 1}))
    assert body == {
        "model": "fake-classifier",
        "results": [{"labels": [{"label": "positive", "score": 0.75}]}] * 2,
    }
    assert b.requests("text.ClassifyText")[0].top_k == 1
    assert ok(client.post("/text-classification", json={"text": "great film"})) == {
        "label": "positive",
        "score": 0.75,
    }
    assert list(b.requests("text.ClassifyText")[-1].texts) == ["great film"]
    paths = ok(client.get("/openapi.json"))["paths"]
    assert {"/v1/classify/text", "/text-classification"} <= set(paths)


@pytest.mark.parametrize(
    ("path", "payload", "message"),
    [
        ("/text-classification", {"text": "   "}, "'text' is empty"),
        ("/text-classification", {}, "'text' is required"),
        ("/text-classification", {"text": 5}, "'text' must be a string"),
        ("/v1/classify/text", {"texts": []}, "texts"),
        ("/v1/classify/text", {"texts": ["x"] * 9}, "(limit 8)"),
        ("/v1/classify/text", {"texts": ["x"], "top_k": 0}, "top_k"),
    ],
)
def test_text_classification_refuses_bad_requests(client, b, path: str, payload: dict, message: str) -> None:
    response = client.post(path, json=payload)
    error = response.get_json()["error"]
    assert response.status_code == 400 and message in error["message"], error
    assert not b.requests("text.ClassifyText")


def test_no_classifier_served_is_a_400_that_says_so(client, b) -> None:
    b.fail["text.ClassifyText"] = (grpc.StatusCode.FAILED_PRECONDITION, "no text classifier is served")
    response = client.post("/text-classification", json={"text": "hello"})
    assert response.status_code == 400
    assert "no text classifier" in response.get_json()["error"]["message"]


def test_models_lists_what_is_served_while_an_encoder_is_down(client, b) -> None:
    b.fail["vision.GetModelInfo"] = (grpc.StatusCode.UNAVAILABLE, "vision is down")
    models = ok(client.get("/v1/models"))["data"]
    b.fail["audio.GetModelInfo"] = (grpc.StatusCode.UNAVAILABLE, "audio is down")
    assert {m["modality"] for m in models} == {"text", "audio"}
    models = ok(client.get("/v1/models"))["data"]
    assert {m["modality"] for m in models} == {"text"}
    b.fail["text.GetModelInfo"] = (grpc.StatusCode.UNAVAILABLE, "text is down")
    assert client.get("/v1/models").status_code == 503


def test_audio_routes_send_clips_untouched_json_or_multipart(client, b) -> None:
    clips = [b"RIFF....WAVE one", b"ID3 two \x00\xff"]
    body = ok(client.post("/v1/embed/audio", json={"clips": [b64(c) for c in clips]}))
    assert (
        list(b.requests("audio.Embed")[0].clips) == clips
        and not b.requests("audio.Embed")[0].include_segments
    )
    np.testing.assert_array_equal(
        np.array(body["embeddings"], np.float32), np.stack([audio_vector(c) for c in clips])
    )
    assert body["model"] == "fake-audio" and body["duration_s"] == [0.25, 0.25] and "segments" not in body
    form = {"audio": [(io.BytesIO(c), f"c{i}.wav") for i, c in enumerate(clips)], "include_segments": "true"}
    uploaded = ok(client.post("/v1/embed/audio", data=form, content_type="multipart/form-data"))
    assert list(b.requests("audio.Embed")[1].clips) == clips and b.requests("audio.Embed")[1].include_segments
    assert uploaded["embeddings"] == body["embeddings"]
    assert uploaded["segments"][0] == {
        "embeddings": [body["embeddings"][0]],
        "start_s": [0.0],
        "end_s": [0.25],
    }
    top = ok(client.post("/v1/classify/audio", data={"audio": [(io.BytesIO(clips[0]), "a.wav")], "top_k": "1"},
                         content_type="multipart/form-data"))  # fmt: skip
    assert b.requests("audio.Classify")[0].top_k == 1
    assert top == {"model": "fake-audio", "results": [{"labels": [{"label": "Speech", "score": 0.75}]}]}


def test_video_route_passes_sampling_and_returns_frames_on_request(client, b) -> None:
    video = b"\x00\x00\x00\x18ftypmp42 not decoded by the gateway"
    body = ok(client.post("/v1/embed/video", json={"videos": [b64(video)], "frames_per_second": 2}))
    sent = b.requests("vision.EmbedVideo")[0]
    assert list(sent.videos) == [video] and sent.frames_per_second == 2.0 and sent.num_frames == 0
    assert body["num_frames"] == [2] and body["duration_s"] == [1.0] and "frames" not in body
    np.testing.assert_array_equal(np.array(body["embeddings"][0], np.float32), image_vector(video))
    form = {"video": [(io.BytesIO(video), "v.mp4")], "num_frames": "3", "include_frames": "1"}
    uploaded = ok(client.post("/v1/embed/video", data=form, content_type="multipart/form-data"))
    assert (
        b.requests("vision.EmbedVideo")[1].num_frames == 3
        and b.requests("vision.EmbedVideo")[1].include_frames
    )
    assert (
        uploaded["frames"][0]["timestamps_s"] == [0.0, 0.5] and len(uploaded["frames"][0]["embeddings"]) == 2
    )


def test_openai_route_sends_audio_and_video_items_to_their_encoders(client, b) -> None:
    clip, video = b"RIFF clip", b"\x1a\x45\xdf\xa3 webm"
    items = [{"type": "video", "video": b64(video)}, "a text", {"type": "audio", "audio": b64(clip)}]
    body = ok(client.post("/v1/embeddings", json={"input": items}))
    assert list(b.requests("audio.Embed")[0].clips) == [clip]
    assert list(b.requests("vision.EmbedVideo")[0].videos) == [video]
    expected = [image_vector(video), text_vector("a text"), audio_vector(clip)]
    for row, want in zip(body["data"], expected, strict=True):
        np.testing.assert_array_equal(np.array(row["embedding"], dtype=np.float32), want)
    assert body["model"] == "fake-text+fake-audio+fake-vision"
