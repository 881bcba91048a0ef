"""Response encoding on the hot path: JSON bodies and float32 matrices, each built once.

Embeddings dominate response time: a 384-d vector as JSON is most of a response's bytes. orjson
writes a float32 array natively (no per-number Python objects), each number in the shortest
form that reads back as the same float32 (0.1, not 0.10000000149011612), and the whole body in
one call, several times faster than the standard library's encoder.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
from flask import Response

_LE_FLOAT32 = np.dtype("<f4")
# numpy arrays and scalars as JSON numbers; keys that are not strings (never expected) as text.
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, option=_JSON_OPTIONS), status=status, headers=headers, mimetype="application/json"
    )


def short_float(value: float) -> np.float32:
    """A float32 score, written in the shortest form that identifies it (as embeddings are)."""
    return np.float32(value)


def float_rows(matrix: np.ndarray) -> np.ndarray:
    """A float32 matrix to answer as rows of JSON numbers (json_response writes it natively).
    NaN or infinity is an error, as in any JSON: never a silent ``null``."""
    values = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("non-finite values in a response")
    return values


def base64_rows(matrix: np.ndarray) -> list[str]:
    """Each row as base64 of little-endian float32 (what OpenAI's ``encoding_format=base64`` returns)."""
    data = np.ascontiguousarray(matrix, dtype=_LE_FLOAT32)
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in data]


def vector_rows(matrix: np.ndarray, encoding_format: str) -> list:
    """Rows as the API returns them: JSON floats, or base64 strings when asked for."""
    return base64_rows(matrix) if encoding_format == "base64" else float_rows(matrix)
