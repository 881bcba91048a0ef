"""The OpenAPI document states what the API enforces, and the API enforces what it states
(issue #16: one test per disagreement schemathesis found). Flask test client, no backends: every
request here is refused before any backend is called, or the document alone is checked."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re

import pytest
from openapi_spec_validator import validate

from gateway.endpoints import operations, state
from gateway.errors import ApiError
from gateway.openapi import openapi_document
from gateway.schema import BASE64_PATTERN, TEXT_PATTERN, Context, decode_base64
from tests.unit.test_gateway import make_app

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGO8IyfHgA0wYRUdtBIA4FYBKCgCg6AAAAAASUVORK5CYII="
)


@pytest.fixture(scope="module")
def app():
    app = make_app()
    state_ = app.extensions["mmserve"]
    state_.served.smallest_width = lambda: 384  # as if the encoders had answered GetModelInfo
    return app


@pytest.fixture(scope="module")
def document(app) -> dict:
    document = app.test_client().get("/openapi.json").get_json()
    validate(document)
    return document


def body_schema(document: dict, path: str, media: str = "application/json") -> dict:
    return document["paths"][path]["post"]["requestBody"]["content"][media]["schema"]


def refused(app, path: str, payload: dict) -> dict:
    response = app.test_client().post(path, json=payload)
    assert response.status_code == 400, response.get_data(as_text=True)
    return response.get_json()["error"]


@pytest.mark.parametrize(
    "path", ["/v1/embed/image", "/v1/classify/image", "/v1/embed/audio", "/v1/classify/audio"]
)
def test_multipart_file_part_is_required_and_refused_when_missing(app, document, path) -> None:
    form = body_schema(document, path, "multipart/form-data")
    part = form["required"][0]
    assert form["properties"][part]["minItems"] == 1
    # A form field is never null: the multipart schema has no nullable fields.
    assert not any(field.get("nullable") for field in form["properties"].values())
    response = app.test_client().post(path, data={"top_k": "3"}, content_type="multipart/form-data")
    assert response.status_code == 400 and part in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "payload", "pointer"),
    [
        ("/v1/embed", {"inputs": [{"image": "not base64!"}], "head": "h"}, ("inputs", "image")),
        ("/v1/similarity", {"images": ["AAA"], "texts": ["a"]}, ("images",)),
        ("/v1/embed/image", {"images": ["data:image/png,AAAA"]}, ("images",)),
        ("/v1/embed/audio", {"clips": ["AA=A"]}, ("clips",)),
    ],
)
def test_images_and_media_carry_the_base64_pattern_and_refuse_other_strings(
    app, document, path, payload, pointer
) -> None:
    schema = body_schema(document, path)["properties"][pointer[0]]
    schema = schema["items"]["properties"][pointer[1]] if len(pointer) == 2 else schema["items"]
    assert schema["pattern"] == BASE64_PATTERN
    assert "base64" in refused(app, path, payload)["message"]


def test_base64_pattern_and_decoder_agree_exactly() -> None:
    pattern = re.compile(BASE64_PATTERN)
    for length in range(9):
        for chars in itertools.product("AB+=\n", repeat=length):
            text = "".join(chars)
            try:
                decoded = decode_base64(text, "x")
            except ApiError:
                decoded = None
            assert (decoded is not None) == bool(pattern.search(text)), repr(text)
    for text in (f"data:image/png;base64,{PNG}", f"data:;base64,{PNG}", PNG[:40] + "\n" + PNG[40:]):
        assert pattern.search(text) and decode_base64(text, "x") == base64.b64decode(PNG.encode())
    assert not pattern.search(f"data:image/png,{PNG}")
    with pytest.raises(binascii.Error):
        base64.b64decode("AAA", validate=True)  # what "not base64" means to both sides


@pytest.mark.parametrize(
    ("path", "payload", "where"),
    [
        ("/v1/embed/text", {"texts": ["a\x00b"]}, "texts[0]"),
        ("/v1/ner", {"texts": ["ok", "\x00"]}, "texts[1]"),
        ("/v1/classify/text", {"texts": ["a\x00"]}, "texts[0]"),
        ("/text-classification", {"text": "\x00 x"}, "text"),
        ("/v1/embeddings", {"input": "x\x00"}, "input"),
    ],
)
def test_texts_document_no_nul_and_refuse_it(app, document, path, payload, where) -> None:
    assert json.dumps(TEXT_PATTERN) in json.dumps(body_schema(document, path))
    assert "NUL" in refused(app, path, payload)["message"]
    assert where in refused(app, path, payload)["message"]


def test_text_pattern_says_what_text_parse_refuses() -> None:
    pattern = re.compile(TEXT_PATTERN)
    for text, accepted in [("a", True), (" a ", True), ("", False), (" \t\n\u2028", False), ("a\x00", False)]:
        assert bool(pattern.search(text)) is accepted, repr(text)


def test_dimensions_maximum_is_the_served_width_and_more_is_refused(app, document) -> None:
    dimensions = body_schema(document, "/v1/embeddings")["properties"]["dimensions"]
    assert dimensions["maximum"] == 384 and dimensions["minimum"] == 1
    message = refused(app, "/v1/embeddings", {"input": "a", "dimensions": 385})["message"]
    assert "between 1 and 384" in message
    # Unknown widths (no encoder answered yet): the static limit, the same in both places.
    unknown = openapi_document(operations(app), state_of(app).settings, None)
    assert body_schema(unknown, "/v1/embeddings")["properties"]["dimensions"]["maximum"] == 1_000_000


def state_of(app):
    with app.app_context():
        return state()


def test_predict_is_inputs_or_inline_never_both(app, document) -> None:
    for path in ("/v1/predict", "/v1/embed"):
        schema = body_schema(document, path)
        branches = schema["oneOf"]
        assert branches[0]["required"] == ["inputs"]
        assert branches[0]["properties"]["text"]["enum"] == [None]
        assert branches[1]["properties"]["inputs"]["enum"] == [None]
        both = {"inputs": [{"text": "a"}], "text": "b", "head": "h"}
        assert "not both" in refused(app, path, both)["message"]
        assert "required" in refused(app, path, {"head": "h"})["message"]


def test_null_is_documented_where_accepted_and_refused_elsewhere(app, document) -> None:
    encoding = body_schema(document, "/v1/embed/text")["properties"]["encoding_format"]
    assert encoding["nullable"] is True and None in encoding["enum"]
    dimensions = body_schema(document, "/v1/embeddings")["properties"]["dimensions"]
    assert dimensions["nullable"] is True
    # Required fields are never nullable, and null there is refused.
    assert "nullable" not in body_schema(document, "/v1/embed/text")["properties"]["texts"]
    assert "required" in refused(app, "/v1/embed/text", {"texts": None})["message"]


@pytest.mark.parametrize("wrong", ["abc", 1.5, True, [3], {"n": 3}])
def test_dimensions_of_a_wrong_type_are_refused(app, wrong) -> None:
    assert "integer" in refused(app, "/v1/embeddings", {"input": "a", "dimensions": wrong})["message"]


def test_encoding_format_outside_the_enum_is_refused(app) -> None:
    assert "one of" in refused(app, "/v1/embed/text", {"texts": ["a"], "encoding_format": 3})["message"]


def test_video_sampling_and_similarity_targets_are_documented(app, document) -> None:
    video = body_schema(document, "/v1/embed/video")
    assert video["not"]["required"] == ["num_frames", "frames_per_second"]
    assert body_schema(document, "/v1/embed/video", "multipart/form-data")["not"] == video["not"]
    both = {"videos": [PNG], "num_frames": 2, "frames_per_second": 1.0}
    assert "not both" in refused(app, "/v1/embed/video", both)["message"]
    similarity = body_schema(document, "/v1/similarity")
    assert [b["required"] for b in similarity["anyOf"]] == [["texts"], ["candidate_labels"]]
    assert "texts" in refused(app, "/v1/similarity", {"images": [PNG]})["message"]


def test_a_non_string_item_type_is_a_400_not_a_server_error(app) -> None:
    assert refused(app, "/v1/embeddings", {"input": [{"type": {"a": 1}}]})


def test_documented_examples_are_valid_requests(document) -> None:
    for path in ("/v1/predict", "/v1/embed"):
        example = body_schema(document, path)["example"]
        Context(4)  # examples carry real images, which the parser decodes
        decode_base64(example["inputs"][0]["image"], "example")


def test_operations_a_missing_model_would_refuse_are_left_out(app) -> None:
    settings = state_of(app).settings
    without = openapi_document(operations(app), settings, 384, {"text": frozenset({"embed", "ner"})})
    assert not {"/v1/classify/text", "/text-classification"} & set(without["paths"])
    assert "/v1/ner" in without["paths"]
    served = openapi_document(operations(app), settings, 384, {"text": frozenset({"embed", "classify"})})
    unknown = openapi_document(operations(app), settings, 384, {"text": None})
    for document in (served, unknown):
        assert {"/v1/classify/text", "/text-classification"} <= set(document["paths"])
    # The routes stay: a request still gets the clear FAILED_PRECONDITION from the text service.
    assert app.url_map.bind("localhost").match("/v1/classify/text", "POST")


def test_flask_path_variables_become_openapi_path_parameters() -> None:
    from gateway.endpoints import Operation
    from services.common.settings import GatewaySettings

    operation = Operation("GET", "/v2/models/<path:name>/versions/<version>", "meta", "s", {"type": "object"})
    document = openapi_document([operation], GatewaySettings())
    (path,) = document["paths"]
    assert path == "/v2/models/{name}/versions/{version}"
    names = [p["name"] for p in document["paths"][path]["get"]["parameters"]]
    assert names == ["name", "version"]
    validate(document)
