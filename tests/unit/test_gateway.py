"""The gateway's own behaviour, without models: errors, validation, auth, OpenAPI, metrics.

Backends are unreachable addresses, so any request that gets past validation answers 503 fast;
a 400 here proves the gateway refused the request itself.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import time
from decimal import Decimal

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder, run_wsgi_app

from gateway.admission import InFlightBudget
from gateway.app import create_app
from gateway.encoding import base64_rows, float_rows, json_response
from gateway.endpoints import state
from gateway.errors import HTTP_STATUS, ApiError, from_rpc_error
from services.common.settings import AudioSettings, FusionSettings, GatewaySettings

DEAD = "127.0.0.1:1"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n not decoded by the gateway").decode()


def make_app(**overrides):
    settings = GatewaySettings(
        fusion_address=DEAD, text_address=DEAD, vision_address=DEAD, audio_address=DEAD, deadline_s=2.0,
        max_body_bytes=4096,
        max_items_per_request=4, **overrides,
    )  # fmt: skip
    return create_app(settings, CollectorRegistry())


@pytest.fixture(scope="module")
def client():
    return make_app().test_client()


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "status", "message"}, body
    assert body["error"]["code"] == response.status_code
    return body["error"]


# --- the error table ----------------------------------------------------------------------------


def test_every_grpc_status_code_maps_to_http() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    expected = {
        "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "UNAUTHENTICATED": 401,
        "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409,
        "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500, "UNKNOWN": 500, "DATA_LOSS": 500,
        "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
    }  # fmt: skip
    assert {
        code.name: status for code, status in HTTP_STATUS.items() if code is not grpc.StatusCode.OK
    } == expected


@pytest.mark.parametrize(
    "code", [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK], ids=lambda c: c.name
)
def test_rpc_errors_become_api_errors_with_their_status(code: grpc.StatusCode) -> None:
    class Failure(grpc.RpcError):
        def code(self):
            return code

        def details(self):
            return "what the backend said"

    error = from_rpc_error(Failure(), "text")
    # A backend's CANCELLED is its shutdown refusing the call (the gateway cancels nothing it
    # awaits): the caller gets the 503 to retry, not 499 (a client that went away).
    answered = grpc.StatusCode.UNAVAILABLE if code is grpc.StatusCode.CANCELLED else code
    assert (error.http_status, error.status_name) == (HTTP_STATUS[answered], answered.name)
    assert error.body()["error"]["code"] == HTTP_STATUS[answered]
    assert ("Retry-After" in error.headers) == (
        answered in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    )


# --- validation: one place, clear 4xx, never a 500 ------------------------------------------------


@pytest.mark.parametrize(
    ("route", "kwargs", "status", "name", "message"),
    [
        ("/v1/embed/text", {"data": "{not json", "content_type": "application/json"}, 400, "INVALID_ARGUMENT", "not valid JSON"),
        ("/v1/embed/text", {"data": "[" * 4000, "content_type": "application/json"}, 400, "INVALID_ARGUMENT", "not valid JSON"),
        ("/v1/embed/text", {"data": "texts=a", "content_type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type"),
        ("/v1/embed/text", {"json": ["a"]}, 400, "INVALID_ARGUMENT", "JSON object"),
        ("/v1/embed/text", {"json": {}}, 400, "INVALID_ARGUMENT", "'texts' is required"),
        ("/v1/embed/text", {"json": {"texts": "a"}}, 400, "INVALID_ARGUMENT", "list of strings"),
        ("/v1/embed/text", {"json": {"texts": [1]}}, 400, "INVALID_ARGUMENT", "'texts[0]' must be a string"),
        ("/v1/embed/text", {"json": {"texts": []}}, 400, "INVALID_ARGUMENT", "at least 1"),
        ("/v1/embed/text", {"json": {"texts": [" "]}}, 400, "INVALID_ARGUMENT", "'texts[0]' is empty"),
        ("/v1/embed/text", {"json": {"texts": ["a"] * 5}}, 400, "INVALID_ARGUMENT", "too many items in 'texts': 5 (limit 4)"),
        ("/v1/embed/text", {"json": {"texts": ["a\x00b"]}}, 400, "INVALID_ARGUMENT", "NUL"),
        ("/v1/embed/text", {"data": '{"texts": ["\\ud800"]}', "content_type": "application/json"}, 400, "INVALID_ARGUMENT", "surrogate"),
        ("/v1/embed/text", {"json": {"texts": ["a"], "encoding_format": "hex"}}, 400, "INVALID_ARGUMENT", "'encoding_format' must be one of"),
        ("/v1/embed/text", {"json": {"texts": ["x" * 5000]}}, 413, "PAYLOAD_TOO_LARGE", "larger than 4096 bytes"),
        ("/v1/embed/image", {"json": {"images": ["%%%"]}}, 400, "INVALID_ARGUMENT", "'images[0]' is not valid base64"),
        ("/v1/embed/image", {"json": {"images": [5]}}, 400, "INVALID_ARGUMENT", "base64"),
        ("/v1/embed/image", {"json": {"images": ["data:image/png,abc"]}}, 400, "INVALID_ARGUMENT", "only base64 data URLs"),
        ("/v1/embed/image", {"json": {"images": ["https://example.com/cat.png"]}}, 400, "INVALID_ARGUMENT", "URLs are disabled"),
        ("/v1/embed/image", {"data": {"other": "x"}, "content_type": "multipart/form-data"}, 400, "INVALID_ARGUMENT", "form field 'image'"),
        ("/v1/embeddings", {"json": {"input": []}}, 400, "INVALID_ARGUMENT", "at least 1"),
        ("/v1/embeddings", {"json": {"input": 7}}, 400, "INVALID_ARGUMENT", "string or a list"),
        ("/v1/embeddings", {"json": {"input": [[1, 2]]}}, 400, "INVALID_ARGUMENT", "token arrays are not supported"),
        ("/v1/embeddings", {"json": {"input": [{"type": "midi"}]}}, 400, "INVALID_ARGUMENT", "'input[0]' must be a string or"),
        ("/v1/embeddings", {"json": {"input": [{"type": "audio"}]}}, 400, "INVALID_ARGUMENT", "'input[0].audio' must be a base64 string"),
        ("/v1/embeddings", {"json": {"input": [{"type": "video", "video": "https://x/v.mp4"}]}}, 400, "INVALID_ARGUMENT", "video URLs are not fetched"),
        ("/v1/embed/audio", {"json": {"clips": []}}, 400, "INVALID_ARGUMENT", "'clips' must contain at least 1 item"),
        ("/v1/embed/audio", {"json": {"clips": ["%"]}}, 400, "INVALID_ARGUMENT", "'clips[0]' is not valid base64"),
        ("/v1/embed/audio", {"json": {"clips": [PNG_B64], "include_segments": "yes"}}, 400, "INVALID_ARGUMENT", "'include_segments' must be true or false"),
        ("/v1/classify/audio", {"json": {"clips": [PNG_B64], "top_k": 0}}, 400, "INVALID_ARGUMENT", "'top_k' must be between 1 and 1000"),
        ("/v1/embed/video", {"json": {"videos": [PNG_B64], "num_frames": 2, "frames_per_second": 1}}, 400, "INVALID_ARGUMENT", "not both"),
        ("/v1/embed/video", {"json": {"videos": [PNG_B64], "num_frames": 65}}, 400, "INVALID_ARGUMENT", "'num_frames' must be between 1 and 64"),
        ("/v1/embed/video", {"json": {"videos": [PNG_B64], "frames_per_second": "1"}}, 400, "INVALID_ARGUMENT", "'frames_per_second' must be a number"),
        ("/v1/embed/video", {"json": {"videos": [PNG_B64] * 5}}, 400, "INVALID_ARGUMENT", "(limit 4)"),
        ("/v1/embeddings", {"json": {"input": [{"type": "image", "image": "%"}]}}, 400, "INVALID_ARGUMENT", "'input[0].image' is not valid base64"),
        ("/v1/embeddings", {"json": {"input": "a", "dimensions": 0}}, 400, "INVALID_ARGUMENT", "'dimensions' must be between"),
        ("/v1/embeddings", {"json": {"input": "a", "dimensions": True}}, 400, "INVALID_ARGUMENT", "'dimensions' must be an integer"),
        ("/v1/predict", {"json": {"head": "h"}}, 400, "INVALID_ARGUMENT", "'inputs' is required"),
        ("/v1/predict", {"json": {"inputs": [{}], "head": "h"}}, 400, "INVALID_ARGUMENT", "'inputs[0]' needs a text, an image, audio or features"),
        ("/v1/predict", {"json": {"inputs": [{"text": 3}], "head": "h"}}, 400, "INVALID_ARGUMENT", "'inputs[0].text' must be a string"),
        ("/v1/predict", {"json": {"inputs": ["a"], "head": "h"}}, 400, "INVALID_ARGUMENT", "'inputs[0]' must be an object"),
        ("/v1/predict", {"json": {"text": "a"}}, 400, "INVALID_ARGUMENT", "'head' is required"),
        ("/v1/predict", {"json": {"text": "a", "inputs": [{"text": "b"}], "head": "h"}}, 400, "INVALID_ARGUMENT", "not both"),
        ("/v1/classify/image", {"json": {"images": [PNG_B64], "top_k": 0}}, 400, "INVALID_ARGUMENT", "'top_k' must be between 1 and 1000"),
        ("/v1/classify/image", {"data": {"image": [], "top_k": "x"}, "content_type": "multipart/form-data"}, 400, "INVALID_ARGUMENT", "form field 'image'"),
        ("/v1/similarity", {"json": {"images": [PNG_B64]}}, 400, "INVALID_ARGUMENT", "'texts' and/or 'candidate_labels'"),
        ("/v1/similarity", {"json": {"images": [PNG_B64], "texts": ["a"], "head": 5}}, 400, "INVALID_ARGUMENT", "'head' must be a string"),
        ("/v1/ner", {"json": {"texts": [None]}}, 400, "INVALID_ARGUMENT", "'texts[0]' must be a string"),
    ],
)  # fmt: skip
def test_bad_requests_get_clear_4xx(client, route, kwargs, status, name, message) -> None:
    response = client.post(route, **kwargs)
    error = error_of(response)
    assert (response.status_code, error["status"]) == (status, name)
    assert message in error["message"]


def test_valid_requests_pass_validation_and_reach_the_backend(client) -> None:
    """The same routes with valid bodies get past the gateway (the dead backend answers 503)."""
    valid = [
        ("/v1/embed/text", {"json": {"texts": ["a"], "encoding_format": "base64"}}),
        ("/v1/embed/image", {"json": {"images": [PNG_B64, "data:image/png;base64," + PNG_B64]}}),
        ("/v1/embeddings", {"json": {"input": ["a", {"type": "image", "image": PNG_B64}], "user": "ignored"}}),
        ("/v1/predict", {"json": {"text": "a", "head": "h"}}),
        ("/v1/predict", {"json": {"inputs": [{"text": "", "image": PNG_B64}], "head": "h"}}),
        ("/v1/embed", {"json": {"inputs": [{"text": "a"}], "head": "h"}}),
        ("/v1/classify/image", {"data": {"image": [(__import__("io").BytesIO(b"img"), "a.png")], "top_k": "3"},
                                "content_type": "multipart/form-data"}),
        ("/v1/similarity", {"json": {"images": [PNG_B64], "candidate_labels": ["cat"]}}),
    ]  # fmt: skip
    for route, kwargs in valid:
        response = client.post(route, **kwargs)
        assert response.status_code == 503, (route, response.get_json())


def test_unknown_route_wrong_method_and_crashes_use_the_error_shape() -> None:
    app = make_app()

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug, with internal details")

    client = app.test_client()
    assert error_of(client.get("/v1/nothing"))["status"] == "NOT_FOUND"
    wrong_method = client.get("/v1/embed/text")
    assert (
        error_of(wrong_method)["status"] == "METHOD_NOT_ALLOWED" and "POST" in wrong_method.headers["Allow"]
    )
    crash = client.get("/boom")
    assert crash.status_code == 500 and error_of(crash)["status"] == "INTERNAL"
    assert "internal details" not in crash.get_data(as_text=True)


# --- oversized bodies: a 413 the client gets to read ----------------------------------------------


def send(app, body: io.IOBase, *, chunked: bool, path: str = "/v1/embed/text", method: str = "POST"):
    """Calls the WSGI app as gunicorn does: chunked bodies have no Content-Length and a terminated stream."""
    environ = EnvironBuilder(path=path, method=method, content_type="application/json").get_environ()
    environ["wsgi.input"] = body
    if chunked:
        environ.pop("CONTENT_LENGTH", None)
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(len(body.getvalue()))
    app_iter, status, _headers = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), json.loads(b"".join(app_iter))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_gets_413_after_being_read_up_to_four_times_the_cap(chunked: bool) -> None:
    app = make_app()  # max_body_bytes=4096
    for size, read in ((5000, 5000), (16384, 16384), (100_000, 16384 if chunked else 0)):
        body = io.BytesIO(b"x" * size)
        status, answer = send(app, body, chunked=chunked)
        assert (status, answer["error"]["status"]) == (413, "PAYLOAD_TOO_LARGE"), size
        assert answer["error"]["message"] == "the request body is larger than 4096 bytes"
        # Read (and discarded) so the client finishes sending and reads the answer; a declared length
        # beyond the bound is not read at all (that connection closes).
        assert body.tell() == read, size
    # Whatever the route: one that never reads a body refuses an oversized one too.
    assert send(app, io.BytesIO(b"x" * 5000), chunked=chunked, path="/v1/models", method="GET")[0] == 413


def test_a_chunked_body_within_the_cap_reaches_the_view() -> None:
    body = json.dumps({"texts": ["hello"], "user": "x" * 3000}).encode()
    status, answer = send(make_app(), io.BytesIO(body), chunked=True)
    assert status == 503 and "text service is unavailable" in answer["error"]["message"]  # past validation
    status, answer = send(make_app(), io.BytesIO(b'{"texts": 5}'), chunked=True)
    assert status == 400 and "'texts' must be a list" in answer["error"]["message"]


def test_a_chunked_body_that_breaks_off_is_a_400() -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            raise OSError("connection reset by peer")

    status, answer = send(make_app(), Broken(), chunked=True)
    assert status == 400 and answer["error"]["message"] == "the request body could not be read (OSError)"


def test_unavailable_backend_is_a_fast_503_with_retry_after(client) -> None:
    began = time.monotonic()
    response = client.post("/v1/embed/text", json={"texts": ["hello"]})
    assert time.monotonic() - began < 1.5
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "text service is unavailable" in error_of(response)["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json() == {
        "status": "not_ready",
        "backends": {
            "text": "UNAVAILABLE",
            "vision": "UNAVAILABLE",
            "fusion": "UNAVAILABLE",
            "audio": "UNAVAILABLE",
        },
    }
    assert client.get("/healthz").status_code == 200


# --- auth, request ids -------------------------------------------------------------------------


def test_api_keys_guard_v1_but_not_health_metrics_or_docs() -> None:
    keyed = make_app(api_keys="k1, k2").test_client()
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "k1"},
        {"Authorization": "Basic k1"},
    ):
        response = keyed.post("/v1/embed/text", json={"texts": ["a"]}, headers=headers)
        assert response.status_code == 401 and error_of(response)["status"] == "UNAUTHENTICATED", headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert keyed.get("/v1/models").status_code == 401
    # A valid key gets past auth (the dead backend then answers 503).
    for key in ("k1", "k2"):
        response = keyed.post(
            "/v1/embed/text", json={"texts": ["a"]}, headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 503
    for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path
    assert keyed.get("/readyz").status_code == 503  # open, though not ready


def test_request_id_is_echoed_or_generated(client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    for insane in ("x" * 500, "bad\x01id"):
        generated = client.get("/healthz", headers={"X-Request-ID": insane}).headers["X-Request-ID"]
        assert generated != insane and len(generated) == 32
    # Errors carry one too.
    assert client.post("/v1/embed/text", json={}).headers["X-Request-ID"]


# --- OpenAPI, Swagger UI, metrics ---------------------------------------------------------------


def test_openapi_document_is_valid_and_describes_every_route(client) -> None:
    from openapi_spec_validator import validate

    document = client.get("/openapi.json").get_json()
    validate(document)
    rules = {
        (re.sub(r"<(?:[^:<>]+:)?([^:<>]+)>", r"{\1}", rule.rule), method)  # OpenAPI spells <x> as {x}
        for rule in client.application.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if not rule.rule.startswith("/docs/static")
    }
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    assert rules == documented
    for path, item in document["paths"].items():
        for operation in item.values():
            assert "default" in operation["responses"] and "200" in operation["responses"], path
    texts = document["paths"]["/v1/embed/text"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    assert texts["properties"]["texts"]["maxItems"] == 4  # the configured limit, as validated
    upload = document["paths"]["/v1/embed/image"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["image"]
    readiness = document["paths"]["/readyz"]["get"]["responses"]
    for code in ("200", "503"):  # one shape, ready or not; not the Error shape
        schema = readiness[code]["content"]["application/json"]["schema"]
        assert schema["required"] == ["status", "backends"], code
        assert schema["properties"]["backends"]["required"] == ["text", "vision", "fusion", "audio"], code
    for path, upload in (
        ("/v1/embed/audio", "audio"),
        ("/v1/classify/audio", "audio"),
        ("/v1/embed/video", "video"),
    ):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content["multipart/form-data"]["schema"]["required"] == [upload], path
        limits = content["application/json"]["schema"]["properties"][
            f"{upload if upload == 'video' else 'clip'}s"
        ]
        assert limits["maxItems"] >= 1 and limits["items"]["maxLength"] > 0, path
    audio = document["paths"]["/v1/embed/audio"]["post"]["requestBody"]["content"]["application/json"]
    assert (
        f"{AudioSettings.max_audio_seconds:g} s"
        in audio["schema"]["properties"]["clips"]["items"]["description"]
    )


def test_candidate_label_limit_is_the_fusion_services(client) -> None:
    limit = FusionSettings().max_candidate_labels
    document = client.get("/openapi.json").get_json()
    body = document["paths"]["/v1/similarity"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["properties"]["candidate_labels"]["maxItems"] == limit
    labels = [str(i) for i in range(limit + 1)]
    response = client.post("/v1/similarity", json={"images": [PNG_B64], "candidate_labels": labels})
    assert (
        f"too many items in 'candidate_labels': {limit + 1} (limit {limit})" in error_of(response)["message"]
    )


def test_openapi_declares_bearer_auth_only_when_keys_are_set(client) -> None:
    open_doc = client.get("/openapi.json").get_json()
    keyed_doc = make_app(api_keys="k").test_client().get("/openapi.json").get_json()
    assert "security" not in open_doc["paths"]["/v1/embed/text"]["post"]
    assert keyed_doc["paths"]["/v1/embed/text"]["post"]["security"] == [{"bearer": []}]
    assert "401" in keyed_doc["paths"]["/v1/embed/text"]["post"]["responses"]
    assert "security" not in keyed_doc["paths"]["/healthz"]["get"]


def test_swagger_ui_is_served_from_the_package(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and b"/docs/static/swagger-ui-bundle.js" in page.data
    assert b"http" not in page.data.split(b"<body>")[1]  # no CDN
    script = client.get("/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.data) > 100_000
    assert client.get("/docs/static/index.html").status_code == 404


def test_metrics_parse_and_count_requests_by_url_rule(client) -> None:
    client.post("/v1/embed/text", json={"texts": []})
    client.get("/v1/no/such/route/12345")
    text = client.get("/metrics").data.decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    counted = [s for s in samples if s.name == "mmserve_http_requests_total"]
    assert any(s.labels == {"route": "/v1/embed/text", "method": "POST", "status": "400"} for s in counted)
    assert any(s.labels["route"] == "unmatched" and s.labels["status"] == "404" for s in counted)
    assert not any("12345" in value for s in samples for value in s.labels.values())
    assert {"mmserve_http_request_duration_seconds_bucket", "mmserve_http_requests_in_flight",
            "mmserve_upstream_request_duration_seconds_bucket"} <= {s.name for s in samples}  # fmt: skip
    upstream = [s for s in samples if s.name == "mmserve_upstream_request_duration_seconds_count"]
    assert any(s.labels == {"service": "text", "method": "Embed", "code": "UNAVAILABLE"} for s in upstream)


# --- pieces ------------------------------------------------------------------------------------


def significant_digits(number: str) -> int:
    return len(Decimal(number).normalize().as_tuple().digits)


def test_json_float_rows_keep_every_float32_exact_in_fewer_digits() -> None:
    rng = np.random.default_rng(0)
    for scale in (1e-30, 1e-6, 0.05, 1.0, 1e6, 1e29):
        matrix = (rng.standard_normal((8, 384)) * scale).astype(np.float32)
        matrix[0, :3] = [0.0, -0.0, 1.0]
        text = json_response({"rows": float_rows(matrix)}).get_data(as_text=True)
        rows = json.loads(text)["rows"]
        np.testing.assert_array_equal(np.array(rows, dtype=np.float32), matrix)
        numbers = re.findall(r"-?[0-9][0-9.eE+-]*", text)
        assert len(numbers) == matrix.size and max(significant_digits(n) for n in numbers) <= 9
    unit = rng.standard_normal((1, 384)).astype(np.float32)
    unit /= np.linalg.norm(unit)
    written = json_response(float_rows(unit)).get_data()
    assert len(written) < 0.75 * len(json.dumps(unit.tolist()))
    with pytest.raises(ValueError, match="non-finite"):
        float_rows(np.array([[0.5, np.nan]], dtype=np.float32))


def test_base64_rows_are_little_endian_float32() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    decoded = [np.frombuffer(base64.b64decode(row), dtype="<f4") for row in base64_rows(matrix)]
    np.testing.assert_array_equal(np.stack(decoded), matrix)


def test_api_error_for_http_only_statuses() -> None:
    assert ApiError(413, "too big").body() == {
        "error": {"code": 413, "status": "PAYLOAD_TOO_LARGE", "message": "too big"}
    }


def test_the_gateway_never_imports_torch() -> None:
    code = (
        "import sys, gateway.app, gateway.__main__\n"
        "gateway.app.create_app()\n"
        "heavy = {'torch', 'transformers', 'spacy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_keys": ","}, "holds no key"),
        ({"api_keys": "  , "}, "holds no key"),
        ({"require_api_keys": True}, "REQUIRE_API_KEYS is on"),
    ],
)
def test_api_keys_fail_closed(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_app(**overrides)


def test_the_gateway_refuses_to_start_with_keys_that_parse_to_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "--api-keys", ",", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "holds no key" in done.stderr


def test_api_keys_stay_out_of_the_settings_repr() -> None:
    assert "s3cret" not in repr(GatewaySettings(api_keys="s3cret"))


def test_multipart_top_k_with_a_non_ascii_digit_is_a_400() -> None:
    client = make_app().test_client()
    response = client.post(
        "/v1/classify/image",
        data={"image": [(io.BytesIO(b"\x89PNG\r\n\x1a\nx"), "a.png")], "top_k": "\u00b2"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 400 and "top_k" in response.get_json()["error"]["message"]


def test_in_flight_budget_refuses_past_it_and_always_admits_one() -> None:
    budget = InFlightBudget(100)
    assert budget.admit(500)  # alone: admitted whatever its size
    assert not budget.admit(1)
    budget.release(500)
    assert budget.admit(60) and budget.admit(40) and not budget.admit(1)
    budget.release(60)
    assert budget.admit(0) and budget.admit(50) and budget.used == 90


def test_requests_past_the_in_flight_budget_get_429() -> None:
    app = make_app(max_in_flight_bytes=64)
    client = app.test_client()
    body = {"texts": ["x" * 200]}
    assert client.post("/v1/embed/text", json=body).status_code == 503  # alone: admitted (no backend)
    with app.app_context():
        state().budget.admit(60)  # another request in flight
    refused = client.post("/v1/embed/text", json=body)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    with app.app_context():
        state().budget.release(60)
        assert state().budget.used == 0  # every admitted request released its share
    assert client.post("/v1/embed/text", json=body).status_code == 503
