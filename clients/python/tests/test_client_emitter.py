"""Tests of metricsd_client against a real ZeroMQ PULL socket (SPEC §1).

Every frame received is checked against the wire contract (shape 4: an array of columnar batches
and plain events, ``v == 1``, equal column lengths, no ``None`` anywhere, ≤ 1 MiB, ≤ 10 000
events) and expanded to rows ``{"type": T, **const, **{f: cols[f][i]}}`` (a typed column read as
its values); the tests then assert exact rows. Every socket read has a timeout.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import zmq
from metricsd_client import DEFAULT_ENDPOINT, Emitter, _wire

MiB = 1 << 20

# -------------------------------------------------------------------------------------- helpers

#: The typed columns the emitter sends (msgpack ext code → little-endian struct format).
TYPED_FORMATS = {1: "<d", 2: "<q"}


def _typed_column(code: int, data: bytes) -> list[Any]:
    fmt = TYPED_FORMATS.get(code)
    assert fmt is not None, f"the emitter sent ext type {code}"
    assert data and len(data) % 8 == 0, "a typed column holds whole 8-byte values"
    return [v for (v,) in struct.iter_unpack(fmt, data)]


def unpack(data: bytes) -> Any:
    """A frame as msgpack objects, each typed column as the list of its values."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_typed_column)


class Pull:
    """A PULL socket bound on a random local port, decoding and checking every frame."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str = "tcp://127.0.0.1:*") -> None:
        self.sock = ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.frames: list[list[dict[str, Any]]] = []  # rows per frame, in arrival order

    def recv_frame(self, timeout: float) -> list[dict[str, Any]] | None:
        """One frame's rows, or None if nothing arrives within ``timeout`` seconds."""
        if not self.sock.poll(int(timeout * 1000)):
            return None
        data = self.sock.recv(zmq.NOBLOCK)
        assert len(data) <= MiB
        assert not self.sock.getsockopt(zmq.RCVMORE), "multipart frames are invalid"
        rows = expand(unpack(data))
        assert len(rows) <= 10_000
        self.frames.append(rows)
        return rows

    def rows(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Receive until ``n`` application events (not ``client`` reports) have arrived."""
        deadline = time.monotonic() + timeout
        out: list[dict[str, Any]] = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            frame = self.recv_frame(max(0.0, remaining)) if remaining > 0 else None
            if frame is None:
                raise AssertionError(f"got {len(out)} of {n} events: {out[:5]}…")
            out.extend(r for r in frame if r["type"] != "client")
        assert len(out) == n, f"got {len(out)} events, wanted {n}"
        return out

    def quiet(self, timeout: float = 0.3) -> bool:
        """True if no frame arrives within ``timeout`` seconds."""
        return not self.sock.poll(int(timeout * 1000))

    def client_reports(self) -> list[dict[str, Any]]:
        return [r for f in self.frames for r in f if r["type"] == "client"]

    def close(self) -> None:
        self.sock.close(linger=0)


def _no_none(value: Any) -> None:
    assert value is not None, "None went on the wire"
    if isinstance(value, dict):
        for v in value.values():
            _no_none(v)
    elif isinstance(value, list):
        for v in value:
            _no_none(v)


def expand(frame: Any) -> list[dict[str, Any]]:
    """Rows of a frame of SPEC §1.2 shape 4, checking the shape on the way."""
    assert isinstance(frame, list), "the client sends arrays of batches"
    rows: list[dict[str, Any]] = []
    for element in frame:
        assert isinstance(element, dict)
        _no_none(element)
        assert element.get("v") == 1
        if "cols" not in element:  # a plain event (the client drop report)
            assert element["type"] == "client"
            assert set(element) == {"type", "dropped", "source", "v"}
            rows.append(dict(element))
            continue
        assert set(element) == {"v", "type", "cols", "const"}
        cols, const = element["cols"], element["const"]
        assert cols, "a batch always has at least one column (ts)"
        lengths = {len(c) for c in cols.values()}
        assert len(lengths) == 1, f"columns of unequal length: {lengths}"
        assert not set(cols) & set(const), "a field is in both cols and const"
        (n,) = lengths
        assert n >= 1
        for i in range(n):
            row = {"type": element["type"], **const}
            row.update({f: c[i] for f, c in cols.items()})
            rows.append(row)
    return rows


def batches(frame_data: bytes) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = unpack(frame_data)
    return out


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def pull(ctx: zmq.Context[Any]) -> Iterator[Pull]:
    p = Pull(ctx)
    yield p
    p.close()


@pytest.fixture
def make() -> Iterator[Callable[..., Emitter]]:
    """Emitters closed at teardown."""
    made: list[Emitter] = []

    def factory(*args: Any, **kwargs: Any) -> Emitter:
        em = Emitter(*args, **kwargs)
        made.append(em)
        return em

    yield factory
    for em in made:
        em.close(timeout=1.0)


def free_port() -> int:
    """A port that was free a moment ago (for a PULL bound later than the emitter connects)."""
    c: zmq.Context[Any] = zmq.Context()
    s = c.socket(zmq.PULL)
    try:
        port: int = s.bind_to_random_port("tcp://127.0.0.1")
    finally:
        s.close(linger=0)
        c.term()
    return port


TS = 1_700_000_000.25

# --------------------------------------------------------------------- every method, exact rows

# (method, positional args, keyword args, the expected row minus type/source/ts)
FULL: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    (
        "request",
        (12.5,),
        dict(
            endpoint="/v1/chat/completions",
            model="gpt-4o",
            status=201,
            input_tokens=100,
            output_tokens=50,
            cached_tokens=20,
            cache_write_tokens=5,
            reasoning_tokens=7,
            streaming=True,
            ttft_ms=3.5,
            queue_ms=1.25,
            finish_reason="stop",
            provider="openai",
            error_type="none",
            error_message="fine",
            batch=False,
            cost_usd=0.0125,
            api_key="sk-raw",
            key_id="k_0123456789ab",
            user_id="u-1",
            request_id="req-1",
        ),
        {"duration_ms": 12.5},
    ),
    (
        "error",
        ("rate_limit",),
        dict(
            status=429,
            error_message="slow down",
            provider="anthropic",
            endpoint="/v1/messages",
            model="claude",
            api_key="sk-2",
            key_id="k_2",
            user_id="u-2",
            request_id="req-2",
        ),
        {"error_type": "rate_limit"},
    ),
    (
        "stream_start",
        ("s-1",),
        dict(
            prompt_tokens=30,
            temperature=0.7,
            max_tokens=256,
            client_id="c-1",
            provider="openai",
            endpoint="/v1/chat/completions",
            model="gpt-4o",
            api_key="sk-3",
            key_id="k_3",
            user_id="u-3",
            request_id="req-3",
        ),
        {"stream_id": "s-1"},
    ),
    (
        "stream_token",
        ("s-1",),
        dict(
            n=3,
            bytes=42,
            text="hello",
            endpoint="/e",
            model="m",
            api_key="sk-4",
            key_id="k_4",
            user_id="u-4",
            request_id="req-4",
        ),
        {"stream_id": "s-1"},
    ),
    (
        "stream_end",
        ("s-1",),
        dict(
            status="failed",
            finish_reason="length",
            error_type="upstream",
            error_message="boom",
            endpoint="/e",
            model="m",
            api_key="sk-5",
            key_id="k_5",
            user_id="u-5",
            request_id="req-5",
        ),
        {"stream_id": "s-1"},
    ),
    (
        "stream_backpressure",
        ("s-1",),
        dict(
            buffer_size=512,
            endpoint="/e",
            model="m",
            api_key="sk-6",
            key_id="k_6",
            user_id="u-6",
            request_id="req-6",
        ),
        {"stream_id": "s-1"},
    ),
    (
        "cache",
        (True,),
        dict(
            total_tokens=1000,
            matched_tokens=600,
            endpoint="/e",
            model="m",
            api_key="sk-7",
            key_id="k_7",
            user_id="u-7",
            request_id="req-7",
        ),
        {"hit": True},
    ),
    (
        "queue",
        (4,),
        dict(
            queue="gpu",
            capacity=16,
            endpoint="/e",
            model="m",
            api_key="sk-8",
            key_id="k_8",
            user_id="u-8",
            request_id="req-8",
        ),
        {"depth": 4},
    ),
    (
        "usage",
        (),
        dict(
            prompt_tokens=10,
            completion_tokens=20,
            cached_tokens=5,
            images={"size": "1024x1024", "quality": "hd", "n": 2},
            characters=300,
            batch=True,
            cost_usd=0.5,
            model="dall-e-3",
            endpoint="/v1/images",
            api_key="sk-9",
            key_id="k_9",
            user_id="u-9",
            request_id="req-9",
        ),
        {},
    ),
    (
        "metric",
        ("llm_circuit_breaker_open", "gauge", 1.0),
        dict(
            labels={"provider": "openai"},
            endpoint="/e",
            model="m",
            api_key="sk-10",
            key_id="k_10",
            user_id="u-10",
            request_id="req-10",
        ),
        {"name": "llm_circuit_breaker_open", "kind": "gauge", "value": 1.0},
    ),
]

WIRE_TYPE = {
    "request": "request",
    "error": "error",
    "stream_start": "stream.start",
    "stream_token": "stream.token",
    "stream_end": "stream.end",
    "stream_backpressure": "stream.backpressure",
    "cache": "cache",
    "queue": "queue",
    "usage": "usage",
    "metric": "metric",
}


@pytest.mark.parametrize(("method", "args", "kwargs", "required"), FULL, ids=[f[0] for f in FULL])
def test_every_field_of_every_method(
    pull: Pull,
    make: Callable[..., Emitter],
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    required: dict[str, Any],
) -> None:
    em = make(pull.endpoint, source="svc")
    getattr(em, method)(*args, **kwargs, ts=TS)
    assert em.flush(timeout=5.0)
    (row,) = pull.rows(1)
    assert row == {"type": WIRE_TYPE[method], "source": "svc", "ts": TS, **required, **kwargs}
    assert em.sent == 1
    assert em.dropped == 0


# (method, args, the expected row minus type/source/ts: the method's non-None defaults only)
DEFAULTS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    (
        "request",
        (7.0,),
        {
            "duration_ms": 7.0,
            "status": 200,
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
    ),
    ("error", ("timeout",), {"error_type": "timeout"}),
    ("stream_start", ("s-2",), {"stream_id": "s-2"}),
    ("stream_token", ("s-2",), {"stream_id": "s-2", "n": 1}),
    ("stream_end", ("s-2",), {"stream_id": "s-2", "status": "completed"}),
    ("stream_backpressure", ("s-2",), {"stream_id": "s-2"}),
    ("cache", (False,), {"hit": False}),
    ("queue", (0,), {"depth": 0, "queue": "default"}),
    ("usage", (), {}),
    ("metric", ("x_total", "counter", 2), {"name": "x_total", "kind": "counter", "value": 2}),
]


@pytest.mark.parametrize(("method", "args", "expected"), DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_defaults_omit_none_and_stamp_ts(
    pull: Pull,
    make: Callable[..., Emitter],
    method: str,
    args: tuple[Any, ...],
    expected: dict[str, Any],
) -> None:
    em = make(pull.endpoint)
    t0 = time.time()
    getattr(em, method)(*args)
    t1 = time.time()
    assert em.flush()
    (row,) = pull.rows(1)
    ts = row.pop("ts")
    assert isinstance(ts, float)
    assert t0 <= ts <= t1
    assert row == {"type": WIRE_TYPE[method], "source": "default", **expected}


def test_explicit_none_is_omitted(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint)
    em.request(1.0, status=None, input_tokens=None, output_tokens=None, cached_tokens=None,
               cache_write_tokens=None, reasoning_tokens=None, ts=TS)  # fmt: skip
    em.stream_end("s", status=None, ts=TS)
    em.queue(3, queue=None, ts=TS)
    assert em.flush()
    rows = pull.rows(3)
    assert rows == [
        {"type": "request", "source": "default", "ts": TS, "duration_ms": 1.0},
        {"type": "stream.end", "source": "default", "ts": TS, "stream_id": "s"},
        {"type": "queue", "source": "default", "ts": TS, "depth": 3},
    ]


# ------------------------------------------------------------------------------- batching shape


def test_same_labels_share_one_batch_with_labels_in_const(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint, source="api")
    for i in range(5):
        em.request(10.0 + i, endpoint="/a", model="m1", input_tokens=i, ts=TS + i)
    assert em.flush()
    frame = pull.recv_frame(5.0)
    assert frame is not None
    raw = pull.frames[-1]
    assert len(raw) == 5
    # Look at the batch itself: one batch, labels and constant fields in const.
    em.request(1.0, endpoint="/a", model="m1", ts=TS)
    em.request(2.0, endpoint="/a", model="m1", ts=TS + 1)
    assert em.flush()
    assert pull.sock.poll(5000)
    (batch,) = batches(pull.sock.recv())
    assert batch == {
        "v": 1,
        "type": "request",
        "cols": {"ts": [TS, TS + 1], "duration_ms": [1.0, 2.0]},
        "const": {
            "source": "api",
            "endpoint": "/a",
            "model": "m1",
            "status": 200,
            "input_tokens": 0,
            "output_tokens": 0,
            "cached_tokens": 0,
            "cache_write_tokens": 0,
            "reasoning_tokens": 0,
        },
    }


def test_different_labels_split_into_batches(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint)
    em.request(1.0, endpoint="/a", model="m1", ts=TS)
    em.request(2.0, endpoint="/b", model="m1", ts=TS)
    em.request(3.0, endpoint="/a", model="m1", ts=TS)
    em.request(4.0, endpoint="/a", model="m2", ts=TS)
    em.request(5.0, endpoint="/a", model="m1", status=500, error_type="x", ts=TS)
    em.stream_token("s1", ts=TS)
    em.stream_token("s2", ts=TS)
    em.stream_token("s1", ts=TS)
    assert em.flush()
    assert pull.sock.poll(5000)
    got = batches(pull.sock.recv())
    summary = sorted(
        (b["type"], tuple(sorted((k, v) for k, v in b["const"].items() if isinstance(v, str))),
         len(b["cols"]["ts"]))
        for b in got
    )  # fmt: skip
    assert summary == sorted(
        [
            ("request", (("endpoint", "/a"), ("model", "m1"), ("source", "default")), 2),
            ("request", (("endpoint", "/b"), ("model", "m1"), ("source", "default")), 1),
            ("request", (("endpoint", "/a"), ("model", "m2"), ("source", "default")), 1),
            (
                "request",
                (("endpoint", "/a"), ("error_type", "x"), ("model", "m1"), ("source", "default")),
                1,
            ),
            ("stream.token", (("source", "default"), ("stream_id", "s1")), 2),
            ("stream.token", (("source", "default"), ("stream_id", "s2")), 1),
        ]
    )
    first = next(b for b in got if b["const"].get("endpoint") == "/a" and len(b["cols"]["ts"]) == 2)
    assert first["cols"]["duration_ms"] == [1.0, 3.0]  # order kept within a batch


def test_field_present_in_some_rows_only_splits_the_batch(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint)
    em.request(1.0, endpoint="/a", ttft_ms=5.0, ts=TS)
    em.request(2.0, endpoint="/a", ts=TS + 1)
    em.request(3.0, endpoint="/a", ttft_ms=6.0, ts=TS + 2)
    em.request(4.0, endpoint="/a", user_id="u", ts=TS + 3)
    assert em.flush()
    assert pull.sock.poll(5000)
    data = pull.sock.recv()
    got = batches(data)
    assert len(got) == 3
    rows = sorted(expand(unpack(data)), key=lambda r: r["ts"])
    base = {"type": "request", "source": "default", "endpoint": "/a", "status": 200,
            "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
            "cache_write_tokens": 0, "reasoning_tokens": 0}  # fmt: skip
    assert rows == [
        {**base, "ts": TS, "duration_ms": 1.0, "ttft_ms": 5.0},
        {**base, "ts": TS + 1, "duration_ms": 2.0},
        {**base, "ts": TS + 2, "duration_ms": 3.0, "ttft_ms": 6.0},
        {**base, "ts": TS + 3, "duration_ms": 4.0, "user_id": "u"},
    ]


def test_values_equal_but_of_different_types_are_not_folded(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint)
    em.usage(prompt_tokens=1, cost_usd=1.0, ts=TS)
    em.usage(prompt_tokens=1, cost_usd=1, ts=TS)  # 1 == 1.0, but an int on the wire
    em.metric("m", "gauge", 1.0, labels={"a": "b"}, ts=TS)
    em.metric("m", "gauge", 2.0, labels={"a": "c"}, ts=TS)
    em.metric("m", "gauge", 3.0, labels={"a": "b"}, ts=TS)
    assert em.flush()
    rows = pull.rows(5)
    usage = [r for r in rows if r["type"] == "usage"]
    assert [(r["cost_usd"], type(r["cost_usd"])) for r in usage] == [(1.0, float), (1, int)]
    metrics = sorted((r["value"], r["labels"]) for r in rows if r["type"] == "metric")
    assert metrics == [(1.0, {"a": "b"}), (2.0, {"a": "c"}), (3.0, {"a": "b"})]


# ------------------------------------------------------------------------------- flush triggers


def test_size_triggered_flush(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint, batch_size=10, batch_timeout_seconds=30.0)
    for i in range(9):
        em.request(float(i))
    assert pull.quiet(0.3), "9 < batch_size events and a 30 s timeout: nothing may be sent yet"
    em.request(9.0)
    rows = pull.rows(10, timeout=3.0)
    assert [r["duration_ms"] for r in rows] == [float(i) for i in range(10)]


def test_time_triggered_flush(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint, batch_size=1000, batch_timeout_seconds=0.05)
    t0 = time.monotonic()
    em.queue(3, queue="q")
    (row,) = pull.rows(1, timeout=3.0)
    assert row["depth"] == 3
    assert time.monotonic() - t0 < 2.0


def test_flush_hands_everything_to_zmq_in_order(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint, batch_timeout_seconds=30.0)
    for i in range(300):
        em.request(float(i), endpoint="/a" if i % 3 else "/b", ts=TS + i)
    assert em.buffered == 300  # nothing flushed yet (30 s timeout, 1000 batch size)
    assert em.flush(timeout=5.0)
    assert em.sent == 300  # flush returned: all handed to zmq
    assert em.buffered == 0
    rows = pull.rows(300, timeout=3.0)
    for ep in ("/a", "/b"):
        got = [r["duration_ms"] for r in rows if r["endpoint"] == ep]
        want = [float(i) for i in range(300) if (ep == "/a") == bool(i % 3)]
        assert got == want


def test_frames_hold_at_most_10000_events(pull: Pull, make: Callable[..., Emitter]) -> None:
    n = 25_000
    em = make(pull.endpoint, batch_size=10**6, batch_timeout_seconds=30.0, max_buffer=10**6)
    for i in range(n):
        em.request(float(i), endpoint="/a", ts=TS)
    assert em.flush(timeout=10.0)
    rows = pull.rows(n, timeout=10.0)
    assert len(pull.frames) >= 3
    assert all(len(f) <= 10_000 for f in pull.frames)
    assert [r["duration_ms"] for r in rows] == [float(i) for i in range(n)]
    assert em.sent == n and em.dropped == 0


def test_frames_stay_under_one_mebibyte(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint, batch_timeout_seconds=30.0)
    big = "x" * 100_000
    for i in range(30):
        em.error("boom", error_message=f"{i}:{big}", endpoint="/a", ts=TS)
    em.error("huge", error_message="y" * (2 * MiB), ts=TS)  # alone larger than a frame
    assert em.flush(timeout=5.0)
    rows = pull.rows(30, timeout=5.0)  # recv_frame asserts ≤ 1 MiB per frame
    assert len(pull.frames) >= 3
    assert sorted(int(r["error_message"].split(":")[0]) for r in rows) == list(range(30))
    assert em.dropped == 1  # the event that cannot fit any frame
    deadline = time.monotonic() + 3
    while not pull.client_reports() and time.monotonic() < deadline:
        pull.recv_frame(0.2)
    assert [r["dropped"] for r in pull.client_reports()] == [1]


# ---------------------------------------------------------------------------------------- drops


def test_drops_while_daemon_absent_are_reported_exactly(
    ctx: zmq.Context[Any], make: Callable[..., Emitter]
) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    em = make(endpoint, sndhwm=1, batch_timeout_seconds=0.02)
    total = 0
    for _ in range(6):
        for i in range(10):
            em.request(float(i), endpoint="/a")
            total += 1
        assert em.flush()
    # One frame fits in the unconnected pipe (HWM 1, give or take ZeroMQ's slack); the rest
    # would block: dropped and counted.
    assert em.dropped > 0
    assert em.sent + em.dropped == total
    dropped = em.dropped
    pull = Pull(ctx, endpoint)  # the daemon appears
    try:
        deadline = time.monotonic() + 5
        while not pull.client_reports() and time.monotonic() < deadline:
            pull.recv_frame(0.2)
        reports = pull.client_reports()
        # Normally one report with the whole count (a report only goes out with a frame that
        # gets through); several if ZeroMQ's pipe had slack for one while the daemon was away.
        assert reports
        assert all(set(r) == {"type", "dropped", "source", "v"} for r in reports)
        assert sum(r["dropped"] for r in reports) == dropped
        received = sum(1 for f in pull.frames for r in f if r["type"] == "request")
        deadline = time.monotonic() + 3
        while received < em.sent and time.monotonic() < deadline:
            frame = pull.recv_frame(0.2)
            received += sum(1 for r in frame or [] if r["type"] == "request")
        assert received == em.sent == total - dropped
        # Reported once: the next frames carry no report. (Wait for the 1-frame pipe to drain,
        # or this frame would meet the high-water mark.)
        time.sleep(0.3)
        em.request(1.0)
        assert em.flush()
        assert em.dropped == dropped
        pull.rows(1)
        assert pull.quiet(0.2)
        assert pull.client_reports() == reports
    finally:
        pull.close()


def test_concurrent_callers_lose_nothing(pull: Pull, make: Callable[..., Emitter]) -> None:
    """Many threads appending while the flusher swaps buffers every 100 events."""
    threads, per_thread = 4, 20_000
    em = make(pull.endpoint, batch_size=100, sndhwm=100_000, max_buffer=10**6)

    def work(t: int) -> None:
        for i in range(per_thread):
            em.stream_token(f"s{t}", n=i, ts=TS)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    rows = pull.rows(threads * per_thread, timeout=15.0)
    for w in workers:
        w.join()
    assert em.flush()
    assert pull.quiet(0.2)
    assert em.dropped == 0 and em.sent == threads * per_thread
    for t in range(threads):  # every event once, in each thread's order
        assert [r["n"] for r in rows if r["stream_id"] == f"s{t}"] == list(range(per_thread))


def test_buffer_full_drops_are_counted_and_reported(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint, max_buffer=5, batch_timeout_seconds=30.0)
    for i in range(8):
        em.request(float(i), ts=TS)
    assert em.dropped == 3  # counted on the calling thread, at once
    assert em.buffered == 5
    assert em.flush()
    frame = pull.recv_frame(5.0)
    assert frame is not None
    assert [r["duration_ms"] for r in frame if r["type"] == "request"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r for r in frame if r["type"] == "client"] == [
        {"type": "client", "dropped": 3, "source": "default", "v": 1}
    ]
    assert em.sent == 5 and em.dropped == 3


def test_never_raises_on_a_bad_endpoint(make: Callable[..., Emitter]) -> None:
    em = make("this is not an endpoint", batch_timeout_seconds=0.01)
    for method, args, kwargs, _ in FULL:
        getattr(em, method)(*args, **kwargs)
    assert em.flush(timeout=2.0)
    assert em.dropped == len(FULL)
    assert em.sent == 0
    assert em.close(timeout=1.0)


def test_bad_values_are_dropped_alone(pull: Pull, make: Callable[..., Emitter]) -> None:
    em = make(pull.endpoint)
    em.request(1.0, endpoint="/a", ts=TS)
    em.request(object(), endpoint="/a", ts=TS)  # type: ignore[arg-type]  # unpackable
    em.request(3.0, endpoint="/a", ts=TS)
    em.request(4.0, model=["unhashable"], ts=TS)  # type: ignore[arg-type]  # packable, odd
    em.metric("m", "gauge", 1.0, labels={"k": ["unhashable"]}, ts=TS)  # type: ignore[dict-item]
    em.request(5.0, endpoint="/a", status=2**70, ts=TS)  # too large for msgpack
    assert em.flush()
    rows = pull.rows(4)
    assert sorted((r["type"], r.get("duration_ms", 0.0)) for r in rows) == [
        ("metric", 0.0),
        ("request", 1.0),
        ("request", 3.0),
        ("request", 4.0),
    ]
    assert em.dropped == 2


# ------------------------------------------------------------------------------------ lifecycle


def test_close_is_idempotent_and_later_events_are_dropped(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint, batch_timeout_seconds=30.0)
    em.request(1.0)
    assert em.close()
    (row,) = pull.rows(1)  # close flushed it
    assert row["duration_ms"] == 1.0
    assert em.close()
    assert em.close(timeout=0.0)
    em.request(2.0)
    em.stream_token("s")
    assert em.dropped == 2
    assert em.flush()
    assert pull.quiet(0.2)


def test_close_without_use_and_context_manager(pull: Pull) -> None:
    Emitter(pull.endpoint).close()
    with Emitter(pull.endpoint) as em:
        em.cache(True, ts=TS)
    assert pull.rows(1) == [{"type": "cache", "source": "default", "ts": TS, "hit": True}]


def test_endpoint_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METRICSD_INGEST", raising=False)
    assert Emitter().endpoint == DEFAULT_ENDPOINT == "tcp://127.0.0.1:5557"
    monkeypatch.setenv("METRICSD_INGEST", "ipc:///tmp/metricsd-test.sock")
    assert Emitter().endpoint == "ipc:///tmp/metricsd-test.sock"
    assert Emitter("tcp://10.0.0.1:1").endpoint == "tcp://10.0.0.1:1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork test: Linux only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_gets_its_own_buffer_thread_and_socket(
    pull: Pull, make: Callable[..., Emitter]
) -> None:
    em = make(pull.endpoint, source="forky", batch_timeout_seconds=30.0)
    em.request(1.0, endpoint="/parent", ts=TS)
    assert em.flush()  # the parent's thread, context and socket exist
    assert pull.rows(1)[0]["endpoint"] == "/parent"
    em.request(2.0, endpoint="/parent-prefork", ts=TS)  # buffered in the parent at fork time
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            if em.buffered == 0 and em.sent == 0:
                for i in range(3):
                    em.request(10.0 + i, endpoint="/child", ts=TS)
                ok = em.close(timeout=5.0)
                code = 0 if ok and em.sent == 3 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert em.flush()
    rows = pull.rows(4, timeout=5.0)
    assert sorted((r["endpoint"], r["duration_ms"]) for r in rows) == [
        ("/child", 10.0),
        ("/child", 11.0),
        ("/child", 12.0),
        ("/parent-prefork", 2.0),
    ]
    assert all(r["source"] == "forky" for r in rows)
    assert pull.quiet(0.2)  # the prefork event was sent once, by the parent
    em.request(3.0, endpoint="/parent", ts=TS)  # the parent's emitter still works
    assert em.flush()
    assert pull.rows(1)[0]["duration_ms"] == 3.0


def test_hot_path_only_appends(monkeypatch: pytest.MonkeyPatch) -> None:
    """No packing and no socket on the caller's thread: the events wait as tuples."""
    calls: list[str] = []

    def encode(*args: Any) -> tuple[list[tuple[int, bytes]], int]:
        calls.append("encode")
        return [], 0

    monkeypatch.setattr(_wire, "encode", encode)
    em = Emitter("tcp://127.0.0.1:9", batch_timeout_seconds=30.0)
    try:
        em.request(1.0, endpoint="/a", ts=TS)
        em.stream_token("s", n=2, ts=TS)
        assert calls == []
        assert list(em._buf) == [
            (0, TS, 1.0, 200, 0, 0, 0, 0, 0, None, None, None, None, None, None, None, None,
             None, "/a", None, None, None, None, None),
            (3, TS, "s", 2, None, None, None, None, None, None, None, None),
        ]  # fmt: skip
    finally:
        em.close(timeout=0.5)


# --------------------------------------------------------------------------- encoder round trip


def _random_row(rng: random.Random, code: int) -> tuple[Any, ...]:
    spec = _wire.SPECS[code]
    pools: dict[str, list[Any]] = {
        "labels": [None, {"a": "1"}, {"a": "2", "b": "x"}],
        "images": [None, {"size": "256x256", "quality": "standard", "n": 1}],
    }
    row: list[Any] = [code]
    for name in spec.fields:
        if name == "ts":
            row.append(TS + rng.randrange(4))
        elif name in pools:
            row.append(rng.choice(pools[name]))
        elif name in spec.labels:
            row.append(rng.choice([None, "a", "b"]))
        else:
            row.append(rng.choice([None, 0, 1, 1.0, True, 2.5, "s", -3]))
    return tuple(row)


@pytest.mark.parametrize("typed", [False, True], ids=["arrays", "typed"])
@pytest.mark.parametrize("seed", range(20))
def test_encode_round_trip_is_exact(
    seed: int, typed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random rows of every type: the decoded rows equal the inputs minus None, in order.

    ``arrays``: typed columns off, every value keeps its msgpack type. ``typed``: every batch
    may use typed columns; an int in a column that also holds floats then arrives as the equal
    float (the daemon reads both alike), so numbers are compared as numbers.
    """
    monkeypatch.setattr(_wire, "MIN_TYPED_ROWS", 1 if typed else 10**9)
    rng = random.Random(seed)
    rows = [_random_row(rng, rng.randrange(len(_wire.SPECS))) for _ in range(rng.randrange(1, 400))]
    packer = _wire.new_packer()
    packed, dropped = _wire.encode(rows, "src", packer)
    assert dropped == 0
    frames = _wire.assemble(packed)
    decoded: list[dict[str, Any]] = []
    for _, parts in frames:
        data = _wire.frame(parts, None, packer)
        has_ext = any(
            isinstance(c, msgpack.ExtType)
            for b in msgpack.unpackb(data, raw=False)
            for c in b["cols"].values()
        )
        assert has_ext == typed  # every batch has a ts column of floats
        decoded.extend(expand(unpack(data)))
    want = [
        {"type": _wire.SPECS[r[0]].type, "source": "src"}
        | {f: v for f, v in zip(_wire.SPECS[r[0]].fields, r[1:], strict=True) if v is not None}
        for r in rows
    ]

    def value(v: Any) -> tuple[str, str]:
        if typed and type(v) in (int, float):
            return ("number", repr(float(v)))
        return (type(v).__name__, repr(v))

    def canon(d: dict[str, Any]) -> str:  # exact, types included (1, 1.0 and True differ)
        return repr(sorted((k, *value(v)) for k, v in d.items()))

    assert sorted(map(canon, decoded)) == sorted(map(canon, want))
    # Within a type and label set, order is kept: ts of equal-label rows appear in input order.
    assert len(decoded) == len(rows)
