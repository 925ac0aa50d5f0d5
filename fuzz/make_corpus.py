"""Write the checked-in seed corpus and its manifest (what each seed must decode to).

Usage: ``python fuzz/make_corpus.py [--check]`` from the repository root. ``--check`` writes
nothing and exits 1 when a file would change.

- ``fuzz/corpus/decode/``: msgpack frames. ``valid-*``: every event type in every frame shape of
  SPEC §1.2 (event, array, columnar, array of columnar batches), with every field set;
  ``bad-*``: one seed per reject reason of SPEC §1.4 and the hostile inputs the live fuzz also
  sends (NaN and infinity, huge numbers, 10 KB strings, huge arrays, deep nesting);
  ``vector-*``: the conformance vectors of ``tests/vectors`` (frames under 64 KiB).
- ``fuzz/corpus/session/``: WebSocket message sequences in the format of
  ``fuzz.targets.split_messages``: every client message of SPEC §5.1, each kind of bad input,
  the per-client limits and a flood that trips the rate limit.

The manifests (``fuzz/corpus/decode.json``, ``fuzz/corpus/session.json``) are written by hand
below, never by the code under test: ``tests/reliability/test_fuzz_seeds.py`` replays every seed
against them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
VECTORS = ROOT / "tests" / "vectors"
sys.path.insert(0, str(ROOT))

from fuzz.targets import SEPARATOR  # noqa: E402

TS = 1_700_000_100.25

#: One event of each type with every field set (SPEC §1.3), all valid.
FULL: dict[str, dict[str, Any]] = {
    "request": {
        "status": 200,
        "duration_ms": 812.5,
        "input_tokens": 1200,
        "output_tokens": 350,
        "cached_tokens": 200,
        "cache_write_tokens": 64,
        "reasoning_tokens": 32,
        "streaming": True,
        "ttft_ms": 120.0,
        "queue_ms": 4.5,
        "finish_reason": "stop",
        "provider": "openai",
        "error_type": "rate_limit",
        "error_message": "Rate limit reached for req-8f3a after 3 retries",
        "batch": False,
        "cost_usd": 0.0125,
    },
    "error": {
        "error_type": "timeout",
        "status": 504,
        "error_message": "upstream timed out after 30000 ms (id 0x7f3a)",
        "provider": "anthropic",
    },
    "stream.start": {
        "stream_id": "s-1",
        "prompt_tokens": 900,
        "temperature": 0.7,
        "max_tokens": 512,
        "client_id": "web-1",
        "provider": "openai",
    },
    "stream.token": {"stream_id": "s-1", "n": 2, "bytes": 9, "text": "Hello"},
    "stream.end": {
        "stream_id": "s-1",
        "status": "failed",
        "finish_reason": "length",
        "error_type": "disconnect",
        "error_message": "client went away",
    },
    "stream.backpressure": {"stream_id": "s-1", "buffer_size": 64},
    "cache": {"hit": True, "total_tokens": 1000, "matched_tokens": 640},
    "queue": {"depth": 7, "queue": "gpu", "capacity": 32},
    "usage": {
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "cached_tokens": 10,
        "images": {"size": "1024x1024", "quality": "hd", "n": 2},
        "characters": 4096,
        "batch": True,
        "cost_usd": 0.04,
    },
    "client": {"dropped": 3},
    "metric": {
        "name": "llm_circuit_breaker_open",
        "kind": "gauge",
        "value": 1.0,
        "labels": {"provider": "openai"},
    },
}
COMMON: dict[str, Any] = {
    "ts": TS,
    "endpoint": "/v1/chat/completions",
    "model": "gpt-4o",
    "api_key": "sk-seed-key",
    "user_id": "u-1",
    "request_id": "req-1",
    "source": "api",
}


def event(type_name: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_name, **COMMON, **FULL[type_name], **extra}


def columnar(type_name: str, rows: int = 3) -> dict[str, Any]:
    """Common fields constant, the type's own fields as columns."""
    return {
        "type": type_name,
        "const": dict(COMMON),
        "cols": {k: [v] * rows for k, v in FULL[type_name].items()},
    }


def ok(accepted: int, truncated: int = 0) -> dict[str, Any]:
    return {"accepted": accepted, "rejected": {}, "truncated": truncated}


def bad(accepted: int = 0, truncated: int = 0, **rejected: int) -> dict[str, Any]:
    return {"accepted": accepted, "rejected": rejected, "truncated": truncated}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def decode_seeds() -> dict[str, tuple[bytes, dict[str, Any]]]:
    seeds: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def add(name: str, frame: Any, expect: dict[str, Any]) -> None:
        data = frame if isinstance(frame, bytes) else msgpack.packb(frame)
        seeds[f"{name}.bin"] = (data, expect)

    for t in FULL:
        slug = t.replace(".", "_")
        add(f"valid-{slug}-event", event(t), ok(1))
        add(f"valid-{slug}-array", [event(t), event(t, v=1)], ok(2))
        add(f"valid-{slug}-columnar", columnar(t), ok(3))
    add("valid-all-columnar-batches", [columnar(t, 2) for t in FULL], ok(2 * len(FULL)))
    add("valid-mixed-array", [event(t) for t in FULL] + [columnar("request")], ok(len(FULL) + 3))
    add("valid-versioned-frame", {**columnar("request"), "v": 1}, ok(3))
    add("valid-minimal-request", {"type": "request", "duration_ms": 1}, ok(1))
    add("valid-integral-float-count", {**event("request"), "input_tokens": 12.0}, ok(1))
    add("valid-string-10k", {**event("request"), "model": "m" * 10_240}, ok(1, truncated=1))
    add(
        "valid-error-message-10k",
        {**event("error"), "error_message": "boom " * 2048},
        ok(1, truncated=1),
    )

    request = msgpack.packb(event("request"))
    add("bad-decode-garbage", b"\xc1", bad(decode=1))
    add("bad-decode-empty", b"", bad(decode=1))
    add("bad-decode-truncated", request[: len(request) // 2], bad(decode=1))
    add("bad-decode-trailing-bytes", request + b"\x00", bad(decode=1))
    add("bad-decode-deep-nesting", b"\x91" * 5000 + b"\xc0", bad(decode=1))
    add("bad-version-frame", {**event("request"), "v": 2}, bad(version=1))
    add("bad-version-columnar", {**columnar("request"), "v": "1"}, bad(version=3))
    add("bad-shape-scalar", 42, bad(shape=1))
    add("bad-shape-string", "request", bad(shape=1))
    add("bad-shape-nested-array", nested(500), bad(shape=1))
    add(
        "bad-shape-columns-unequal",
        {"type": "request", "cols": {"duration_ms": [1, 2], "status": [200]}},
        bad(shape=2),
    )
    add("bad-shape-cols-not-map", {"type": "request", "cols": [1, 2]}, bad(shape=1))
    add("bad-shape-no-type", {"duration_ms": 1.0}, bad(shape=1))
    add("bad-unknown_type", {"type": "request.v2", "duration_ms": 1.0}, bad(unknown_type=1))
    add("bad-unknown_type-not-string", {"type": 7}, bad(unknown_type=1))
    add("bad-missing_field", {"type": "request"}, bad(missing_field=1))
    add(
        "bad-missing_field-every-type",
        [{"type": t} for t in FULL if t not in ("usage",)],
        bad(missing_field=len(FULL) - 1),
    )
    for name, value in (
        ("nan", math.nan),
        ("inf", math.inf),
        ("minus-inf", -math.inf),
        ("negative", -1.0),
        ("string", "fast"),
        ("bool", True),
        ("huge-float", 1e300),
        ("max-float", sys.float_info.max),
        ("huge-array", [0] * 5000),
        ("map", {"ms": 1}),
        ("deep-nesting", nested(200)),
    ):
        add(
            f"bad-bad_value-duration-{name}",
            {**event("request"), "duration_ms": value},
            bad(bad_value=1),
        )
    add(
        "bad-bad_value-count-huge-float",
        {**event("request"), "input_tokens": 1e19},
        bad(bad_value=1),
    )
    add(
        "bad-bad_value-count-uint64",
        {**event("request"), "input_tokens": 2**64 - 1},
        bad(bad_value=1),
    )
    add("bad-bad_value-cost-huge", {**event("usage"), "cost_usd": 1e300}, bad(bad_value=1))
    add("bad-bad_value-ts-nan", {**event("request"), "ts": math.nan}, bad(bad_value=1))
    add(
        "bad-bad_value-labels-9-pairs",
        {**event("metric"), "labels": {f"l{i}": "v" for i in range(9)}},
        bad(bad_value=1),
    )
    add("bad-bad_value-metric-name", {**event("metric"), "name": "1bad name"}, bad(bad_value=1))
    add("bad-bad_value-enum", {**event("stream.end"), "status": "exploded"}, bad(bad_value=1))
    add(
        "bad-bad_value-column-rows",
        {"type": "request", "cols": {"duration_ms": [1.0, math.nan, -2.0, "x", 5.0]}},
        bad(accepted=2, bad_value=3),
    )
    add(
        "bad-too_many-columnar",
        {"type": "client", "cols": {"dropped": [0] * 10_001}},
        bad(too_many=10_001),
    )
    add(
        "bad-mixed-array",
        [event("request"), 42, {"type": "nope"}, {"type": "request"}, {**event("queue"), "v": 9}],
        bad(accepted=1, shape=1, unknown_type=1, missing_field=1, version=1),
    )
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text())
        if "hex" not in vector or "accepted" not in vector or len(vector["hex"]) > 2 * 65536:
            continue
        expect = {
            "accepted": vector["accepted"],
            "rejected": vector["rejected"],
            "truncated": vector.get("truncated", 0),
        }
        seeds[f"vector-{path.stem}.bin"] = (bytes.fromhex(vector["hex"]), expect)
    return seeds


def messages(*parts: tuple[int, str | bytes]) -> bytes:
    """(control byte, body) pairs in the session target's format."""
    out = []
    for control, body in parts:
        out.append(bytes([control]) + (body.encode() if isinstance(body, str) else body))
    return SEPARATOR.join(out)


def text(body: Any, gap: int = 20) -> tuple[int, str]:
    """A text message after ``gap`` hundredths of a second (even control byte)."""
    return (gap << 1, body if isinstance(body, str) else json.dumps(body))


def sub(**filters: Any) -> dict[str, Any]:
    return {"type": "subscribe", "filters": filters}


def session_seeds() -> dict[str, tuple[bytes, dict[str, Any]]]:
    seeds: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def add(name: str, data: bytes, replies: list[str], closed: bool = False) -> None:
        seeds[f"{name}.txt"] = (data, {"replies": replies, "closed": closed})

    add("ping", messages(text({"type": "ping"})), ["pong"])
    add("unsubscribe", messages(text({"type": "unsubscribe"})), ["unsubscribed"])
    add("subscribe-empty", messages(text({"type": "subscribe"})), ["subscribed"])
    add(
        "subscribe-null-filters",
        messages(text('{"type":"subscribe","filters":null}')),
        ["subscribed"],
    )
    add(
        "subscribe-every-filter",
        messages(
            text(sub(endpoint="/v1/chat/completions", model="gpt-4o", metric_type="latency")),
            text(sub(metric_type="cost", interval=0.25)),
            text(sub(metric_type="all", interval=120)),
            text(sub(interval=0.01)),
            text({"type": "unsubscribe"}),
        ),
        ["subscribed"] * 4 + ["unsubscribed"],
    )
    for metric_type in ("throughput", "latency", "cache", "queue", "streaming", "error", "slo"):
        add(
            f"subscribe-{metric_type}", messages(text(sub(metric_type=metric_type))), ["subscribed"]
        )
    for name, body in (
        ("interval-nan", '{"type":"subscribe","filters":{"interval":NaN}}'),
        ("interval-infinity", '{"type":"subscribe","filters":{"interval":Infinity}}'),
        ("interval-negative", json.dumps(sub(interval=-1))),
        ("interval-string", json.dumps(sub(interval="1s"))),
        ("interval-bool", json.dumps(sub(interval=True))),
        ("endpoint-number", json.dumps(sub(endpoint=5))),
        ("model-list", json.dumps(sub(model=["a", "b"]))),
        ("metric-type-unknown", json.dumps(sub(metric_type="cpu"))),
        ("metric-type-object", json.dumps(sub(metric_type={"a": [1, 2]}))),
        ("filters-list", '{"type":"subscribe","filters":[1,2]}'),
        ("unknown-type", '{"type":"subscribe_all"}'),
        ("type-number", '{"type":5}'),
        ("no-type", '{"filters":{}}'),
        ("not-an-object", "[1,2,3]"),
        ("invalid-json", '{"type": "ping"'),
        ("empty-message", ""),
        ("deep-nesting", "[" * 5000),
        ("deep-nesting-too-large", "[" * 16_400),
        ("huge-integer", "1" * 5000),
        (
            "huge-integer-in-filter",
            '{"type":"subscribe","filters":{"interval":' + "9" * 5000 + "}}",
        ),
        ("too-large", json.dumps({"type": "ping", "pad": "x" * 16_384})),
        ("string-10k-type", json.dumps({"type": "y" * 10_240})),
    ):
        add(f"bad-{name}", messages(text(body)), ["error"])
    add(
        "subscribe-lone-surrogate",
        messages(text('{"type":"subscribe","filters":{"endpoint":"\\ud800"}}')),
        ["subscribed"],
    )
    add(
        "subscribe-interval-huge-integer",
        messages(text('{"type":"subscribe","filters":{"interval":' + "1" * 400 + "}}")),
        ["subscribed"],
    )
    add("bad-binary", messages((1, b"\x00\x01\x02binary")), ["error"])
    add(
        "limit-65-endpoints",
        messages(*(text(sub(endpoint=f"/e{i}"), gap=10) for i in range(65))),
        ["subscribed"] * 64 + ["error"],
    )
    add(
        "flood",
        messages(*(text({"type": "ping"}, gap=0) for i in range(60))),
        ["pong"] * 40,
        closed=True,
    )
    add(
        "flood-binary",
        messages(*((1, b"x") for _ in range(60))),
        ["error"] * 40,
        closed=True,
    )
    return seeds


def write(directory: Path, seeds: dict[str, tuple[bytes, dict[str, Any]]], check: bool) -> bool:
    """Write (or compare) the seeds and the manifest; True when everything is up to date."""
    manifest = json.dumps({k: v[1] for k, v in sorted(seeds.items())}, indent=1) + "\n"
    files = {name: data for name, (data, _) in seeds.items()}
    same = True
    manifest_path = directory.with_suffix(".json")
    if not (manifest_path.exists() and manifest_path.read_text() == manifest):
        same = False
        print(f"{'differs' if check else 'writing'}: {manifest_path}")
        if not check:
            manifest_path.write_text(manifest)
    existing = {p.name for p in directory.glob("*")} if directory.exists() else set()
    for stale in sorted(existing - set(files)):
        same = False
        print(f"stale: {directory / stale}")
        if not check:
            (directory / stale).unlink()
    for name, data in sorted(files.items()):
        path = directory / name
        if path.exists() and path.read_bytes() == data:
            continue
        same = False
        print(f"{'differs' if check else 'writing'}: {path}")
        if not check:
            directory.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 on changes")
    args = parser.parse_args()
    fresh = write(CORPUS / "decode", decode_seeds(), args.check)
    fresh &= write(CORPUS / "session", session_seeds(), args.check)
    if args.check and not fresh:
        sys.exit(1)


if __name__ == "__main__":
    main()
