"""/v1/predict and /v1/heads in the gateway against an in-test fusion backend: each head task's
response shape, explain, the modalities used, and a refused input's 400."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from mmserve.v1 import common_pb2, fusion_pb2, fusion_pb2_grpc
from services.common.settings import GatewaySettings

TEXT, IMAGE = common_pb2.MODALITY_TEXT, common_pb2.MODALITY_IMAGE


def _scores(pairs):
    return [common_pb2.LabelScore(label=label, score=score) for label, score in pairs]


class FakeFusion(fusion_pb2_grpc.FusionServiceServicer):
    def __init__(self) -> None:
        self.requests: list[fusion_pb2.PredictRequest] = []

    def Predict(self, request, context):
        self.requests.append(request)
        used = [TEXT, IMAGE] if request.inputs[0].HasField("image") else [TEXT]
        if request.head == "strict" and not request.inputs[0].HasField("image"):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "inputs[0] has no image: head 'strict' needs text and image"
            )
        if request.head == "price":
            prediction = fusion_pb2.Prediction(values={"target": 12.5}, modalities=used)
        elif request.head == "order":
            prediction = fusion_pb2.Prediction(values={"total": 9.0}, modalities=used)
            prediction.tasks["variant"].CopyFrom(
                fusion_pb2.ClassPrediction(label="red circle", score=0.75,
                                           scores=_scores([("blue circle", 0.25), ("red circle", 0.75)]))
            )  # fmt: skip
        else:
            prediction = fusion_pb2.Prediction(
                label="match",
                score=0.875,
                scores=_scores([("match", 0.875), ("mismatch", 0.125)]),
                modalities=used,
            )
        if request.explain:
            prediction.attention.update({"cls": 0.5, "text": 0.25, "image": 0.25})
        return fusion_pb2.PredictResponse(predictions=[prediction] * len(request.inputs), head=request.head)

    def ListHeads(self, request, context):
        info = fusion_pb2.HeadInfo(
            name="order", task="multitask", strategy="weighted_sum", format_version=2,
            missing_modality_policy="allow", fusion_weights={"text": 0.25, "image": 0.75},
            outputs=[fusion_pb2.HeadOutput(name="total", kind="regression"),
                     fusion_pb2.HeadOutput(name="variant", kind="classification", labels=["a", "b"])],
            modalities=[TEXT, IMAGE],
            metrics_json='{"modality_contribution": {"metric": "accuracy / r2", "text": 0.5, "image": 0.25}}',
        )  # fmt: skip
        return fusion_pb2.ListHeadsResponse(heads=[info])


@pytest.fixture(scope="module")
def fusion():
    server = grpc.server(futures.ThreadPoolExecutor(2))
    fake = FakeFusion()
    fusion_pb2_grpc.add_FusionServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def client(fusion):
    settings = GatewaySettings(
        fusion_address=fusion[1], text_address="127.0.0.1:1", vision_address="127.0.0.1:1"
    )
    return create_app(settings, CollectorRegistry()).test_client()


PNG_B64 = "iVBORw0KGgo="


def test_classification_regression_and_multitask_shapes(client) -> None:
    match = client.post("/v1/predict", json={"text": "a", "image": PNG_B64, "head": "match"}).get_json()
    assert match["predictions"][0] == {
        "label": "match", "score": 0.875, "scores": {"match": 0.875, "mismatch": 0.125}, "modalities": ["text", "image"],
    }  # fmt: skip
    price = client.post("/v1/predict", json={"text": "a", "head": "price"}).get_json()
    assert price["predictions"][0] == {"values": {"target": 12.5}, "modalities": ["text"]}
    order = client.post(
        "/v1/predict", json={"inputs": [{"text": "a"}, {"text": "b"}], "head": "order"}
    ).get_json()
    assert len(order["predictions"]) == 2
    assert order["predictions"][1] == {
        "values": {"total": 9.0},
        "tasks": {
            "variant": {
                "label": "red circle",
                "score": 0.75,
                "scores": {"blue circle": 0.25, "red circle": 0.75},
            }
        },
        "modalities": ["text"],
    }


def test_explain_travels_and_attention_comes_back(client, fusion) -> None:
    body = client.post("/v1/predict", json={"text": "a", "head": "match", "explain": True}).get_json()
    assert fusion[0].requests[-1].explain is True
    assert body["predictions"][0]["attention"] == {"cls": 0.5, "text": 0.25, "image": 0.25}
    client.post("/v1/predict", json={"text": "a", "head": "match"})
    assert fusion[0].requests[-1].explain is False
    bad = client.post("/v1/predict", json={"text": "a", "head": "match", "explain": "yes"})
    assert bad.status_code == 400 and "'explain' must be true or false" in bad.get_json()["error"]["message"]


def test_a_refused_modality_is_a_400_naming_it(client) -> None:
    response = client.post("/v1/predict", json={"text": "a", "head": "strict"})
    assert response.status_code == 400
    assert (
        response.get_json()["error"]["message"]
        == "inputs[0] has no image: head 'strict' needs text and image"
    )


def test_heads_show_weights_contribution_policy_and_outputs(client) -> None:
    (head,) = client.get("/v1/heads").get_json()["heads"]
    assert head["fusion_weights"] == {"image": 0.75, "text": 0.25}
    assert head["modality_contribution"] == {"metric": "accuracy / r2", "text": 0.5, "image": 0.25}
    assert head["missing_modality_policy"] == "allow" and head["format_version"] == 2
    assert head["modalities"] == ["text", "image"]
    assert head["outputs"] == [
        {"name": "total", "kind": "regression", "labels": []},
        {"name": "variant", "kind": "classification", "labels": ["a", "b"]},
    ]


def test_openapi_documents_every_prediction_shape(client) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").get_json()
    validate(document)
    predict = document["paths"]["/v1/predict"]["post"]
    schema = predict["responses"]["200"]["content"]["application/json"]["schema"]
    shapes = schema["properties"]["predictions"]["items"]["oneOf"]
    assert [s["title"] for s in shapes] == ["classification head", "regression head", "multi-task head"]
    assert shapes[1]["required"] == ["values", "modalities"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["explain"] == {
        "type": "boolean",
        "default": False,
        "nullable": True,  # null is "not given"
        "description": body["properties"]["explain"]["description"],
    }
