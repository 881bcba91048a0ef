"""Pieces of the JSON response schemas the OpenAPI document publishes (requests: gateway.schema)."""

from __future__ import annotations

from typing import Any

from gateway.schema import Choice

STR: dict[str, Any] = {"type": "string"}
NUM: dict[str, Any] = {"type": "number"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
VECTOR: dict[str, Any] = {
    "oneOf": [
        {"type": "array", "items": NUM},
        {"type": "string", "description": "base64 of little-endian float32"},
    ]
}
VECTORS: dict[str, Any] = {
    "type": "array",
    "items": VECTOR,
    "description": "one vector per input, in input order",
}
MATRIX: dict[str, Any] = {"type": "array", "items": {"type": "array", "items": NUM}}
LABEL_SCORE: dict[str, Any] = {
    "type": "object",
    "properties": {"label": STR, "score": NUM},
    "required": ["label", "score"],
}

ENCODING_FORMAT = Choice(
    ("float", "base64"),
    "float",
    "How vectors are returned: JSON numbers, or base64 of little-endian float32 (smaller, faster).",
)


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}
