"""MetricsConfig (flags, sampling, filters, environment), the collector, and every sink."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
import uuid
from typing import Any

import pytest
from conftest import Daemon
from metricsd_client import (
    DaemonSink,
    InMemoryMetricsSink,
    MetricsCollector,
    MetricsConfig,
    MetricsFilter,
    MetricsSink,
    RequestMetrics,
    StreamingMetricsTracker,
)
from metricsd_client.config import ENV_NAMES


def rec(**fields: Any) -> RequestMetrics:
    base: dict[str, Any] = {"model": "gpt-4o", "latency_ms": 100.0, "input_tokens": 10,
                            "output_tokens": 5}  # fmt: skip
    base.update(fields)
    return RequestMetrics(**base)


def streamed(**fields: Any) -> RequestMetrics:
    t = time.time()
    return rec(streaming=True, ttft_ms=50.0, stream_id=uuid.uuid4().hex,
               chunk_times=[t, t + 0.02], chunk_tokens=[1, 1], stream_status="completed",
               timestamp=t - 0.05, **fields)  # fmt: skip


def sequence(*values: float) -> Any:
    it = itertools.cycle(values)
    return lambda: next(it)


# ------------------------------------------------------------------------------ MetricsConfig


def test_defaults_and_validation() -> None:
    c = MetricsConfig()
    assert c.enabled and c.enable_streaming_metrics and c.enable_cost_tracking
    assert (c.request_sampling_rate, c.streaming_sampling_rate, c.error_sampling_rate) == (1, 1, 1)
    assert (c.batch_size, c.batch_timeout_seconds) == (100, 1.0)
    with pytest.raises(ValueError, match="request_sampling_rate"):
        MetricsConfig(request_sampling_rate=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        MetricsConfig(batch_size=0)
    with pytest.raises(TypeError, match="should_collect"):
        MetricsConfig(filters=[object()])


def test_from_env_reads_the_guide_names() -> None:
    env = {"METRICS_ENABLED": "true", "METRICS_BATCH_SIZE": "500", "METRICS_BATCH_TIMEOUT": "5.0",
           "ENABLE_STREAMING_METRICS": "false", "ENABLE_COST_TRACKING": "no",
           "REQUEST_SAMPLING_RATE": "0.1", "ERROR_SAMPLING_RATE": ""}  # fmt: skip
    c = MetricsConfig.from_env(env)
    assert (c.batch_size, c.batch_timeout_seconds, c.request_sampling_rate) == (500, 5.0, 0.1)
    assert not c.enable_streaming_metrics and not c.enable_cost_tracking
    assert c.enable_reliability_metrics and c.error_sampling_rate == 1.0
    assert MetricsConfig.from_env({}, batch_size=7).batch_size == 7
    with pytest.raises(ValueError, match="ENABLE_COST_TRACKING"):
        MetricsConfig.from_env({"ENABLE_COST_TRACKING": "maybe"})
    with pytest.raises(ValueError, match="STREAMING_SAMPLING_RATE"):
        MetricsConfig.from_env({"STREAMING_SAMPLING_RATE": "x"})
    with pytest.raises(ValueError, match="error_sampling_rate"):
        MetricsConfig.from_env({"ERROR_SAMPLING_RATE": "2"})
    # None of the client's own variables may start with METRICSD_ (the daemon rejects unknown
    # METRICSD_* settings in its environment).
    assert not any(v.startswith("METRICSD_") for v in ENV_NAMES.values())


def test_sampling_by_kind_never_drops_errors_unless_asked() -> None:
    c = MetricsConfig(request_sampling_rate=0.0, streaming_sampling_rate=0.0)
    assert c.decide(rec()) is None
    assert c.decide(streamed()) is None
    for error in (rec(status=500), rec(error_class="Timeout", status=None), rec(status=429)):
        assert c.decide(error) is error
    asked = MetricsConfig(error_sampling_rate=0.5, rng=sequence(0.7, 0.2))
    assert asked.decide(rec(status=500)) is None and asked.decide(rec(status=500)) is not None


def test_sampling_rate_is_honoured_statistically() -> None:
    rng = random.Random(7)
    c = MetricsConfig(request_sampling_rate=0.25, streaming_sampling_rate=0.75, rng=rng.random)
    kept = sum(c.decide(rec()) is not None for _ in range(4000))
    kept_streams = sum(c.decide(streamed()) is not None for _ in range(4000))
    assert 900 <= kept <= 1100 and 2900 <= kept_streams <= 3100


class ProductionOnlyFilter(MetricsFilter):
    def should_collect(self, metric: RequestMetrics) -> bool:
        return os.getenv("ENVIRONMENT") == "production"


class HighValueRequestFilter(MetricsFilter):
    def should_collect(self, metric: RequestMetrics) -> bool:
        return metric.total_tokens > 1000 or metric.error_class is not None


class Broken(MetricsFilter):
    def should_collect(self, metric: RequestMetrics) -> bool:
        raise RuntimeError("bug in a filter")


def test_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    c = MetricsConfig(filters=[ProductionOnlyFilter(), HighValueRequestFilter()])
    monkeypatch.setenv("ENVIRONMENT", "staging")
    assert c.decide(rec(input_tokens=5000)) is None
    monkeypatch.setenv("ENVIRONMENT", "production")
    assert c.decide(rec(input_tokens=5000)) is not None
    assert c.decide(rec()) is None
    assert c.decide(rec(error_class="Timeout", status=504)) is not None
    assert MetricsConfig(filters=[Broken()]).decide(rec()) is not None  # fails open


def test_enable_flags() -> None:
    assert MetricsConfig(enabled=False).decide(rec(status=500)) is None
    no_errors = MetricsConfig(enable_reliability_metrics=False)
    assert no_errors.decide(rec(status=500)) is None and no_errors.decide(rec()) is not None
    plain = MetricsConfig(enable_streaming_metrics=False).decide(streamed())
    assert plain is not None and plain.streaming and plain.chunk_times is None
    assert plain.ttft_ms is None and plain.stream_id is None
    assert MetricsConfig(enable_request_metrics=False).decide(rec()) is None
    free = MetricsConfig(enable_cost_tracking=False).decide(rec())
    assert free is not None and free.cost_usd == 0.0


# ---------------------------------------------------------------------- collector and sinks


def test_in_memory_sink_sync() -> None:
    sink = InMemoryMetricsSink(max_size=3)
    collector = MetricsCollector(MetricsConfig(), [sink])
    for i in range(5):
        collector.record(
            rec(model=f"m{i}", latency_ms=10.0 * (i + 1), status=500 if i == 4 else 200)
        )
    assert [m.model for m in sink.get_metrics(limit=2)] == ["m4", "m3"]
    assert sink.get_stats() == {
        "stored_metrics": 3,
        "max_size": 3,
        "total_recorded": 5,
        "evicted": 2,
    }
    summary = sink.get_summary(window_seconds=300)
    assert (summary.count, summary.requests, summary.total_tokens) == (3, 3, 45)
    assert summary.avg_latency_ms == pytest.approx(40.0) and summary.error_rate == pytest.approx(
        1 / 3
    )
    assert summary.p95_latency_ms == pytest.approx(49.0) and summary.providers == {"unknown": 3}
    assert sink.get_summary(window_seconds=300).models == {"m2": 1, "m3": 1, "m4": 1}
    old = rec(timestamp=time.time() - 3600)
    sink.record(old)
    assert sink.get_summary(window_seconds=300).count == 2
    assert collector.flush() and sink.flushes == 1
    sink.clear()
    assert sink.get_metrics() == [] and collector.stats["offered"] == 5


async def test_in_memory_sink_the_async_way() -> None:
    """steer_llm_sdk's guide awaits the sink's methods."""
    sink = InMemoryMetricsSink()
    collector = MetricsCollector(MetricsConfig(enabled=True), [sink])
    await collector.arecord(rec(model="gpt-4"))
    metrics = await sink.get_metrics(limit=10)
    assert len(metrics) == 1 and metrics[0].model == "gpt-4" and metrics[0].latency_ms > 0
    summary = await sink.get_summary(window_seconds=300)
    assert summary.count == 1 and summary.error_rate == 0.0
    assert await collector.flush()
    await sink.clear()
    assert sink.get_stats()["stored_metrics"] == 0


class BufferingSink:
    """The guide's custom-sink shape: async record that buffers, async flush that sends."""

    def __init__(self) -> None:
        self.buffer: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []

    async def record(self, metrics: RequestMetrics) -> None:
        await asyncio.sleep(0)
        self.buffer.append({"model": metrics.model, "tokens": metrics.total_tokens})
        if len(self.buffer) >= 3:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.sleep(0.01)
        self.sent.extend(self.buffer)
        self.buffer.clear()


def test_custom_async_sink_from_sync_code() -> None:
    sink = BufferingSink()
    assert isinstance(sink, MetricsSink)
    collector = MetricsCollector(MetricsConfig(), [sink])
    for i in range(4):
        collector.record(rec(model=f"m{i}"))
    assert collector.flush(timeout=5)  # runs the coroutines on the background loop, and waits
    assert sorted(s["model"] for s in sink.sent) == ["m0", "m1", "m2", "m3"]


async def test_custom_async_sink_in_an_event_loop() -> None:
    sink = BufferingSink()
    collector = MetricsCollector(MetricsConfig(), [sink])
    for i in range(4):
        collector.record(rec(model=f"m{i}"))  # scheduled on this loop
    await collector.flush()
    assert sorted(s["model"] for s in sink.sent) == ["m0", "m1", "m2", "m3"]


class Exploding:
    def record(self, metrics: RequestMetrics) -> None:
        raise RuntimeError("sink down")

    def flush(self) -> None:
        raise RuntimeError("sink down")


def test_a_failing_sink_never_reaches_the_caller() -> None:
    memory = InMemoryMetricsSink()
    collector = MetricsCollector(MetricsConfig(), [Exploding(), memory])
    collector.record(rec())
    assert not collector.flush()
    assert collector.stats["sink_errors"] == 2 and memory.get_stats()["stored_metrics"] == 1
    with pytest.raises(TypeError):
        MetricsCollector(MetricsConfig(), [object()])


def test_daemon_sink_requests_streams_and_errors(daemon: Daemon) -> None:
    model = f"sink-{uuid.uuid4().hex[:8]}"
    sink = DaemonSink(config=MetricsConfig(batch_size=10, batch_timeout_seconds=0.05))
    collector = MetricsCollector(MetricsConfig(), [sink])
    collector.record(rec(model=model, latency_ms=120.0, endpoint="/v1/chat/completions"))
    collector.record(rec(model=model, status=None, error_class="APIConnectionError"))
    t = time.time()
    times = [t + 0.100, t + 0.130, t + 0.190]
    collector.record(rec(model=model, streaming=True, stream_id=uuid.uuid4().hex, latency_ms=200.0,
                         ttft_ms=100.0, chunk_times=times, chunk_tokens=[1, 1, 2],
                         stream_status="completed", finish_reason="stop", timestamp=t))  # fmt: skip
    summary = sink.get_summary(window_seconds=60)
    assert summary.models[model] == 3 and summary.error_rate > 0
    recent = [r for r in sink.get_recent(50) if r["model"] == model]
    assert len(recent) == 3 and {r["error"] for r in recent} >= {"APIConnectionError"}
    view = StreamingMetricsTracker().get_metrics(model)
    assert view.completed_streams == 1 and view.total_tokens_generated == 4
    assert view.avg_ttft == pytest.approx(100, rel=0.01)
    # ITL: 30 ms for one token, then 60 ms for two (30 ms per token), token-weighted.
    assert view.avg_itl == pytest.approx(30, rel=0.02)
    assert view.avg_duration == pytest.approx(200, rel=0.01)


def test_daemon_sink_streams_without_cost_are_sent_compact(daemon: Daemon) -> None:
    model = f"free-{uuid.uuid4().hex[:8]}"
    collector = MetricsCollector(MetricsConfig(enable_cost_tracking=False), [DaemonSink()])
    collector.record(streamed(model=model))
    view = StreamingMetricsTracker().get_metrics(model)
    assert view.completed_streams == 1 and view.avg_ttft == pytest.approx(50, rel=0.01)
    assert view.avg_itl == 0.0  # the compact form has no token timings


def test_otel_sink_gen_ai_metric_names() -> None:
    pytest.importorskip("opentelemetry.sdk.metrics", reason="opentelemetry-sdk not installed")
    from metricsd_client import OTelMetricsSink
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    sink = OTelMetricsSink(service_name="my-llm-service", namespace="production", readers=[reader])
    collector = MetricsCollector(MetricsConfig(), [sink])
    collector.record(rec(model="gpt-4o", latency_ms=250.0, input_tokens=100, output_tokens=20))
    collector.record(rec(model="claude-3-5-sonnet", status=529, error_class="Overloaded"))
    collector.record(streamed(model="gpt-4o-mini", output_tokens=11, latency_ms=150.0))
    assert collector.flush()
    data = reader.get_metrics_data()
    (resource_metrics,) = data.resource_metrics
    attrs = dict(resource_metrics.resource.attributes)
    assert attrs["service.name"] == "my-llm-service" and attrs["service.namespace"] == "production"
    points: dict[str, list[Any]] = {}
    for scope in resource_metrics.scope_metrics:
        for metric in scope.metrics:
            points[metric.name] = list(metric.data.data_points)
    assert set(points) == {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
    }
    durations = {
        p.attributes["gen_ai.request.model"]: p for p in points["gen_ai.client.operation.duration"]
    }
    assert durations["gpt-4o"].sum == pytest.approx(0.25)
    assert durations["gpt-4o"].attributes["gen_ai.provider.name"] == "openai"
    assert durations["claude-3-5-sonnet"].attributes["error.type"] == "Overloaded"
    usage = {(p.attributes["gen_ai.request.model"], p.attributes["gen_ai.token.type"]): p.sum
             for p in points["gen_ai.client.token.usage"]}  # fmt: skip
    assert usage[("gpt-4o", "input")] == 100 and usage[("gpt-4o", "output")] == 20
    (ttft,) = points["gen_ai.server.time_to_first_token"]
    assert ttft.sum == pytest.approx(0.05)
    (tpot,) = points["gen_ai.server.time_per_output_token"]
    assert tpot.sum == pytest.approx(0.1 / 10)
    sink.shutdown()
