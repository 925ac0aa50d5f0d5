"""Periodic OTLP/HTTP push of the daemon's metrics with the OpenTelemetry SDK (``otlp`` extra).

How it fits together (docs/otel.md, docs/decisions.md "OpenTelemetry"):

- a ``MeterProvider`` with one :class:`PeriodicExportingMetricReader` and the OTLP/HTTP metric
  exporter; the reader's own thread collects and exports every ``otlp.interval`` seconds;
- every collection starts from one :class:`ExportSnapshot`, built by the reader thread from the
  daemon's latest frozen snapshot (the canonical families → OpenTelemetry names, attributes and
  points, see :mod:`metricsd.export.naming`): snapshots are immutable, so no other thread is
  involved and the event loop does none of this work;
- counters and gauges are SDK observable instruments (``ObservableCounter``,
  ``ObservableGauge``) whose callbacks read that snapshot;
- histograms cannot go through the SDK's instrument API (it aggregates raw measurements; metricsd
  holds cumulative bucket counts already), and SDK 1.45 has no public ``MetricProducer``: the
  reader subclass adds them, as OTLP explicit-bucket ``HistogramDataPoint`` s with the same
  bounds, counts and sum that /metrics shows, to the batch the SDK collected, before the SDK's
  exporter sends it. ``min``/``max`` are left unset (optional in OTLP; the buckets do not carry
  them).

Temporality is cumulative for every instrument (what metricsd's numbers are), whatever
``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` says. Nothing from ``opentelemetry`` is
imported unless the push is configured.
"""

from __future__ import annotations

import asyncio
import logging
import math
import numbers
import threading
import time
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from metricsd import __version__
from metricsd.config import ConfigError, OtlpConfig
from metricsd.export.naming import (
    GENAI_SEMCONV_VERSION,
    Instrument,
    attribute_pairs,
    instrument_for,
)
from metricsd.export.prometheus import Family

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Meter, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import Metric, MetricsData

__all__ = [
    "ExportSnapshot",
    "HistogramPoint",
    "MetricSnapshot",
    "NumberPoint",
    "OtlpPush",
    "export_snapshot",
    "metrics_url",
    "require_sdk",
]

log = logging.getLogger("metricsd.otlp")

SCOPE: Final = "metricsd"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{GENAI_SEMCONV_VERSION}"
#: Attributes whose semantic-convention type is an integer.
INT_ATTRIBUTES: Final = frozenset({"http.response.status_code"})

AttributeValue = str | int
Attributes = tuple[tuple[str, AttributeValue], ...]


@dataclass(frozen=True, slots=True)
class NumberPoint:
    attributes: Attributes
    value: int | float


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One series of a cumulative explicit-bucket histogram: ``bucket_counts`` per bucket (not
    cumulative), one more than ``bounds`` (the last is above the highest bound)."""

    attributes: Attributes
    count: int
    sum: float
    bounds: tuple[float, ...]
    bucket_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MetricSnapshot:
    name: str
    kind: str  # counter, gauge, histogram
    unit: str
    description: str
    points: tuple[NumberPoint, ...] | tuple[HistogramPoint, ...]


@dataclass(frozen=True, slots=True)
class ExportSnapshot:
    """What one collection exports: every metric with an OpenTelemetry form, by name."""

    metrics: Mapping[str, MetricSnapshot]

    def of_kind(self, kind: str) -> list[MetricSnapshot]:
        return [m for m in self.metrics.values() if m.kind == kind]


# --- families → snapshot (pure) ---------------------------------------------------------------


def _attributes(instrument: Instrument, rendered: str) -> Attributes:
    out: list[tuple[str, AttributeValue]] = []
    for name, value in attribute_pairs(instrument, rendered):
        if name in INT_ATTRIBUTES and value.isdigit():
            out.append((name, int(value)))
        else:
            out.append((name, value))
    return tuple(out)


def _number(value: float) -> int | float:
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _histogram_points(instrument: Instrument, family: Family) -> tuple[HistogramPoint, ...]:
    """Regroup ``_bucket``/``_sum``/``_count`` samples by series (labels without ``le``)."""
    buckets: dict[Attributes, list[tuple[float, int]]] = {}
    sums: dict[Attributes, float] = {}
    counts: dict[Attributes, int] = {}
    for suffix, rendered, value in family.all_samples():
        attrs = _attributes(instrument, rendered)
        if suffix == "_bucket":
            le = next(str(v) for k, v in attrs if k == "le")
            series = tuple((k, v) for k, v in attrs if k != "le")
            buckets.setdefault(series, []).append((float(le), int(value)))
        elif suffix == "_sum":
            sums[attrs] = float(value)
        elif suffix == "_count":
            counts[attrs] = int(value)
    out: list[HistogramPoint] = []
    for series, cumulative in buckets.items():
        cumulative.sort()
        bounds = tuple(le for le, _c in cumulative if math.isfinite(le))
        per_bucket: list[int] = []
        previous = 0
        for _le, total in cumulative:
            per_bucket.append(total - previous)
            previous = total
        if len(per_bucket) == len(bounds):  # no +Inf bucket: the rest is above the last bound
            per_bucket.append(counts.get(series, previous) - previous)
        out.append(
            HistogramPoint(
                series,
                counts.get(series, previous),
                sums.get(series, 0.0),
                bounds,
                tuple(per_bucket),
            )
        )
    return tuple(out)


def export_snapshot(families: Iterable[Family]) -> ExportSnapshot:
    """The canonical families (``Engine.families(now, canonical=True)``) as OpenTelemetry
    metrics. Families without an OpenTelemetry form are left out (see
    :func:`metricsd.export.naming.instrument_for`)."""
    metrics: dict[str, MetricSnapshot] = {}
    for family in families:
        instrument = instrument_for(family.name, family.type)
        if instrument is None:
            continue
        points: tuple[NumberPoint, ...] | tuple[HistogramPoint, ...]
        if instrument.kind == "histogram":
            points = _histogram_points(instrument, family)
        else:
            points = tuple(
                NumberPoint(_attributes(instrument, rendered), _number(value))
                for _suffix, rendered, value in family.all_samples()
            )
        if instrument.name in metrics:  # not the case for metricsd's own families
            log.warning("two families map to %s; keeping the first", instrument.name)
            continue
        metrics[instrument.name] = MetricSnapshot(
            instrument.name, instrument.kind, instrument.unit, family.help, points
        )
    return ExportSnapshot(metrics)


def metrics_url(endpoint: str) -> str:
    """The OTLP/HTTP metrics URL of a base URL (as ``OTEL_EXPORTER_OTLP_ENDPOINT`` is one)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/metrics") else base + "/v1/metrics"


def require_sdk() -> None:
    """Raise :class:`ConfigError` unless the ``otlp`` extra is installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http.metric_exporter
        import opentelemetry.sdk.metrics  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "otlp.endpoint is set but the OpenTelemetry SDK is not installed "
            f"({exc.name or exc}): pip install 'metricsd[otlp]', or leave otlp.endpoint empty"
        ) from None


# --- the SDK side -----------------------------------------------------------------------------


class _Source:
    """Hands each collection one export, built from the daemon's latest snapshot.

    Snapshots are immutable, so the export is built on the collecting thread itself. The
    first callback of a collection fetches it (and pins it); the other callbacks and the
    histogram step read the pinned one; the end of the collection releases it. The reader
    waits a whole interval after one collection ends before the next starts, so a pin older
    than 0.9 interval is never reused: a collection that failed half-way cannot leak its
    snapshot into the next one.
    """

    def __init__(self, build: Callable[[], ExportSnapshot], interval: float) -> None:
        self.build = build
        self.max_age = interval * 0.9
        self.lock = threading.Lock()
        self.pinned: ExportSnapshot | None = None
        self.pinned_at = -math.inf
        #: False until the instruments are registered: a collection in the meantime exports
        #: nothing.
        self.ready = False
        self.fetches = 0
        self.failures = 0

    def current(self) -> ExportSnapshot | None:
        if not self.ready:
            return None
        with self.lock:
            if self.pinned is None or time.monotonic() - self.pinned_at > self.max_age:
                self.pinned = self._fetch()
                self.pinned_at = time.monotonic()
            return self.pinned

    def release(self) -> None:
        with self.lock:
            self.pinned = None

    def _fetch(self) -> ExportSnapshot | None:
        """Build the export from the latest snapshot, on the collecting thread (snapshots are
        immutable, so this needs nothing of the event loop)."""
        try:
            snapshot = self.build()
        except Exception:
            self.failures += 1
            log.exception("OTLP: could not build the snapshot; export skipped")
            return None
        self.fetches += 1
        return snapshot


def _observe(source: _Source, name: str, _options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    snapshot = source.current()
    metric = snapshot.metrics.get(name) if snapshot is not None else None
    if metric is None:
        return []
    return [
        Observation(point.value, dict(point.attributes))
        for point in metric.points
        if isinstance(point, NumberPoint)
    ]


def _histogram_metrics(snapshot: ExportSnapshot, start_ns: int, now_ns: int) -> list[Metric]:
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Histogram,
        HistogramDataPoint,
        Metric,
    )

    unset = typing.cast(float, None)  # optional in OTLP: left out of the message
    out: list[Metric] = []
    for metric in snapshot.of_kind("histogram"):
        points = [
            HistogramDataPoint(
                attributes=dict(p.attributes),
                start_time_unix_nano=start_ns,
                time_unix_nano=now_ns,
                count=p.count,
                sum=p.sum,
                bucket_counts=list(p.bucket_counts),
                explicit_bounds=list(p.bounds),
                min=unset,
                max=unset,
            )
            for p in metric.points
            if isinstance(p, HistogramPoint)
        ]
        if points:
            out.append(
                Metric(
                    name=metric.name,
                    description=metric.description,
                    unit=metric.unit,
                    data=Histogram(
                        data_points=points,
                        aggregation_temporality=AggregationTemporality.CUMULATIVE,
                    ),
                )
            )
    return out


def _with_metrics(data: MetricsData, extra: Sequence[Metric], version: str) -> MetricsData:
    """``data`` with ``extra`` added to metricsd's scope (the encoder keys scopes by identity,
    so they join the scope the SDK produced rather than a second one of the same name)."""
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    if not extra or not data.resource_metrics:
        return data
    first = data.resource_metrics[0]
    scopes = list(first.scope_metrics)
    for i, scope_metrics in enumerate(scopes):
        if scope_metrics.scope.name == SCOPE:
            scopes[i] = ScopeMetrics(
                scope=scope_metrics.scope,
                metrics=[*scope_metrics.metrics, *extra],
                schema_url=scope_metrics.schema_url,
            )
            break
    else:
        scope = InstrumentationScope(SCOPE, version, SCHEMA_URL)
        scopes.append(ScopeMetrics(scope=scope, metrics=list(extra), schema_url=SCHEMA_URL))
    resource = ResourceMetrics(
        resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url
    )
    return MetricsData(resource_metrics=[resource, *data.resource_metrics[1:]])


class OtlpPush:
    """The OTLP push of one daemon: :meth:`start` on the event loop once the daemon is ready,
    ``await`` :meth:`stop` at shutdown (one last export, bounded by ``otlp.timeout``)."""

    def __init__(
        self,
        config: OtlpConfig,
        families: Callable[[], list[Family]],
        *,
        start_wall: float,
        max_points: int = 1_000_000,
    ) -> None:
        self.config = config
        self.families = families
        self.start_ns = int(start_wall * 1e9)
        self.max_points = max_points
        self.url = metrics_url(config.endpoint)
        self.provider: MeterProvider | None = None
        self.source: _Source | None = None
        self.exports = 0
        self._instruments: set[str] = set()
        self._lock = threading.Lock()
        self._meter: Meter | None = None

    def snapshot(self) -> ExportSnapshot:
        """Build the export from the latest snapshot (on any thread)."""
        return export_snapshot(self.families())

    def start(self) -> None:
        require_sdk()
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import (
            Counter,
            Histogram,
            MeterProvider,
            ObservableCounter,
            ObservableGauge,
            ObservableUpDownCounter,
            UpDownCounter,
        )
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            PeriodicExportingMetricReader,
        )
        from opentelemetry.sdk.resources import Resource

        source = _Source(self.snapshot, self.config.interval)
        push = self

        class Reader(PeriodicExportingMetricReader):
            """Adds metricsd's histograms to each collected batch, then exports it."""

            def _receive_metrics(
                self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
            ) -> None:
                try:
                    snapshot = source.current()
                    if snapshot is not None:
                        extra = _histogram_metrics(snapshot, push.start_ns, time.time_ns())
                        metrics_data = _with_metrics(metrics_data, extra, __version__)
                        push._register(snapshot)
                finally:
                    source.release()
                super()._receive_metrics(metrics_data, timeout_millis, **kwargs)
                push.exports += 1

        cumulative = AggregationTemporality.CUMULATIVE
        exporter = OTLPMetricExporter(
            endpoint=self.url,
            headers=dict(self.config.headers) or None,
            timeout=self.config.timeout,
            preferred_temporality={
                kind: cumulative
                for kind in (
                    Counter,
                    UpDownCounter,
                    Histogram,
                    ObservableCounter,
                    ObservableUpDownCounter,
                    ObservableGauge,
                )
            },
        )
        reader = Reader(
            exporter,
            export_interval_millis=self.config.interval * 1000.0,
            export_timeout_millis=self.config.timeout * 1000.0,
            cardinality_limits={
                ObservableCounter: self.max_points,
                ObservableGauge: self.max_points,
            },
        )
        resource = Resource.create({"service.version": __version__})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "metricsd"}))
        self.provider = MeterProvider(
            metric_readers=[reader], resource=resource, shutdown_on_exit=False
        )
        self._meter = self.provider.get_meter(SCOPE, __version__, schema_url=SCHEMA_URL)
        self.source = source
        self._register(self.snapshot())  # on the loop: the instruments exist before any export
        source.ready = True
        log.info("OTLP push to %s every %g s", self.url, self.config.interval)

    def _register(self, snapshot: ExportSnapshot) -> None:
        """Create the observable instrument of every counter and gauge not seen before.

        Called on the loop at start and from the reader thread after a collection (never
        inside one: the SDK holds its collection lock while callbacks run)."""
        source, meter = self.source, self._meter
        if source is None or meter is None:
            raise RuntimeError("OtlpPush.start() was not called")
        with self._lock:
            for metric in snapshot.metrics.values():
                if metric.kind == "histogram" or metric.name in self._instruments:
                    continue
                self._instruments.add(metric.name)
                callback = partial(_observe, source, metric.name)
                create = (
                    meter.create_observable_counter
                    if metric.kind == "counter"
                    else meter.create_observable_gauge
                )
                create(metric.name, [callback], unit=metric.unit, description=metric.description)

    async def stop(self) -> None:
        """Export once more and shut the SDK down, in a thread, waiting at most
        ``otlp.timeout`` + 1 s (the event loop keeps serving the snapshot meanwhile)."""
        provider, self.provider = self.provider, None
        if provider is None:
            return
        timeout = self.config.timeout
        thread = threading.Thread(
            target=provider.shutdown,
            kwargs={"timeout_millis": timeout * 1000.0},
            name="metricsd-otlp-shutdown",
            daemon=True,
        )
        thread.start()
        deadline = time.monotonic() + timeout + 1.0
        while thread.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if thread.is_alive():
            log.warning("OTLP: the last export did not finish within %g s; abandoned", timeout)
