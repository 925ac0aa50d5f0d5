"""Dictionary columns (msgpack ext type 5): label columns as distinct values plus codes."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd.batch import Cat
from metricsd.protocol import decode

NOW = time.time()


def dict_col(values: list[Any], codes: list[int], dtype: str | None = None) -> msgpack.ExtType:
    if dtype is None:
        dtype = "u1" if len(values) <= 256 else "<u2"
    return msgpack.ExtType(5, msgpack.packb([values, np.array(codes, dtype=dtype).tobytes()]))


def batch(cols: dict[str, Any], **const: Any) -> bytes:
    return msgpack.packb({"type": "request", "cols": cols, "const": const})


def test_a_dictionary_column_reads_as_its_rows() -> None:
    frame = batch(
        {
            "model": dict_col(["a", "b"], [0, 1, 1, 0]),
            "status": dict_col([200, 503], [0, 0, 1, 0]),
            "finish_reason": dict_col(["stop", None], [0, 0, 1, 0]),
            "duration_ms": [1.0, 2.0, 3.0, 4.0],
        },
        endpoint="/x",
    )
    result = decode(frame, NOW)
    assert not result.rejected
    (b,) = result.batches
    assert b.n == 4
    assert isinstance(b.cols["model"], Cat) and b.cols["model"].tolist() == ["a", "b", "b", "a"]
    # A number field given as a dictionary column: the numbers, as an array.
    assert b.cols["status"].tolist() == [200, 200, 503, 200]
    assert b.cols["finish_reason"].tolist() == ["stop", "stop", None, "stop"]


def test_two_byte_codes_and_the_same_events_as_arrays() -> None:
    models = [f"m-{i}" for i in range(300)]
    codes = [i % 300 for i in range(600)]
    frame = batch({"model": dict_col(models, codes), "duration_ms": [5.0] * 600})
    plain = batch({"model": [models[c] for c in codes], "duration_ms": [5.0] * 600})
    a, b = decode(frame, NOW).batches[0], decode(plain, NOW).batches[0]
    assert a.cols["model"].tolist() == b.cols["model"].tolist() == [models[c] for c in codes]


def test_values_are_checked_once_each_like_any_label() -> None:
    long = "x" * 1000
    frame = batch({"model": dict_col([long, 7, "ok"], [0, 0, 1, 2]), "duration_ms": [1.0] * 4})
    result = decode(frame, NOW)
    assert result.rejected == {"bad_value": 1}  # the number where a string belongs
    assert result.truncated == 2  # counted per row, as for an array column
    (b,) = result.batches
    assert b.cols["model"].tolist() == ["x" * 256, "x" * 256, "ok"]


def test_a_nil_required_label_is_missing() -> None:
    frame = msgpack.packb(
        {
            "type": "stream.token",
            "cols": {"stream_id": dict_col(["s1", None], [0, 1, 0]), "n": [1, 1, 1]},
        }
    )
    result = decode(frame, NOW)
    assert sum(result.rejected.values()) == 1
    assert result.batches[0].n == 2


@pytest.mark.parametrize(
    "ext",
    [
        msgpack.ExtType(5, b"\xc1"),  # not msgpack
        msgpack.ExtType(5, msgpack.packb(["a", b"\x00\x00"])),  # values not an array
        msgpack.ExtType(5, msgpack.packb([[], b""])),  # no values
        msgpack.ExtType(5, msgpack.packb([["a"], "\x00\x00"])),  # codes not bytes
        msgpack.ExtType(5, msgpack.packb([["a"], b"\x00\x01"])),  # a code past the values
        msgpack.ExtType(5, msgpack.packb([["a", "b", "c"], b"\x00\x01\x05"])),
        msgpack.ExtType(5, msgpack.packb([[str(i) for i in range(300)], b"\x00\x00\x00"])),
    ],
)
def test_a_malformed_dictionary_column_rejects_its_batch_whole(ext: msgpack.ExtType) -> None:
    frame = batch({"model": ext, "duration_ms": [1.0, 2.0]})
    result = decode(frame, NOW)
    assert result.rejected == {"shape": 2} and result.batches == []
