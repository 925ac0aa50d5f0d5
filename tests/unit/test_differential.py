"""The columnar path against the one-event-at-a-time path: the same snapshot, to the last bit.

Random mixed traffic (fixed seeds: every event type, labels sent as constants and as columns,
streams whose events cross frames) is applied twice to fresh engines: once one event per frame
and per apply, once packed into frames of every shape (arrays of maps, columnar batches grouped
by label set, columnar batches with the labels as columns, single events) and several frames
per decode, as ingest does. Every JSON view and the whole exposition must be equal. Only what
depends on arrival order inside one ingest wake-up is compared as a set or left out: the order of
the recent-outcomes ring and of a pattern's example request ids (sets), and a pattern's sample
message, which is its first occurrence's (left out).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import msgpack
import pytest

from metricsd.config import load_config
from metricsd.decode import Decoder
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.wiring import build_engine

WALL = 1_800_000_000.0
NOW = 1_000.0
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "o1-mini", "mystery-model")
ENDPOINTS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings")
KEYS = ("sk-one", "sk-two", None)
#: Each error type has one status, so a pattern's "status of the first occurrence" does not
#: depend on the order rows of one wake-up are applied in.
ERRORS = {"rate_limit": 429, "upstream": 502, "timeout": 503, "bad_request": 400}
LABEL_FIELDS = (
    "endpoint",
    "model",
    "provider",
    "key_id",
    "api_key",
    "status",
    "error_type",
    "finish_reason",
    "stream_id",
    "queue",
    "name",
    "kind",
    "hit",
    "streaming",
    "batch",
)


def _request(rng: random.Random, t: float, i: int) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "request",
        "ts": t,
        "model": rng.choice(MODELS),
        "endpoint": rng.choice(ENDPOINTS),
        "duration_ms": round(rng.lognormvariate(5.0, 1.0), rng.choice((0, 3, 6))),
        "input_tokens": rng.randrange(0, 5000),
        "output_tokens": rng.randrange(0, 2000),
        "request_id": f"req-{i}",
    }
    if rng.random() < 0.3:
        event["cached_tokens"] = rng.randrange(0, 500)
    if rng.random() < 0.1:
        event["reasoning_tokens"] = rng.randrange(0, 300)
    key = rng.choice(KEYS)
    if key is not None:
        event["api_key" if rng.random() < 0.5 else "key_id"] = key
    if rng.random() < 0.08:
        kind = rng.choice(list(ERRORS))
        event["status"] = ERRORS[kind]
        event["error_type"] = kind
        event["error_message"] = f"{kind} after {rng.randrange(1, 9)} tries (req-{i})"
    else:
        event["status"] = 200
        event["finish_reason"] = rng.choice(("stop", "length", "tool_calls"))
    if rng.random() < 0.2:
        event["queue_ms"] = round(rng.uniform(0, 50), 3)
    if rng.random() < 0.15:
        event["streaming"] = True
        event["ttft_ms"] = round(rng.uniform(20, 900), 3)
    if rng.random() < 0.05:
        event["batch"] = True
    if rng.random() < 0.05:
        event["cost_usd"] = round(rng.uniform(0, 0.5), 6)
    if rng.random() < 0.05:
        event["provider"] = "azure"
    if rng.random() < 0.2:
        event["user_id"] = f"user-{rng.randrange(5)}"
    return event


def _stream(rng: random.Random, t: float, sid: str) -> list[dict[str, Any]]:
    model, endpoint = rng.choice(MODELS), rng.choice(ENDPOINTS)
    events: list[dict[str, Any]] = [
        {
            "type": "stream.start",
            "stream_id": sid,
            "model": model,
            "endpoint": endpoint,
            "ts": t,
            "prompt_tokens": rng.randrange(1, 400),
        }
    ]
    now = t + rng.uniform(0.05, 0.8)
    for _ in range(rng.randrange(0, 12)):
        events.append(
            {
                "type": "stream.token",
                "stream_id": sid,
                "ts": round(now, 6),
                "n": rng.choice((1, 1, 1, 2, 3)),
                "bytes": rng.randrange(1, 40),
            }
        )
        now += rng.choice((0.01, 0.02, 0.05, 0.6))
    if rng.random() < 0.2:
        events.append(
            {"type": "stream.backpressure", "stream_id": sid, "buffer_size": rng.randrange(1, 100)}
        )
    if rng.random() < 0.9:  # the others stay active
        end: dict[str, Any] = {"type": "stream.end", "stream_id": sid, "ts": round(now, 6)}
        end["status"] = rng.choice(("completed",) * 6 + ("failed", "cancelled"))
        if end["status"] == "completed":
            end["finish_reason"] = "stop"
        events.append(end)
    return events


def traffic(seed: int, n: int = 500) -> list[dict[str, Any]]:
    """Events in causal order (a stream's start, then its tokens, then its end)."""
    rng = random.Random(seed)
    streams: list[list[dict[str, Any]]] = []
    out: list[dict[str, Any]] = []
    t = WALL
    for i in range(n):
        t += rng.uniform(0.0, 0.01)
        roll = rng.random()
        if roll < 0.55:
            out.append(_request(rng, round(t, 6), i))
        elif roll < 0.58:
            kind = rng.choice(list(ERRORS))
            out.append(
                {
                    "type": "error",
                    "ts": round(t, 6),
                    "error_type": kind,
                    "status": ERRORS[kind],
                    "model": rng.choice(MODELS),
                    "endpoint": rng.choice(ENDPOINTS),
                    "error_message": f"{kind} now",
                }
            )
        elif roll < 0.65:
            out.append(
                {
                    "type": "cache",
                    "hit": rng.random() < 0.6,
                    "total_tokens": rng.randrange(0, 900),
                    "matched_tokens": rng.randrange(0, 400),
                    "model": rng.choice(MODELS),
                    "endpoint": rng.choice(ENDPOINTS),
                }
            )
        elif roll < 0.67:
            out.append(
                {
                    "type": "queue",
                    "queue": rng.choice(("gpu", "cpu")),
                    "depth": rng.randrange(0, 40),
                    "capacity": 64,
                }
            )
        elif roll < 0.71:
            out.append(
                {
                    "type": "usage",
                    "model": rng.choice(MODELS),
                    "prompt_tokens": rng.randrange(0, 900),
                    "completion_tokens": rng.randrange(0, 400),
                    "api_key": rng.choice(("sk-one", "sk-two")),
                }
            )
        elif roll < 0.75:
            kind = rng.choice(("counter", "gauge", "histogram"))
            out.append(
                {
                    "type": "metric",
                    "name": f"app_{kind}",
                    "kind": kind,
                    "value": round(rng.uniform(0, 10), 3),
                    "labels": {"region": rng.choice(("eu", "us"))},
                }
            )
        elif roll < 0.77:
            out.append(
                {
                    "type": "client",
                    "dropped": rng.randrange(0, 5),
                    "source": rng.choice(("web", "batch")),
                }
            )
        else:
            streams.append(_stream(rng, round(t, 6), f"s-{seed}-{i}"))
        # Interleave the streams' pending events.
        for pending in streams:
            if pending and rng.random() < 0.5:
                out.append(pending.pop(0))
        streams = [p for p in streams if p]
    for pending in streams:
        out.extend(pending)
    return out


def _columnar(events: list[dict[str, Any]], labels_as_cols: bool) -> list[dict[str, Any]]:
    """Columnar batches: one per type and label set (labels in ``const``), or one per type
    with the labels as columns. A field an event lacks is nil in its column (absent)."""
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        if labels_as_cols:
            key: Any = (e["type"],)
        else:
            key = (e["type"], *(repr(e.get(f)) for f in LABEL_FIELDS))
        groups[key].append(e)
    out = []
    for rows in groups.values():
        names = sorted({k for r in rows for k in r} - {"type"})
        const: dict[str, Any] = {}
        cols: dict[str, list[Any]] = {}
        for name in names:
            values = [r.get(name) for r in rows]
            if not labels_as_cols and name in LABEL_FIELDS:
                const[name] = values[0]
            else:
                cols[name] = values
        if not cols:
            cols["ts"] = [WALL] * len(rows)  # a batch needs one column to carry N
        out.append({"type": rows[0]["type"], "const": const, "cols": cols})
    return out


def frames(events: list[dict[str, Any]], rng: random.Random) -> list[bytes]:
    """The events packed in frames of every shape, order kept between chunks."""
    out: list[bytes] = []
    i = 0
    while i < len(events):
        k = rng.randrange(1, 40)
        chunk = events[i : i + k]
        i += k
        shape = rng.choice(("maps", "const", "cols", "single"))
        if shape == "single":
            out.extend(msgpack.packb(e) for e in chunk)
        elif shape == "maps":
            out.append(msgpack.packb(chunk))
        else:
            out.append(msgpack.packb(_columnar(chunk, labels_as_cols=shape == "cols")))
    return out


def views(engine: Engine, now: float, wall: float) -> dict[str, Any]:
    snap = engine.snapshot(now, wall)
    out: dict[str, Any] = {
        name: snap.view(name, *args)
        for name, args in (
            ("json", ()),
            ("summary", (300.0,)),
            ("summary", (3600.0,)),
            ("streaming", (None,)),
            ("streaming", ("gpt-4o",)),
            ("errors", ()),
            ("slo", ()),
            ("costs", ()),
            ("histograms", ("", 300.0)),
        )
    }
    out["recent"] = sorted(map(repr, snap.view("recent", 1000)))
    errors = out["errors"]
    errors["recent_errors"] = sorted(map(repr, errors["recent_errors"]))
    patterns = snap.view("error_patterns", 1, False, None)
    for p in [*patterns, *errors["top_patterns"]]:
        p["example_request_ids"] = sorted(p["example_request_ids"])
        del p["sample_message"]
    out["patterns"] = sorted(map(repr, patterns))
    errors["top_patterns"] = sorted(map(repr, errors["top_patterns"]))
    for key in ("sk-one", "sk-two", "unknown"):
        from metricsd.keys import hash_key

        out[f"key {key}"] = snap.compute(
            "cost_key", hash_key(key) if key != "unknown" else key, wall
        )
    text = render_both(snap.families())[0].decode()
    out["exposition"] = sorted(
        line
        for line in text.splitlines()
        # Frames legitimately differ (the same events, packed differently).
        if not line.startswith(("process_", "metricsd_tick_duration", "metricsd_frames", "# "))
    )
    return out


def _engine() -> Engine:
    config = load_config(environ={})
    return build_engine(config, 0.0, WALL)


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 12, 13, 14])
def test_merged_frames_give_the_snapshot_of_one_event_at_a_time(seed: int) -> None:
    events = traffic(seed)
    half = len(events) // 2
    single = _engine()
    for phase, part in ((NOW, events[:half]), (NOW + 15.0, events[half:])):
        for event in part:
            single.apply(decode(msgpack.packb(event), WALL, single.limits), phase, WALL)
    merged = _engine()
    rng = random.Random(seed * 7919)
    for phase, part in ((NOW, events[:half]), (NOW + 15.0, events[half:])):
        packed = frames(part, rng)
        j = 0
        while j < len(packed):
            k = rng.randrange(1, 9)
            decoder = Decoder(WALL, merged.limits)
            for frame in packed[j : j + k]:
                decoder.add(frame)
            merged.apply(decoder.finish(), phase, WALL, frames=len(packed[j : j + k]))
            j += k
    assert single.events_invalid == merged.events_invalid == {}
    assert single.events_received == merged.events_received
    # The rings of recent outcomes (1 000) and errors (100) hold everything: which entries they
    # keep does not then depend on the order inside a wake-up.
    failed = sum(1 for e in events if e.get("status") not in (None, 200, "completed"))
    assert failed <= 100 and single.events_received["request"] <= 1000
    a, b = views(single, NOW + 20.0, WALL + 20.0), views(merged, NOW + 20.0, WALL + 20.0)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name
