"""Request schemas declared once: each field validates its part of a request body and describes
itself in OpenAPI, so the published contract and the checks cannot disagree.

``parse`` turns a decoded JSON value into what a route needs (texts stay strings, images become
bytes, decoded once) or raises a 400 that names the offending path, e.g. ``inputs[3].image``.
Unknown fields are ignored, as OpenAI's API does (its clients send extra ones such as ``user``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Request

from gateway.errors import ApiError, invalid

# Fetches an image URL (gateway.image_urls.ImageUrlFetcher.fetch): (url, where) -> bytes, or raises a 400.
FetchUrl = Callable[[str, str], bytes]
_JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class Context:
    """What parsing a request depends on besides the body."""

    max_items: int  # the gateway's per-request item limit
    fetch_url: FetchUrl | None = None  # None: image URLs are refused
    form: bool = False  # values come from a multipart form (strings and uploaded files), not JSON


class Field:
    description: str = ""
    plural: str = "values"  # what a list of these is called in error messages

    def parse(self, value: Any, where: str, ctx: Context) -> Any:
        raise NotImplementedError

    def openapi(self, max_items: int) -> dict[str, Any]:
        raise NotImplementedError

    def _documented(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {**schema, "description": self.description} if self.description else schema


@dataclass(frozen=True)
class Text(Field):
    """A non-blank string that can travel as a protobuf string."""

    description: str = ""
    plural = "strings"

    def parse(self, value: Any, where: str, ctx: Context) -> str:
        if not isinstance(value, str):
            raise invalid(f"'{where}' must be a string")
        if not value.strip():
            raise invalid(f"'{where}' is empty")
        if "\x00" in value:
            raise invalid(f"'{where}' contains a NUL character")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(f"'{where}' is not valid Unicode (lone surrogate)") from None
        return value

    def openapi(self, max_items: int) -> dict[str, Any]:
        return self._documented({"type": "string", "minLength": 1})


@dataclass(frozen=True)
class String(Field):
    """An optional free-form string; missing or null is the empty string."""

    description: str = ""
    max_length: int = 256

    def parse(self, value: Any, where: str, ctx: Context) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise invalid(f"'{where}' must be a string")
        if len(value) > self.max_length:
            raise invalid(f"'{where}' is longer than {self.max_length} characters")
        return value

    def openapi(self, max_items: int) -> dict[str, Any]:
        return self._documented({"type": "string", "maxLength": self.max_length})


@dataclass(frozen=True)
class Choice(Field):
    values: tuple[str, ...]
    default: str
    description: str = ""

    def parse(self, value: Any, where: str, ctx: Context) -> str:
        if value is None:
            return self.default
        if value not in self.values:
            raise invalid(f"'{where}' must be one of {', '.join(repr(v) for v in self.values)}")
        return value

    def openapi(self, max_items: int) -> dict[str, Any]:
        return self._documented({"type": "string", "enum": list(self.values), "default": self.default})


@dataclass(frozen=True)
class Integer(Field):
    low: int
    high: int
    default: int | None = None
    description: str = ""

    def parse(self, value: Any, where: str, ctx: Context) -> int | None:
        if value is None:
            return self.default
        if ctx.form and isinstance(value, str):  # form fields are strings
            digits = value.strip().removeprefix("-")
            # ASCII only: str.isdigit() accepts "²", which int() refuses.
            value = int(value) if digits.isascii() and digits.isdigit() else value
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"'{where}' must be an integer")
        if not self.low <= value <= self.high:
            raise invalid(f"'{where}' must be between {self.low} and {self.high}")
        return value

    def openapi(self, max_items: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.low, "maximum": self.high}
        if self.default is not None:
            schema["default"] = self.default
        return self._documented(schema)


@dataclass(frozen=True)
class Number(Field):
    """A finite number in [low, high] (integers accepted); missing or null is the default."""

    low: float
    high: float
    default: float | None = None
    description: str = ""

    def parse(self, value: Any, where: str, ctx: Context) -> float | None:
        if value is None:
            return self.default
        if ctx.form and isinstance(value, str):  # form fields are strings
            try:
                value = float(value)
            except ValueError:
                raise invalid(f"'{where}' must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise invalid(f"'{where}' must be a number")
        if not self.low <= value <= self.high:
            raise invalid(f"'{where}' must be between {self.low:g} and {self.high:g}")
        return float(value)

    def openapi(self, max_items: int) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number", "minimum": self.low, "maximum": self.high}
        if self.default is not None:
            schema["default"] = self.default
        return self._documented(schema)


@dataclass(frozen=True)
class Boolean(Field):
    """true or false; missing or null is the default (form fields: true/false, 1/0)."""

    default: bool = False
    description: str = ""

    def parse(self, value: Any, where: str, ctx: Context) -> bool:
        if value is None:
            return self.default
        if ctx.form and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if not isinstance(value, bool):
            raise invalid(f"'{where}' must be true or false")
        return value

    def openapi(self, max_items: int) -> dict[str, Any]:
        return self._documented({"type": "boolean", "default": self.default})


@dataclass(frozen=True)
class Image(Field):
    """An encoded image file: base64, a base64 data URL, or an allow-listed http(s) URL."""

    description: str = (
        "An encoded image file (PNG, JPEG, WebP, GIF) as base64 or a base64 data URL "
        "(data:image/png;base64,...); an http(s) URL only when the gateway has an image URL allow-list."
    )
    plural = "images (base64 strings or data URLs)"

    def parse(self, value: Any, where: str, ctx: Context) -> bytes:
        if ctx.form and isinstance(value, bytes):  # an uploaded file, already raw
            if not value:
                raise invalid(f"'{where}' is an empty file")
            return value
        if not isinstance(value, str):
            raise invalid(f"'{where}' must be a base64 string or a data URL")
        text = value.strip()
        if text[:8].lower().startswith(("http://", "https://")):
            if ctx.fetch_url is None:
                raise invalid(f"'{where}': image URLs are disabled; send the image as base64 or a data URL")
            return ctx.fetch_url(text, where)
        return decode_base64(text, where)

    def openapi(self, max_items: int) -> dict[str, Any]:
        return self._documented({"type": "string", "minLength": 1})


def decode_base64(text: str, where: str) -> bytes:
    """A file sent as base64 or a base64 data URL (line-wrapped base64 too) -> its bytes."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise invalid(f"'{where}': only base64 data URLs are supported")
    if "\n" in text:  # line-wrapped base64 (the `base64` tool wraps at 76 columns by default)
        text = text.replace("\r", "").replace("\n", "")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"'{where}' is not valid base64") from None
    if not data:
        raise invalid(f"'{where}' is empty")
    return data


@dataclass(frozen=True)
class EncodedFile(Field):
    """An encoded media file (audio, video) as base64 or a base64 data URL, or an uploaded file;
    never fetched by URL. ``max_bytes`` is the decoded size the backend accepts (checked here too,
    so an oversized file is refused before it travels)."""

    noun: str
    max_bytes: int
    description: str = ""
    plural = "files (base64 strings or data URLs)"

    def parse(self, value: Any, where: str, ctx: Context) -> bytes:
        if ctx.form and isinstance(value, bytes):  # an uploaded file, already raw
            data = value
            if not data:
                raise invalid(f"'{where}' is an empty file")
        elif isinstance(value, str):
            text = value.strip()
            if text[:8].lower().startswith(("http://", "https://")):
                raise invalid(
                    f"'{where}': {self.noun} URLs are not fetched; send the file as base64 or a data URL"
                )
            data = decode_base64(text, where)
        else:
            raise invalid(f"'{where}' must be a base64 string or a data URL")
        if len(data) > self.max_bytes:
            raise invalid(f"'{where}' is {len(data)} bytes; the {self.noun} limit is {self.max_bytes} bytes")
        return data

    def openapi(self, max_items: int) -> dict[str, Any]:
        # base64 takes 4 characters per 3 bytes; a data URL header adds a few more.
        return self._documented(
            {"type": "string", "minLength": 1, "maxLength": -(-self.max_bytes // 3) * 4 + 64}
        )


@dataclass(frozen=True)
class ListOf(Field):
    item: Field
    max_items: int | None = None  # None: the gateway's per-request limit
    min_items: int = 1
    description: str = ""

    def parse(self, value: Any, where: str, ctx: Context) -> list:
        if value is None:
            value = []
        if not isinstance(value, list):
            raise invalid(f"'{where}' must be a list of {self.item.plural}")
        if len(value) < self.min_items:
            raise invalid(
                f"'{where}' must contain at least {self.min_items} item{'s' * (self.min_items > 1)}"
            )
        limit = self.max_items or ctx.max_items
        if len(value) > limit:
            raise invalid(f"too many items in '{where}': {len(value)} (limit {limit})")
        return [self.item.parse(item, f"{where}[{index}]", ctx) for index, item in enumerate(value)]

    def openapi(self, max_items: int) -> dict[str, Any]:
        schema = {
            "type": "array",
            "items": self.item.openapi(max_items),
            "maxItems": self.max_items or max_items,
        }
        if self.min_items:
            schema["minItems"] = self.min_items
        return self._documented(schema)


@dataclass(frozen=True)
class Object(Field):
    """A JSON object of named fields. ``prepare`` may rewrite the raw object first (shorthand
    forms); ``check`` sees the parsed values and enforces rules across fields."""

    fields: Mapping[str, Field]
    required: tuple[str, ...] = ()
    description: str = ""
    prepare: Callable[[dict], dict] | None = None
    check: Callable[[dict, str], None] | None = None
    example: dict | None = field(default=None, compare=False)
    plural = "objects"

    def parse(self, value: Any, where: str, ctx: Context) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise invalid(
                f"'{where}' must be an object" if where else "the request body must be a JSON object"
            )
        if self.prepare is not None:
            value = self.prepare(value)
        parsed = {}
        for name, spec in self.fields.items():
            path = f"{where}.{name}" if where else name
            raw = value.get(name)
            if raw is None and name in self.required:
                raise invalid(f"'{path}' is required")
            parsed[name] = spec.parse(raw, path, ctx)
        if self.check is not None:
            self.check(parsed, where)
        return parsed

    def openapi(self, max_items: int) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {name: spec.openapi(max_items) for name, spec in self.fields.items()},
        }
        if self.required:
            schema["required"] = list(self.required)
        if self.example is not None:
            schema["example"] = self.example
        return self._documented(schema)


def parse_json_body(request: Request, schema: Object, ctx: Context) -> dict[str, Any]:
    """The request's JSON body, checked against ``schema``."""
    if request.mimetype not in _JSON_TYPES and not request.mimetype.endswith("+json"):
        raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
    raw = request.get_data(cache=False)  # over max_body_bytes raises 413 here
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None
    return schema.parse(data, "", ctx)


def parse_form_body(
    request: Request, schema: Object, ctx: Context, files: Mapping[str, str]
) -> dict[str, Any]:
    """A multipart form checked against ``schema``: form fields by name, uploaded files of each
    form field in ``files`` (form name -> schema field) as a list of raw bytes."""
    data: dict[str, Any] = dict(request.form.items())
    for form_name, field_name in files.items():
        uploads = request.files.getlist(form_name)
        if not uploads:
            raise invalid(f"upload at least one file in the form field '{form_name}'")
        data[field_name] = [upload.read() for upload in uploads]
    return schema.parse(data, "", Context(ctx.max_items, ctx.fetch_url, form=True))
