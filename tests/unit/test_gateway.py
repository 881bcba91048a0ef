"""The gateway's own behaviour, without models: errors, validation, auth, OpenAPI, metrics.

Backends are unreachable addresses, so any call that gets past validation answers 503 fast.
"""

from __future__ import annotations

import base64
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.errors import HTTP_STATUS
from services.common.settings import GatewaySettings

DEAD = "127.0.0.1:1"


def make_client(**overrides):
    settings = GatewaySettings(
        fusion_address=DEAD, text_address=DEAD, vision_address=DEAD, deadline_s=2.0, max_body_bytes=4096,
        max_items_per_request=4, **overrides,
    )  # fmt: skip
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def client():
    return make_client()


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "status", "message"}
    assert body["error"]["code"] == response.status_code
    return body["error"]


def test_every_grpc_status_code_maps_to_http() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


@pytest.mark.parametrize(
    ("kwargs", "status", "name", "message"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "INVALID_ARGUMENT", "not valid JSON"),
        ({"data": "texts=a", "content_type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
        ({"json": ["a"]}, 400, "INVALID_ARGUMENT", "JSON object"),
        ({"json": {"texts": "a"}}, 400, "INVALID_ARGUMENT", "list of strings"),
        ({"json": {"texts": [1]}}, 400, "INVALID_ARGUMENT", "must be a string"),
        ({"json": {"texts": []}}, 400, "INVALID_ARGUMENT", "at least one"),
        ({"json": {"texts": ["a"] * 5}}, 400, "INVALID_ARGUMENT", "too many"),
        ({"json": {"texts": ["a\x00b"]}}, 400, "INVALID_ARGUMENT", "NUL"),
        ({"data": '{"texts": ["\\ud800"]}', "content_type": "application/json"}, 400, "INVALID_ARGUMENT", "surrogate"),
        ({"json": {"texts": ["x" * 5000]}}, 413, "PAYLOAD_TOO_LARGE", ""),
    ],
    ids=["malformed", "content-type", "not-object", "not-list", "wrong-item-type", "empty", "too-many", "nul",
         "lone-surrogate", "too-large"],
)  # fmt: skip
def test_bad_requests_get_clear_4xx(client, kwargs, status, name, message) -> None:
    response = client.post("/v1/embed/text", **kwargs)
    assert response.status_code == status
    error = error_of(response)
    assert error["status"] == name and message in error["message"]


def test_images_must_be_base64_and_urls_are_disabled_by_default(client) -> None:
    for image, message in [("%%%", "not valid base64"), ("https://example.com/cat.png", "URLs are disabled"), (5, "base64")]:
        response = client.post("/v1/embed/image", json={"images": [image]})
        assert response.status_code == 400 and message in error_of(response)["message"]


def test_unknown_route_and_wrong_method_use_the_error_shape(client) -> None:
    assert error_of(client.get("/v1/nothing"))["status"] == "NOT_FOUND"
    assert error_of(client.get("/v1/embed/text"))["status"] == "METHOD_NOT_ALLOWED"


def test_unavailable_backend_is_a_fast_503_with_retry_after(client) -> None:
    began = time.monotonic()
    response = client.post("/v1/embed/text", json={"texts": ["hello"]})
    assert time.monotonic() - began < 1.5
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "text service is unavailable" in error_of(response)["message"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200


def test_api_keys_guard_v1_but_not_health_metrics_or_docs() -> None:
    keyed = make_client(api_keys="k1, k2")
    assert keyed.post("/v1/embed/text", json={"texts": ["a"]}).status_code == 401
    assert keyed.post("/v1/embed/text", json={"texts": ["a"]}, headers={"Authorization": "Bearer nope"}).status_code == 401
    # A valid key gets past auth (the dead backend then answers 503).
    assert keyed.post("/v1/embed/text", json={"texts": ["a"]}, headers={"Authorization": "Bearer k2"}).status_code == 503
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_request_id_is_echoed_or_generated(client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = client.get("/healthz", headers={"X-Request-ID": "x" * 500}).headers["X-Request-ID"]
    assert generated and len(generated) == 32


def test_openapi_document_is_valid_and_covers_every_route(client) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").get_json()
    validate(document)
    app_routes = {r.rule for r in client.application.url_map.iter_rules() if r.rule.startswith("/v1")}
    assert app_routes <= set(document["paths"])


def test_swagger_ui_is_served_from_the_package(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and b"swagger-ui-bundle.js" in page.data
    assert client.get("/docs/static/swagger-ui-bundle.js").status_code == 200


def test_metrics_parse_and_count_requests_by_route(client) -> None:
    client.post("/v1/embed/text", json={"texts": []})
    text = client.get("/metrics").data.decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    counted = [s for s in samples if s.name == "mmserve_http_requests_total" and s.labels["route"] == "/v1/embed/text"]
    assert counted and any(s.labels["status"] == "400" for s in counted)


def test_multipart_upload_without_file_is_a_400(client) -> None:
    response = client.post("/v1/embed/image", data={"other": "x"}, content_type="multipart/form-data")
    assert response.status_code == 400 and "image" in error_of(response)["message"]


def test_openai_style_inputs_are_validated(client) -> None:
    bad = [{"input": []}, {"input": [1, 2]}, {"input": "a", "encoding_format": "hex"}, {"input": "a", "dimensions": 0}]
    for body in bad:
        assert client.post("/v1/embeddings", json=body).status_code == 400, body
    image = base64.b64encode(b"not really an image").decode()
    assert client.post("/v1/embeddings", json={"input": [{"type": "image", "image": image}]}).status_code == 503
