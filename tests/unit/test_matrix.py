from __future__ import annotations

import numpy as np
import pytest

from mmserve.v1 import common_pb2
from services.common.errors import InvalidInput
from services.common.matrix import from_matrix, to_matrix


def test_round_trip_is_little_endian_float32() -> None:
    array = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    message = to_matrix(array)
    assert list(message.shape) == [3, 4]
    assert message.data == array.astype("<f4").tobytes()
    np.testing.assert_array_equal(from_matrix(message), array.astype(np.float32))


def test_length_mismatch_is_refused() -> None:
    with pytest.raises(InvalidInput, match="needs 24 bytes"):
        from_matrix(common_pb2.Float32Matrix(shape=[2, 3], data=b"\0" * 20))
