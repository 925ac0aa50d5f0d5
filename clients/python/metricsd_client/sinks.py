"""Where collected records go: the :class:`MetricsSink` protocol and three sinks.

- :class:`DaemonSink` (the default): each record becomes metricsd events on the emitter —
  a ``request`` for a plain call, or ``stream.start``/``stream.token``/``stream.end`` with the
  recorded timestamps for a streamed one (so the daemon computes TTFT, inter-token latency and
  token rates), or an ``error`` for a call that failed without an HTTP status.
- :class:`InMemoryMetricsSink`: the last ``max_size`` records in memory, with a summary (for
  tests and debugging).
- :class:`OTelMetricsSink`: OpenTelemetry histograms under the GenAI semantic-convention names
  (needs the ``otel`` extra).

A custom sink is any object with ``record(metrics)`` and ``flush()``, each either a plain
method or a coroutine function. Query methods here return values that also work with
``await`` (steer_llm_sdk's sinks are asynchronous).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import statistics
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Awaitable, Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from metricsd_client._aio import AwaitableList, Done, ready
from metricsd_client.records import RequestMetrics

if TYPE_CHECKING:
    from metricsd_client._emitter import Emitter
    from metricsd_client.config import MetricsConfig

__all__ = [
    "DaemonSink",
    "InMemoryMetricsSink",
    "MetricsSink",
    "MetricsSummary",
    "OTelMetricsSink",
]

log = logging.getLogger("metricsd_client")


@runtime_checkable
class MetricsSink(Protocol):
    """A destination for records. Both methods may be plain or ``async``; neither should
    raise (the collector catches and counts what they raise anyway)."""

    def record(self, metrics: RequestMetrics) -> Awaitable[None] | None: ...

    def flush(self) -> Awaitable[None] | None: ...


@dataclass
class MetricsSummary:
    """Records in a window: count, latency, error rate, tokens, by provider and model."""

    count: int = 0
    avg_latency_ms: float = 0.0
    p95_latency_ms: float = 0.0
    error_rate: float = 0.0
    total_tokens: int = 0
    providers: dict[str, int] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    window_seconds: float = 300.0

    @property
    def requests(self) -> int:
        return self.count

    def __await__(self) -> Generator[Any, None, MetricsSummary]:
        return ready(self)

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> MetricsSummary:
        """From the daemon's ``/metrics/summary``."""
        return cls(
            count=int(view.get("requests") or 0),
            avg_latency_ms=float(view.get("avg_latency_ms") or 0.0),
            p95_latency_ms=float(view.get("p95_latency_ms") or 0.0),
            error_rate=float(view.get("error_rate") or 0.0),
            total_tokens=int(view.get("total_tokens") or 0),
            providers=dict(view.get("providers") or {}),
            models=dict(view.get("models") or {}),
            window_seconds=float(view.get("window_seconds") or 0.0),
        )


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


class InMemoryMetricsSink:
    """Keeps the last ``max_size`` records. Thread-safe; every method also works awaited."""

    def __init__(self, max_size: int = 1000) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._records: deque[RequestMetrics] = deque(maxlen=max_size)
        self._lock = threading.Lock()
        self._total = 0
        self._evicted = 0
        self.flushes = 0
        _MEMORY_SINKS.add(self)

    def record(self, metrics: RequestMetrics) -> None:
        with self._lock:
            if len(self._records) == self.max_size:
                self._evicted += 1
            self._records.append(metrics)
            self._total += 1

    def flush(self) -> Done:
        self.flushes += 1
        return Done()

    def get_metrics(self, limit: int | None = None) -> AwaitableList[RequestMetrics]:
        """The newest ``limit`` records (all with None), newest first."""
        with self._lock:
            items = list(self._records)
        items.reverse()
        return AwaitableList(items if limit is None else items[: max(0, limit)])

    def get_summary(self, window_seconds: float = 300.0) -> MetricsSummary:
        """Records that started within the last ``window_seconds``; ``p95_latency_ms`` by
        linear interpolation between ranks."""
        since = time.time() - window_seconds
        with self._lock:
            items = [m for m in self._records if m.timestamp >= since]
        latencies = [m.latency_ms for m in items]
        errors = sum(1 for m in items if m.is_error)
        return MetricsSummary(
            count=len(items),
            avg_latency_ms=sum(latencies) / len(items) if items else 0.0,
            p95_latency_ms=_p95(latencies),
            error_rate=errors / len(items) if items else 0.0,
            total_tokens=sum(m.total_tokens for m in items),
            providers=dict(Counter(m.provider_name for m in items)),
            models=dict(Counter(m.model for m in items)),
            window_seconds=float(window_seconds),
        )

    def clear(self) -> Done:
        with self._lock:
            self._records.clear()
        return Done()

    def get_stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "stored_metrics": len(self._records),
                "max_size": self.max_size,
                "total_recorded": self._total,
                "evicted": self._evicted,
            }

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()


_MEMORY_SINKS: weakref.WeakSet[InMemoryMetricsSink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for sink in list(_MEMORY_SINKS):
        sink._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DaemonSink:
    """Records → metricsd events over ZeroMQ (never blocks, never raises).

    ``emitter`` shares an emitter; otherwise one is shared per (``ingest``, ``source``, batch
    settings) in the process, with ``config.batch_size`` and ``config.batch_timeout_seconds``.
    ``url``/``token`` are only used by the read helpers :meth:`get_summary` and
    :meth:`get_recent`.

    A streamed record with per-chunk timings is sent as the stream's lifecycle, stamped with
    the recorded times; the daemon derives the request outcome (and its cost, from the prompt
    tokens and the tokens streamed) from ``stream.end``. A streamed record that carries an
    explicit ``cost_usd`` (cost tracking off) is sent as one ``request`` with ``ttft_ms``
    instead, since stream events cannot carry a cost.
    """

    def __init__(
        self,
        *,
        ingest: str | None = None,
        emitter: Emitter | None = None,
        source: str = "default",
        config: MetricsConfig | None = None,
        url: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        from metricsd_client.backend import shared_emitter

        if emitter is None:
            batch_size = config.batch_size if config is not None else 1000
            batch_timeout = config.batch_timeout_seconds if config is not None else 0.05
            emitter = shared_emitter(
                ingest, source=source, batch_size=batch_size, batch_timeout_seconds=batch_timeout
            )
        self.emitter = emitter
        self._url, self._token, self._timeout = url, token, timeout
        self._backend: Any = None

    def __repr__(self) -> str:
        return f"DaemonSink({self.emitter.endpoint!r})"

    def record(self, metrics: RequestMetrics) -> None:
        m = metrics
        em = self.emitter
        times = m.chunk_times
        if m.streaming and times is not None and m.stream_id and m.cost_usd is None:
            sid = m.stream_id
            em.stream_start(
                sid,
                prompt_tokens=m.input_tokens,
                provider=m.provider,
                endpoint=m.endpoint,
                model=m.model,
                key_id=m.key_id,
                user_id=m.user_id,
                request_id=m.request_id,
                ts=m.timestamp,
            )
            counts = m.chunk_tokens if m.chunk_tokens is not None else [1] * len(times)
            for ts, n in zip(times, counts, strict=False):
                em.stream_token(sid, n=n, ts=ts)
            status = m.stream_status or ("failed" if m.is_error else "completed")
            failed = status == "failed"
            em.stream_end(
                sid,
                status=status,
                finish_reason=m.finish_reason,
                error_type=m.error_class if failed else None,
                error_message=m.error_message if status != "completed" else None,
                ts=m.end_time,
            )
            return
        if m.status is None:
            em.error(
                m.error_class or "error",
                error_message=m.error_message,
                provider=m.provider,
                endpoint=m.endpoint,
                model=m.model,
                key_id=m.key_id,
                user_id=m.user_id,
                request_id=m.request_id,
                ts=m.end_time,
            )
            return
        em.request(
            m.latency_ms,
            endpoint=m.endpoint,
            model=m.model,
            status=m.status,
            input_tokens=m.input_tokens,
            output_tokens=m.output_tokens,
            cached_tokens=m.cached_tokens,
            reasoning_tokens=m.reasoning_tokens,
            streaming=True if m.streaming else None,
            ttft_ms=m.ttft_ms if m.streaming else None,
            finish_reason=m.finish_reason,
            provider=m.provider,
            error_type=m.error_class,
            error_message=m.error_message,
            cost_usd=m.cost_usd,
            key_id=m.key_id,
            user_id=m.user_id,
            request_id=m.request_id,
            ts=m.end_time,
        )

    def flush(self) -> Done:
        return Done(self.emitter.flush())

    def _reader(self) -> Any:
        if self._backend is None:
            from metricsd_client.backend import DaemonBackend

            self._backend = DaemonBackend(
                self._url, self._token, emitter=self.emitter, timeout=self._timeout
            )
        return self._backend

    def get_summary(
        self, window_seconds: float = 300.0, *, consistent: bool = True
    ) -> MetricsSummary:
        """The daemon's ``/metrics/summary`` (every emitter's requests, not only this sink's)."""
        backend = self._reader()
        if consistent:
            backend.sync()
        return MetricsSummary.from_view(backend.summary(window_seconds))

    def get_recent(self, limit: int = 100, *, consistent: bool = True) -> AwaitableList[Any]:
        """The daemon's ``/metrics/recent``: the newest request outcomes, newest first."""
        backend = self._reader()
        if consistent:
            backend.sync()
        return AwaitableList(backend.recent(limit))


#: OpenTelemetry GenAI semantic-convention bucket advice (seconds, tokens).
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                     20.48, 40.96, 81.92)  # fmt: skip
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0)  # fmt: skip
_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
_TOKEN_BUCKETS = tuple(4**i for i in range(14))  # 1, 4, 16, … 67 108 864

#: Instrument names (OpenTelemetry GenAI semantic conventions).
DURATION = "gen_ai.client.operation.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
TTFT = "gen_ai.server.time_to_first_token"
TPOT = "gen_ai.server.time_per_output_token"


def _otel(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(
            "OTelMetricsSink needs OpenTelemetry: pip install 'metricsd-client[otel]'"
        ) from exc


class OTelMetricsSink:
    """Records → OpenTelemetry histograms with the GenAI semantic-convention names:
    ``gen_ai.client.operation.duration`` (s), ``gen_ai.client.token.usage`` (tokens, by
    ``gen_ai.token.type``), and for streamed calls ``gen_ai.server.time_to_first_token`` and
    ``gen_ai.server.time_per_output_token`` (s). Attributes: ``gen_ai.operation.name``,
    ``gen_ai.provider.name``, ``gen_ai.request.model``, ``error.type`` on failures.

    The meter provider: ``meter_provider`` if given; else a new SDK provider with resource
    attributes ``service.name`` / ``service.namespace`` and the given ``readers``; else, when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_METRICS_ENDPOINT``) is set and an OTLP metric
    exporter package is installed, such a provider exporting to it; else the global provider.
    """

    def __init__(
        self,
        service_name: str = "llm-service",
        namespace: str = "default",
        *,
        meter_provider: Any = None,
        readers: Sequence[Any] | None = None,
        operation: str = "chat",
    ) -> None:
        metrics_api = _otel("opentelemetry.metrics")
        self.service_name = service_name
        self.namespace = namespace
        self.operation = operation
        self._owned = False
        if meter_provider is None:
            if readers is None:
                readers = self._otlp_readers()
            if readers is not None:
                sdk = _otel("opentelemetry.sdk.metrics")
                resources = _otel("opentelemetry.sdk.resources")
                resource = resources.Resource.create(
                    {"service.name": service_name, "service.namespace": namespace}
                )
                meter_provider = sdk.MeterProvider(resource=resource, metric_readers=list(readers))
                self._owned = True
            else:
                meter_provider = metrics_api.get_meter_provider()
        self.meter_provider = meter_provider
        from metricsd_client import __version__

        meter = meter_provider.get_meter("metricsd_client", __version__)
        hist = self._histogram
        self._duration = hist(meter, DURATION, "s", "GenAI operation duration.", _DURATION_BUCKETS)
        self._tokens = hist(meter, TOKEN_USAGE, "{token}", "Tokens used.", _TOKEN_BUCKETS)
        self._ttft = hist(meter, TTFT, "s", "Time to the first output token.", _TTFT_BUCKETS)
        self._tpot = hist(meter, TPOT, "s", "Time per output token after the first.", _TPOT_BUCKETS)

    @staticmethod
    def _otlp_readers() -> list[Any] | None:
        """A periodic OTLP reader when an endpoint is configured and an exporter installed."""
        if not (
            os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        ):
            return None
        for module in (
            "opentelemetry.exporter.otlp.proto.http.metric_exporter",
            "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        ):
            try:
                exporter = importlib.import_module(module).OTLPMetricExporter()
            except Exception:
                continue
            export = _otel("opentelemetry.sdk.metrics.export")
            return [export.PeriodicExportingMetricReader(exporter)]
        return None

    @staticmethod
    def _histogram(
        meter: Any, name: str, unit: str, description: str, buckets: Sequence[float]
    ) -> Any:
        try:
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=list(buckets),
            )
        except TypeError:  # an API older than the bucket advice
            return meter.create_histogram(name, unit=unit, description=description)

    def record(self, metrics: RequestMetrics) -> None:
        m = metrics
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": self.operation,
            "gen_ai.provider.name": m.provider_name,
            "gen_ai.request.model": m.model,
        }
        if m.is_error:
            attrs["error.type"] = m.error_class or str(m.status or "error")
        self._duration.record(m.latency_ms / 1000.0, attrs)
        base = {k: v for k, v in attrs.items() if k != "error.type"}
        if m.input_tokens:
            self._tokens.record(m.input_tokens, {**base, "gen_ai.token.type": "input"})
        if m.output_tokens:
            self._tokens.record(m.output_tokens, {**base, "gen_ai.token.type": "output"})
        if m.streaming and m.ttft_ms is not None and math.isfinite(m.ttft_ms):
            self._ttft.record(m.ttft_ms / 1000.0, base)
            if m.output_tokens > 1 and m.latency_ms > m.ttft_ms:
                per_token = (m.latency_ms - m.ttft_ms) / 1000.0 / (m.output_tokens - 1)
                self._tpot.record(per_token, base)

    def flush(self) -> Done:
        force = getattr(self.meter_provider, "force_flush", None)
        ok = True
        if callable(force):
            try:
                ok = bool(force())
            except Exception:
                ok = False
        return Done(ok)

    def shutdown(self) -> None:
        """Shut the provider down if this sink created it."""
        if self._owned:
            self.meter_provider.shutdown()
