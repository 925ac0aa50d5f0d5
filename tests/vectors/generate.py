"""(Re)create the conformance vectors in this directory from the descriptions below.

Usage: ``python tests/vectors/generate.py [--check]`` (from the repository root, with the
project's virtualenv). ``--check`` writes nothing and exits 1 if a file would change.

Frames are packed with ``msgpack`` (Python), so the hex is reproducible; ``emitter`` cases are
packed by the Python emitter's own wire code (``metricsd_client._wire``) from the calls they list.
The expected ``events`` are written by hand (or, for ``emitter`` cases, derived from the calls
and the emitters' documented defaults), never by the daemon's decoder; this script only checks
them against the wire rule of SPEC §1.2 (``vectorlib.expand``). See README.md for the format.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vectorlib

from metricsd.schema import EVENT_TYPES

HERE = vectorlib.HERE
MiB = 1 << 20
TS = 1_700_000_100.25  # an emitter timestamp (exactly representable)

CASES: list[dict[str, Any]] = []

#: What an emitter method sends for an argument the caller leaves out (SPEC §1.3's defaults
#: where the emitter sends them explicitly; every other argument is not sent).
EMITTER_DEFAULTS: dict[str, dict[str, Any]] = {
    "request": {
        "status": 200,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    },
    "stream.token": {"n": 1},
    "stream.end": {"status": "completed"},
    "queue": {"queue": "default"},
}


def case(name: str, description: str, **fields: Any) -> None:
    CASES.append({"name": name, "description": description, **fields})


def nan(kind: str = "NaN") -> dict[str, str]:
    return {"$float": kind}


# ------------------------------------------------------------------------------ frame shapes

DOC_EVENT = {"type": "request", "duration_ms": 120.5, "model": "gpt-4o", "status": 200}
case(
    "shape_event",
    "SPEC §1.2 shape 1: one event, a map with a type (docs/protocol.md, first example).",
    frame=DOC_EVENT,
    events=[DOC_EVENT],
)
case(
    "shape_array",
    "SPEC §1.2 shape 2: an array of event maps of mixed types (docs/protocol.md, second example).",
    frame=[{"type": "queue", "depth": 3}, {"type": "error", "error_type": "timeout"}],
    events=[{"type": "queue", "depth": 3}, {"type": "error", "error_type": "timeout"}],
)
case(
    "shape_columnar",
    "SPEC §1.2 shape 3: a columnar batch; row i is {type, **const, **cols[i]} "
    "(docs/protocol.md, third example).",
    frame={
        "v": 1,
        "type": "request",
        "const": {"model": "gpt-4o"},
        "cols": {"duration_ms": [120.5, 80.0], "output_tokens": [12, 7]},
    },
    events=[
        {"type": "request", "model": "gpt-4o", "duration_ms": 120.5, "output_tokens": 12},
        {"type": "request", "model": "gpt-4o", "duration_ms": 80.0, "output_tokens": 7},
    ],
)
case(
    "shape_array_of_batches",
    "SPEC §1.2 shape 4: an array of columnar batches with a plain event mixed in "
    "(docs/protocol.md, fourth example).",
    frame=[
        {"type": "request", "const": {"model": "a"}, "cols": {"duration_ms": [1.0]}},
        {"type": "client", "dropped": 5},
    ],
    events=[
        {"type": "request", "model": "a", "duration_ms": 1.0},
        {"type": "client", "dropped": 5},
    ],
)
case(
    "shape_array_of_batches_mixed",
    "Shape 4 with several batches of different types, plain events between them, v on every "
    "element, and a column that varies beside constants.",
    frame=[
        {
            "v": 1,
            "type": "request",
            "cols": {"duration_ms": [10.0, 20.0, 30.0], "status": [200, 500, 200]},
            "const": {"endpoint": "/v1/chat/completions", "model": "gpt-4o", "source": "api"},
        },
        {"v": 1, "type": "queue", "depth": 7, "queue": "gpu"},
        {
            "v": 1,
            "type": "stream.token",
            "cols": {"ts": [TS, TS + 0.03125], "n": [1, 2]},
            "const": {"stream_id": "s-1"},
        },
        {"v": 1, "type": "cache", "hit": False, "total_tokens": 512},
    ],
    events=[
        *(
            {
                "type": "request",
                "endpoint": "/v1/chat/completions",
                "model": "gpt-4o",
                "source": "api",
                "duration_ms": d,
                "status": s,
            }
            for d, s in ((10.0, 200), (20.0, 500), (30.0, 200))
        ),
        {"type": "queue", "depth": 7, "queue": "gpu"},
        {"type": "stream.token", "stream_id": "s-1", "ts": TS, "n": 1},
        {"type": "stream.token", "stream_id": "s-1", "ts": TS + 0.03125, "n": 2},
        {"type": "cache", "hit": False, "total_tokens": 512},
    ],
)
case(
    "shape_empty_array",
    "An empty array: a valid frame holding no events (nothing accepted, nothing rejected).",
    frame=[],
    events=[],
)
case(
    "shape_columnar_empty",
    "A columnar batch whose columns are empty: N = 0 events, nothing rejected.",
    frame={"type": "request", "const": {"model": "m"}, "cols": {"duration_ms": []}},
    events=[],
)

# ------------------------------------------------------------------------------ event types

REQUEST_FULL = {
    "type": "request",
    "ts": TS,
    "endpoint": "/v1/chat/completions",
    "model": "gpt-4o-mini",
    "key_id": "k_0123456789ab",
    "user_id": "u-42",
    "request_id": "req-7",
    "source": "api",
    "status": 200,
    "duration_ms": 812.25,
    "input_tokens": 1200,
    "output_tokens": 340,
    "cached_tokens": 1024,
    "cache_write_tokens": 64,
    "reasoning_tokens": 128,
    "streaming": True,
    "ttft_ms": 95.5,
    "queue_ms": 3.0,
    "finish_reason": "stop",
    "provider": "openai",
    "error_type": "content_filter",
    "error_message": "partial output filtered",
    "batch": False,
    "cost_usd": 0.00123,
}
case(
    "type_request",
    "A request event with every field of SPEC §1.3 (common fields included).",
    frame=REQUEST_FULL,
    events=[REQUEST_FULL],
)
case(
    "type_request_api_key",
    "A raw api_key: accepted; the daemon keeps only key_id = 'k_' + sha256(api_key)[:12] "
    "(SPEC §1.6), here k_" + __import__("hashlib").sha256(b"sk-test-123").hexdigest()[:12] + ".",
    frame={"type": "request", "duration_ms": 5.0, "api_key": "sk-test-123"},
    events=[{"type": "request", "duration_ms": 5.0, "api_key": "sk-test-123"}],
)
ERROR_FULL = {
    "type": "error",
    "error_type": "rate_limit",
    "status": 429,
    "error_message": "Rate limit reached for gpt-4o",
    "provider": "openai",
    "endpoint": "/v1/chat/completions",
    "model": "gpt-4o",
    "request_id": "req-8",
}
case(
    "type_error",
    "An error event (a failed request with no latency).",
    frame=ERROR_FULL,
    events=[ERROR_FULL],
)
STREAM = [
    {
        "type": "stream.start",
        "stream_id": "st-1",
        "ts": TS,
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "prompt_tokens": 42,
        "temperature": 0.7,
        "max_tokens": 256,
        "client_id": "c-1",
        "provider": "openai",
    },
    {
        "type": "stream.token",
        "stream_id": "st-1",
        "ts": TS + 0.25,
        "n": 1,
        "bytes": 5,
        "text": "Hello",
    },
    {"type": "stream.token", "stream_id": "st-1", "ts": TS + 0.3125, "n": 2, "bytes": 7},
    {"type": "stream.backpressure", "stream_id": "st-1", "ts": TS + 0.375, "buffer_size": 64},
    {"type": "stream.token", "stream_id": "st-1", "ts": TS + 0.5, "n": 1},
    {
        "type": "stream.end",
        "stream_id": "st-1",
        "ts": TS + 0.625,
        "status": "completed",
        "finish_reason": "stop",
    },
]
case(
    "type_stream_lifecycle",
    "stream.start, stream.token (with n, bytes, text), stream.backpressure and stream.end of one "
    "stream, as an array of events.",
    frame=STREAM,
    events=STREAM,
)
STREAM_FAILED = {
    "type": "stream.end",
    "stream_id": "st-2",
    "status": "failed",
    "finish_reason": "error",
    "error_type": "upstream_reset",
    "error_message": "connection reset by peer",
}
case(
    "type_stream_end_failed",
    "A stream.end with status failed and an error.",
    frame=STREAM_FAILED,
    events=[STREAM_FAILED],
)
CACHE = {
    "type": "cache",
    "hit": True,
    "total_tokens": 2048,
    "matched_tokens": 1536,
    "model": "gpt-4o",
}
case("type_cache", "A prompt-cache lookup.", frame=CACHE, events=[CACHE])
QUEUE = {"type": "queue", "depth": 12, "queue": "gpu-a100", "capacity": 64}
case("type_queue", "A queue depth sample.", frame=QUEUE, events=[QUEUE])
USAGE = {
    "type": "usage",
    "model": "dall-e-3",
    "prompt_tokens": 10,
    "completion_tokens": 0,
    "cached_tokens": 0,
    "images": {"size": "1024x1024", "quality": "hd", "n": 2},
    "characters": 0,
    "batch": True,
    "cost_usd": 0.16,
}
case(
    "type_usage_images",
    "A usage event with images {size, quality, n}.",
    frame=USAGE,
    events=[USAGE],
)
CLIENT = {"type": "client", "dropped": 17, "source": "worker-3"}
case("type_client", "An emitter's drop report (SPEC §1.5).", frame=CLIENT, events=[CLIENT])
METRICS = [
    {
        "type": "metric",
        "name": "llm_circuit_breaker_open",
        "kind": "gauge",
        "value": 1.0,
        "labels": {"provider": "openai"},
    },
    {
        "type": "metric",
        "name": "retries",
        "kind": "counter",
        "value": 3.0,
        "labels": {"provider": "anthropic", "reason": "overloaded"},
    },
    {"type": "metric", "name": "app:embedding_ms", "kind": "histogram", "value": 12.5},
]
case(
    "type_metric",
    "Custom metrics of every kind, with and without labels.",
    frame=METRICS,
    events=METRICS,
)
EVERY = [
    {"type": "request", "duration_ms": 1.5},
    {"type": "error", "error_type": "timeout"},
    {"type": "stream.start", "stream_id": "e-1"},
    {"type": "stream.token", "stream_id": "e-1"},
    {"type": "stream.backpressure", "stream_id": "e-1"},
    {"type": "stream.end", "stream_id": "e-1"},
    {"type": "cache", "hit": False},
    {"type": "queue", "depth": 0},
    {"type": "usage"},
    {"type": "client", "dropped": 0},
    {"type": "metric", "name": "x", "kind": "counter", "value": 1.0},
]
case(
    "type_every_minimal",
    "One event of every type with only its required fields: every other field takes its "
    "default (defaults.json).",
    frame=EVERY,
    events=EVERY,
)
case(
    "unknown_fields_ignored",
    "Fields outside SPEC §1.3 are ignored (forward compatibility); the event is accepted.",
    frame={"type": "request", "duration_ms": 2.0, "future_field": "x", "nested": {"a": [1, 2]}},
    events=[{"type": "request", "duration_ms": 2.0}],
)
case(
    "version_1",
    "v = 1 on the frame and on a columnar batch's const: accepted.",
    frame={"v": 1, "type": "queue", "const": {"v": 1, "queue": "q"}, "cols": {"depth": [1, 2]}},
    events=[
        {"type": "queue", "queue": "q", "depth": 1},
        {"type": "queue", "queue": "q", "depth": 2},
    ],
)
case(
    "string_truncated",
    "A string over 256 characters is cut to 256 and counted (truncated), not rejected.",
    frame={"type": "request", "duration_ms": 1.0, "model": "m" * 300},
    events=[{"type": "request", "duration_ms": 1.0, "model": "m" * 256}],
    truncated=1,
)
case(
    "int_and_float_numbers",
    "Float fields accept integers and count fields accept integral floats (msgpack has both).",
    frame={"type": "request", "duration_ms": 100, "input_tokens": 12.0, "ts": 1700000000},
    events=[{"type": "request", "duration_ms": 100.0, "input_tokens": 12, "ts": 1700000000.0}],
)

# Boundaries at the daemon's default limits (SPEC §1.4), given as hex_parts.
_DUR_COL_10000 = b"\x82\xa4type\xa7request\xa4cols\x81\xabduration_ms\xdc" + struct.pack(
    ">H", 10000
)
case(
    "limit_10000_events",
    "Exactly 10 000 events (the default limit): a columnar batch of 10 000 durations, accepted.",
    hex_parts=[
        {"hex": _DUR_COL_10000.hex()},
        {"hex": msgpack.packb(1.0).hex(), "repeat": 10000},
    ],
    events=[{"type": "request", "duration_ms": 1.0, "$repeat": 10000}],
)
_PAD_PREFIX = b"\x83" + b"".join(
    msgpack.packb(x) for x in ("type", "request", "duration_ms", 1.0, "pad")
)
_PAD_LEN = MiB - len(_PAD_PREFIX) - 5
case(
    "limit_1mib_frame",
    "A frame of exactly 1 MiB (the default limit), padded by an unknown bin field: accepted.",
    hex_parts=[
        {"hex": (_PAD_PREFIX + b"\xc6" + struct.pack(">I", _PAD_LEN)).hex()},
        {"hex": "00", "repeat": _PAD_LEN},
    ],
    events=[{"type": "request", "duration_ms": 1.0}],
)

# ------------------------------------------------------------------------------ rejects

case(
    "decode_garbage",
    "0xc1 is never used in msgpack: the frame does not decode.",
    raw=b"\xc1",
    rejected={"decode": 1},
)
case("decode_empty", "An empty message is not a msgpack object.", raw=b"", rejected={"decode": 1})
case(
    "decode_truncated",
    "An array of 2 holding only one element: the bytes end early.",
    raw=b"\x92\x01",
    rejected={"decode": 1},
)
case(
    "decode_trailing_bytes",
    "One valid event followed by an extra byte: not exactly one msgpack object.",
    raw=msgpack.packb({"type": "queue", "depth": 1}) + b"\x00",
    rejected={"decode": 1},
)
case(
    "version_frame",
    "v = 2 on a single event: the frame is rejected.",
    frame={"v": 2, "type": "request", "duration_ms": 1.0},
    rejected={"version": 1},
)
case(
    "version_string",
    'v = "1" (a string) is not version 1.',
    frame={"v": "1", "type": "request", "duration_ms": 1.0},
    rejected={"version": 1},
)
case(
    "version_columnar",
    "v = 2 on a columnar batch of 3: every event of the batch is rejected.",
    frame={"v": 2, "type": "request", "cols": {"duration_ms": [1.0, 2.0, 3.0]}},
    rejected={"version": 3},
)
case(
    "version_element",
    "v = 2 on one element of an array: that element is rejected, the rest applied.",
    frame=[{"v": 2, "type": "queue", "depth": 1}, {"v": 1, "type": "queue", "depth": 2}],
    events=[{"type": "queue", "depth": 2}],
    rejected={"version": 1},
)
case(
    "shape_scalar",
    "A frame that is a number: neither a map nor an array.",
    frame=42,
    rejected={"shape": 1},
)
case("shape_string", "A frame that is a string.", frame="request", rejected={"shape": 1})
case(
    "shape_element_not_map",
    "Array elements that are not maps (a number, a string, a nested array) are rejected; the map "
    "is applied.",
    frame=[1, "x", [{"type": "queue", "depth": 1}], {"type": "queue", "depth": 2}],
    events=[{"type": "queue", "depth": 2}],
    rejected={"shape": 3},
)
case("shape_no_type", "A map without type.", frame={"duration_ms": 1.0}, rejected={"shape": 1})
case(
    "shape_columns_unequal",
    "Columns of unequal length: the batch is rejected, counted as its longest column.",
    frame={"type": "request", "cols": {"duration_ms": [1.0, 2.0], "output_tokens": [1]}},
    rejected={"shape": 2},
)
case(
    "shape_column_not_array",
    "A column that is not an array.",
    frame={"type": "request", "cols": {"duration_ms": 1.0}},
    rejected={"shape": 1},
)
case(
    "shape_cols_not_map",
    "cols that is not a map.",
    frame={"type": "request", "cols": [[1.0, 2.0]]},
    rejected={"shape": 1},
)
case(
    "unknown_type",
    "An unknown type.",
    frame={"type": "bogus", "x": 1},
    rejected={"unknown_type": 1},
)
case(
    "unknown_type_not_string",
    "A type that is not a string.",
    frame={"type": 7},
    rejected={"unknown_type": 1},
)
case(
    "unknown_type_columnar",
    "A columnar batch of 3 of an unknown type: 3 rejected.",
    frame={"type": "requests", "cols": {"duration_ms": [1.0, 2.0, 3.0]}},
    rejected={"unknown_type": 3},
)
case(
    "unknown_type_element",
    "One element of an unknown type beside a valid one.",
    frame=[{"type": "Request", "duration_ms": 1.0}, {"type": "request", "duration_ms": 2.0}],
    events=[{"type": "request", "duration_ms": 2.0}],
    rejected={"unknown_type": 1},
)
MISSING = [
    {"type": "request", "model": "m"},
    {"type": "error", "status": 500},
    {"type": "stream.start", "model": "m"},
    {"type": "stream.token", "n": 1},
    {"type": "stream.end", "status": "completed"},
    {"type": "stream.backpressure", "buffer_size": 1},
    {"type": "cache", "total_tokens": 1},
    {"type": "queue", "queue": "q"},
    {"type": "client", "source": "s"},
    {"type": "metric", "kind": "gauge", "value": 1.0},
    {"type": "metric", "name": "x", "value": 1.0},
    {"type": "metric", "name": "x", "kind": "gauge"},
]
case(
    "missing_field_every_type",
    "Each event lacks a required field (duration_ms, error_type, stream_id ×4, hit, depth, "
    "dropped, name, kind, value).",
    frame=MISSING,
    rejected={"missing_field": len(MISSING)},
)
case(
    "missing_field_one_of_two",
    "Two request events, the second without duration_ms: only it is rejected.",
    frame=[{"type": "request", "duration_ms": 3.0}, {"type": "request", "model": "m"}],
    events=[{"type": "request", "duration_ms": 3.0}],
    rejected={"missing_field": 1},
)
case(
    "missing_field_columnar",
    "A columnar request batch of 2 without a duration_ms column.",
    frame={"type": "request", "cols": {"model": ["a", "b"]}},
    rejected={"missing_field": 2},
)
BAD = [
    {"type": "request", "duration_ms": -1.0},
    {"type": "request", "duration_ms": "fast"},
    {"type": "request", "duration_ms": True},
    {"type": "request", "duration_ms": 1.0, "status": "200"},
    {"type": "request", "duration_ms": 1.0, "input_tokens": -1},
    {"type": "request", "duration_ms": 1.0, "input_tokens": 1.5},
    {"type": "request", "duration_ms": 1.0, "input_tokens": 2**64 - 1},
    {"type": "request", "duration_ms": 1.0, "streaming": 1},
    {"type": "request", "duration_ms": 1.0, "model": 42},
    {"type": "request", "duration_ms": 1.0, "ttft_ms": -0.5},
    {"type": "cache", "hit": "yes"},
    {"type": "queue", "depth": -2},
    {"type": "usage", "images": "1024x1024"},
    {"type": "client", "dropped": -1},
]
case(
    "bad_value_types",
    "Wrong types and negative counts or durations, one per event: a negative duration, a string "
    "or boolean duration, a string status, a negative or fractional or over-int64 token count, "
    "an int for a bool, an int for a string, a negative ttft, a string for hit, a negative depth, "
    "images that is not a map, a negative drop count.",
    frame=BAD,
    rejected={"bad_value": len(BAD)},
)
case(
    "bad_value_nonfinite",
    "NaN and infinities are rejected: a NaN duration, an infinite ttft, a -infinite metric value.",
    frame=[
        {"type": "request", "duration_ms": nan()},
        {"type": "request", "duration_ms": 1.0, "ttft_ms": nan("Infinity")},
        {"type": "metric", "name": "x", "kind": "gauge", "value": nan("-Infinity")},
        {"type": "request", "duration_ms": 4.0},
    ],
    events=[{"type": "request", "duration_ms": 4.0}],
    rejected={"bad_value": 3},
)
case(
    "bad_value_enums_and_names",
    "Values outside their set: a stream status, a metric kind, a metric name that does not match "
    "[a-zA-Z_:][a-zA-Z0-9_:]*.",
    frame=[
        {"type": "stream.end", "stream_id": "s", "status": "done"},
        {"type": "metric", "name": "x", "kind": "summary", "value": 1.0},
        {"type": "metric", "name": "1bad", "kind": "gauge", "value": 1.0},
        {"type": "metric", "name": "has space", "kind": "gauge", "value": 1.0},
    ],
    rejected={"bad_value": 4},
)
case(
    "bad_value_labels",
    "Bad metric labels: 9 pairs (at most 8), a reserved __ name, a non-string value.",
    frame=[
        {
            "type": "metric",
            "name": "x",
            "kind": "gauge",
            "value": 1.0,
            "labels": {f"l{i}": "v" for i in range(9)},
        },
        {"type": "metric", "name": "x", "kind": "gauge", "value": 1.0, "labels": {"__name__": "y"}},
        {"type": "metric", "name": "x", "kind": "gauge", "value": 1.0, "labels": {"a": 1}},
    ],
    rejected={"bad_value": 3},
)
case(
    "bad_value_column_row",
    "A bad value in one row of a column rejects that row only.",
    frame={"type": "request", "const": {"model": "m"}, "cols": {"duration_ms": [1.0, -1.0, 2.0]}},
    events=[
        {"type": "request", "model": "m", "duration_ms": 1.0},
        {"type": "request", "model": "m", "duration_ms": 2.0},
    ],
    rejected={"bad_value": 1},
)
case(
    "bad_value_const",
    "A bad value in const rejects the whole batch.",
    frame={"type": "request", "const": {"status": "ok"}, "cols": {"duration_ms": [1.0, 2.0, 3.0]}},
    rejected={"bad_value": 3},
)
case(
    "too_large",
    "A frame of 1 MiB + 15 bytes (a 1 MiB error_message) is over the default 1 MiB limit: "
    "rejected whole, counted once.",
    hex_parts=[
        {
            "hex": (
                b"\x83"
                + b"".join(msgpack.packb(x) for x in ("type", "request", "duration_ms", 1.0))
                + msgpack.packb("error_message")
                + b"\xdb"
                + struct.pack(">I", MiB)
            ).hex()
        },
        {"hex": "78", "repeat": MiB},
    ],
    rejected={"too_large": 1},
)
case(
    "too_many_columnar",
    "10 001 events in one columnar batch, over the default limit of 10 000: every event is "
    "rejected.",
    hex_parts=[
        {"hex": (_DUR_COL_10000[:-2] + struct.pack(">H", 10001)).hex()},
        {"hex": msgpack.packb(1.0).hex(), "repeat": 10001},
    ],
    rejected={"too_many": 10001},
)
case(
    "too_many_events",
    "An array of 10 001 plain events: every event is rejected.",
    hex_parts=[
        {"hex": "dc" + struct.pack(">H", 10001).hex()},
        {"hex": msgpack.packb({"type": "queue", "depth": 1}).hex(), "repeat": 10001},
    ],
    rejected={"too_many": 10001},
)

# ------------------------------------------------------------------------------ emitter output


def emitter_case(
    name: str, description: str, source: str, calls: list[dict[str, Any]], pending_drops: int = 0
) -> None:
    """A frame an emitter must produce, byte for byte, from these calls in one flush."""
    events = []
    for call in calls:
        t = call["type"]
        ev = {"type": t, **EMITTER_DEFAULTS.get(t, {}), "source": source}
        for k, v in call.items():
            if v is None:
                ev.pop(k, None)
            else:
                ev[k] = v
        events.append(ev)
    if pending_drops:
        events.append({"type": "client", "dropped": pending_drops, "source": source})
    emitter: dict[str, Any] = {"source": source, "calls": calls}
    if pending_drops:
        emitter["pending_drops"] = pending_drops
    case(name, description, emitter=emitter, events=events)


def _req(model: str, d: float, i: int, **kw: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "ts": TS + i / 8,
        "duration_ms": d,
        "endpoint": "/v1/chat",
        "model": model,
        **kw,
    }


emitter_case(
    "emitter_requests_by_model",
    "Requests for two models, interleaved: one columnar batch per model, labels (endpoint, model, "
    "status…) and equal values in const, ts and varying values in cols.",
    "api",
    [
        _req("gpt-4o", 120.5, 0, input_tokens=812, output_tokens=164),
        _req("gpt-4o-mini", 40.25, 1, input_tokens=100, output_tokens=20),
        _req("gpt-4o", 98.0, 2, input_tokens=640, output_tokens=164),
        _req("gpt-4o-mini", 35.5, 3, input_tokens=100, output_tokens=31),
    ],
)
emitter_case(
    "emitter_every_method",
    "One call of every emitter method, with most of their arguments.",
    "svc",
    [
        {
            "type": "request",
            "ts": TS,
            "duration_ms": 250.0,
            "endpoint": "/v1/chat/completions",
            "model": "gpt-4o",
            "status": 200,
            "input_tokens": 10,
            "output_tokens": 5,
            "cached_tokens": 2,
            "cache_write_tokens": 1,
            "reasoning_tokens": 3,
            "streaming": True,
            "ttft_ms": 50.5,
            "queue_ms": 1.5,
            "finish_reason": "stop",
            "provider": "openai",
            "batch": False,
            "cost_usd": 0.0025,
            "key_id": "k_abcdefabcdef",
            "user_id": "u1",
            "request_id": "r1",
        },
        {
            "type": "error",
            "ts": TS + 0.5,
            "error_type": "timeout",
            "status": 504,
            "error_message": "upstream timed out",
            "provider": "openai",
            "model": "gpt-4o",
        },
        {
            "type": "stream.start",
            "ts": TS + 1,
            "stream_id": "s-9",
            "prompt_tokens": 12,
            "temperature": 0.5,
            "max_tokens": 100,
            "client_id": "c",
            "provider": "openai",
            "model": "gpt-4o",
        },
        {
            "type": "stream.token",
            "ts": TS + 1.25,
            "stream_id": "s-9",
            "n": 2,
            "bytes": 9,
            "text": "Hi there",
        },
        {"type": "stream.backpressure", "ts": TS + 1.375, "stream_id": "s-9", "buffer_size": 3},
        {
            "type": "stream.end",
            "ts": TS + 1.5,
            "stream_id": "s-9",
            "status": "cancelled",
            "finish_reason": "length",
        },
        {
            "type": "cache",
            "ts": TS + 2,
            "hit": True,
            "total_tokens": 100,
            "matched_tokens": 80,
            "model": "gpt-4o",
        },
        {"type": "queue", "ts": TS + 2.5, "depth": 4, "queue": "gpu", "capacity": 16},
        {
            "type": "usage",
            "ts": TS + 3,
            "prompt_tokens": 3,
            "completion_tokens": 0,
            "images": {"size": "512x512", "quality": "standard", "n": 1},
            "batch": True,
            "cost_usd": 0.02,
            "model": "dall-e-2",
        },
        {
            "type": "metric",
            "ts": TS + 3.5,
            "name": "llm_circuit_breaker_open",
            "kind": "gauge",
            "value": 1.0,
            "labels": {"provider": "openai"},
        },
    ],
)
emitter_case(
    "emitter_optional_split",
    "An optional field set in some rows only (ttft_ms) splits the batch: no nil on the wire; "
    "null for status means not sent (another split).",
    "default",
    [
        _req("m", 10.0, 0, ttft_ms=5.0, streaming=True),
        _req("m", 11.0, 1),
        _req("m", 12.0, 2, ttft_ms=6.0, streaming=True),
        _req("m", 13.0, 3, status=None, input_tokens=None),
    ],
)
emitter_case(
    "emitter_stream",
    "Two interleaved streams: tokens are grouped by stream_id (a label of stream.token), start "
    "and end keep stream_id in a column.",
    "chat",
    [
        {"type": "stream.start", "ts": TS, "stream_id": "a", "model": "m"},
        {"type": "stream.start", "ts": TS + 0.0625, "stream_id": "b", "model": "m"},
        {"type": "stream.token", "ts": TS + 0.125, "stream_id": "a"},
        {"type": "stream.token", "ts": TS + 0.1875, "stream_id": "b", "n": 3},
        {"type": "stream.token", "ts": TS + 0.25, "stream_id": "a", "n": 2},
        {"type": "stream.token", "ts": TS + 0.3125, "stream_id": "b"},
        {"type": "stream.end", "ts": TS + 0.375, "stream_id": "a"},
        {
            "type": "stream.end",
            "ts": TS + 0.4375,
            "stream_id": "b",
            "status": "failed",
            "error_type": "reset",
        },
    ],
)
emitter_case(
    "emitter_metric_labels",
    "Metrics grouped by (name, kind, labels): equal label maps share a batch whatever their key "
    "order.",
    "default",
    [
        {
            "type": "metric",
            "ts": TS,
            "name": "hits",
            "kind": "counter",
            "value": 1.0,
            "labels": {"a": "1", "b": "2"},
        },
        {
            "type": "metric",
            "ts": TS + 1,
            "name": "hits",
            "kind": "counter",
            "value": 2.0,
            "labels": {"a": "2", "b": "2"},
        },
        {
            "type": "metric",
            "ts": TS + 2,
            "name": "hits",
            "kind": "counter",
            "value": 3.0,
            "labels": {"a": "1", "b": "2"},
        },
        {"type": "metric", "ts": TS + 3, "name": "temp", "kind": "gauge", "value": 21.5},
    ],
)
emitter_case(
    "emitter_drop_report",
    "An emitter with 7 drops not yet reported appends a client event to its next frame.",
    "api",
    [_req("m", 1.0, 0)],
    pending_drops=7,
)
emitter_case(
    "emitter_api_key_and_ids",
    "api_key and key_id are labels (const); user_id and request_id are columns.",
    "api",
    [
        _req("m", 1.0, 0, api_key="sk-a", user_id="u1", request_id="r1"),
        _req("m", 2.0, 1, api_key="sk-a", user_id="u2", request_id="r2"),
    ],
)

# ------------------------------------------------------------------------------ writing


def _emitter_bytes(spec: dict[str, Any]) -> bytes:
    """What the Python emitter sends for these calls, flushed in one cycle."""
    from metricsd_client import Emitter, _wire

    em = Emitter("tcp://127.0.0.1:9", source=spec["source"])
    em._wake = lambda: None  # record only: no flusher thread, no socket
    try:
        for call in spec["calls"]:
            args = {k: v for k, v in call.items() if k != "type"}
            getattr(em, vectorlib.METHODS[call["type"]])(**args)
        rows = em._take()
        assert len(rows) == len(spec["calls"]), "the emitter dropped a call"
        packer = _wire.new_packer()
        packed, bad = _wire.encode(rows, spec["source"], packer)
        assert bad == 0
        frames = _wire.assemble(packed)
        assert len(frames) == 1
        pending = spec.get("pending_drops", 0)
        client = _wire.client_event(pending, spec["source"], packer) if pending else None
        return _wire.frame(frames[0][1], client, packer)
    finally:
        em.close(timeout=0.1)


def _check(c: dict[str, Any], data: bytes) -> None:
    """The hand-written events equal the frame's rows by the wire rule (valid frames only)."""
    if c.get("rejected") or "hex_parts" in c or c.get("truncated"):
        return
    obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    rows = [
        {k: v for k, v in r.items() if k == "type" or k in EVENT_TYPES[r["type"]]}
        for r in vectorlib.expand(obj)
    ]
    want = vectorlib.expected_events(c)
    assert vectorlib.sort_events(rows) == vectorlib.sort_events(want), (c["name"], rows, want)
    if "emitter" not in c:  # rows in wire order too
        assert [vectorlib.canonical(r) for r in rows] == [vectorlib.canonical(e) for e in want]


def build(c: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c["name"], "description": c["description"]}
    if "emitter" in c:
        out["emitter"] = c["emitter"]
        data = _emitter_bytes(c["emitter"])
        out["frame"] = msgpack.unpackb(data, raw=False)
    elif "frame" in c:
        data = msgpack.packb(vectorlib.untag(c["frame"]), use_bin_type=True)
        out["frame"] = c["frame"]
    elif "raw" in c:
        data = c["raw"]
    else:
        data = b"".join(bytes.fromhex(p["hex"]) * p.get("repeat", 1) for p in c["hex_parts"])
    if "hex_parts" in c:
        out["hex_parts"] = c["hex_parts"]
    else:
        out["hex"] = data.hex()
    events = c.get("events", [])
    out["accepted"] = sum(int(e.get("$repeat", 1)) for e in events)
    out["events"] = events
    out["rejected"] = c.get("rejected", {})
    if c.get("truncated"):
        out["truncated"] = c["truncated"]
    _check(c, data)
    return out


def schema_defaults() -> dict[str, dict[str, Any]]:
    """defaults.json: non-null defaults by type; ``*`` holds the common fields' defaults."""
    common = {"source": "default"}
    out: dict[str, dict[str, Any]] = {"*": common}
    for t, fields in EVENT_TYPES.items():
        out[t] = {
            name: f.default
            for name, f in fields.items()
            if f.default is not None and name not in common
        }
    return out


def render(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 on a difference")
    args = ap.parse_args(argv)
    files = {"defaults.json": render(schema_defaults())}
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    for c in CASES:
        files[f"{c['name']}.json"] = render(build(c))
    stale = [p.name for p in vectorlib.vector_paths() if p.name not in files]
    changed = [
        n
        for n, text in files.items()
        if not (HERE / n).exists() or (HERE / n).read_text(encoding="utf-8") != text
    ]
    if args.check:
        for n in changed + stale:
            print(f"out of date: {n}")
        return 1 if changed or stale else 0
    for n in stale:
        (HERE / n).unlink()
    for n in changed:
        (HERE / n).write_text(files[n], encoding="utf-8")
    print(f"{len(CASES)} vectors, {len(changed)} written, {len(stale)} removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
