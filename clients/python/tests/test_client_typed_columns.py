"""Typed columns from the Python emitter, checked through the daemon's own decoder.

In a batch of at least ``_wire.MIN_TYPED_ROWS`` rows, a column of plain floats is sent as msgpack
ext type 1 (little-endian float64), a column of plain ints within int64 as ext type 2 (int64),
and a column mixing ints and floats as ext type 1 when every int is exact as a float64; every
other column (booleans, strings, ints beyond int64, …) stays a msgpack array. Each test encodes
the same rows twice, with typed columns and with arrays only (the emitter as it was before typed
columns), decodes both with ``metricsd.protocol.decode`` and checks that the daemon gets exactly
the same events (values and types, in order) and the same rejects; then it checks the values
themselves and which columns went typed.
"""

from __future__ import annotations

import math
import struct
from collections import Counter
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from metricsd_client import Emitter, _wire

protocol = pytest.importorskip("metricsd.protocol")

NOW = 1_700_000_000.0
TS = 1_700_000_100.25
N = 20  # rows per batch: above the threshold
assert _wire.MIN_TYPED_ROWS <= N

Row = tuple[Any, ...]


def record(calls: Callable[[Emitter], None], source: str = "src") -> list[Row]:
    """The rows an emitter's methods append (no flusher thread, no socket)."""
    em = Emitter("tcp://127.0.0.1:9", source=source, batch_size=10**6, max_buffer=10**6)
    em._wake = lambda: None  # type: ignore[method-assign]
    try:
        calls(em)
        rows = em._take()
        assert em.dropped == 0
        return rows
    finally:
        em.close(timeout=0.1)


def encode(rows: list[Row], *, typed: bool = True, source: str = "src") -> tuple[list[bytes], int]:
    """The frames one flush sends for these rows, and the rows the encoder dropped.

    ``typed=False``: typed columns off, i.e. every column a msgpack array, as before.
    """
    with pytest.MonkeyPatch.context() as mp:
        if not typed:
            mp.setattr(_wire, "MIN_TYPED_ROWS", 10**9)
        packer = _wire.new_packer()
        packed, dropped = _wire.encode(rows, source, packer)
        frames = [_wire.frame(parts, None, packer) for _, parts in _wire.assemble(packed)]
    for f in frames:
        assert len(f) <= _wire.MAX_FRAME_BYTES
    return frames, dropped


def daemon(frames: list[bytes]) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """What the daemon's decoder makes of the frames: events, rejects by reason, truncations."""
    events: list[dict[str, Any]] = []
    rejected: Counter[str] = Counter()
    truncated = 0
    for f in frames:
        result = protocol.decode(f, NOW)
        events.extend(row for b in result.batches for row in b.rows())
        rejected.update(result.rejected)
        truncated += result.truncated
    return events, dict(rejected), truncated


def exact(events: list[dict[str, Any]]) -> list[list[tuple[str, str, str]]]:
    """Events compared exactly: types included (1 and 1.0 differ), NaN equal to NaN."""
    return [sorted((k, type(v).__name__, repr(v)) for k, v in e.items()) for e in events]


def column_forms(frames: list[bytes]) -> list[dict[str, Any]]:
    """Per batch, in wire order: field → the ext code of a typed column, or "array"."""
    out = []
    for f in frames:
        for batch in msgpack.unpackb(f, raw=False):
            if "cols" in batch:
                out.append(
                    {
                        k: c.code if isinstance(c, msgpack.ExtType) else "array"
                        for k, c in batch["cols"].items()
                    }
                )
    return out


def ext_payloads(frames: list[bytes], field: str) -> list[msgpack.ExtType]:
    return [
        c
        for f in frames
        for batch in msgpack.unpackb(f, raw=False)
        for k, c in batch.get("cols", {}).items()
        if k == field and isinstance(c, msgpack.ExtType)
    ]


def same_as_arrays(
    calls: Callable[[Emitter], None], dropped: int = 0
) -> tuple[list[bytes], list[dict[str, Any]], dict[str, int]]:
    """Encode both ways; assert the daemon sees the same; return the typed frames' results."""
    rows = record(calls)
    typed_frames, typed_dropped = encode(rows)
    array_frames, array_dropped = encode(rows, typed=False)
    assert typed_dropped == array_dropped == dropped
    assert not any(
        isinstance(c, msgpack.ExtType)
        for f in array_frames
        for b in msgpack.unpackb(f, raw=False)
        for c in b.get("cols", {}).values()
    )
    events, rejected, truncated = daemon(typed_frames)
    want_events, want_rejected, want_truncated = daemon(array_frames)
    assert exact(events) == exact(want_events)
    assert rejected == want_rejected
    assert truncated == want_truncated
    return typed_frames, events, rejected


def present(value: Any) -> bool:
    """An optional field's value in a decoded row: absent reads as None or NaN."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def values(events: list[dict[str, Any]], field: str) -> list[Any]:
    return [e[field] for e in events]


def types(events: list[dict[str, Any]], field: str) -> set[type]:
    return {type(e[field]) for e in events}


# ------------------------------------------------------------------------------------ the forms


def test_float_columns_are_float64() -> None:
    durations = [10.5 + i * 0.25 for i in range(N)]
    stamps = [TS + i / 8 for i in range(N)]

    def calls(em: Emitter) -> None:
        for d, t in zip(durations, stamps, strict=True):
            em.request(d, endpoint="/a", model="m", ts=t)

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [{"ts": 1, "duration_ms": 1}]
    assert rejected == {}
    assert values(events, "duration_ms") == durations
    assert values(events, "ts") == stamps
    (ext,) = ext_payloads(frames, "duration_ms")
    assert ext.data == struct.pack(f"<{N}d", *durations)
    # labels and equal values stay in const, as before
    assert {e["endpoint"] for e in events} == {"/a"} and {e["status"] for e in events} == {200}


def test_int_columns_are_int64() -> None:
    inputs = [i * 37 for i in range(N)]
    outputs = [(i * 7919) % 1000 + 1 for i in range(N)]
    big = [2**62 + i for i in range(N)]  # large, still int64

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.request(12.0, input_tokens=inputs[i], output_tokens=outputs[i], ts=1_700_000_000 + i)
        for i in range(N):
            em.stream_token("s", n=big[i], ts=TS)

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [
        {"ts": 2, "input_tokens": 2, "output_tokens": 2},  # int timestamps: int64 too
        {"ts": 1, "n": 2},  # ts equal in every row is still a column
    ]
    assert rejected == {}
    requests = [e for e in events if "duration_ms" in e]
    tokens = [e for e in events if "n" in e and "duration_ms" not in e]
    assert values(requests, "input_tokens") == inputs
    assert values(requests, "output_tokens") == outputs
    assert types(requests, "input_tokens") == {int}
    assert values(requests, "ts") == [float(1_700_000_000 + i) for i in range(N)]
    assert types(requests, "ts") == {float}
    assert values(tokens, "n") == big
    (ext,) = ext_payloads(frames, "input_tokens")
    assert ext.data == struct.pack(f"<{N}q", *inputs)


def test_negative_values() -> None:
    floats = [-1.5 * i - 0.25 for i in range(N)]
    ints = [-(i * 1000) - 1 for i in range(N)]
    tokens = [5 - i for i in range(N)]  # 5 … -14: a count is ≥ 0

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.metric("f", "gauge", floats[i], ts=TS + i)
        for i in range(N):
            em.metric("i", "gauge", ints[i], ts=TS + i)
        for i in range(N):
            em.request(1.0 + i, input_tokens=tokens[i], ts=TS + i)
        em.metric("edge", "gauge", -(2**63), ts=TS)  # int64's minimum: typed (2 rows)
        em.metric("edge", "gauge", 2**63 - 1, ts=TS + 1)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_wire, "MIN_TYPED_ROWS", 2)
        frames, events, rejected = same_as_arrays(calls)
    # metric batches (by name) first, then the request batch: types in order of first call
    assert [f.get("value") for f in column_forms(frames)] == [1, 2, 2, None]
    assert column_forms(frames)[3]["input_tokens"] == 2
    assert rejected == {"bad_value": 14}
    by_name: dict[str, list[Any]] = {}
    for e in events:
        if "name" in e:
            by_name.setdefault(e["name"], []).append(e["value"])
    assert by_name["f"] == floats
    assert by_name["i"] == [float(v) for v in ints]
    assert by_name["edge"] == [float(-(2**63)), float(2**63 - 1)]
    requests = [e for e in events if "duration_ms" in e]
    assert values(requests, "input_tokens") == [5, 4, 3, 2, 1, 0]
    assert values(requests, "duration_ms") == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_bool_columns_stay_arrays() -> None:
    """A column of booleans is sent as an array, never as a uint8 typed column.

    Boolean fields (streaming, batch, hit) are labels, so they are never columns: a boolean
    column is a boolean in a numeric or string field, which the daemon rejects from an array but
    would read from a uint8 column as 0 and 1. The array keeps the daemon's answer.
    """
    flags = [bool(i % 2) for i in range(N)]

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.request(1.0 + i, input_tokens=flags[i], request_id=flags[i], ts=TS + i)  # type: ignore[arg-type]

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [
        {"ts": 1, "duration_ms": 1, "input_tokens": "array", "request_id": "array"}
    ]
    assert events == [] and rejected == {"bad_value": N}
    # The reason: the same booleans as a uint8 typed column would be accepted as 0 and 1.
    batch = msgpack.unpackb(frames[0], raw=False)[0]
    batch["cols"]["input_tokens"] = msgpack.ExtType(4, bytes(flags))
    del batch["cols"]["request_id"]
    as_uint8 = protocol.decode(msgpack.packb([batch], use_bin_type=True), NOW)
    assert as_uint8.accepted == N


def test_mixed_ints_and_floats() -> None:
    exact_mix = [i if i % 2 else i + 0.5 for i in range(N)]
    exact_mix[3] = 2**53  # exact as a float64: still typed
    exact_mix[5] = -(2**53)
    inexact_mix = list(exact_mix)
    inexact_mix[7] = 2**53 + 1  # not exact as a float64: an array

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.metric("exact", "gauge", exact_mix[i], ts=TS + i)
        for i in range(N):
            em.metric("inexact", "gauge", inexact_mix[i], ts=TS + i)
        for i in range(N):  # a count field: integral floats are accepted, fractions rejected
            em.request(1.0, input_tokens=exact_mix[i], ts=TS + i)

    frames, events, rejected = same_as_arrays(calls)
    assert [f.get("value") for f in column_forms(frames)] == [1, "array", None]
    assert column_forms(frames)[2]["input_tokens"] == 1
    assert rejected == {"bad_value": N // 2 + 1}  # input_tokens: the x.5 values, and -2**53
    gauges: dict[str, list[Any]] = {}
    for e in events:
        if "name" in e:
            gauges.setdefault(e["name"], []).append(e["value"])
    assert gauges["exact"] == [float(v) for v in exact_mix]
    assert gauges["inexact"] == [float(v) for v in inexact_mix]  # the daemon's float64
    tokens = [e["input_tokens"] for e in events if "duration_ms" in e]
    assert tokens == [v for v in exact_mix if type(v) is int and v >= 0]
    (ext,) = ext_payloads(frames, "value")
    assert ext.data == struct.pack(f"<{N}d", *exact_mix)


def test_ints_beyond_int64_stay_arrays() -> None:
    huge = [2**63 + i for i in range(N)]  # uint64: msgpack can pack them, int64 cannot hold them

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.metric("big", "gauge", huge[i], ts=TS + i)  # a float field: accepted
        for i in range(N):
            em.request(1.0 + i, output_tokens=huge[i], ts=TS + i)  # a count: bad_value
        for i in range(N):  # below int64: msgpack cannot pack it, the emitter drops that row
            em.metric("low", "gauge", -(2**63) - 1 if i == 4 else -i, ts=TS + i)

    frames, events, rejected = same_as_arrays(calls, dropped=1)
    forms = column_forms(frames)
    assert forms[0] == {"ts": 1, "value": "array"}  # "big"; then "low", halved around the bad row
    assert forms[-1] == {"ts": 1, "duration_ms": 1, "output_tokens": "array"}
    assert rejected == {"bad_value": N}
    big = [e["value"] for e in events if e.get("name") == "big"]
    assert big == [float(v) for v in huge]
    low = [e["value"] for e in events if e.get("name") == "low"]
    assert low == [float(-i) for i in range(N) if i != 4]


def test_huge_and_non_finite_floats() -> None:
    durations = [1.0 + i for i in range(N)]
    durations[2] = 1e100  # the daemon's largest accepted magnitude
    durations[3] = 1e300
    durations[4] = math.inf
    durations[5] = math.nan
    durations[6] = 1.7976931348623157e308
    gauges = [float(i) for i in range(N)]
    gauges[0] = math.nan
    gauges[1] = -math.inf
    gauges[2] = -1e100

    def calls(em: Emitter) -> None:
        for i in range(N):
            em.request(durations[i], ts=TS + i)
        for i in range(N):
            em.metric("g", "gauge", gauges[i], ts=TS + i)
        for i in range(N):  # NaN as a timestamp: rejected too
            em.queue(i, ts=math.nan if i == 0 else TS + i)

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [
        {"ts": 1, "duration_ms": 1},
        {"ts": 1, "value": 1},
        {"ts": 1, "depth": 2},
    ]
    assert rejected == {"bad_value": 4 + 2 + 1}
    got = [e["duration_ms"] for e in events if "duration_ms" in e]
    assert got == [d for i, d in enumerate(durations) if i not in (3, 4, 5, 6)]
    got = [e["value"] for e in events if "value" in e]
    assert got == gauges[2:]
    assert [e["depth"] for e in events if "depth" in e] == list(range(1, N))
    (ext,) = ext_payloads(frames, "duration_ms")
    assert ext.data == struct.pack(f"<{N}d", *durations)  # NaN and inf sent as they are


def test_a_column_typed_in_one_batch_and_not_in_another() -> None:
    def calls(em: Emitter) -> None:
        for i in range(N):
            em.request(1.0 + i, model="a", input_tokens=100 + i, ts=TS + i)
        for i in range(N):  # one string among the ints: an array (that row is rejected)
            em.request(1.0 + i, model="b", input_tokens="7" if i == 9 else 100 + i, ts=TS + i)  # type: ignore[arg-type]
        for i in range(3):  # a small batch: arrays
            em.request(1.0 + i, model="c", input_tokens=100 + i, ts=TS + i)

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [
        {"ts": 1, "duration_ms": 1, "input_tokens": 2},
        {"ts": 1, "duration_ms": 1, "input_tokens": "array"},
        {"ts": "array", "duration_ms": "array", "input_tokens": "array"},
    ]
    assert rejected == {"bad_value": 1}
    by_model: dict[str, list[int]] = {}
    for e in events:
        by_model.setdefault(e["model"], []).append(e["input_tokens"])
    assert by_model == {
        "a": [100 + i for i in range(N)],
        "b": [100 + i for i in range(N) if i != 9],
        "c": [100, 101, 102],
    }


def test_optional_field_split_types_each_part() -> None:
    """A field set in some rows only splits the batch; each part is typed on its own."""

    def calls(em: Emitter) -> None:
        for i in range(2 * N):
            em.request(1.0 + i, ttft_ms=0.5 * i if i % 2 else None, ts=TS + i)

    frames, events, rejected = same_as_arrays(calls)
    assert column_forms(frames) == [
        {"ts": 1, "duration_ms": 1},
        {"ts": 1, "duration_ms": 1, "ttft_ms": 1},
    ]
    assert rejected == {}
    assert sorted(e["duration_ms"] for e in events) == [1.0 + i for i in range(2 * N)]
    with_ttft = [(e["duration_ms"], e["ttft_ms"]) for e in events if present(e["ttft_ms"])]
    assert with_ttft == [(1.0 + i, 0.5 * i) for i in range(1, 2 * N, 2)]


# ------------------------------------------------------------------------------- threshold, bytes


def test_small_batches_stay_arrays() -> None:
    k = _wire.MIN_TYPED_ROWS

    def rows(n: int) -> list[Row]:
        return record(
            lambda em: [em.request(float(i), input_tokens=i, ts=TS + i) for i in range(n)]
        )

    small, _ = encode(rows(k - 1))
    large, _ = encode(rows(k))
    assert column_forms(small) == [{"ts": "array", "duration_ms": "array", "input_tokens": "array"}]
    assert column_forms(large) == [{"ts": 1, "duration_ms": 1, "input_tokens": 2}]


def test_big_endian_hosts_swap_to_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a big-endian host the array's bytes are swapped (simulated here on any host)."""
    durations = [1.0 + i / 3 for i in range(N)]
    rows = record(lambda em: [em.request(durations[i], input_tokens=i, ts=TS) for i in range(N)])
    monkeypatch.setattr(_wire, "_BIG_ENDIAN", not _wire._BIG_ENDIAN)
    frames, _ = encode(rows)
    swapped = ">" if struct.pack("=d", 1.0) == struct.pack("<d", 1.0) else "<"
    (ext,) = ext_payloads(frames, "duration_ms")
    assert ext.data == struct.pack(f"{swapped}{N}d", *durations)
    (ext,) = ext_payloads(frames, "input_tokens")
    assert ext.data == struct.pack(f"{swapped}{N}q", *range(N))


def test_large_typed_batches_are_split_under_the_frame_limit() -> None:
    """9 999 rows with ten numeric columns and two string columns exceed a frame either way: the
    batch is halved until it fits, and every event arrives."""
    n = _wire.MAX_BATCH_ROWS

    def calls(em: Emitter) -> None:
        for i in range(n):
            em.request(
                1.0 + i, input_tokens=i, output_tokens=2 * i, cached_tokens=i % 7,
                cache_write_tokens=i % 5, reasoning_tokens=i % 3, ttft_ms=0.5 + i,
                queue_ms=0.25 + i, cost_usd=i / 1000, user_id=f"user-{i:08d}",
                request_id=f"request-{i:012d}", ts=TS + i / 1000,
            )  # fmt: skip

    frames, events, rejected = same_as_arrays(calls)
    assert len(frames) >= 2
    assert all(len(f) <= _wire.MAX_FRAME_BYTES for f in frames)
    assert rejected == {}
    assert [e["input_tokens"] for e in events] == list(range(n))
    assert all(set(forms.values()) == {1, 2, "array"} for forms in column_forms(frames))
