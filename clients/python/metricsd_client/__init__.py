"""metricsd_client: emit LLM-app metrics to a metricsd daemon, never slowing the caller down.

Three layers (docs/client.md): the :class:`Emitter` below; drop-in trackers with the seed
documents' API (``StreamingMetricsTracker``, ``ErrorMetricsTracker``, ``CostTracker``), which
write through an emitter and read the daemon's HTTP API (or run the daemon's trackers
in-process with ``embedded=True``); and ``instrument_openai`` with a ``MetricsCollector``,
``MetricsConfig`` and sinks. Only the emitter is imported eagerly.

Usage::

    from metricsd_client import Emitter

    metrics = Emitter(source="api")            # endpoint: $METRICSD_INGEST or tcp://127.0.0.1:5557
    metrics.request(412.0, endpoint="/v1/chat/completions", model="gpt-4o",
                    input_tokens=812, output_tokens=164)

Design (after datadogpy's dogstatsd client; the wire format is SPEC §1 of metricsd):

- **Hot path.** An event method appends one flat tuple ``(type code, ts, fields…)`` to a
  ``collections.deque`` and returns. It reads the clock when ``ts`` is not given and compares two
  integers; it builds no dict, packs nothing, touches no socket and takes no lock. If the buffer
  already holds ``max_buffer`` events, the event is dropped and counted instead. When the buffer
  reaches ``batch_size`` events, the flusher is woken (once per crossing).
- **Flusher.** A daemon thread, started on first use, swaps in a fresh deque every
  ``batch_timeout_seconds`` (or when woken), groups the rows by type and by their label fields
  (endpoint, model, status, provider, key…), and packs one msgpack frame per cycle: an array of
  columnar batches ``{"v": 1, "type": T, "cols": {field: [...]}, "const": {field: value}}``.
  Labels and other fields with one value across a batch go to ``const``; ``None`` is never sent
  (an omitted field gets the daemon's default). Frames stay under 1 MiB and 10 000 events.
- **Transport.** A ZeroMQ PUSH socket, sent to with ``NOBLOCK`` and a send high-water mark of
  ``sndhwm`` frames; frames queue while the daemon is starting. A frame that would block is
  dropped and its events counted.
- **Accounting.** :attr:`Emitter.dropped` and :attr:`Emitter.sent` count events over the process's
  life; drops not yet reported ride along with the next frame that goes through as a
  ``{"type": "client", "dropped": n}`` event, so loss is visible on the daemon's ``/metrics``.
- **Never raises.** Every public method swallows its own errors (counting the event as dropped).
  No daemon, a bad endpoint, an unpackable value: the application carries on.
- **Lifecycle.** :meth:`Emitter.flush` waits until what was recorded is handed to ZeroMQ;
  :meth:`Emitter.close` (also run at exit) flushes, stops the thread and closes the socket,
  letting queued frames leave for at most 0.5 s. After ``os.fork()`` the child starts with an
  empty buffer and, lazily, its own thread, context and socket (it never uses the parent's).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metricsd_client._emitter import DEFAULT_ENDPOINT, Emitter

if TYPE_CHECKING:
    from metricsd_client.backend import DaemonBackend
    from metricsd_client.collector import MetricsCollector, default_collector
    from metricsd_client.config import MetricsConfig, MetricsFilter
    from metricsd_client.http import MetricsdError, MetricsdHTTPError, MetricsdUnavailable
    from metricsd_client.instrument.openai import instrument_openai, uninstrument_openai
    from metricsd_client.records import AgentMetrics, RequestMetrics
    from metricsd_client.sinks import (
        DaemonSink,
        InMemoryMetricsSink,
        MetricsSink,
        MetricsSummary,
        OTelMetricsSink,
    )
    from metricsd_client.trackers import (
        BudgetLimitType,
        BudgetPeriod,
        BudgetStatus,
        CostOptimizationSuggestion,
        CostTracker,
        ErrorMetricsTracker,
        ErrorPattern,
        SLOStatus,
        StreamingAggregateMetrics,
        StreamingMetrics,
        StreamingMetricsTracker,
    )

__version__ = "0.1.0"

#: Public names loaded on first use, so ``from metricsd_client import Emitter`` stays light.
_LAZY = {
    "DaemonBackend": "metricsd_client.backend",
    "MetricsCollector": "metricsd_client.collector",
    "default_collector": "metricsd_client.collector",
    "MetricsConfig": "metricsd_client.config",
    "MetricsFilter": "metricsd_client.config",
    "MetricsdError": "metricsd_client.http",
    "MetricsdHTTPError": "metricsd_client.http",
    "MetricsdUnavailable": "metricsd_client.http",
    "instrument_openai": "metricsd_client.instrument.openai",
    "uninstrument_openai": "metricsd_client.instrument.openai",
    "AgentMetrics": "metricsd_client.records",
    "RequestMetrics": "metricsd_client.records",
    "DaemonSink": "metricsd_client.sinks",
    "InMemoryMetricsSink": "metricsd_client.sinks",
    "MetricsSink": "metricsd_client.sinks",
    "MetricsSummary": "metricsd_client.sinks",
    "OTelMetricsSink": "metricsd_client.sinks",
    "BudgetLimitType": "metricsd_client.trackers",
    "BudgetPeriod": "metricsd_client.trackers",
    "BudgetStatus": "metricsd_client.trackers",
    "CostOptimizationSuggestion": "metricsd_client.trackers",
    "CostTracker": "metricsd_client.trackers",
    "ErrorMetricsTracker": "metricsd_client.trackers",
    "ErrorPattern": "metricsd_client.trackers",
    "SLOStatus": "metricsd_client.trackers",
    "StreamingAggregateMetrics": "metricsd_client.trackers",
    "StreamingMetrics": "metricsd_client.trackers",
    "StreamingMetricsTracker": "metricsd_client.trackers",
}

__all__ = [
    "DEFAULT_ENDPOINT",
    "AgentMetrics",
    "BudgetLimitType",
    "BudgetPeriod",
    "BudgetStatus",
    "CostOptimizationSuggestion",
    "CostTracker",
    "DaemonBackend",
    "DaemonSink",
    "Emitter",
    "ErrorMetricsTracker",
    "ErrorPattern",
    "InMemoryMetricsSink",
    "MetricsCollector",
    "MetricsConfig",
    "MetricsFilter",
    "MetricsSink",
    "MetricsSummary",
    "MetricsdError",
    "MetricsdHTTPError",
    "MetricsdUnavailable",
    "OTelMetricsSink",
    "RequestMetrics",
    "SLOStatus",
    "StreamingAggregateMetrics",
    "StreamingMetrics",
    "StreamingMetricsTracker",
    "default_collector",
    "instrument_openai",
    "uninstrument_openai",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'metricsd_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
