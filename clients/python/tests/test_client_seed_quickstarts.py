"""The seed documents' quick-start snippets, run against a live daemon.

Each snippet is the seed's code with only its import line changed (``fakeai.…`` →
``metricsd_client``); it runs as written, and the test checks that what it printed is what the
daemon computed (read back over HTTP, independently of the client's trackers). The snippets
share one daemon of this module; each test checks its own model, key or the change it made.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, start_daemon


@pytest.fixture(scope="module")
def seed_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("seed"))
    yield d
    d.stop()


@pytest.fixture
def fresh_daemon(seed_daemon: Daemon, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Daemon:
    for name, value in seed_daemon.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METRICSD_TOKEN", raising=False)
    return seed_daemon


STREAMING = """
from metricsd_client import StreamingMetricsTracker

tracker = StreamingMetricsTracker()

# Track a stream
tracker.start_stream("stream-1", "gpt-4", prompt_tokens=100)
tracker.record_token("stream-1", "Hello", chunk_size_bytes=20)
tracker.complete_stream("stream-1", "stop")

# Get metrics
metrics = tracker.get_metrics()
print(f"P95 TTFT: {metrics.p95_ttft:.2f}ms")
print(f"Avg TPS: {metrics.avg_tokens_per_second:.2f}")
"""

ERRORS = """
from metricsd_client import ErrorMetricsTracker

tracker = ErrorMetricsTracker(error_budget_slo=0.999)  # 99.9%

# Track errors and successes
tracker.record_error(
    endpoint="/v1/chat/completions",
    status_code=500,
    error_type="TimeoutError",
    error_message="Database timeout",
    model="gpt-4"
)
tracker.record_success("/v1/chat/completions", "gpt-4")

# Check SLO
slo = tracker.get_slo_status()
if slo.slo_violated:
    print(f"⚠️ SLO VIOLATED! Burn rate: {slo.burn_rate:.2f}x")

# Get error patterns
patterns = tracker.get_error_patterns()
for p in patterns:
    print(f"Pattern {p.fingerprint}: {p.count} occurrences")
"""

COST = """
from metricsd_client import CostTracker, BudgetPeriod

tracker = CostTracker()

# Track usage
cost = tracker.record_usage(
    api_key="sk-abc123",
    model="gpt-4",
    endpoint="/v1/chat/completions",
    prompt_tokens=150,
    completion_tokens=50
)

# Set budget
tracker.set_budget("sk-abc123", limit=100.0, period=BudgetPeriod.MONTHLY)

# Check budget
used, remaining, exceeded = tracker.check_budget("sk-abc123")
print(f"Used: ${used:.2f}, Remaining: ${remaining:.2f}")

# Get suggestions
suggestions = tracker.get_optimization_suggestions("sk-abc123")
for s in suggestions:
    print(f"💡 {s.description}")
    print(f"   Savings: ${s.potential_savings:.2f}/month")
"""

ALERTS = """
metrics = streaming_tracker.get_metrics()

if metrics.p95_ttft > 2000:  # 2 seconds
    alert("High TTFT detected")

if metrics.avg_tokens_per_second < 10:
    alert("Low token generation rate")

if metrics.success_rate < 0.95:
    alert("High stream failure rate")

slo = error_tracker.get_slo_status()

if slo.slo_violated:
    page("SLO VIOLATED - Error budget exhausted")

if slo.burn_rate > 10.0:
    page("CRITICAL: Error burn rate 10x normal")

if slo.error_budget_percentage < 10:
    alert("Error budget < 10% remaining")

budget = cost_tracker.get_budget_status(api_key)

if budget and budget.get_usage_percentage() > 90:
    alert(f"Budget 90% used for {api_key}")

projected = cost_tracker.get_projected_monthly_cost()
if projected > 10000:
    alert(f"Projected monthly cost: ${projected:.2f}")
"""


def daemon_json(d: Daemon, path: str) -> Any:
    req = urllib.request.Request(d.http + path)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def run(snippet: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    scope: dict[str, Any] = dict(namespace or {})
    exec(compile(snippet, "<seed snippet>", "exec"), scope)
    return scope


def test_streaming_quick_start(fresh_daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    scope = run(STREAMING)
    out = capsys.readouterr().out
    print(out)  # shown with -s: the numbers the daemon computed
    view = daemon_json(fresh_daemon, "/metrics/streaming")
    gpt4 = daemon_json(fresh_daemon, "/metrics/streaming?model=gpt-4")
    assert gpt4["total_streams"] == gpt4["completed_streams"] == 1
    assert gpt4["total_tokens_generated"] == 1 and gpt4["total_bytes_sent"] == 20
    assert gpt4["ttft"]["count"] == 1 and gpt4["ttft"]["p95"] > 0
    assert f"P95 TTFT: {view['ttft']['p95']:.2f}ms" in out
    # One token: no decode rate (it needs two), as the daemon reports.
    assert f"Avg TPS: {view['tokens_per_second']['avg']:.2f}" in out
    metrics = scope["metrics"]
    assert metrics.success_rate == view["success_rate"]
    assert metrics.streams_by_model["gpt-4"] == 1


def test_error_quick_start(fresh_daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    before = daemon_json(fresh_daemon, "/metrics/slo")
    scope = run(ERRORS)
    out = capsys.readouterr().out
    print(out)
    slo = daemon_json(fresh_daemon, "/metrics/slo")
    # One 500 and one success: the SLO is violated (a fresh daemon reports a burn rate of
    # 500: half the requests bad, 500 times the 0.1 % allowed).
    total, bad = slo["total_requests"], slo["failed_requests"]
    assert (total - before["total_requests"], bad - before["failed_requests"]) == (2, 1)
    assert slo["slo_violated"] is True
    assert slo["burn_rate"] == pytest.approx(bad / total / 0.001)
    assert f"SLO VIOLATED! Burn rate: {slo['burn_rate']:.2f}x" in out
    # A pattern needs 3 occurrences by default (FakeAI's threshold): none printed yet.
    assert "Pattern" not in out
    tracker = scope["tracker"]
    for _ in range(2):
        tracker.record_error("/v1/chat/completions", 500, "TimeoutError", "Database timeout")
    (pattern,) = tracker.get_error_patterns()
    server = daemon_json(fresh_daemon, "/metrics/error-patterns")
    assert [(p["fingerprint"], p["count"]) for p in server] == [(pattern.fingerprint, 3)]
    assert re.fullmatch(r"[0-9a-f]{8}", pattern.fingerprint)


def test_cost_quick_start(fresh_daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    scope = run(COST)
    out = capsys.readouterr().out
    print(out)
    # gpt-4: 150 input tokens at $30/M + 50 output tokens at $60/M.
    assert scope["cost"] == pytest.approx(0.0075)
    budget = daemon_json(fresh_daemon, "/metrics/budgets/sk-abc123")
    assert budget["key_id"] == "k_" + __import__("hashlib").sha256(b"sk-abc123").hexdigest()[:12]
    assert budget["used_usd"] == pytest.approx(0.0075) and budget["limit_usd"] == 100.0
    used, remaining = budget["used_usd"], budget["remaining_usd"]
    assert f"Used: ${used:.2f}, Remaining: ${remaining:.2f}" in out
    assert scope["exceeded"] is False and scope["suggestions"] == []
    # The raw key never reached the daemon.
    with urllib.request.urlopen(fresh_daemon.http + "/metrics", timeout=5) as resp:
        assert b"sk-abc123" not in resp.read()


def test_alert_threshold_snippets(fresh_daemon: Daemon) -> None:
    from metricsd_client import CostTracker, ErrorMetricsTracker, StreamingMetricsTracker

    streaming_tracker, error_tracker = StreamingMetricsTracker(), ErrorMetricsTracker()
    cost_tracker, api_key = CostTracker(), "sk-alerts"
    t0 = float(int(time.time()))  # a ts more than a day from the daemon's clock is refused
    streaming_tracker.start_stream("s-alert", "gpt-4o", prompt_tokens=10, timestamp=t0)
    for i in range(1, 4):
        streaming_tracker.record_token("s-alert", "x", timestamp=t0 + 2.5 + 0.5 * i)
    streaming_tracker.complete_stream("s-alert", timestamp=t0 + 4.5)
    error_tracker.record_error("/v1/chat/completions", 503, "Overloaded", "try again later")
    cost_tracker.record_usage(api_key, "gpt-4", "/v1/chat/completions", 100_000, 50_000)
    cost_tracker.set_budget(api_key, limit=6.0)
    raised: list[str] = []
    run(ALERTS, {
        "streaming_tracker": streaming_tracker, "error_tracker": error_tracker,
        "cost_tracker": cost_tracker, "api_key": api_key,
        "alert": raised.append, "page": raised.append,
    })  # fmt: skip
    # TTFT 3 s (the p95 of this and the quick start's streams); 2 tokens/s; a 503 and few
    # successes violate a 99.9 % SLO; $6 of $6 spent.
    assert raised == [
        "High TTFT detected",
        "Low token generation rate",
        "SLO VIOLATED - Error budget exhausted",
        "CRITICAL: Error burn rate 10x normal",
        "Error budget < 10% remaining",
        "Budget 90% used for sk-alerts",
    ]
