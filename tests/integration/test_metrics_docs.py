"""docs/metrics.md lists every family the daemon can serve: a daemon (in this process) gets one
event of every type, with every optional family switched on, and each family of its /metrics
must appear in the page, by the name its samples carry."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metricsd.app import Daemon
from metricsd.config import load_config
from metricsd.protocol import Decoder
from metricsd.schema import EVENT_TYPES

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
T0 = time.time()

#: One event of every type (and then some: an error, an unpriced model, a refused custom metric).
EVENTS: list[dict[str, Any]] = [
    {
        "type": "request",
        "duration_ms": 100,
        "model": "gpt-4o",
        "endpoint": "/v1/chat/completions",
        "input_tokens": 100,
        "output_tokens": 20,
        "cached_tokens": 10,
        "queue_ms": 3,
        "finish_reason": "stop",
        "api_key": "sk-docs",
    },
    {"type": "request", "duration_ms": 5, "model": "unpriced-model", "input_tokens": 3},
    {"type": "request", "duration_ms": 5, "model": "gpt-4o", "input_tokens": 1, "cached_tokens": 9},
    {"type": "error", "error_type": "server_error", "error_message": "boom 1"},
    {"type": "stream.start", "stream_id": "s", "model": "gpt-4o", "ts": T0},
    {"type": "stream.token", "stream_id": "s", "ts": T0 + 0.1},
    {"type": "stream.token", "stream_id": "s", "ts": T0 + 0.9, "n": 2, "bytes": 10},
    {"type": "stream.backpressure", "stream_id": "s", "buffer_size": 3},
    {"type": "stream.end", "stream_id": "s", "ts": T0 + 1.0},
    {"type": "stream.token", "stream_id": "unknown", "ts": T0},
    {"type": "cache", "hit": True, "total_tokens": 10, "matched_tokens": 5},
    {"type": "queue", "depth": 3},
    {"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1024", "n": 1}},
    {"type": "client", "dropped": 2, "source": "app"},
    {"type": "metric", "name": "docs_app_retries", "kind": "counter", "value": 1},
    {"type": "metric", "name": "llm_requests", "kind": "gauge", "value": 1},
]
CUSTOM = {"docs_app_retries"}


async def served_families(naming: str) -> dict[str, str]:
    """family name → type, as /metrics serves them after EVENTS."""
    config = load_config(
        environ={},
        overrides={
            "http": {"listen": "127.0.0.1:0"},
            "ingest": {"endpoints": ["tcp://127.0.0.1:0"]},
            "prometheus": {"naming": naming},
            "cost": {
                "webhook_url": "http://127.0.0.1:9/hook",
                "budgets": [{"key": "sk-docs", "limit_usd": 0.000001}],
            },
        },
    )
    daemon = Daemon(config)
    await daemon.start()
    try:
        wall = time.time()
        decoder = Decoder(wall, daemon.engine.limits)
        decoder.add(msgpack.packb(EVENTS))
        result = decoder.finish()
        assert {b.type for b in result.batches} == set(EVENT_TYPES)
        daemon.engine.apply(result, daemon.clock(), wall)
        daemon.engine.snapshot(daemon.clock() + 1.0, time.time())
        url = daemon.http_url + "/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=10).read().decode()
        )
    finally:
        await daemon.stop()
    return {f.name: f.type for f in text_string_to_metric_families(body)}


@pytest.mark.parametrize("naming", ["llm", "otel"])
async def test_every_served_family_is_in_metrics_md(naming: str) -> None:
    families = await served_families(naming)
    doc = DOC.read_text()
    listed = set(re.findall(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", doc))
    missing = sorted(
        name + ("_total" if kind == "counter" else "")
        for name, kind in families.items()
        if name not in CUSTOM and name + ("_total" if kind == "counter" else "") not in listed
    )
    assert missing == [], f"families served but not in docs/metrics.md: {missing}"
    # The families each part of the daemon serves with data are all there.
    for needle in (
        "llm_requests" if naming == "llm" else "metricsd_llm_requests",
        "llm_time_to_first_token_seconds" if naming == "llm" else "gen_ai_client_token_usage",
        "metricsd_custom_refused",
        "metricsd_ws_dropped_updates",
        "metricsd_webhook_sent",
        "slo:sli_error:ratio_rate30d",
        "streaming_ttft_milliseconds",
    ):
        assert needle in families, needle
