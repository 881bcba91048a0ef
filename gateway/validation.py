"""Request parsing in one place: every malformed input becomes a clear 400, never a 500."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from flask import Request

from gateway.errors import ApiError, invalid

_DATA_URL_PREFIX = "data:"
# Fetches an image URL (gateway.image_urls.ImageUrlFetcher.fetch): (url, where) -> bytes, or raises a 400.
FetchUrl = Callable[[str, str], bytes]


def json_body(request: Request) -> dict[str, Any]:
    if not request.is_json:
        raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
    data = request.get_json(silent=True)
    if data is None:
        raise invalid("the request body is not valid JSON")
    if not isinstance(data, dict):
        raise invalid("the request body must be a JSON object")
    return data


def string_list(data: dict, field: str, limit: int, *, allow_single: bool = False, required: bool = True) -> list[str]:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(f"'{field}' is required")
        return []
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise invalid(f"'{field}' must be a list of strings")
    if required and not value:
        raise invalid(f"'{field}' must contain at least one item")
    if len(value) > limit:
        raise invalid(f"too many items in '{field}': {len(value)} (limit {limit})")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"'{field}[{index}]' must be a string")
        if not item.strip():
            raise invalid(f"'{field}[{index}]' is empty")
        check_text(item, f"{field}[{index}]")
    return value


def check_text(text: str, where: str) -> None:
    """Refuses what cannot travel as a protobuf string (lone surrogates) or is never meaningful (NUL)."""
    if "\x00" in text:
        raise invalid(f"'{where}' contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(f"'{where}' is not valid Unicode (lone surrogate)") from None


def optional_string(data: dict, field: str) -> str:
    value = data.get(field, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(f"'{field}' must be a string")
    return value


def optional_int(data: dict, field: str, default: int, low: int, high: int) -> int:
    value = data.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"'{field}' must be an integer")
    if not low <= value <= high:
        raise invalid(f"'{field}' must be between {low} and {high}")
    return value


def decode_image(value: Any, where: str, fetch_url: FetchUrl | None = None) -> bytes:
    """Base64 or a data URL to bytes; an http(s) URL only through ``fetch_url`` (else refused)."""
    if not isinstance(value, str):
        raise invalid(f"'{where}' must be a base64 string or a data URL")
    text = value.strip()
    if text.lower().startswith(("http://", "https://")):
        if fetch_url is None:
            raise invalid(f"'{where}': image URLs are disabled; send the image as base64 or a data URL")
        return fetch_url(text, where)
    if text.startswith(_DATA_URL_PREFIX):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise invalid(f"'{where}': only base64 data URLs are supported")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{where}' is not valid base64") from None
    if not data:
        raise invalid(f"'{where}' is empty")
    return data


def image_list(
    data: dict, field: str, limit: int, required: bool = True, fetch_url: FetchUrl | None = None
) -> list[bytes]:
    value = data.get(field)
    if value is None:
        if required:
            raise invalid(f"'{field}' is required")
        return []
    if not isinstance(value, list):
        raise invalid(f"'{field}' must be a list of base64 strings")
    if required and not value:
        raise invalid(f"'{field}' must contain at least one image")
    if len(value) > limit:
        raise invalid(f"too many items in '{field}': {len(value)} (limit {limit})")
    return [decode_image(item, f"{field}[{i}]", fetch_url) for i, item in enumerate(value)]


def multimodal_inputs(
    data: dict, limit: int, fetch_url: FetchUrl | None = None
) -> list[tuple[str | None, bytes | None]]:
    """``inputs: [{text?, image?}]``, or one item given inline as ``text``/``image``."""
    raw = data.get("inputs")
    if raw is None and ("text" in data or "image" in data):
        raw = [{"text": data.get("text"), "image": data.get("image")}]
    if not isinstance(raw, list) or not raw:
        raise invalid("'inputs' must be a non-empty list of {\"text\", \"image\"} objects")
    if len(raw) > limit:
        raise invalid(f"too many items in 'inputs': {len(raw)} (limit {limit})")
    items = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise invalid(f"'inputs[{index}]' must be an object")
        text, image = item.get("text"), item.get("image")
        if text is not None and not isinstance(text, str):
            raise invalid(f"'inputs[{index}].text' must be a string")
        if text is not None:
            check_text(text, f"inputs[{index}].text")
        if not (text and text.strip()) and image is None:
            raise invalid(f"'inputs[{index}]' needs a text, an image or both")
        decoded = decode_image(image, f"inputs[{index}].image", fetch_url) if image is not None else None
        items.append((text if text and text.strip() else None, decoded))
    return items
