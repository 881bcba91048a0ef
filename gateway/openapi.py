"""The OpenAPI 3.0 document (served at /openapi.json, shown at /docs), built from the declared
routes: request bodies come from the same schemas that validate them (gateway.schema)."""

from __future__ import annotations

from typing import Any

from gateway.endpoints import Operation
from services.common.settings import GatewaySettings

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "status", "message"],
            "properties": {
                "code": {"type": "integer", "description": "the HTTP status"},
                "status": {
                    "type": "string",
                    "description": "the gRPC status name (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...), or "
                    "METHOD_NOT_ALLOWED, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE",
                },
                "message": {"type": "string"},
            },
        }
    },
    "example": {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "'texts[0]' is empty"}},
}
_BODY_ERRORS = {
    "400": "Invalid request: malformed JSON, wrong types, limits, undecodable image, or FAILED_PRECONDITION",
    "413": "The request body is larger than the gateway's limit",
    "415": "The body is not JSON (or, where accepted, multipart/form-data)",
}
_BACKEND_ERRORS = {
    "404": "An unknown head or route",
    "429": "A backend is overloaded; retry after the Retry-After header",
    "500": "Inference failed",
    "503": "A backend is unavailable; retry after the Retry-After header",
    "504": "A backend did not answer within the deadline",
}
_AUTH_ERROR = {"401": "Missing or invalid API key"}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _request_body(operation: Operation, max_items: int) -> dict[str, Any]:
    assert operation.body is not None
    schema = operation.body.openapi(max_items)
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if operation.uploads:
        uploaded = set(operation.uploads.values())
        properties = {
            form_name: {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "maxItems": max_items,
            }
            for form_name in operation.uploads
        }
        properties.update({k: v for k, v in schema["properties"].items() if k not in uploaded})
        content["multipart/form-data"] = {
            "schema": {"type": "object", "properties": properties, "required": list(operation.uploads)}
        }
    return {"required": True, "content": content}


def _operation(operation: Operation, settings: GatewaySettings, keyed: bool) -> dict[str, Any]:
    api = operation.rule.startswith("/v1/")
    success: dict[str, Any] = {"description": "OK"}
    if operation.response:
        success["content"] = {operation.response_type: {"schema": operation.response}}
    responses: dict[str, Any] = {"200": success}
    errors: dict[str, str] = {}
    if operation.body is not None:
        errors.update(_BODY_ERRORS)
    if api:
        errors.update(_BACKEND_ERRORS)
        if keyed:
            errors.update(_AUTH_ERROR)
    for code in sorted(errors):
        responses[code] = _error(errors[code])
    for code, (description, schema) in operation.responses.items():
        responses[code] = {"description": description, "content": {"application/json": {"schema": schema}}}
    responses["default"] = _error("Any other error, in the same shape")
    entry: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": responses,
    }
    if operation.description:
        entry["description"] = operation.description
    if operation.body is not None:
        entry["requestBody"] = _request_body(operation, settings.max_items_per_request)
    if api and keyed:
        entry["security"] = [{"bearer": []}]
    return entry


def openapi_document(operations: list[Operation], settings: GatewaySettings) -> dict[str, Any]:
    keyed = bool(settings.api_keys.strip(" ,"))
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.rule, {})[operation.method.lower()] = _operation(
            operation, settings, keyed
        )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "mmserve",
            "version": "1.0.0",
            "description": "Multimodal model serving: text and image embeddings (OpenAI-compatible), fused "
            "embeddings and predictions from trained heads, image classification, named entities and "
            "image-text similarity. Every error has the shape of the Error schema.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}},
        },
    }
