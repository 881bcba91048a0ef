"""Float32Matrix <-> numpy: packed little-endian float32 bytes with an explicit shape."""

from __future__ import annotations

import math

import numpy as np

from mmserve.v1 import common_pb2
from services.common.errors import InvalidInput

_LE_FLOAT32 = np.dtype("<f4")


def to_matrix(array: np.ndarray) -> common_pb2.Float32Matrix:
    data = np.ascontiguousarray(array, dtype=_LE_FLOAT32)
    return common_pb2.Float32Matrix(shape=data.shape, data=data.tobytes())


def from_matrix(matrix: common_pb2.Float32Matrix) -> np.ndarray:
    """Decodes a matrix, refusing data whose length does not match its shape."""
    shape = tuple(int(d) for d in matrix.shape)
    expected = math.prod(shape) * _LE_FLOAT32.itemsize if shape else 0
    if any(d < 0 for d in shape) or len(matrix.data) != expected:
        raise InvalidInput(f"matrix of shape {shape} needs {expected} bytes, got {len(matrix.data)}")
    return np.frombuffer(matrix.data, dtype=_LE_FLOAT32).reshape(shape)
