"""The Open Inference Protocol v2 with the official Triton clients: tritonclient.http against the
gateway's /v2, tritonclient.grpc against the fusion service, both checked against /v1 answers."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton_http
from PIL import Image
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from gateway.app import create_app
from scripts.stack import ROOT, ServiceProcess
from services.common.settings import GatewaySettings
from tests.support.polling import eventually
from tests.support.traffic import post_json

pytestmark = pytest.mark.slow

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["a photo of a cat", "stock markets fell sharply", "ein Satz auf Deutsch, mit Umlauten: äöü"]


def png_bytes(colour=(220, 30, 30), size=(96, 96)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def ok(url: str, payload: dict | None) -> dict:
    outcome = post_json(url, payload)
    assert outcome.status == 200, outcome.body[:300]
    return json.loads(outcome.body)


@pytest.fixture(scope="module")
def gateway(gateway_service: ServiceProcess, demo_heads: Path, heads_dir: Path) -> ServiceProcess:
    shutil.copytree(demo_heads / "match", heads_dir / "match", dirs_exist_ok=True)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        listed = json.loads(post_json(gateway_service.url + "/v1/heads", None).body or b"{}").get("heads", [])
        if "match" in {h["name"] for h in listed}:
            break
        time.sleep(0.2)
    return gateway_service


@pytest.fixture(scope="module")
def client(gateway: ServiceProcess):
    client = triton_http.InferenceServerClient(url=gateway.address, network_timeout=60.0)
    yield client
    client.close()


def text_input(texts: list[str], binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


def test_server_health_metadata_and_text_model_metadata(client, gateway: ServiceProcess) -> None:
    assert client.is_server_live() and client.is_server_ready()
    server = client.get_server_metadata()
    assert server["name"] == "mmserve" and "binary_tensor_data" in server["extensions"]

    listed = {m["id"]: m for m in ok(gateway.url + "/v1/models", None)["data"]}
    assert TEXT_MODEL in listed and client.is_model_ready(TEXT_MODEL)
    metadata = client.get_model_metadata(TEXT_MODEL)
    assert metadata["name"] == TEXT_MODEL
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, listed[TEXT_MODEL]["embedding_dim"]]}
    ]
    assert client.get_model_metadata(TEXT_MODEL, model_version="1")["name"] == TEXT_MODEL


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_text_embeddings_equal_v1_in_json_and_binary(client, gateway: ServiceProcess, binary: bool) -> None:
    expected = np.array(ok(gateway.url + "/v1/embed/text", {"texts": TEXTS})["embeddings"], dtype=np.float32)
    result = client.infer(
        TEXT_MODEL,
        [text_input(TEXTS, binary)],
        outputs=[triton_http.InferRequestedOutput("embedding", binary_data=binary)],
        request_id="req-1",
    )
    response = result.get_response()
    output = response["outputs"][0]
    assert ("parameters" in output) == binary and ("data" in output) != binary
    assert response["id"] == "req-1" and response["model_name"] == TEXT_MODEL
    embeddings = result.as_numpy("embedding")
    assert embeddings.dtype == np.float32 and embeddings.shape == expected.shape
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_image_model_embeds_and_labels_as_v1(client, gateway: ServiceProcess) -> None:
    images = [png_bytes(), png_bytes((30, 30, 220))]
    vision = next(m for m in ok(gateway.url + "/v1/models", None)["data"] if m["modality"] == "image")
    tensor = triton_http.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    result = client.infer(vision["id"], [tensor])  # no outputs named: all of them, as binary data

    encoded = [base64.b64encode(image).decode() for image in images]
    expected = ok(gateway.url + "/v1/embed/image", {"images": encoded})["embeddings"]
    np.testing.assert_allclose(result.as_numpy("embedding"), np.array(expected, np.float32), atol=1e-5)
    labels = ok(gateway.url + "/v1/classify/image", {"images": encoded, "top_k": 1})["results"]
    assert [label.decode() for label in result.as_numpy("label")] == [r["labels"][0]["label"] for r in labels]
    np.testing.assert_allclose(result.as_numpy("score"), [r["labels"][0]["score"] for r in labels], atol=1e-6)


def test_head_prediction_matches_v1_predict(client, gateway: ServiceProcess) -> None:
    metadata = client.get_model_metadata("match")
    assert metadata["platform"] == "mmserve_fusion_head"
    assert {o["name"]: o["datatype"] for o in metadata["outputs"]} == {"label": "BYTES", "score": "FP32"}
    texts, image = ["a red circle", "a blue square"], png_bytes()
    image_tensor = triton_http.InferInput("image", [2], "BYTES")
    image_tensor.set_data_from_numpy(np.array([image, image], dtype=np.object_), binary_data=True)
    result = client.infer("match", [text_input(texts, False), image_tensor])

    encoded = base64.b64encode(image).decode()
    predicted = ok(
        gateway.url + "/v1/predict",
        {"head": "match", "inputs": [{"text": t, "image": encoded} for t in texts]},
    )["predictions"]
    assert [label.decode() for label in result.as_numpy("label")] == [p["label"] for p in predicted]
    np.testing.assert_allclose(result.as_numpy("score"), [p["score"] for p in predicted], atol=1e-5)


def test_errors_have_the_protocol_shape_and_the_apis_statuses(client, gateway: ServiceProcess) -> None:
    with pytest.raises(InferenceServerException) as unknown:
        client.infer("no-such-model", [text_input(["a"], False)])
    assert unknown.value.status() == "404" and "unknown model 'no-such-model'" in unknown.value.message()
    assert not client.is_model_ready("no-such-model")

    bad = post_json(
        gateway.url + f"/v2/models/{TEXT_MODEL}/infer",
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
    )
    assert bad.status == 400 and json.loads(bad.body) == {"error": "input 'text' must be BYTES, got FP32"}
    short = post_json(
        gateway.url + f"/v2/models/{TEXT_MODEL}/infer",
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["only one"]}]},
    )
    assert short.status == 400 and "needs 2" in json.loads(short.body)["error"]
    # The route is labelled by its URL rule, whatever the model name.
    # Each gateway worker applies its requests' metrics every 0.1 s (gateway/deferred.py).
    route = 'route="/v2/models/<path:name>/infer"'
    metrics = eventually(
        lambda: post_json(gateway.url + "/metrics", None).body.decode(), lambda m: route in m
    )
    assert route in metrics and "no-such-model" not in metrics


def test_api_keys_guard_v2_but_not_its_health_probes() -> None:
    dead = "127.0.0.1:1"
    settings = GatewaySettings(
        api_keys="k", fusion_address=dead, text_address=dead, vision_address=dead, audio_address=dead
    )
    keyed = create_app(settings, CollectorRegistry()).test_client()
    assert keyed.get("/v2/health/live").status_code == 200
    assert keyed.get("/v2/health/ready").status_code == 503  # open, though nothing is serving
    for path in ("/v2", f"/v2/models/{TEXT_MODEL}"):
        response = keyed.get(path)
        assert response.status_code == 401 and set(response.get_json()) == {"error"}, path
    assert keyed.get("/v2", headers={"Authorization": "Bearer k"}).status_code == 200


# tritonclient.grpc registers its own copy of the protocol's messages (package ``inference``) in
# protobuf's default pool, as mmserve.oip.v2 does; one process cannot load both, and the test
# process may load ours (fusion servers run in-process in other tests). So the gRPC client runs
# in a child process and reports what it saw as JSON.
_GRPC_CLIENT = """
import json, sys
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

address, model, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
client = triton_grpc.InferenceServerClient(url=address)
seen = {"live": client.is_server_live(), "ready": client.is_server_ready(),
        "server": client.get_server_metadata(as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True)}
tensor = triton_grpc.InferInput("text", [len(texts)], "BYTES")
tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
result = client.infer(model, [tensor], outputs=[triton_grpc.InferRequestedOutput("embedding")])
seen["embedding"] = result.as_numpy("embedding").tolist()
seen["dtype"] = str(result.as_numpy("embedding").dtype)
try:
    client.get_model_metadata("no-such-model")
except InferenceServerException as error:
    seen["unknown"] = {"status": error.status(), "message": error.message()}
print(json.dumps(seen))
"""


def test_grpc_inference_protocol_on_fusion(gateway: ServiceProcess, fusion_service: ServiceProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _GRPC_CLIENT, fusion_service.address, TEXT_MODEL, json.dumps(TEXTS)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert seen["live"] and seen["ready"]
    assert seen["server"]["name"] == "mmserve" and "binary_tensor_data" in seen["server"]["extensions"]
    outputs = seen["metadata"]["outputs"]
    assert outputs == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}]

    rest = triton_http.InferenceServerClient(url=gateway.address)
    try:
        expected = rest.infer(TEXT_MODEL, [text_input(TEXTS, True)]).as_numpy("embedding")
    finally:
        rest.close()
    assert seen["dtype"] == "float32"
    np.testing.assert_allclose(np.array(seen["embedding"], np.float32), expected, atol=1e-6)
    assert seen["unknown"]["status"] == "StatusCode.NOT_FOUND"
    assert "unknown model 'no-such-model'" in seen["unknown"]["message"]
