"""Schemathesis hooks for the contract test (loaded through tests/support/schemathesis.toml).

JSON Schema can say that a field is base64 but not that the bytes are a PNG, a WAV or an MP4, so
a schema-valid random string is, to the encoders, an unreadable file, refused with 400. Positive
requests therefore carry real small media in their image, audio and video fields; negative ones
are sent as generated.

/v1/similarity without a ``head`` scores in the encoders' shared space, which only a CLIP pair
has; the test stack serves MiniLM and EfficientNet, so fusion refuses it (FAILED_PRECONDITION,
400, as the operation's description says). Whether two encoders share a space is fusion's rule
(services/fusion/similarity.py), which the gateway does not carry, so the document cannot adapt
to it; positive similarity requests name the stack's alignment head instead.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import struct
import wave
from typing import Any

import schemathesis
from schemathesis import Case
from schemathesis.core.parameters import ParameterLocation

ALIGNMENT_HEAD = "align"  # the demo alignment head the e2e gateway fixture serves
# Body field -> the medium its values hold (JSON: base64 strings; multipart: uploaded files).
_MEDIA_FIELDS = {
    "images": "image",
    "image": "image",
    "clips": "audio",
    "audio": "audio",
    "videos": "video",
    "video": "video",
}


@functools.cache
def _media(kind: str) -> bytes:
    if kind == "image":
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, format="PNG")
        return buffer.getvalue()
    if kind == "audio":  # one second of a 440 Hz tone, 16 kHz mono 16-bit PCM
        rate = 16_000
        samples = (int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(rate))
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(b"".join(struct.pack("<h", s) for s in samples))
        return buffer.getvalue()
    from tests.support.media import pattern_frame, video_file

    return video_file([pattern_frame(i) for i in range(8)])


def _real(value: Any, kind: str, form: bool) -> Any:
    """``value`` (a file, or a list of them) as real media of ``kind``; anything else as it is."""
    if isinstance(value, list):
        return [_real(item, kind, form) for item in value]
    if value is None or isinstance(value, bool | int | float | dict):
        return value  # null (not given), or not a file at all
    data = _media(kind)
    return data if form else base64.b64encode(data).decode()


def _fill(node: Any, form: bool) -> Any:
    if isinstance(node, dict):
        return {
            key: _real(value, _MEDIA_FIELDS[key], form) if key in _MEDIA_FIELDS else _fill(value, form)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_fill(item, form) for item in node]
    return node


@schemathesis.hook
def map_case(context, case: Case) -> Case:
    meta = case.meta
    if meta is None or meta.is_negative_at(ParameterLocation.BODY) or not isinstance(case.body, dict):
        return case
    if case.operation.path == "/v1/similarity" and not case.body.get("head"):
        case.body = {**case.body, "head": ALIGNMENT_HEAD}
    form = (case.media_type or "").startswith("multipart/")
    case.body = _fill(case.body, form)
    if form:
        # Schemathesis 4.32.5 revalidates an edited body and counts any body holding files as
        # schema-violating (Case._validate_component: contains_binary -> invalid), which would turn
        # this positive case negative. A file replaced by a file keeps the body valid.
        meta.clear_dirty(ParameterLocation.BODY)
    return case
