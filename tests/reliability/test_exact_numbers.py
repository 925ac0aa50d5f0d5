"""Numbers that cannot lie (issue 17, rows 12-13; SPEC §8), on the real daemon.

- Row 12: two ``input_tokens = 2**63 − 1`` → ``llm_tokens_total{type="input"}`` is exactly
  2**64 − 2 in the text (the float a parser reads is the nearest one), and the JSON views that
  show token totals hold the exact integer. Before, int64 wrapped to −2.
- Row 13: ``ts = ±1e99`` → the event is rejected as ``bad_value``; nothing of it reaches a
  view (``/metrics/recent``, TTFT).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import exposition, log_failures, sample_lines

BIG = 2**63 - 1
EXACT = 2 * BIG  # 2**64 - 2


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    daemon = start_daemon(tmp_path_factory.mktemp("numbers"))
    try:
        yield daemon
        assert log_failures(daemon) == []
    finally:
        daemon.stop()


def invalid(d: Daemon, reason: str) -> float:
    return d.value("metricsd_events_invalid_total", reason=reason)


def wait_applied(d: Daemon, frames: float) -> None:
    """Until the daemon has taken ``frames`` frames in and published a snapshot of them."""
    assert d.wait_for("metricsd_frames_received_total", frames) == frames


def test_token_totals_beyond_64_bits_are_exact(d: Daemon) -> None:
    """Row 12, as two events (two frames) and as one columnar batch of two rows."""
    base = d.value("metricsd_frames_received_total")
    for _ in range(2):
        d.send(
            {
                "type": "request",
                "model": "gpt-4o",
                "endpoint": "/v1/maps",
                "api_key": "sk-exact-maps",
                "duration_ms": 1.0,
                "input_tokens": BIG,
            }
        )
    d.send(
        {
            "type": "request",
            "const": {
                "model": "gpt-4o-mini",
                "endpoint": "/v1/cols",
                "api_key": "sk-exact-cols",
            },
            "cols": {"duration_ms": [1.0, 1.0], "input_tokens": [BIG, BIG]},
        }
    )
    wait_applied(d, base + 3)
    text = exposition(d)
    for endpoint, model in (("/v1/maps", "gpt-4o"), ("/v1/cols", "gpt-4o-mini")):
        want = (
            f'llm_tokens_total{{provider="openai",endpoint="{endpoint}",model="{model}",'
            f'type="input"}} {EXACT}'
        )
        assert want in sample_lines(text, "llm_tokens_total"), endpoint
        hist_sum = f'llm_request_tokens_sum{{model="{model}",type="input"}} {EXACT}'
        assert hist_sum in sample_lines(text, "llm_request_tokens_sum"), model
    # prometheus_client's parser reads the integer exactly (older ones: the nearest float);
    # never a wrapped or negative value.
    parsed = [
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "llm_tokens_total" and s.labels["type"] == "input"
    ]
    assert len(parsed) == 2
    for value in parsed:
        assert (type(value) is int and value == EXACT) or (
            type(value) is float and value == float(EXACT)
        ), value
    # JSON views with token totals: exact integers.
    costs = d.get_json("/metrics/costs")
    assert costs["tokens"]["input"] == 2 * EXACT
    for key in ("sk-exact-maps", "sk-exact-cols"):
        assert d.get_json(f"/metrics/costs/keys/{key}")["tokens"]["input"] == EXACT
    recent = [r for r in d.get_json("/metrics/recent?limit=10") if r["model"].startswith("gpt-4o")]
    assert [r["tokens"] for r in recent] == [BIG] * 4
    # The summary's window counts are floating point (rates, not totals): near, never wrapped.
    total = d.get_json("/metrics/summary")["total_tokens"]
    assert abs(total - 2 * EXACT) <= 2 * EXACT * 2**-52, total


def test_timestamps_far_from_now_are_bad_values(d: Daemon) -> None:
    """Row 13: ``ts`` of ±1e99 (maps and a column), and just outside
    ``limits.max_clock_skew`` (86 400 s): ``bad_value``; just inside: accepted."""
    base_frames = d.value("metricsd_frames_received_total")
    bad_before = invalid(d, "bad_value")
    accepted_before = d.value("metricsd_events_received_total", type="request")
    now = time.time()
    for ts in (1e99, -1e99, now + 86_400 + 600, now - 86_400 - 600):
        d.send({"type": "request", "model": "skewed", "duration_ms": 1.0, "ts": ts})
    d.send(
        {
            "type": "request",
            "const": {"model": "skewed-columns"},
            "cols": {"duration_ms": [1.0, 1.0, 1.0], "ts": [1e99, -1e99, now]},
        }
    )
    d.send({"type": "request", "model": "near", "duration_ms": 1.0, "ts": now + 86_400 - 600})
    # A stream: its token with ts = 1e99 is refused, so TTFT comes from the next one (50 ms).
    d.send({"type": "stream.start", "stream_id": "far", "model": "stream-skew", "ts": now})
    d.send({"type": "stream.token", "stream_id": "far", "ts": 1e99})
    d.send({"type": "stream.token", "stream_id": "far", "ts": now + 0.05})
    d.send({"type": "stream.end", "stream_id": "far", "ts": now + 0.1})
    wait_applied(d, base_frames + 10)
    assert invalid(d, "bad_value") - bad_before == 7  # 4 maps, 2 rows, 1 token
    assert d.value("metricsd_events_received_total", type="request") - accepted_before == 2
    recent = d.get_json("/metrics/recent?limit=1000")
    shown = {row["model"]: row["timestamp"] for row in recent}
    assert "skewed" not in shown
    assert (
        abs(shown["skewed-columns"] - now) < 1e-6 and abs(shown["near"] - now - 86_400 + 600) < 1e-3
    )
    assert all(abs(row["timestamp"] - now) < 86_400 for row in recent)
    streaming = d.get_json("/metrics/streaming?model=stream-skew")
    assert streaming["ttft"]["count"] == 1
    assert streaming["ttft"]["max"] == pytest.approx(50.0, abs=0.001)
    text = exposition(d)
    assert not any('model="skewed"' in line for line in sample_lines(text, "llm_requests_total"))
    assert json.dumps(recent).count("e+99") == 0
