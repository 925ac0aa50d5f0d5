"""Live fuzz of a running daemon over real ZeroMQ: hostile frames in, exact reject counts out.

1. A deterministic set of hostile frames (every reject reason, wrong types, NaN and infinity,
   absurd magnitudes, 10 KB strings, huge arrays, deep nesting, multipart messages, a frame over
   1 MiB) whose counts are written by hand: the daemon must count each reject by reason to the
   event, apply the valid rest, and count every truncated string.
2. Seeded random garbage (random bytes, truncated and bit-flipped valid frames, events with
   fields of random types): the daemon's counters must equal what ``protocol.decode`` says of
   the same bytes, frame by frame.
3. Both sets again, many times: resident memory must stay flat, the daemon keeps serving
   (/healthz, and a valid frame sent afterwards is applied), and its log holds no traceback.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import zmq

from fuzz.make_corpus import event as corpus_event
from metricsd.protocol import REASONS, Limits, decode
from metricsd.schema import EVENT_TYPES
from tests.conftest import Daemon
from tests.reliability.reliability_support import (
    assert_healthy,
    by_label,
    log_failures,
    mib,
    rss,
    total,
    wait_until,
)

MiB = 1 << 20


def event(type_name: str, **extra: Any) -> dict[str, Any]:
    """A valid event of the corpus, stamped now: the daemon refuses a ``ts`` more than a day
    from its clock (SPEC §8), and these must be valid but for the field each case breaks."""
    return {**corpus_event(type_name), "ts": time.time(), **extra}


#: Repetitions of both sets for the memory check, and the growth allowed across them.
ROUNDS = 4
RSS_GROWTH_LIMIT = 24 * MiB


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


class Expect:
    """Frames to send and, written by hand, what the daemon must count for them."""

    def __init__(self) -> None:
        self.frames: list[bytes | list[bytes]] = []
        self.rejected: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.truncated = 0

    def add(
        self,
        frame: Any,
        accepted: dict[str, int] | None = None,
        truncated: int = 0,
        **rejected: int,
    ) -> None:
        if isinstance(frame, list) and frame and all(isinstance(p, bytes) for p in frame):
            self.frames.append(frame)  # a multipart message
        else:
            self.frames.append(frame if isinstance(frame, bytes) else msgpack.packb(frame))
        self.rejected.update(rejected)
        self.accepted.update(accepted or {})
        self.truncated += truncated


def hostile_set() -> Expect:
    e = Expect()
    valid = msgpack.packb(event("request"))
    # Not msgpack at all, or not one complete msgpack object.
    e.add(b"\xc1", decode=1)
    e.add(b"", decode=1)
    e.add(valid[:17], decode=1)
    e.add(valid + b"\x90", decode=1)
    e.add(b"\x91" * 100_000 + b"\xc0", decode=1)  # nested 100 000 deep
    e.add(b"\xdd\xff\xff\xff\xff", decode=1)  # an array announcing 4 billion elements
    e.add(b"\xdb\xff\xff\xff\xf0abc", decode=1)  # a string announcing 4 GiB
    # Frame shapes.
    e.add(12345, shape=1)
    e.add("request", shape=1)
    e.add(nested(300), shape=1)
    e.add([b"\x81\xa4type\xa7request", b"second part"], shape=1)  # multipart: one frame
    e.add({"duration_ms": 5.0}, shape=1)
    e.add({"type": "request", "cols": {"duration_ms": [1.0, 2.0], "status": [200]}}, shape=2)
    e.add({"type": "request", "cols": "duration_ms"}, shape=1)
    e.add({**event("request"), "v": 2}, version=1)
    e.add({"type": "request", "v": 1.5, "cols": {"duration_ms": [1.0] * 4}}, version=4)
    e.add({"type": "llm.request", "duration_ms": 5.0}, unknown_type=1)
    e.add({"type": ["request"], "duration_ms": 5.0}, unknown_type=1)
    e.add([{"type": t} for t in EVENT_TYPES if t != "usage"], missing_field=len(EVENT_TYPES) - 1)
    # Wrong types: one rejected event each.
    for field, value in (
        ("duration_ms", "fast"),
        ("status", "500"),
        ("streaming", "yes"),
        ("input_tokens", 1.5),
        ("input_tokens", -3),
        ("endpoint", 42),
        ("model", b"\x00\xff"),
        ("ts", [1.0]),
        ("cost_usd", {"usd": 1}),
    ):
        e.add({**event("request"), field: value}, bad_value=1)
    e.add({**event("cache"), "hit": 1}, bad_value=1)
    e.add({**event("metric"), "kind": "summary"}, bad_value=1)
    e.add({**event("metric"), "name": "not a name"}, bad_value=1)
    e.add({**event("metric"), "labels": {"__name__": "x"}}, bad_value=1)
    e.add({**event("stream.end"), "status": 3}, bad_value=1)
    # NaN, infinities and magnitudes no sum could hold.
    for value in (math.nan, math.inf, -math.inf, 1e300, sys.float_info.max, -1e101):
        e.add({**event("request"), "duration_ms": value}, bad_value=1)
        e.add({**event("request"), "cost_usd": value}, bad_value=1)
        e.add({**event("metric"), "value": value}, bad_value=1)
        e.add({**event("stream.start", stream_id="nan-s"), "ts": value}, bad_value=1)
    e.add({**event("request"), "input_tokens": 1e19}, bad_value=1)
    e.add({**event("request"), "output_tokens": 2**64 - 1}, bad_value=1)
    e.add(
        {"type": "request", "cols": {"duration_ms": [1.0, math.nan, math.inf, 1e300, 2.0]}},
        accepted={"request": 2},
        bad_value=3,
    )
    # 10 KB strings: cut to their limit and counted, the event kept.
    e.add({**event("request"), "model": "m" * 10_240}, accepted={"request": 1}, truncated=1)
    e.add({**event("error"), "error_message": "e" * 10_240}, accepted={"error": 1}, truncated=1)
    e.add(
        {**event("stream.token", stream_id="long-text"), "text": "t" * 10_240},
        accepted={"stream.token": 1},
        truncated=1,
    )
    e.add(
        {
            "type": "request",
            "const": {"endpoint": "/" + "p" * 10_240},
            "cols": {"duration_ms": [1.0] * 3},
        },
        accepted={"request": 3},
        truncated=1,
    )
    # Huge arrays: too many events, over 1 MiB, an array where a number belongs.
    e.add({"type": "client", "cols": {"dropped": [0] * 10_001}}, too_many=10_001)
    e.add([{"type": "client", "dropped": 0}] * 10_001, too_many=10_001)
    e.add({**event("request"), "model": "x" * (MiB + 16)}, too_large=1)
    e.add({**event("request"), "duration_ms": [0] * 100_000}, bad_value=1)
    # Deep nesting inside an event.
    e.add({**event("metric"), "labels": {"a": nested(500)}}, bad_value=1)
    e.add({**event("request"), "duration_ms": nested(1000)}, bad_value=1)
    # A mixed array: the valid events are applied, the others counted.
    e.add(
        [event("queue"), 7, {"type": "nope"}, {"type": "queue"}, {**event("queue"), "v": 3}],
        accepted={"queue": 1},
        shape=1,
        unknown_type=1,
        missing_field=1,
        version=1,
    )
    return e


def random_set(rng: random.Random, count: int) -> list[bytes]:
    """Random bytes, truncated and mutated valid frames, events with random-typed fields."""
    valid = [msgpack.packb(event(t)) for t in EVENT_TYPES]
    valid.append(msgpack.packb([event(t) for t in EVENT_TYPES]))
    junk: list[Any] = [
        None,
        True,
        -1,
        2**63,
        1.5,
        math.nan,
        math.inf,
        "",
        "s" * 300,
        b"\x00",
        [],
        [1, "a"],
        {},
        {"k": "v"},
    ]
    frames: list[bytes] = []
    for _ in range(count):
        kind = rng.randrange(4)
        if kind == 0:
            frames.append(rng.randbytes(rng.randrange(0, 512)))
        elif kind == 1:
            base = rng.choice(valid)
            frames.append(base[: rng.randrange(0, len(base))])
        elif kind == 2:
            data = bytearray(rng.choice(valid))
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            frames.append(bytes(data))
        else:
            t = rng.choice(sorted(EVENT_TYPES))
            ev = event(t)
            for name in rng.sample(sorted(EVENT_TYPES[t]), k=rng.randrange(1, 4)):
                ev[name] = rng.choice(junk)
            frames.append(msgpack.packb(ev))
    return frames


def expected_of(frames: list[bytes]) -> tuple[Counter[str], Counter[str], int]:
    """What the decoder says of each frame on its own: (rejected, accepted by type, truncated)."""
    rejected: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    truncated = 0
    for frame in frames:
        result = decode(frame, time.time(), Limits())
        rejected.update(result.rejected)
        for batch in result.batches:
            accepted[batch.type] += batch.n
        truncated += result.truncated
    return rejected, accepted, truncated


def counters(d: Daemon) -> tuple[float, Counter[str], Counter[str], float]:
    """(frames received, rejected by reason, accepted by type, strings truncated)."""
    samples = d.samples()
    rejected: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    for (name, labels), value in samples.items():
        if name == "metricsd_events_invalid_total" and value:
            rejected[dict(labels)["reason"]] = int(value)
        elif name == "metricsd_events_received_total" and value:
            accepted[dict(labels)["type"]] = int(value)
    frames = samples.get(("metricsd_frames_received_total", ()), 0.0)
    truncated = samples.get(("metricsd_strings_truncated_total", ()), 0.0)
    return frames, rejected, accepted, truncated


def send_all(sock: zmq.Socket[Any], frames: Sequence[bytes | list[bytes]]) -> None:
    for frame in frames:
        if isinstance(frame, list):
            sock.send_multipart(frame)
        else:
            sock.send(frame)


def wait_frames(d: Daemon, frames: int, timeout: float = 20.0) -> None:
    got = wait_until(
        lambda: d.value("metricsd_frames_received_total"), lambda v: v >= frames, timeout
    )
    assert got == frames, f"the daemon received {got} frames, expected {frames}"


def test_live_fuzz(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory()
    sock = d.push()
    hostile = hostile_set()

    # 1. The hand-counted set: every reject by reason, to the event.
    send_all(sock, hostile.frames)
    sent = len(hostile.frames)
    wait_frames(d, sent)
    frames, rejected, accepted, truncated = counters(d)
    assert frames == sent
    assert rejected == hostile.rejected
    assert accepted == hostile.accepted
    assert truncated == hostile.truncated
    assert set(rejected) <= set(REASONS)
    assert_healthy(d)

    # 2. Seeded random garbage: the daemon counts exactly what the decoder says of each frame.
    rng = random.Random(20240612)
    garbage = random_set(rng, 3000)
    want_rejected, want_accepted, want_truncated = expected_of(garbage)
    assert sum(want_rejected.values()) > 2000  # it is mostly garbage
    send_all(sock, list(garbage))
    sent += len(garbage)
    wait_frames(d, sent)
    frames, rejected, accepted, truncated = counters(d)
    assert frames == sent
    assert rejected == hostile.rejected + want_rejected
    assert accepted == hostile.accepted + want_accepted
    assert truncated == hostile.truncated + want_truncated
    assert_healthy(d)

    # A frame far over ZeroMQ's own message limit (16 MiB) disconnects that peer, and nothing
    # else: it is refused before it is buffered, so it is not counted as a frame.
    with zmq.Context() as ctx, ctx.socket(zmq.PUSH) as big:
        big.setsockopt(zmq.LINGER, 2000)
        big.setsockopt(zmq.SNDTIMEO, 5000)
        big.connect(d.ingest[0])
        big.send(b"\xc4" + b"\x00" * (17 * MiB))
        time.sleep(0.5)

    # 3. Memory: both sets again and again; resident memory stays flat after the first rounds.
    samples: list[int] = []
    for i in range(ROUNDS):
        send_all(sock, hostile.frames)
        send_all(sock, random_set(random.Random(i), 3000))
        sent += len(hostile.frames) + 3000
        wait_frames(d, sent, timeout=30.0)
        samples.append(rss(d))
    growth = max(samples[2:]) - samples[1]
    print(f"live fuzz RSS by round: {', '.join(mib(s) for s in samples)}; growth {mib(growth)}")
    assert growth < RSS_GROWTH_LIMIT, [mib(s) for s in samples]

    # Still serving: a valid frame sent now is applied, /healthz answers, nothing was logged.
    d.send({"type": "request", "model": "after-fuzz", "duration_ms": 12.0})
    applied = wait_until(
        lambda: by_label(d, "llm_requests_total", "model").get("after-fuzz", 0.0),
        lambda v: v >= 1,
        10.0,
    )
    assert applied == 1
    assert_healthy(d)
    assert total(d, "metricsd_events_invalid_total") > 0
    assert log_failures(d) == []
