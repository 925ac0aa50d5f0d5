"""The request tracker through the engine, with a synthetic clock and exact expected values."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.snapshot import Snapshot
from metricsd.trackers.requests import RequestTracker
from metricsd.window import Geometry

WALL = 1_700_000_000.0


class Harness:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config(environ={})
        self.tracker = RequestTracker(self.config, Geometry(), start=0.0)
        self.engine = Engine(self.config, [self.tracker])

    def send(self, frame: Any, now: float) -> None:
        self.engine.apply(
            decode(msgpack.packb(frame), WALL + now, self.engine.limits), now, WALL + now
        )

    def snap(self, now: float) -> Snapshot:
        return self.engine.snapshot(now, WALL + now)

    def samples(self, now: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = exposition(self.snap(now))[0].decode()
        out = {}
        for fam in parse_text(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out


def exposition(snap: Snapshot) -> tuple[bytes, bytes]:
    """(text 0.0.4, OpenMetrics) of a snapshot, as /metrics serves them."""
    return render_both(snap.families())


def batch(model: str, endpoint: str, durations: list[float], **cols: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "const": {"model": model, "endpoint": endpoint},
        "cols": {"duration_ms": durations, **cols},
    }


def test_counts_tokens_and_statuses() -> None:
    h = Harness()
    h.send(
        batch(
            "gpt-4o",
            "/v1/chat/completions",
            [100.0, 200.0, 300.0],
            status=[200, 200, 500],
            input_tokens=[10, 20, 30],
            output_tokens=[1, 2, 3],
            cached_tokens=[0, 5, 0],
            finish_reason=["stop", "length", "stop"],
        ),
        now=5.0,
    )
    s = h.samples(6.0)
    base = (("endpoint", "/v1/chat/completions"), ("model", "gpt-4o"), ("provider", "openai"))
    assert s[("llm_requests_total", tuple(sorted((*base, ("status", "200")))))] == 2
    assert s[("llm_requests_total", tuple(sorted((*base, ("status", "500")))))] == 1
    assert s[("llm_tokens_total", tuple(sorted((*base, ("type", "input")))))] == 60
    assert s[("llm_tokens_total", tuple(sorted((*base, ("type", "output")))))] == 6
    assert s[("llm_tokens_total", tuple(sorted((*base, ("type", "cached")))))] == 5
    assert s[("llm_request_duration_seconds_count", tuple(sorted(base)))] == 3
    assert s[("llm_request_duration_seconds_sum", tuple(sorted(base)))] == pytest.approx(0.6)
    le = lambda v: tuple(sorted((*base, ("le", v))))  # noqa: E731
    assert s[("llm_request_duration_seconds_bucket", le("0.08"))] == 0
    assert s[("llm_request_duration_seconds_bucket", le("0.16"))] == 1
    assert s[("llm_request_duration_seconds_bucket", le("0.32"))] == 3
    assert s[("llm_finish_reason_total", (("finish_reason", "stop"), ("model", "gpt-4o")))] == 2
    err = (
        ("endpoint", "/v1/chat/completions"),
        ("error_type", "http_error"),
        ("model", "gpt-4o"),
        ("status", "500"),
    )
    assert s[("llm_errors_total", err)] == 1


def test_rate_has_no_startup_spike_and_uses_window() -> None:
    h = Harness()
    h.send(batch("m", "/e", [1.0]), now=100.0)
    view = h.snap(100.0002).view("json")
    assert view["requests"]["/e"]["rate"] == 1.0  # one event over the 1 s floor, not 5 000/s
    for t in range(101, 400):  # one request per second for 5 minutes
        h.send(batch("m", "/e", [1.0]), now=float(t))
    view = h.snap(399.5).view("json")
    # The 5-minute window: slots from 100 s on, so 300 events over 299.5 s.
    assert view["requests"]["/e"]["rate"] == pytest.approx(300 / 299.5)


def test_json_view_latency_in_seconds_exact_min_max_avg() -> None:
    h = Harness()
    h.send(batch("m", "/e", [234.0, 100.0, 450.0]), now=1.0)
    view = h.snap(2.0).view("json")
    lat = view["latency"]["/e"]
    assert lat["min"] == 0.1 and lat["max"] == 0.45
    assert lat["avg"] == pytest.approx(0.784 / 3)
    assert view["responses"]["/e"]["p50"] == pytest.approx(0.234, rel=0.01)
    assert view["requests"]["/e"]["avg"] == 0.0
    assert view["by_model"]["m"]["requests"] == 3


def test_error_event_counts_as_request_without_latency() -> None:
    h = Harness()
    h.send({"type": "error", "error_type": "timeout", "endpoint": "/e", "model": "m"}, now=1.0)
    h.send(batch("m", "/e", [10.0]), now=1.0)
    snap = h.snap(2.0)
    summary = snap.view("summary", 300)
    assert summary["requests"] == 2 and summary["error_rate"] == 0.5
    assert summary["avg_latency_ms"] == 10.0
    recent = snap.view("recent", 10)
    assert recent[0]["latency_ms"] == 10.0
    assert recent[1] == {
        "timestamp": WALL + 1.0,
        "model": "m",
        "endpoint": "/e",
        "latency_ms": None,
        "tokens": 0,
        "status": 500,
        "error": "timeout",
    }


def test_summary_shape_and_window() -> None:
    h = Harness()
    h.send(batch("gpt-4o", "/a", [10.0, 20.0], input_tokens=[5, 5], output_tokens=[1, 1]), now=0.0)
    h.send(batch("claude-3-opus", "/a", [30.0]), now=400.0)
    snap = h.snap(401.0)
    summary = snap.view("summary", 300)
    assert summary == {
        "requests": 1,
        "avg_latency_ms": 30.0,
        "p95_latency_ms": 30.0,
        "error_rate": 0.0,
        "total_tokens": 0,
        "providers": {"anthropic": 1},
        "models": {"claude-3-opus": 1},
        "window_seconds": 300,
    }
    assert snap.view("summary", 3600)["requests"] == 3


def test_cache_and_queue() -> None:
    h = Harness()
    h.send(
        {
            "type": "cache",
            "const": {"endpoint": "/e", "model": "m"},
            "cols": {
                "hit": [True, True, False],
                "total_tokens": [100, 100, 100],
                "matched_tokens": [80, 60, 0],
            },
        },
        now=1.0,
    )
    h.send(
        [
            {"type": "queue", "depth": 5, "queue": "gpu"},
            {"type": "queue", "depth": 3, "queue": "gpu"},
        ],
        now=1.0,
    )
    h.send(batch("m", "/e", [10.0, 10.0], queue_ms=[50.0, 150.0]), now=1.0)
    s = h.samples(2.0)
    assert (
        s[("llm_cache_lookups_total", (("endpoint", "/e"), ("model", "m"), ("result", "hit")))] == 2
    )
    assert (
        s[("llm_cache_lookups_total", (("endpoint", "/e"), ("model", "m"), ("result", "miss")))]
        == 1
    )
    assert (
        s[("llm_cache_tokens_total", (("endpoint", "/e"), ("model", "m"), ("type", "matched")))]
        == 140
    )
    assert s[("llm_queue_depth", (("queue", "gpu"),))] == 3
    assert s[("llm_queue_wait_seconds_count", (("endpoint", "/e"), ("model", "m")))] == 2
    assert (
        s[("llm_queue_wait_seconds_bucket", (("endpoint", "/e"), ("le", "0.08"), ("model", "m")))]
        == 1
    )


def test_cardinality_cap() -> None:
    config = load_config(environ={}, overrides={"limits": {"max_series": 100}})
    h = Harness(config)
    for i in range(0, 5000, 500):
        models = [f"model-{j}" for j in range(i, i + 500)]
        h.send(
            {
                "type": "request",
                "const": {"endpoint": "/e"},
                "cols": {"model": models, "duration_ms": [1.0] * 500},
            },
            now=1.0,
        )
    assert h.tracker.series_count() == 101
    s = h.samples(2.0)
    assert s[("metricsd_series", (("tracker", "requests"),))] == 101
    assert s[("metricsd_series_overflow_total", (("tracker", "requests"),))] == 4900
    over = (
        ("endpoint", "__overflow__"),
        ("model", "__overflow__"),
        ("provider", "__overflow__"),
        ("status", "200"),
    )
    assert s[("llm_requests_total", over)] == 4900


def test_exposition_parses_in_both_formats_with_hostile_labels() -> None:
    h = Harness()
    h.send(batch('we"ird\\mod\nel', "/e{x}", [1.0]), now=1.0)
    text_bytes, om_bytes = exposition(h.engine.snapshot(2.0, WALL))
    families = {f.name: f for f in parse_text(text_bytes.decode())}
    assert "llm_requests" in families and "metricsd_events_received" in families
    names = [s.labels.get("model") for s in families["llm_requests"].samples]
    assert 'we"ird\\mod\nel' in names
    om = {f.name: f for f in parse_om(om_bytes.decode())}
    assert om["llm_request_duration_seconds"].type == "histogram"
    assert om["llm_requests"].type == "counter"
    # one HELP and TYPE per family
    text = text_bytes.decode()
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))


def test_engine_self_metrics_count_every_event() -> None:
    h = Harness()
    h.send(
        [{"type": "request", "duration_ms": 1}, {"type": "request", "duration_ms": -1}, 7], now=1.0
    )
    h.engine.apply(decode(b"\xc1", WALL, h.engine.limits), 1.0, WALL)
    h.send({"type": "client", "dropped": 12, "source": "w1"}, now=1.0)
    s = h.samples(2.0)
    assert s[("metricsd_frames_received_total", ())] == 3
    assert s[("metricsd_events_received_total", (("type", "request"),))] == 1
    assert s[("metricsd_events_received_total", (("type", "client"),))] == 1
    assert s[("metricsd_events_invalid_total", (("reason", "bad_value"),))] == 1
    assert s[("metricsd_events_invalid_total", (("reason", "shape"),))] == 1
    assert s[("metricsd_events_invalid_total", (("reason", "decode"),))] == 1
    assert s[("metricsd_client_dropped_events_total", (("source", "w1"),))] == 12
    assert s[("metricsd_build_info", (("version", "0.1.0"),))] == 1


def test_recent_ring_is_bounded_and_newest_first() -> None:
    config = load_config(environ={}, overrides={"engine": {"recent_size": 5}})
    h = Harness(config)
    h.send(batch("m", "/e", [1.0, 2.0, 3.0]), now=1.0)
    h.send(batch("m", "/e", [4.0, 5.0, 6.0, 7.0], status=[200, 200, 200, 503]), now=2.0)
    recent = h.snap(2.0).view("recent", 100)
    assert [r["latency_ms"] for r in recent] == [7.0, 6.0, 5.0, 4.0, 3.0]
    assert recent[0]["error"] == "HTTP 503" and recent[1]["error"] is None
    h.send(batch("m", "/e", [float(i) for i in range(100)]), now=3.0)
    snap = h.snap(3.0)
    assert [r["latency_ms"] for r in snap.view("recent", 3)] == [99.0, 98.0, 97.0]
    assert len(h.tracker.recent) == 5
    assert len(snap.view("recent", 100)) == 5
