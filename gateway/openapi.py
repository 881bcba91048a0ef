"""The OpenAPI 3.0 document (served at /openapi.json, shown at /docs), built from the declared
routes: request bodies come from the same schemas that validate them (gateway.schema)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.endpoints import Operation
from gateway.image_urls import parse_allowlist
from gateway.schema import Context
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
                "reason": {
                    "type": "string",
                    "description": "a machine-readable cause where a client may act on it: model_not_found",
                },
                "param": {"type": "string", "description": "the request field the error is about"},
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
    "404": "An unknown head, model (reason model_not_found) or route",
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


def _request_body(operation: Operation, ctx: Context) -> dict[str, Any]:
    assert operation.body is not None
    schema = operation.body.openapi(ctx)
    content: dict[str, Any] = {"application/json": {"schema": schema}}
    if operation.uploads:
        # The same fields as form fields, with the uploaded files (at least one) instead of base64.
        properties: dict[str, Any] = {}
        for form_name, field_name in operation.uploads.items():
            listed = operation.body.fields[field_name]
            properties[form_name] = {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
                "maxItems": getattr(listed, "max_items", None) or ctx.max_items,
            }
        uploaded = set(operation.uploads.values())
        properties.update({k: _form_field(v) for k, v in schema["properties"].items() if k not in uploaded})
        form = {"type": "object", "properties": properties, "required": list(operation.uploads)}
        if operation.body.rules is not None:
            form.update(operation.body.rules(ctx))
        content["multipart/form-data"] = {"schema": form}
    return {"required": True, "content": content}


def _form_field(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON property as a form field: a form has no null (the field is left out instead)."""
    if not schema.get("nullable"):
        return schema
    field = {k: v for k, v in schema.items() if k != "nullable"}
    if "enum" in field:
        field["enum"] = [value for value in field["enum"] if value is not None]
    return field


def _operation(operation: Operation, ctx: Context, keyed: bool) -> dict[str, Any]:
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
    responses.setdefault("default", _error("Any other error, in the same shape"))
    entry: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": responses,
    }
    if operation.description:
        entry["description"] = operation.description
    parameters = [_path_parameter(name) for name in _FLASK_VARIABLE.findall(operation.rule)]
    if parameters:
        entry["parameters"] = parameters
    if operation.body is not None:
        entry["requestBody"] = _request_body(operation, ctx)
    elif operation.documented_body is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": operation.documented_body}},
        }
    if api and keyed:
        entry["security"] = [{"bearer": []}]
    return entry


# A Flask rule's variable, `<name>` or `<converter:name>`; OpenAPI spells it `{name}`.
_FLASK_VARIABLE = re.compile(r"<(?:[^:<>]+:)?([^:<>]+)>")


def _path_parameter(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _openapi_path(rule: str) -> str:
    return _FLASK_VARIABLE.sub(r"{\1}", rule)


def _served(operation: Operation, tasks: Mapping[str, frozenset[str] | None]) -> bool:
    """False when the operation's encoder has answered that it does not run the task it needs."""
    if operation.requires is None:
        return True
    encoder, task = operation.requires
    running = tasks.get(encoder)
    return running is None or task in running


def _no_fetch(url: str, where: str) -> bytes:
    raise NotImplementedError  # the document only asks whether image URLs are fetched


def openapi_document(
    operations: list[Operation],
    settings: GatewaySettings,
    max_dimensions: int | None = None,
    tasks: Mapping[str, frozenset[str] | None] | None = None,
) -> dict[str, Any]:
    """The document for these operations, with the limits the parser applies under ``settings``,
    the served encoders' smallest embedding width and each encoder's tasks (None: not known yet;
    operations needing a task an encoder does not run are left out)."""
    keyed = bool(settings.api_keys.strip(" ,"))
    ctx = Context(
        settings.max_items_per_request,
        _no_fetch if parse_allowlist(settings.image_url_allowlist) else None,
        max_dimensions=lambda: max_dimensions,
    )
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        if _served(operation, tasks or {}):
            path = paths.setdefault(_openapi_path(operation.rule), {})
            path[operation.method.lower()] = _operation(operation, ctx, keyed)
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
