"""The OpenAPI 3.0 description of the REST API (served at /openapi.json, shown at /docs)."""

from __future__ import annotations

from typing import Any

STR = {"type": "string"}
NUM = {"type": "number"}
INT = {"type": "integer"}
STR_LIST = {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1}
IMAGE = {
    "type": "string",
    "description": "base64-encoded image file (PNG, JPEG, WebP, GIF), a base64 data URL, or an http(s) URL "
    "when the gateway has an image URL allow-list (public hosts on the list only)",
}
IMAGE_LIST = {"type": "array", "items": IMAGE, "minItems": 1}
MATRIX = {"type": "array", "items": {"type": "array", "items": NUM}}
LABEL_SCORE = {"type": "object", "properties": {"label": STR, "score": NUM}, "required": ["label", "score"]}
MULTIMODAL = {
    "type": "object",
    "properties": {"text": STR, "image": IMAGE},
    "description": "one item: a text, an image or both",
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status"},
                "status": {"type": "string", "description": "the gRPC status name, e.g. INVALID_ARGUMENT"},
                "message": STR,
            },
        }
    },
}
ERRORS = {
    "400": "invalid request (bad JSON, wrong types, limits, undecodable image)",
    "401": "missing or invalid API key (when keys are configured)",
    "404": "unknown route or head",
    "405": "method not allowed",
    "413": "request body too large",
    "415": "wrong content type",
    "429": "overloaded; retry after the Retry-After header",
    "500": "inference failed",
    "503": "a backend is unavailable",
    "504": "a backend did not answer within the deadline",
}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _operation(summary: str, response: dict, body: dict | None = None, multipart: bool = False) -> dict:
    responses: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": response}}}}
    for code, text in ERRORS.items():
        responses[code] = {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        content = {"application/json": {"schema": body}}
        if multipart:
            content["multipart/form-data"] = {
                "schema": _obj({"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}, ["image"])
            }
        operation["requestBody"] = {"required": True, "content": content}
    return operation


EMBEDDINGS = _obj(
    {
        "object": STR,
        "data": {
            "type": "array",
            "items": _obj(
                {"object": STR, "index": INT, "embedding": {"oneOf": [{"type": "array", "items": NUM}, STR]}},
                ["object", "index", "embedding"],
            ),
        },
        "model": STR,
        "usage": _obj({"prompt_tokens": INT, "total_tokens": INT}),
    },
    ["object", "data", "model", "usage"],
)


def openapi_document() -> dict[str, Any]:
    paths = {
        "/v1/embeddings": {"post": _operation(
            "OpenAI-compatible embeddings (text; images as {type: image} items)",
            EMBEDDINGS,
            _obj({
                "input": {"oneOf": [STR, {"type": "array", "minItems": 1, "items": {"oneOf": [
                    STR, _obj({"type": {"type": "string", "enum": ["image", "text"]}, "image": IMAGE, "text": STR}, ["type"])]}}]},
                "model": STR,
                "encoding_format": {"type": "string", "enum": ["float", "base64"]},
                "dimensions": {"type": "integer", "minimum": 1},
            }, ["input"]),
        )},
        "/v1/embed/text": {"post": _operation(
            "Text embeddings",
            _obj({"model": STR, "embeddings": MATRIX, "token_counts": {"type": "array", "items": INT},
                  "truncated": {"type": "array", "items": {"type": "boolean"}}}, ["model", "embeddings"]),
            _obj({"texts": STR_LIST}, ["texts"]),
        )},
        "/v1/embed/image": {"post": _operation(
            "Image embeddings (JSON base64 or multipart upload)",
            _obj({"model": STR, "embeddings": MATRIX}, ["model", "embeddings"]),
            _obj({"images": IMAGE_LIST}, ["images"]),
            multipart=True,
        )},
        "/v1/embed": {"post": _operation(
            "Fused text+image embeddings through a trained head",
            _obj({"head": STR, "embeddings": MATRIX}, ["head", "embeddings"]),
            _obj({"inputs": {"type": "array", "items": MULTIMODAL, "minItems": 1}, "head": STR}, ["inputs", "head"]),
        )},
        "/v1/predict": {"post": _operation(
            "A trained head's decision for text and/or image inputs",
            _obj({"head": STR, "predictions": {"type": "array", "items": _obj(
                {"label": STR, "score": NUM, "scores": {"type": "object", "additionalProperties": NUM}},
                ["label", "score", "scores"])}}, ["head", "predictions"]),
            _obj({"inputs": {"type": "array", "items": MULTIMODAL, "minItems": 1}, "text": STR, "image": IMAGE,
                  "head": STR}, ["head"]),
        )},
        "/v1/classify/image": {"post": _operation(
            "Top-k labels per image",
            _obj({"model": STR, "results": {"type": "array", "items": _obj(
                {"labels": {"type": "array", "items": LABEL_SCORE}})}}, ["model", "results"]),
            _obj({"images": IMAGE_LIST, "top_k": {"type": "integer", "minimum": 1, "maximum": 1000}}, ["images"]),
            multipart=True,
        )},
        "/v1/ner": {"post": _operation(
            "Named entities with character offsets",
            _obj({"model": STR, "results": {"type": "array", "items": _obj({"entities": {"type": "array", "items": _obj(
                {"text": STR, "label": STR, "start_char": INT, "end_char": INT,
                 "score": {"type": "number", "nullable": True}})}})}}, ["model", "results"]),
            _obj({"texts": STR_LIST}, ["texts"]),
        )},
        "/v1/similarity": {"post": _operation(
            "Texts x images similarity and zero-shot labels (a CLIP pair or an alignment head)",
            _obj({"space": STR, "scores": MATRIX, "zero_shot": {"type": "array", "items": {
                "type": "array", "items": LABEL_SCORE}}}, ["space", "scores", "zero_shot"]),
            _obj({"texts": {"type": "array", "items": STR}, "images": IMAGE_LIST,
                  "candidate_labels": {"type": "array", "items": STR}, "head": STR}, ["images"]),
        )},
        "/v1/models": {"get": _operation("The encoders' models", _obj({"object": STR, "data": {"type": "array", "items": _obj(
            {"id": STR, "modality": STR, "revision": STR, "embedding_dim": INT, "device": STR, "dtype": STR})}}))},
        "/v1/heads": {"get": _operation("The served fusion heads", _obj({"heads": {"type": "array", "items": _obj(
            {"name": STR, "task": STR, "strategy": STR, "labels": {"type": "array", "items": STR}})}}, ["heads"]))},
        "/healthz": {"get": _operation("The process is alive", _obj({"status": STR}))},
        "/readyz": {"get": _operation("Every backend is SERVING", _obj({"status": STR}))},
    }  # fmt: skip
    return {
        "openapi": "3.0.3",
        "info": {"title": "mmserve", "version": "1.0.0", "description": "Multimodal model serving REST API."},
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
