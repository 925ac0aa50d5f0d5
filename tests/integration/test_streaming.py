"""The worked streaming values through the real daemon over ZeroMQ and HTTP.

Frames carry explicit emitter ``ts`` values (Unix seconds), so TTFT, ITL and durations are exact
whatever the daemon's own clock does meanwhile.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om

from tests.conftest import Daemon

#: Emitter timestamps: a whole second of today (a ``ts`` more than a day from the daemon's
#: clock is refused, SPEC §8), so the intervals below are exact.
T0 = float(int(time.time()))
CHAT = "/v1/chat/completions"


def wait_json(daemon: Daemon, path: str, ready: Any, timeout: float = 10.0) -> Any:
    """Poll a JSON view until ``ready(view)`` holds (ticks are 0.1 s in tests)."""
    deadline = time.monotonic() + timeout
    view = daemon.get_json(path)
    while not ready(view) and time.monotonic() < deadline:
        time.sleep(0.05)
        view = daemon.get_json(path)
    assert ready(view), view
    return view


def stream_frames(sid: str, model: str, token_ts: list[float], end_ts: float) -> list[Any]:
    """One frame per lifecycle step: start (plain event), tokens (columnar), end."""
    return [
        {
            "type": "stream.start",
            "stream_id": sid,
            "model": model,
            "endpoint": CHAT,
            "ts": T0,
            "prompt_tokens": 12,
        },
        {"type": "stream.token", "const": {"stream_id": sid}, "cols": {"ts": token_ts}},
        {"type": "stream.end", "stream_id": sid, "ts": end_ts, "finish_reason": "stop"},
    ]


def test_worked_values_over_zeromq(daemon: Daemon) -> None:
    frames = [
        # TTFT 100.0 ms, ITLs 50.0 and 100.0 ms, duration 500.0 ms.
        *stream_frames("w", "gpt-4o", [T0 + 0.1, T0 + 0.15, T0 + 0.25], T0 + 0.5),
        # 20 tokens 50 ms apart: decode TPS 19 / 0.95 = 20.0, perfectly smooth.
        *stream_frames("r", "gpt-4o-mini", [T0 + 0.2 + i * 0.05 for i in range(20)], T0 + 2.0),
        # One 650 ms gap: one stall.
        *stream_frames("s", "claude-3", [T0 + 0.1, T0 + 0.15, T0 + 0.8], T0 + 1.0),
    ]
    for frame in frames:
        daemon.send(frame)
    view = wait_json(daemon, "/metrics/streaming", lambda v: v["completed_streams"] == 3)
    w = view["by_model"]["gpt-4o"]
    assert (w["ttft"]["avg"], w["ttft"]["count"], w["duration"]["avg"]) == (100.0, 1, 500.0)
    assert (w["itl"]["min"], w["itl"]["max"], w["itl"]["avg"], w["itl"]["count"]) == (
        50.0,
        100.0,
        75.0,
        2,
    )
    jitter = statistics.stdev([50.0, 100.0])
    assert abs(w["jitter_ms"]["avg"] - jitter) < 1e-9
    assert abs(w["smoothness"]["avg"] - 100 * (1 - jitter / 75.0)) < 1e-9
    r = view["by_model"]["gpt-4o-mini"]
    assert r["tokens_per_second"]["avg"] == 20.0
    assert (r["smoothness"]["avg"], r["jitter_ms"]["avg"], r["stalls"]) == (100.0, 0.0, 0)
    assert view["by_model"]["claude-3"]["stalls"] == 1
    assert (view["stalls"], view["total_streams"], view["successful_streams"]) == (1, 3, 3)
    assert view["ttft_percentiles"]["max"] == 200.0  # the slowest first token of the three
    assert view["total_tokens_generated"] == 26
    assert (view["streaming_requests"], view["streaming_percentage"]) == (3, 100.0)
    # Each stream is exactly one request outcome in the request tracker.
    assert (
        daemon.value(
            "llm_requests_total", provider="openai", endpoint=CHAT, model="gpt-4o", status="200"
        )
        == 1
    )
    total = sum(v for k, v in daemon.samples().items() if k[0] == "llm_requests_total")
    assert total == 3
    assert daemon.value("llm_stream_stalls_total", model="claude-3") == 1
    p50 = daemon.value("streaming_ttft_milliseconds", quantile="0.5")
    assert abs(p50 - 100.0) <= 1.0  # HDR percentiles: within 1 % (exact min/max/avg above)
    assert daemon.value("streaming_ttft_milliseconds_sum") == 400.0
    assert daemon.value("streaming_ttft_milliseconds_count") == 3
    assert daemon.value("streaming_total_streams_total") == 3
    stats = daemon.get_json("/metrics/json")["streaming_stats"]
    assert (stats["completed_streams"], stats["ttft"]["min"]) == (3, 0.1)
    only = daemon.get_json("/metrics/streaming?model=claude-3")
    assert (only["total_streams"], list(only["by_model"])) == (1, ["claude-3"])
    status, _, body = daemon.request("/metrics/streaming?model=" + "x" * 300)
    assert (status, json.loads(body)) == (400, {"error": "model is too long"})
    status, _, body = daemon.request(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert status == 200
    names = {f.name for f in parse_om(body.decode())}
    assert {"llm_time_to_first_token_seconds", "streaming_ttft_milliseconds"} <= names


def test_idle_stream_is_abandoned_by_the_daemon(daemon_factory: Any) -> None:
    daemon = daemon_factory(env={"METRICSD_STREAMING_IDLE_TIMEOUT": "0.3"})
    daemon.send(stream_frames("idle", "gpt-4o", [], 0.0)[0])
    daemon.send({"type": "stream.token", "stream_id": "idle", "ts": T0 + 0.25})
    view = wait_json(daemon, "/metrics/streaming", lambda v: v["abandoned_streams"] == 1)
    assert (view["active_streams"], view["ttft"]["avg"]) == (0, 250.0)
    labels = {"endpoint": CHAT, "model": "gpt-4o"}
    assert (
        daemon.wait_for(
            "llm_errors_total", 1, **labels, error_type="stream_abandoned", status="500"
        )
        == 1
    )
    assert daemon.value("llm_requests_total", provider="openai", **labels, status="500") == 1
