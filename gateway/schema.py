"""Request schemas declared once: each field validates its part of a request body and describes
itself in OpenAPI, so the published contract and the checks cannot disagree.

``parse`` turns a decoded JSON value into what a route needs (texts stay strings, images become
bytes, decoded once) or raises a 400 that names the offending path, e.g. ``inputs[3].image``.
Unknown fields are ignored, as OpenAI's API does (its clients send extra ones such as ``user``).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from flask import Request

from gateway.errors import ApiError, invalid

# Fetches an image URL (gateway.image_urls.ImageUrlFetcher.fetch): (url, where) -> bytes, or raises a 400.
FetchUrl = Callable[[str, str], bytes]
_JSON_TYPES = ("application/json",)


# What Text accepts: no NUL and at least one non-whitespace character. Python's re (which
# schemathesis and jsonschema use) reads \s as str.isspace(), the very test Text.parse applies.
TEXT_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"
# What decode_base64 accepts: base64 with its padding (line breaks anywhere are dropped), at least
# one byte, optionally as a data URL whose header ends in ";base64".
_B64_CHAR = "[A-Za-z0-9+/][\\r\\n]*"
_PAD = "=[\\r\\n]*"
BASE64_PATTERN = (
    f"^(data:[^,]*;base64,)?[\\r\\n]*(({_B64_CHAR}){{4}})*"
    f"(({_B64_CHAR}){{4}}|({_B64_CHAR}){{2}}{_PAD}{_PAD}|({_B64_CHAR}){{3}}{_PAD})$"
)
_URL_PATTERN = "^[Hh][Tt][Tt][Pp][Ss]?://"


@dataclass(frozen=True)
class Context:
    """What parsing a request depends on besides the body; the OpenAPI document is built from
    the same values, so it states the limits the parser applies."""

    max_items: int  # the gateway's per-request item limit
    fetch_url: FetchUrl | None = None  # None: image URLs are refused
    form: bool = False  # values come from a multipart form (strings and uploaded files), not JSON
    # The served encoders' smallest embedding width (None: not known yet), asked when needed.
    max_dimensions: Callable[[], int | None] | None = None


class Field:
    description: str = ""
    plural: str = "values"  # what a list of these is called in error messages
    nullable: bool = False  # parse takes an explicit null as "not given" (documented where optional)

    def parse(self, value: Any, where: str, ctx: Context) -> Any:
        raise NotImplementedError

    def openapi(self, ctx: Context) -> dict[str, Any]:
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

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return self._documented({"type": "string", "minLength": 1, "pattern": TEXT_PATTERN})


@dataclass(frozen=True)
class String(Field):
    """An optional free-form string; missing or null is the empty string."""

    description: str = ""
    max_length: int = 256
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise invalid(f"'{where}' must be a string")
        if len(value) > self.max_length:
            raise invalid(f"'{where}' is longer than {self.max_length} characters")
        return value

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return self._documented({"type": "string", "maxLength": self.max_length})


@dataclass(frozen=True)
class Choice(Field):
    values: tuple[str, ...]
    default: str
    description: str = ""
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> str:
        if value is None:
            return self.default
        if value not in self.values:
            raise invalid(f"'{where}' must be one of {', '.join(repr(v) for v in self.values)}")
        return value

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return self._documented({"type": "string", "enum": list(self.values), "default": self.default})


@dataclass(frozen=True)
class Integer(Field):
    low: int
    high: int
    default: int | None = None
    description: str = ""
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> int | None:
        if value is None:
            return self.default
        if ctx.form and isinstance(value, str):  # form fields are strings
            digits = value.strip().removeprefix("-")
            # ASCII only: str.isdigit() accepts "²", which int() refuses.
            value = int(value) if digits.isascii() and digits.isdigit() else value
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"'{where}' must be an integer")
        high = self._high(ctx)
        if not self.low <= value <= high:
            raise invalid(f"'{where}' must be between {self.low} and {high}")
        return value

    def _high(self, ctx: Context) -> int:
        return self.high

    def openapi(self, ctx: Context) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.low, "maximum": self._high(ctx)}
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
    nullable = True

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

    def openapi(self, ctx: Context) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "number", "minimum": self.low, "maximum": self.high}
        if self.default is not None:
            schema["default"] = self.default
        return self._documented(schema)


@dataclass(frozen=True)
class Boolean(Field):
    """true or false; missing or null is the default (form fields: true/false, 1/0)."""

    default: bool = False
    description: str = ""
    nullable = True

    def parse(self, value: Any, where: str, ctx: Context) -> bool:
        if value is None:
            return self.default
        if ctx.form and isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if not isinstance(value, bool):
            raise invalid(f"'{where}' must be true or false")
        return value

    def openapi(self, ctx: Context) -> dict[str, Any]:
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
        if value[:8].lower().startswith(("http://", "https://")):
            if ctx.fetch_url is None:
                raise invalid(f"'{where}': image URLs are disabled; send the image as base64 or a data URL")
            return ctx.fetch_url(value, where)
        return decode_base64(value, where)

    def openapi(self, ctx: Context) -> dict[str, Any]:
        # An http(s) URL is documented only where the gateway fetches them (an allow-list is set).
        pattern = BASE64_PATTERN if ctx.fetch_url is None else f"{BASE64_PATTERN}|{_URL_PATTERN}"
        return self._documented({"type": "string", "pattern": pattern})


def decode_base64(text: str, where: str) -> bytes:
    """A file sent as base64 or a base64 data URL (line-wrapped base64 too) -> its bytes.
    Accepts exactly what BASE64_PATTERN describes (a unit test holds the two together)."""
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise invalid(f"'{where}': only base64 data URLs are supported")
    if "\n" in text or "\r" in text:  # line-wrapped base64 (`base64` wraps at 76 columns)
        text = text.replace("\r", "").replace("\n", "")
    # strict_mode refuses what is not base64 in the decoder's one pass; it still takes surplus
    # "=" after a whole group, which the two O(1) checks refuse.
    if len(text) % 4 or text.endswith("==="):
        raise invalid(f"'{where}' is not valid base64")
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
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
            if value[:8].lower().startswith(("http://", "https://")):
                raise invalid(
                    f"'{where}': {self.noun} URLs are not fetched; send the file as base64 or a data URL"
                )
            data = decode_base64(value, where)
        else:
            raise invalid(f"'{where}' must be a base64 string or a data URL")
        if len(data) > self.max_bytes:
            raise invalid(f"'{where}' is {len(data)} bytes; the {self.noun} limit is {self.max_bytes} bytes")
        return data

    def openapi(self, ctx: Context) -> dict[str, Any]:
        # The limit is on the decoded size; a string this long decodes to at most max_bytes
        # (base64 takes 4 characters per 3 bytes), so what the document allows passes.
        return self._documented(
            {"type": "string", "pattern": BASE64_PATTERN, "maxLength": self.max_bytes // 3 * 4}
        )


@dataclass(frozen=True)
class NumberMap(Field):
    """An object of name -> finite number (tabular features); which names a head reads is the
    head's to check (fusion refuses missing and unknown ones, naming them)."""

    max_items: int
    description: str = ""
    plural = "objects of numbers"

    def parse(self, value: Any, where: str, ctx: Context) -> dict[str, float]:
        if not isinstance(value, dict):
            raise invalid(f"'{where}' must be an object of name -> number")
        if not value:
            raise invalid(f"'{where}' must name at least one feature")
        if len(value) > self.max_items:
            raise invalid(f"too many entries in '{where}': {len(value)} (limit {self.max_items})")
        parsed = {}
        for name, number in value.items():
            # json.loads reads NaN and Infinity, which no head can use.
            if isinstance(number, bool) or not isinstance(number, int | float) or number != number:
                raise invalid(f"'{where}.{name}' must be a number")
            try:
                parsed[name] = float(number)
            except OverflowError:  # an integer beyond float range
                parsed[name] = float("inf")
            if parsed[name] in (float("inf"), float("-inf")):
                raise invalid(f"'{where}.{name}' must be a finite number")
        return parsed

    def openapi(self, ctx: Context) -> dict[str, Any]:
        return self._documented(
            {
                "type": "object",
                "additionalProperties": {"type": "number"},
                "minProperties": 1,
                "maxProperties": self.max_items,
            }
        )


@dataclass(frozen=True)
class ListOf(Field):
    item: Field
    max_items: int | None = None  # None: the gateway's per-request limit
    min_items: int = 1
    description: str = ""
    null_is_missing: bool = False  # the enclosing Object's prepare takes null as "not given"

    @property
    def nullable(self) -> bool:  # type: ignore[override]
        return self.min_items == 0 or self.null_is_missing  # null is an empty list

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

    def openapi(self, ctx: Context) -> dict[str, Any]:
        schema = {
            "type": "array",
            "items": self.item.openapi(ctx),
            "maxItems": self.max_items or ctx.max_items,
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
    # JSON Schema keywords (anyOf, oneOf, not) that document what prepare and check refuse.
    rules: Callable[[Context], dict[str, Any]] | None = field(default=None, compare=False)
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

    def openapi(self, ctx: Context) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": self.properties(ctx)}
        if self.required:
            schema["required"] = list(self.required)
        if self.rules is not None:
            schema.update(self.rules(ctx))
        if self.example is not None:
            schema["example"] = self.example
        return self._documented(schema)

    def properties(self, ctx: Context) -> dict[str, Any]:
        """Each field's schema; an optional field that takes null as "not given" says so."""
        properties = {}
        for name, spec in self.fields.items():
            schema = spec.openapi(ctx)
            if spec.nullable and name not in self.required:
                schema = {**schema, "nullable": True}
                if "enum" in schema:  # OpenAPI 3.0.3: an enum lists null for it to be allowed
                    schema["enum"] = [*schema["enum"], None]
            properties[name] = schema
        return properties


def null_only(type_: str) -> dict[str, Any]:
    """A property that may only be missing or null (one branch of an either-or body)."""
    return {"type": type_, "nullable": True, "enum": [None]}


def parse_json_body(request: Request, schema: Object, ctx: Context) -> dict[str, Any]:
    """The request's JSON body, checked against ``schema``."""
    if request.mimetype not in _JSON_TYPES and not request.mimetype.endswith("+json"):
        raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
    raw = request.get_data(cache=False)  # over max_body_bytes raises 413 here
    try:
        # orjson: several times faster than json.loads, and strict (no NaN/Infinity literals, no
        # lone surrogates, nesting capped), so nothing JSON does not allow reaches the checks.
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise invalid(f"the request body is not valid JSON: {error.msg}") from None
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
    return schema.parse(data, "", replace(ctx, form=True))
