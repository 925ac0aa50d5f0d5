"""instrument_openai against a local fake OpenAI-compatible server, with the real ``openai``
package (sync and async clients; JSON and SSE responses; errors; a live daemon)."""

from __future__ import annotations

import gc
import uuid
from typing import Any

import pytest
from conftest import USAGE, Daemon, FakeOpenAI
from metricsd_client import (
    DaemonSink,
    InMemoryMetricsSink,
    MetricsCollector,
    MetricsConfig,
    RequestMetrics,
    StreamingMetricsTracker,
    instrument_openai,
    uninstrument_openai,
)
from metricsd_client._keys import hash_key
from metricsd_client.instrument.openai import spread

openai = pytest.importorskip("openai", reason="the openai package is not installed")

API_KEY = "sk-test-instrumented-key"
MESSAGES = [{"role": "user", "content": "Hi"}]


def memory_client(
    fake: FakeOpenAI, asynchronous: bool = False, **options: Any
) -> tuple[Any, InMemoryMetricsSink]:
    sink = InMemoryMetricsSink()
    collector = MetricsCollector(MetricsConfig(), [sink])
    cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    client = cls(api_key=API_KEY, base_url=fake.base_url, max_retries=0, timeout=5)
    return instrument_openai(client, collector=collector, **options), sink


def only(sink: InMemoryMetricsSink) -> RequestMetrics:
    (record,) = sink.get_metrics()
    return record


def test_spread_tokens_over_chunks() -> None:
    assert spread(5, 5) == [1] * 5 and spread(10, 4) == [2, 3, 2, 3] and sum(spread(7, 3)) == 7
    assert spread(2, 4) == [1, 1, 1, 1] and spread(3, 0) == []


def test_plain_call(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai)
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user="u-1")
    assert reply.choices[0].message.content == "Hello from the fake server"
    m = only(sink)
    assert (m.model, m.endpoint, m.status) == ("gpt-4o-mini", "/v1/chat/completions", 200)
    assert m.finish_reason == "stop"
    assert (m.input_tokens, m.output_tokens, m.cached_tokens) == (12, 5, 4)
    assert m.latency_ms > 0 and not m.streaming and m.request_id == "chatcmpl-fake1"
    assert m.key_id == hash_key(API_KEY) and m.user_id == "u-1"
    assert API_KEY not in repr(m.to_dict())
    assert fake_openai.requests[-1]["auth"] == f"Bearer {API_KEY}"  # the call itself unchanged


def test_streamed_call(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai)
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from the fake server"
    m = only(sink)
    assert m.streaming and m.stream_status == "completed" and m.finish_reason == "stop"
    assert m.chunk_times is not None and len(m.chunk_times) == 5
    gaps = [b - a for a, b in zip(m.chunk_times, m.chunk_times[1:], strict=False)]
    assert all(g >= 0.015 for g in gaps)  # the server waits 20 ms between tokens
    assert m.ttft_ms is not None and 15 <= m.ttft_ms < m.latency_ms
    # No usage chunk was asked for: a token per chunk, prompt tokens unknown.
    assert (m.output_tokens, m.input_tokens, m.chunk_tokens) == (5, 0, [1] * 5)
    assert "stream_options" not in fake_openai.requests[-1]["body"]


def test_streamed_call_with_usage(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai, include_usage=True)
    with client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True) as stream:
        chunks = list(stream)
    assert all(c.choices for c in chunks)  # the usage chunk it asked for is not passed on
    assert fake_openai.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    m = only(sink)
    assert (m.input_tokens, m.output_tokens, m.cached_tokens) == (12, 5, 4)
    # The caller's own request for usage is honoured and its chunk passed on.
    client2, sink2 = memory_client(fake_openai)
    options = {"include_usage": True}
    create = client2.chat.completions.create
    chunks = list(create(model="gpt-4o", messages=MESSAGES, stream=True, stream_options=options))
    assert chunks[-1].usage.completion_tokens == USAGE["completion_tokens"]
    assert only(sink2).input_tokens == 12


def test_errors_are_recorded_and_reraised(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fail-500", messages=MESSAGES, stream=True)
    rate_limited, server_error = reversed(sink.get_metrics())
    assert (rate_limited.status, rate_limited.error_class) == (429, "RateLimitError")
    assert (server_error.status, server_error.error_class) == (500, "InternalServerError")
    assert "fake failure 500" in (server_error.error_message or "")
    down = openai.OpenAI(api_key=API_KEY, base_url="http://127.0.0.1:9/v1", max_retries=0)
    instrument_openai(down, collector=MetricsCollector(MetricsConfig(), [sink]))
    with pytest.raises(openai.APIConnectionError):
        down.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    failed = sink.get_metrics()[0]
    assert failed.status is None and failed.error_class == "APIConnectionError" and failed.is_error


def test_stream_failing_midway_and_streams_closed_early(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai)
    stream = client.chat.completions.create(model="midstream-error", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="upstream overloaded"):
        for _ in stream:
            pass
    failed = only(sink)
    assert failed.stream_status == "failed" and failed.error_class == "APIError"
    assert failed.chunk_times is not None and len(failed.chunk_times) == 2
    sink.clear()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(iter(stream)), next(iter(stream))
    stream.close()
    assert only(sink).stream_status == "cancelled"
    sink.clear()
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    next(stream)
    del stream  # dropped without being closed
    gc.collect()
    assert only(sink).stream_status == "cancelled"


async def test_async_client(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai, asynchronous=True)
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.usage.prompt_tokens == 12
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    async with stream:
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from the fake server"
    streamed, plain = sink.get_metrics()
    assert plain.output_tokens == 5 and not plain.streaming and plain.status == 200
    assert streamed.streaming and streamed.stream_status == "completed"
    assert streamed.chunk_times is not None and len(streamed.chunk_times) == 5
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="fail-429", messages=MESSAGES)
    assert sink.get_metrics()[0].status == 429


def test_instrumenting_is_idempotent_and_reversible(fake_openai: FakeOpenAI) -> None:
    client, sink = memory_client(fake_openai)
    instrument_openai(client, collector=MetricsCollector(MetricsConfig(), [sink]))
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert sink.get_stats()["total_recorded"] == 1  # wrapped once
    uninstrument_openai(client)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert sink.get_stats()["total_recorded"] == 1
    legacy = client.completions  # the legacy completions resource is wrapped too
    assert legacy is not None


def test_against_the_daemon(fake_openai: FakeOpenAI, daemon: Daemon) -> None:
    """Events reach the daemon: its numbers for this model show the server's 20 ms gaps."""
    model = f"gpt-4o-{uuid.uuid4().hex[:6]}"
    collector = MetricsCollector(MetricsConfig(), [DaemonSink()])
    client = instrument_openai(
        openai.OpenAI(api_key=API_KEY, base_url=fake_openai.base_url, max_retries=0),
        collector=collector,
        include_usage=True,
    )
    for _ in range(3):
        list(client.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    client.chat.completions.create(model=model, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="fail-429", messages=MESSAGES)
    view = StreamingMetricsTracker().get_metrics(model)
    assert view.completed_streams == 3 and view.total_tokens_generated == 15
    assert 15 <= view.p50_itl <= 60 and view.avg_ttft >= 15
    assert view.avg_tokens_per_second == pytest.approx(1000 / view.avg_itl, rel=0.25)
    summary = DaemonSink().get_summary(window_seconds=60)
    assert summary.models[model] == 4
    from metricsd_client import CostTracker

    by_key = CostTracker().get_cost_by_key(API_KEY)
    assert by_key["key_id"] == hash_key(API_KEY) and by_key["requests"] >= 4
    # The streamed calls billed their prompt tokens (from the usage chunk) and tokens streamed.
    assert by_key["tokens"]["input"] >= 4 * 12


def test_default_collector_is_used(fake_openai: FakeOpenAI) -> None:
    from metricsd_client.collector import default_collector, set_default_collector

    sink = InMemoryMetricsSink()
    set_default_collector(MetricsCollector(MetricsConfig(), [sink]))
    try:
        client = instrument_openai(openai.OpenAI(api_key=API_KEY, base_url=fake_openai.base_url))
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert only(sink).model == "gpt-4o" and default_collector().stats["recorded"] == 1
    finally:
        set_default_collector(None)
