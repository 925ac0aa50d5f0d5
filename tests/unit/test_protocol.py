"""protocol.decode: every frame shape, every reject reason, boundary sizes, key hashing."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd.protocol import REASONS, Limits, decode, hash_key

NOW = 1_700_000_000.0


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj)


DEFAULT_LIMITS = Limits()


def rows(
    frame: Any, limits: Limits = DEFAULT_LIMITS
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    result = decode(pack(frame), NOW, limits)
    out = [r | {"type": b.type} for b in result.batches for r in b.rows()]
    return out, dict(result.rejected)


def clean(row: dict[str, Any], *keep: str) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if k in keep}


# --- shapes -----------------------------------------------------------------------------------


def test_single_event_map() -> None:
    out, rejected = rows({"type": "request", "duration_ms": 12.5, "model": "gpt-4o"})
    assert rejected == {}
    assert len(out) == 1
    row = out[0]
    assert row["duration_ms"] == 12.5
    assert row["model"] == "gpt-4o"
    assert row["status"] == 200  # default
    assert row["input_tokens"] == 0
    assert row["ts"] == NOW  # arrival time when the emitter sends none
    assert row["source"] == "default"
    assert row["ttft_ms"] is None  # optional number without default: absent


def test_array_of_events_mixed_types() -> None:
    frame = [
        {"type": "request", "duration_ms": 1, "endpoint": "/a"},
        {"type": "error", "error_type": "timeout"},
        {"type": "request", "duration_ms": 2, "endpoint": "/b", "status": 500},
    ]
    out, rejected = rows(frame)
    assert rejected == {}
    requests = [r for r in out if r["type"] == "request"]
    assert [(r["endpoint"], r["duration_ms"], r["status"]) for r in requests] == [
        ("/a", 1.0, 200),
        ("/b", 2.0, 500),
    ]
    (err,) = [r for r in out if r["type"] == "error"]
    assert err["status"] == 500 and err["error_type"] == "timeout"


def test_columnar_batch_rows_equal_spec_expansion() -> None:
    frame = {
        "type": "request",
        "const": {"model": "m", "endpoint": "/e"},
        "cols": {
            "duration_ms": [1.5, 2.5, 3.5],
            "output_tokens": [1, 2, 3],
            "ts": [NOW + 10.0, NOW + 11.0, NOW + 12.0],
        },
    }
    result = decode(pack(frame), NOW)
    (batch,) = result.batches
    assert batch.n == 3
    assert batch.const["model"] == "m"
    assert batch.cols["duration_ms"].dtype == np.float64
    assert batch.cols["output_tokens"].dtype == np.int64
    assert batch.cols["duration_ms"].tolist() == [1.5, 2.5, 3.5]
    assert batch.cols["ts"].tolist() == [NOW + 10.0, NOW + 11.0, NOW + 12.0]


def test_array_of_columnar_batches_and_plain_events() -> None:
    frame = [
        {"type": "request", "const": {"model": "a"}, "cols": {"duration_ms": [1, 2]}},
        {"type": "request", "const": {"model": "b"}, "cols": {"duration_ms": [3]}},
        {"type": "queue", "depth": 4},
    ]
    result = decode(pack(frame), NOW)
    assert result.rejected == {}
    # The batches of one type are merged (one per type and decode), labels kept per row.
    assert sorted((b.type, b.n) for b in result.batches) == [("queue", 1), ("request", 3)]
    (request,) = [b for b in result.batches if b.type == "request"]
    assert request.values("model") == ["a", "a", "b"]
    assert request.values("duration_ms") == [1.0, 2.0, 3.0]
    assert result.accepted == 4


def test_string_column_with_one_value_is_hoisted_to_const() -> None:
    frame = {"type": "request", "cols": {"duration_ms": [1, 2], "model": ["x", "x"]}}
    (batch,) = decode(pack(frame), NOW).batches
    assert batch.const["model"] == "x" and "model" not in batch.cols


def test_unknown_fields_are_ignored() -> None:
    out, rejected = rows({"type": "queue", "depth": 1, "future_field": {"a": [1, 2]}})
    assert rejected == {} and "future_field" not in out[0]


# --- reject reasons ---------------------------------------------------------------------------


def test_decode_reason_for_garbage() -> None:
    result = decode(b"\xc1\xff\x00garbage", NOW)
    assert result.rejected == {"decode": 1} and result.batches == []


def test_decode_reason_for_trailing_bytes() -> None:
    result = decode(pack({"type": "queue", "depth": 1}) + b"\x01", NOW)
    assert result.rejected == {"decode": 1}


def test_version_frame_rejected_whole() -> None:
    frame = {"v": 2, "type": "request", "cols": {"duration_ms": [1, 2, 3]}}
    assert rows(frame)[1] == {"version": 3}


def test_version_per_event_in_array() -> None:
    out, rejected = rows(
        [{"type": "queue", "depth": 1, "v": 2}, {"type": "queue", "depth": 2, "v": 1}]
    )
    assert rejected == {"version": 1} and [r["depth"] for r in out] == [2]


def test_shape_reasons() -> None:
    assert rows(42)[1] == {"shape": 1}
    assert rows("text")[1] == {"shape": 1}
    assert rows([1, {"type": "queue", "depth": 1}])[1] == {"shape": 1}
    assert rows([{"depth": 1}])[1] == {"shape": 1}  # a map without a type is not an event
    unequal = {"type": "request", "cols": {"duration_ms": [1, 2, 3], "status": [200]}}
    assert rows(unequal)[1] == {"shape": 3}
    assert rows({"type": "request", "cols": [1, 2]})[1] == {"shape": 1}
    assert rows({"type": "request", "cols": {"duration_ms": 5}})[1] == {"shape": 1}


def test_unknown_type() -> None:
    assert rows({"type": "nope"})[1] == {"unknown_type": 1}
    assert rows({"type": 7})[1] == {"unknown_type": 1}
    assert rows({"type": "nope", "cols": {"a": [1, 2]}})[1] == {"unknown_type": 2}


def test_missing_field_per_event() -> None:
    out, rejected = rows([{"type": "request"}, {"type": "request", "duration_ms": 3}])
    assert rejected == {"missing_field": 1} and len(out) == 1
    assert rows({"type": "request", "cols": {"status": [200, 500]}})[1] == {"missing_field": 2}


@pytest.mark.parametrize(
    "field,value",
    [
        ("duration_ms", -1.0),
        ("duration_ms", "fast"),
        ("duration_ms", float("nan")),
        ("duration_ms", float("inf")),
        ("duration_ms", None),
        ("duration_ms", True),
        ("input_tokens", -5),
        ("input_tokens", 1.5),
        ("input_tokens", 2**63),
        ("status", "200"),
        ("streaming", 1),
        ("model", 5),
        ("ttft_ms", -0.1),
    ],
)
def test_bad_value_rejects_only_that_event(field: str, value: Any) -> None:
    good = {"type": "request", "duration_ms": 1.0}
    bad = {"type": "request", "duration_ms": 1.0, field: value}
    out, rejected = rows([good, bad, good])
    assert rejected == {"bad_value": 1}
    assert len(out) == 2


def test_bad_value_in_column_keeps_good_rows() -> None:
    frame = {
        "type": "request",
        "const": {"model": "m"},
        "cols": {"duration_ms": [1.0, -2.0, "x", None, 5.0, float("nan")]},
    }
    out, rejected = rows(frame)
    assert rejected == {"bad_value": 4}
    assert [r["duration_ms"] for r in out] == [1.0, 5.0]


def test_boolean_in_numeric_column_reads_as_number() -> None:
    """Documented: columnar numeric columns go through numpy, so True reads as 1."""
    out, rejected = rows({"type": "request", "cols": {"duration_ms": [2.0, True]}})
    assert rejected == {} and [r["duration_ms"] for r in out] == [2.0, 1.0]


def test_bad_constant_rejects_the_batch() -> None:
    frame = {"type": "request", "const": {"model": 5}, "cols": {"duration_ms": [1, 2]}}
    assert rows(frame)[1] == {"bad_value": 2}


def test_enum_and_metric_validation() -> None:
    assert rows({"type": "stream.end", "stream_id": "s", "status": "exploded"})[1] == {
        "bad_value": 1
    }
    ok = {
        "type": "metric",
        "name": "llm_circuit_breaker_open",
        "kind": "gauge",
        "value": 1,
        "labels": {"provider": "openai"},
    }
    out, rejected = rows(ok)
    assert rejected == {} and out[0]["labels"] == {"provider": "openai"}
    assert rows({**ok, "name": "9bad"})[1] == {"bad_value": 1}
    assert rows({**ok, "kind": "summary"})[1] == {"bad_value": 1}
    nine = {f"l{i}": "v" for i in range(9)}
    assert rows({**ok, "labels": nine})[1] == {"bad_value": 1}
    assert rows({**ok, "labels": {"a": 1}})[1] == {"bad_value": 1}


def test_too_large_frame() -> None:
    limits = Limits(max_frame_bytes=100)
    big = pack({"type": "request", "duration_ms": 1, "model": "x" * 200})
    assert decode(big, NOW, limits).rejected == {"too_large": 1}
    exact = pack({"type": "queue", "depth": 1})
    assert decode(exact, NOW, Limits(max_frame_bytes=len(exact))).rejected == {}


def test_too_many_events_boundary() -> None:
    limits = Limits(max_events=10)
    at_limit = {"type": "request", "cols": {"duration_ms": [1] * 10}}
    assert rows(at_limit, limits)[1] == {}
    over = {"type": "request", "cols": {"duration_ms": [1] * 11}}
    assert rows(over, limits)[1] == {"too_many": 11}
    events = [{"type": "queue", "depth": 1}] * 11
    assert rows(events, limits)[1] == {"too_many": 11}


def test_string_truncation_is_counted_not_rejected() -> None:
    limits = Limits(max_string=8, max_error_message=12)
    frame = {"type": "request", "duration_ms": 1, "model": "m" * 20, "error_message": "e" * 30}
    result = decode(pack(frame), NOW, limits)
    (row,) = result.batches[0].rows()
    assert row["model"] == "m" * 8 and row["error_message"] == "e" * 12
    assert result.truncated == 2 and result.rejected == {}


def test_string_boundary_length_not_truncated() -> None:
    result = decode(pack({"type": "request", "duration_ms": 1, "model": "m" * 256}), NOW)
    assert result.truncated == 0 and result.batches[0].const["model"] == "m" * 256


def test_reasons_are_the_spec_list() -> None:
    assert REASONS == (
        "decode",
        "version",
        "shape",
        "unknown_type",
        "missing_field",
        "bad_value",
        "too_large",
        "too_many",
    )


# --- keys -------------------------------------------------------------------------------------


def test_api_key_hashed_and_never_kept() -> None:
    expected = "k_" + hashlib.sha256(b"sk-secret").hexdigest()[:12]
    assert hash_key("sk-secret") == expected
    out, _ = rows({"type": "request", "duration_ms": 1, "api_key": "sk-secret"})
    assert out[0]["key_id"] == expected and "api_key" not in out[0]
    col = {"type": "request", "cols": {"duration_ms": [1, 2], "api_key": ["sk-a", "sk-b"]}}
    result = decode(pack(col), NOW)
    (batch,) = result.batches
    assert "api_key" not in batch.cols and "api_key" not in batch.const
    assert batch.values("key_id") == [hash_key("sk-a"), hash_key("sk-b")]
    assert "sk-a" not in repr(batch)


def test_key_id_passes_through() -> None:
    out, _ = rows({"type": "usage", "key_id": "k_abc", "prompt_tokens": 3})
    assert out[0]["key_id"] == "k_abc"


# --- every event type decodes with its fields -------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "request",
            "duration_ms": 5,
            "streaming": True,
            "ttft_ms": 1.5,
            "queue_ms": 2,
            "finish_reason": "stop",
            "provider": "openai",
            "batch": True,
            "cost_usd": 0.01,
        },
        {"type": "error", "error_type": "rate_limit", "status": 429, "error_message": "slow down"},
        {
            "type": "stream.start",
            "stream_id": "s1",
            "prompt_tokens": 10,
            "temperature": 0.7,
            "max_tokens": 100,
            "client_id": "c",
        },
        {"type": "stream.token", "stream_id": "s1", "n": 2, "bytes": 12, "text": "hi"},
        {"type": "stream.end", "stream_id": "s1", "status": "failed", "error_type": "x"},
        {"type": "stream.backpressure", "stream_id": "s1", "buffer_size": 4096},
        {"type": "cache", "hit": True, "total_tokens": 100, "matched_tokens": 80},
        {"type": "queue", "depth": 3, "queue": "gpu", "capacity": 8},
        {
            "type": "usage",
            "prompt_tokens": 1,
            "completion_tokens": 2,
            "images": {"size": "1024x1024", "quality": "hd", "n": 2},
            "characters": 10,
        },
        {"type": "client", "dropped": 7, "source": "worker-1"},
        {"type": "metric", "name": "x_y", "kind": "counter", "value": 2.5},
    ],
)
def test_every_type(event: dict[str, Any]) -> None:
    out, rejected = rows(event)
    assert rejected == {}
    (row,) = out
    for key, value in event.items():
        assert row[key] == value, key


# --- typed columns ----------------------------------------------------------------------------


def typed(code: int, values: list[Any], dtype: str) -> msgpack.ExtType:
    return msgpack.ExtType(code, np.asarray(values, dtype=dtype).tobytes())


def test_typed_columns_decode_like_arrays() -> None:
    plain = {
        "type": "request",
        "const": {"model": "m"},
        "cols": {
            "duration_ms": [1.5, 2.5, 0.0],
            "input_tokens": [1, 2, 3],
            "output_tokens": [7, 8, 9],
            "streaming": [True, False, True],
        },
    }
    fast = {
        "type": "request",
        "const": {"model": "m"},
        "cols": {
            "duration_ms": typed(1, [1.5, 2.5, 0.0], "<f8"),
            "input_tokens": typed(2, [1, 2, 3], "<i8"),
            "output_tokens": typed(3, [7, 8, 9], "<i4"),
            "streaming": typed(4, [1, 0, 1], "u1"),
        },
    }
    a, ra = rows(plain)
    b, rb = rows(fast)
    assert ra == rb == {}
    assert a == b


def test_typed_column_bad_values_rejected_per_row() -> None:
    frame = {
        "type": "request",
        "cols": {
            "duration_ms": typed(1, [1.0, -1.0, float("nan"), 4.0], "<f8"),
            "streaming": typed(4, [0, 2, 1, 1], "u1"),
        },
    }
    out, rejected = rows(frame)
    assert rejected == {"bad_value": 2}  # row 1 (negative, and 2 is not a boolean), row 2 (NaN)
    assert [r["duration_ms"] for r in out] == [1.0, 4.0]


def test_typed_column_of_unknown_code_or_length_is_a_shape_error() -> None:
    bad_length = {"type": "request", "cols": {"duration_ms": msgpack.ExtType(1, b"\x00" * 7)}}
    assert rows(bad_length)[1] == {"shape": 1}
    unknown = {"type": "request", "cols": {"duration_ms": msgpack.ExtType(42, b"\x00" * 8)}}
    assert rows(unknown)[1] == {"shape": 1}
    text = {"type": "request", "cols": {"duration_ms": [1.0], "model": typed(2, [5], "<i8")}}
    assert rows(text)[1] == {"bad_value": 1}


def test_nil_required_number_is_a_bad_value_alone_and_pooled() -> None:
    """Found by the live fuzz: an explicit nil for a required number was accepted when the
    event came alone and rejected when it was pooled with others."""
    bad = {"type": "client", "dropped": None}
    good = {"type": "client", "dropped": 3}
    assert rows(bad)[1] == {"bad_value": 1}
    assert rows({"type": "request", "duration_ms": None})[1] == {"bad_value": 1}
    out, rejected = rows([bad, good])
    assert rejected == {"bad_value": 1} and [r["dropped"] for r in out] == [3]
