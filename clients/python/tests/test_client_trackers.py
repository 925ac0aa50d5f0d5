"""The drop-in trackers against the shared daemon (with a token) and embedded in-process.

Tests on the shared daemon isolate themselves with their own model, endpoint or key; numbers
that only exist globally (the SLO) are checked on an embedded tracker, and embedded and daemon
results are compared for the same events.
"""

from __future__ import annotations

import math
import sys
import time
import uuid

import pytest
from conftest import Daemon
from metricsd_client import (
    BudgetLimitType,
    BudgetPeriod,
    CostTracker,
    ErrorMetricsTracker,
    MetricsConfig,
    MetricsdHTTPError,
    StreamingMetricsTracker,
)
from metricsd_client._keys import hash_key
from metricsd_client.backend import DaemonBackend
from metricsd_client.trackers.errors import slo_for_objective

#: A whole second of today: a ts more than a day from the daemon's clock is refused.
T0 = float(int(time.time()))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def play_streams(tracker: StreamingMetricsTracker, model: str) -> None:
    """Two streams with known timings: TTFT 100 and 300 ms, ITLs 50 and 100 ms."""
    a, b = unique("a"), unique("b")
    tracker.start_stream(a, model, prompt_tokens=10, timestamp=T0)
    for t in (0.100, 0.150, 0.250):
        tracker.record_token(a, "tok", timestamp=T0 + t)
    tracker.complete_stream(a, "stop", timestamp=T0 + 0.300)
    tracker.start_stream(b, model, prompt_tokens=5, timestamp=T0)
    tracker.record_token(b, "x", chunk_size_bytes=7, timestamp=T0 + 0.300)
    tracker.record_backpressure(b, buffer_size=64)
    tracker.fail_stream(b, "upstream reset", error_type="ConnectionError", timestamp=T0 + 0.4)


def check_streams(m: object) -> None:
    from metricsd_client import StreamingMetrics

    assert isinstance(m, StreamingMetrics)
    assert (m.total_streams, m.completed_streams, m.failed_streams) == (2, 1, 1)
    assert m.success_rate == 0.5
    assert m.total_tokens_generated == 4 and m.total_bytes_sent == 3 * 3 + 7
    assert m.total_backpressure_events == 1
    assert m.min_ttft == pytest.approx(100, rel=0.01) and m.max_ttft == pytest.approx(300, rel=0.01)
    assert m.avg_ttft == pytest.approx(200, rel=0.01)
    assert m.avg_itl == pytest.approx(75, rel=0.01)
    # Decode rate of the first stream: 2 tokens after the first, in 150 ms.
    assert m.avg_tokens_per_second == pytest.approx(2 / 0.150, rel=0.01)


def test_streaming_tracker_on_the_daemon(daemon: Daemon) -> None:
    model = unique("model")
    tracker = StreamingMetricsTracker()
    play_streams(tracker, model)
    m = tracker.get_metrics(model)
    check_streams(m)
    assert m.streams_by_model == {model: 2}
    assert "llm_streams_total" in tracker.get_prometheus_metrics()


def test_streaming_tracker_embedded_matches_the_daemon(daemon: Daemon) -> None:
    model = unique("model")
    local = StreamingMetricsTracker(embedded=True)
    remote = StreamingMetricsTracker()
    for tracker in (local, remote):
        play_streams(tracker, model)
    a, b = local.get_metrics(model).to_dict(), remote.get_metrics(model).to_dict()
    check_streams(local.get_metrics())
    for name in ("ttft", "itl", "duration", "tokens_per_second", "e2e_tokens_per_second"):
        assert a[name] == b[name], name
    assert a["by_model"][model]["total_streams"] == b["by_model"][model]["total_streams"] == 2


def test_error_tracker_patterns_and_recent_errors(daemon: Daemon) -> None:
    endpoint = unique("/v1/errors")
    tracker = ErrorMetricsTracker()
    for i in range(4):
        tracker.record_error(endpoint, 500, "TimeoutError", f"Database timeout after {i}ms",
                             model="gpt-4o", request_id=f"req-{i}")  # fmt: skip
    tracker.record_error(endpoint, 429, "RateLimited", "slow down", duration_ms=12.0)
    tracker.record_success(endpoint, "gpt-4o", duration_ms=80.0)
    tracker.record_request(endpoint)  # ignored: outcomes are counted once
    patterns = [p for p in tracker.get_error_patterns(min_count=1) if p.endpoint == endpoint]
    assert [(p.error_type, p.count) for p in patterns] == [("TimeoutError", 4), ("RateLimited", 1)]
    top = patterns[0]
    assert top.normalized_message == "Database timeout after <NUM>ms"
    assert top.affected_models == {"gpt-4o"} and top.status == 500
    assert top.to_dict()["fingerprint"] == top.fingerprint
    recent = tracker.get_recent_errors(limit=3, endpoint=endpoint)
    assert [e["error_type"] for e in recent] == ["RateLimited", "TimeoutError", "TimeoutError"]
    metrics = tracker.get_metrics()
    assert metrics["errors_by_endpoint"][endpoint] == 5
    assert {"type": "TimeoutError", "count": metrics["by_error_type"]["TimeoutError"]} in (
        metrics["top_error_types"]
    )


def test_slo_status_embedded_exact() -> None:
    tracker = ErrorMetricsTracker(error_budget_slo=0.99, embedded=True)
    for _ in range(98):
        tracker.record_success("/v1/chat/completions", "gpt-4o", duration_ms=10)
    tracker.record_error("/v1/chat/completions", 503, "Overloaded", "busy")
    tracker.record_error("/v1/chat/completions", 400, "BadRequest", "no")  # not bad for the SLO
    slo = tracker.get_slo_status()
    assert (slo.total_requests, slo.failed_requests, slo.successful_requests) == (100, 1, 99)
    assert slo.target_success_rate == 0.99 and not slo.slo_violated
    assert slo.error_budget_total == pytest.approx(1.0)
    assert slo.error_budget_remaining == 0.0 and slo.error_budget_percentage == 0.0
    assert slo.burn_rate == pytest.approx(1.0) and slo.burn_rates["5m"] == pytest.approx(1.0)
    tracker.record_error("/v1/chat/completions", 500, "Boom", "boom")
    assert tracker.get_slo_status().slo_violated


def test_slo_for_another_objective_matches_an_embedded_slo() -> None:
    """The client's re-evaluation for error_budget_slo equals the daemon's own evaluation."""
    default = ErrorMetricsTracker(embedded=True)
    strict = ErrorMetricsTracker(embedded=True, error_budget_slo=0.9999)
    for tracker in (default, strict):
        for i in range(50):
            if i % 7 == 0:
                tracker.record_error("/e", 500, "Boom", "boom")
            else:
                tracker.record_success("/e", duration_ms=1)
    view = default.get_slo_status().to_dict()
    assert view["target_success_rate"] == 0.999
    mine = slo_for_objective(view, 0.9999)
    theirs = strict.get_slo_status().to_dict()
    for name in ("error_budget_total", "error_budget_remaining", "error_budget_percentage",
                 "slo_violated", "burn_rate", "alerts", "target_success_rate"):  # fmt: skip
        assert mine[name] == pytest.approx(theirs[name]), name
    assert mine["burn_rates"] == pytest.approx(theirs["burn_rates"])
    assert slo_for_objective(view, 0.999) is view


def test_error_tracker_against_the_daemon_uses_its_objective(daemon: Daemon) -> None:
    tracker = ErrorMetricsTracker()
    tracker.record_success(unique("/ok"), duration_ms=5)
    slo = tracker.get_slo_status()
    assert slo.target_success_rate == 0.999 and slo.total_requests >= 1
    lenient = ErrorMetricsTracker(error_budget_slo=0.5).get_slo_status()
    assert lenient.target_success_rate == 0.5
    assert lenient.raw["daemon_target_success_rate"] == 0.999
    assert lenient.error_budget_total == pytest.approx(lenient.total_requests * 0.5)


def test_cost_tracker_budgets_on_the_daemon(daemon: Daemon) -> None:
    key = unique("sk-test")
    tracker = CostTracker()
    assert tracker.pricing == "local"
    assert tracker.check_budget(key) == (0.0, math.inf, False)
    assert tracker.get_budget_status(key) is None and tracker.is_allowed(key)
    cost = tracker.record_usage(key, "gpt-4o", "/v1/chat/completions", 1000, 500, 500)
    assert cost == pytest.approx(0.01125)  # FakeAI's pinned case: cached input at $2.50/M
    status = tracker.set_budget(key, 0.02, BudgetPeriod.DAILY, BudgetLimitType.HARD, 0.5)
    assert status.key_id == hash_key(key) and status.used == pytest.approx(0.01125)
    assert status.get_usage_percentage() == pytest.approx(56.25) and status.allowed
    tracker.record_usage(key, "gpt-4o", "/v1/chat/completions", 1000, 500, 500)
    used, remaining, exceeded = tracker.check_budget(key)
    assert (used, remaining, exceeded) == (pytest.approx(0.0225), pytest.approx(-0.0025), True)
    assert not tracker.is_allowed(key)  # hard budget: callers enforce it
    by_key = tracker.get_cost_by_key(key)
    assert by_key["requests"] == 2 and by_key["total_cost"] == pytest.approx(0.0225)
    assert tracker.get_cost_by_key(key, period_hours=24)["total_cost"] == pytest.approx(0.0225)
    assert tracker.get_projected_monthly_cost(key) > 0
    assert [b.key_id for b in tracker.get_all_budgets() if b.key_id == hash_key(key)]
    with pytest.raises(ValueError, match="alert_threshold"):
        tracker.set_budget(key, 1.0, alert_threshold=3)
    with pytest.raises(ValueError, match="period_hours"):
        tracker.get_cost_by_key(key, period_hours=5)
    assert tracker.delete_budget(key) and not tracker.delete_budget(key)
    assert tracker.get_cost_by_key(unique("sk-never"))["requests"] == 0


def test_cost_pricing_modes_agree(daemon: Daemon) -> None:
    key = unique("sk-modes")
    usage = ("gpt-4o-mini", "/v1/chat/completions", 12_345, 678, 1000)
    local = CostTracker(pricing="local").record_usage(key, *usage)
    remote = CostTracker(pricing="daemon").record_usage(key, *usage)
    embedded = CostTracker(embedded=True).record_usage(key, *usage)
    assert (
        local
        == remote
        == embedded
        == pytest.approx((12_345 - 1000) * 0.15e-6 + 1000 * 0.075e-6 + 678 * 0.6e-6)
    )
    image = CostTracker(embedded=True).record_usage(
        key, "dall-e-3", "/v1/images/generations", metadata={"size": "1024x1024", "n": 2}
    )
    assert image == pytest.approx(0.08)
    assert CostTracker(embedded=True).record_usage(key, "no-such-model", "/x", 100, 100) == 0.0


def test_cost_suggestions_from_the_daemon_timer(daemon: Daemon) -> None:
    key = unique("sk-big")
    tracker = CostTracker()
    for _ in range(12):
        tracker.record_usage(key, "gpt-4", "/v1/chat/completions", 20_000, 2_000)
    deadline = time.monotonic() + 5
    found = tracker.get_optimization_suggestions(key)
    while not found and time.monotonic() < deadline:
        time.sleep(0.1)  # the shared daemon evaluates every 0.2 s
        found = tracker.get_optimization_suggestions(key, consistent=False)
    kinds = {s.suggestion_type for s in found}
    assert "cheaper_model" in kinds
    best = found[0]
    assert best.api_key == hash_key(key) and best.potential_savings > 1 and best.description


def test_cost_suggestions_embedded_at_once() -> None:
    tracker = CostTracker(embedded=True)
    for _ in range(12):
        tracker.record_usage("sk-x", "gpt-4", "/v1/chat/completions", 20_000, 2_000)
    (cheaper,) = [s for s in tracker.get_optimization_suggestions("sk-x") if
                  s.suggestion_type == "cheaper_model"]  # fmt: skip
    assert cheaper.potential_savings > 0 and cheaper.details["models"]
    summary = tracker.get_summary()
    assert summary["total_requests"] == 12 and tracker.get_total_cost() == pytest.approx(
        12 * (20_000 * 30e-6 + 2_000 * 60e-6)
    )
    assert tracker.get_cost_by_model() == {"gpt-4": pytest.approx(tracker.get_total_cost())}
    assert tracker.get_cache_savings()["cached_tokens"] == 0
    assert tracker.get_batch_savings()["batch_requests"] == 0


def test_reads_need_the_token(daemon: Daemon) -> None:
    with pytest.raises(MetricsdHTTPError) as info:
        StreamingMetricsTracker(token="wrong").get_metrics(consistent=False)
    assert info.value.status == 401 and "METRICSD_TOKEN" in str(info.value)


def test_consistent_reads_see_every_write_before_them(daemon: Daemon) -> None:
    model = unique("model")
    tracker = StreamingMetricsTracker()
    for round_ in range(1, 4):
        for _ in range(50):
            sid = unique("s")
            tracker.start_stream(sid, model)
            tracker.record_token(sid, "x", n=2)
            tracker.complete_stream(sid)
        assert tracker.get_metrics(model).completed_streams == 50 * round_
    backend = tracker.backend
    assert isinstance(backend, DaemonBackend) and backend.sync(2.0)


def test_config_flags_turn_writes_off(daemon: Daemon) -> None:
    model = unique("model")
    off = MetricsConfig(enable_streaming_metrics=False)
    tracker = StreamingMetricsTracker(config=off)
    tracker.start_stream("never", model)
    tracker.complete_stream("never")
    assert tracker.emitter.buffered == 0
    assert StreamingMetricsTracker().get_metrics(model).total_streams == 0
    cost = CostTracker(config=MetricsConfig(enabled=False), pricing="local")
    assert cost.record_usage("k", "gpt-4", "/e", 10, 10) == 0.0


def test_embedded_needs_the_daemon_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "metricsd.embedded", None)
    with pytest.raises(ImportError, match="needs the metricsd package"):
        StreamingMetricsTracker(embedded=True)


def test_seed_constructor_arguments_are_accepted() -> None:
    tracker = StreamingMetricsTracker(max_active_streams=5, embedded=True)
    assert tracker.max_active_streams == 5 and tracker.embedded
    errors = ErrorMetricsTracker(500, 0.995, 300, 2, embedded=True)
    assert errors.pattern_threshold == 2 and errors.get_slo_status().target_success_rate == 0.995
    with pytest.raises(ValueError):
        ErrorMetricsTracker(error_budget_slo=1.5)


def test_embedded_exposition_includes_custom_metrics() -> None:
    tracker = StreamingMetricsTracker(embedded=True)
    tracker.emitter.metric("llm_circuit_breaker_open", "gauge", 1.0, labels={"provider": "openai"})
    text = tracker.get_prometheus_metrics()
    assert 'llm_circuit_breaker_open{provider="openai"} 1' in text
