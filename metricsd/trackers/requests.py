"""The request tracker: throughput, latency, tokens, finish reasons, cache and queue (SPEC §4.1).

One series per (provider, endpoint, model). Each holds lifetime counters (for Prometheus, never
decreasing), exact Prometheus bucket counters, and windowed counters and HDR histograms (for
rates and percentiles). Everything is recorded per batch with numpy; there is no per-event
Python work per event on the columnar fast path.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from metricsd.config import Config
from metricsd.export.prometheus import Family, render_labels
from metricsd.hist import Buckets, Layout
from metricsd.persist import capture, restore_into
from metricsd.protocol import Batch
from metricsd.series import SeriesRegistry
from metricsd.trackers.base import Providers, group_rows, label_values, take
from metricsd.trackers.recent import RecentRing
from metricsd.window import CounterRing, Geometry, HistRing

__all__ = ["RequestTracker"]

#: Windowed counter fields of a request series, in CounterRing order.
FIELDS = ("requests", "errors", "input", "output", "cached", "reasoning", "cache_write")
TOKEN_TYPES = ("input", "output", "cached", "cache_write", "reasoning")
_TOKEN_FIELDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cached": "cached_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
LATENCY_LAYOUT = Layout(highest=3_600_000_000, significant_figures=2, scale=1000.0)  # ms → µs


class RequestSeries:
    """State of one (provider, endpoint, model) series."""

    __slots__ = (
        "buckets",
        "errors_total",
        "first_seen",
        "labels",
        "latency",
        "queue_buckets",
        "queue_wait",
        "statuses",
        "tokens",
        "window",
    )

    def __init__(
        self, geometry: Geometry, config: Config, now: float, key: tuple[str, ...]
    ) -> None:
        # Rendered once: escaping label values on every tick would dominate the exposition.
        self.labels = render_labels(tuple(zip(("provider", "endpoint", "model"), key, strict=True)))
        self.first_seen = now
        self.window = CounterRing(geometry, len(FIELDS))
        self.latency = HistRing(geometry, LATENCY_LAYOUT)
        self.buckets = Buckets(config.prometheus.duration_buckets)
        self.queue_wait: HistRing | None = None
        self.queue_buckets: Buckets | None = None
        self.statuses: Counter[str] = Counter()
        self.tokens = np.zeros(len(TOKEN_TYPES), dtype=np.int64)
        self.errors_total = 0


class CacheSeries:
    __slots__ = ("hits", "matched", "matched_on_hits", "misses", "total")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.total = 0
        self.matched = 0
        self.matched_on_hits = 0


def _status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class RequestTracker:
    """See the module docstring."""

    name = "requests"
    event_types = frozenset({"request", "error", "cache", "queue"})

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.geometry = geometry
        self.start = start
        limits = config.limits
        cap, ttl = limits.max_series, limits.series_ttl
        self.series: SeriesRegistry[RequestSeries] = SeriesRegistry(
            "requests", lambda k: RequestSeries(geometry, config, self._now, k), cap, ttl
        )
        self.finish: SeriesRegistry[list[int]] = SeriesRegistry("finish", lambda _k: [0], cap, ttl)
        self.errors: SeriesRegistry[list[int]] = SeriesRegistry("errors", lambda _k: [0], cap, ttl)
        self.token_hist: SeriesRegistry[Buckets] = SeriesRegistry(
            "tokens", lambda _k: Buckets(config.prometheus.token_buckets), cap, ttl
        )
        self.cache: SeriesRegistry[CacheSeries] = SeriesRegistry(
            "cache", lambda _k: CacheSeries(), cap, ttl
        )
        self.queues: SeriesRegistry[list[float]] = SeriesRegistry(
            "queues", lambda _k: [0.0, 0.0], cap, ttl
        )
        self.recent = RecentRing(config.engine.recent_size)
        self.providers = Providers(config.providers.prefixes)
        self._now = start

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, now: float, wall: float) -> None:
        """Record a batch (nothing derived)."""
        self._now = now
        if batch.type in ("request", "error"):
            self._outcomes(batch, now)
        elif batch.type == "cache":
            self._cache(batch, now)
        elif batch.type == "queue":
            self._queue(batch, now)

    def provider_for(self, model: str) -> str:
        return self.providers.of_model(model)

    def _outcomes(self, batch: Batch, now: float) -> None:
        n = batch.n
        endpoints = label_values(batch, "endpoint")
        models = label_values(batch, "model")
        providers = self.providers.column(batch.get("provider"), models, n)
        is_request = batch.type == "request"
        status_col = batch.column("status", np.int64)
        error_types = batch.get("error_type")
        has_type = (
            np.array([e is not None for e in error_types], dtype=bool)
            if isinstance(error_types, list)
            else np.full(n, error_types is not None, dtype=bool)
        )
        is_error = (status_col >= 400) | has_type
        tokens = {
            t: batch.column(f, np.int64) if is_request else None for t, f in _TOKEN_FIELDS.items()
        }
        duration = batch.column("duration_ms") if is_request else None
        queue_ms = batch.get("queue_ms") if is_request else None
        for key, rows in group_rows(batch, [providers, endpoints, models]):
            series = self.series.get(key, now, n if rows is None else len(rows))
            statuses = take(status_col, rows)
            errors = take(is_error, rows)
            count = len(statuses)
            n_errors = int(np.count_nonzero(errors))
            sums = [0] * len(TOKEN_TYPES)
            if is_request and duration is not None:
                d = take(duration, rows)
                series.latency.record(now, d)
                series.buckets.record_array(d / 1000.0)
                for i, token_type in enumerate(TOKEN_TYPES):
                    column = take(tokens[token_type], rows)
                    sums[i] = int(column.sum())
                series.tokens += sums
                self._token_hist(key[2], tokens, rows, now)
                if isinstance(queue_ms, (np.ndarray, float)):
                    self._queue_wait(series, take(batch.column("queue_ms"), rows), now)
            values, counts = np.unique(statuses, return_counts=True)
            for status, c in zip(values.tolist(), counts.tolist(), strict=True):
                series.statuses[_status_label(status)] += c
            series.errors_total += n_errors
            series.window.add(now, [count, n_errors, *sums[:3], sums[4], sums[3]])
            if n_errors:
                self._errors(batch, key, rows, errors, now)
            if is_request:
                self._finish(batch, key[2], rows, now)
        self._recent(batch, endpoints, models, status_col, is_error, duration)

    def _token_hist(self, model: str, tokens: dict[str, Any], rows: Any, now: float) -> None:
        for token_type in ("input", "output"):
            self.token_hist.get((model, token_type), now).record_array(
                take(tokens[token_type], rows).astype(np.float64)
            )

    def _queue_wait(self, series: RequestSeries, waits: np.ndarray[Any, Any], now: float) -> None:
        waits = waits[~np.isnan(waits)]
        if waits.size == 0:
            return
        if series.queue_wait is None:
            series.queue_wait = HistRing(self.geometry, LATENCY_LAYOUT)
            series.queue_buckets = Buckets(self.config.prometheus.duration_buckets)
        assert series.queue_buckets is not None
        series.queue_wait.record(now, waits)
        series.queue_buckets.record_array(waits / 1000.0)

    def _finish(self, batch: Batch, model: str, rows: Any, now: float) -> None:
        reasons = take(batch.get("finish_reason"), rows)
        if reasons is None:
            return
        counts = (
            Counter(reasons) if isinstance(reasons, list) else Counter({reasons: _len(rows, batch)})
        )
        for reason, c in counts.items():
            if reason is not None:
                self.finish.get((model, reason), now, c)[0] += c

    def _errors(
        self, batch: Batch, key: tuple[str, ...], rows: Any, errors: Any, now: float
    ) -> None:
        types = take(batch.get("error_type"), rows)
        statuses = take(batch.column("status", np.int64), rows)
        count = len(statuses)
        type_list = types if isinstance(types, list) else [types] * count
        tally: Counter[tuple[str, str]] = Counter()
        for i in np.flatnonzero(errors).tolist():
            tally[(type_list[i] or "http_error", _status_label(int(statuses[i])))] += 1
        for (error_type, status), c in tally.items():
            self.errors.get((key[1], key[2], error_type, status), now, c)[0] += c

    def _recent(
        self, batch: Batch, endpoints: Any, models: Any, status: Any, is_error: Any, duration: Any
    ) -> None:
        if batch.type == "request":
            tokens = batch.column("input_tokens", np.int64) + batch.column(
                "output_tokens", np.int64
            )
        else:
            tokens = np.zeros(batch.n, dtype=np.int64)
        self.recent.add(
            batch.column("ts"),
            models,
            endpoints,
            duration,
            tokens,
            status,
            is_error,
            batch.get("error_message"),
            batch.get("error_type"),
        )

    def _cache(self, batch: Batch, now: float) -> None:
        endpoints = label_values(batch, "endpoint")
        models = label_values(batch, "model")
        hit = batch.column("hit", bool)
        total = batch.column("total_tokens", np.int64)
        matched = batch.column("matched_tokens", np.int64)
        for key, rows in group_rows(batch, [endpoints, models]):
            s = self.cache.get(key, now, batch.n if rows is None else len(rows))
            h, t, m = take(hit, rows), take(total, rows), take(matched, rows)
            hits = int(np.count_nonzero(h))
            s.hits += hits
            s.misses += len(h) - hits
            s.total += int(t.sum())
            s.matched += int(m.sum())
            s.matched_on_hits += int(m[h].sum())

    def _queue(self, batch: Batch, now: float) -> None:
        names = batch.values("queue")
        depths = batch.values("depth")
        capacities = batch.values("capacity")
        for name, depth, capacity in zip(names, depths, capacities, strict=True):
            q = self.queues.get((name or "default",), now)
            q[0], q[1] = float(depth), float(capacity or 0)

    #: Data attributes saved by ``state()`` (SPEC §7); everything else comes from the config.
    PERSIST = ("start", "series", "finish", "errors", "token_hist", "cache", "queues", "recent")

    def state(self) -> dict[str, Any]:
        return capture(self, self.PERSIST)

    def restore(self, state: dict[str, Any]) -> None:
        restore_into(self, state)

    def expire(self, now: float) -> None:
        self._now = now
        for registry in (
            self.series,
            self.finish,
            self.errors,
            self.token_hist,
            self.cache,
            self.queues,
        ):
            registry.expire(now)

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        return self.series.overflowed + self.finish.overflowed + self.errors.overflowed

    def families(self, now: float) -> list[Family]:
        from metricsd.trackers.requests_export import request_families

        return request_families(self, now)


def _len(rows: Any, batch: Batch) -> int:
    return batch.n if rows is None else len(rows)
