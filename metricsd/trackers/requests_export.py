"""Views of the request tracker: Prometheus families and the JSON shapes of SPEC §2."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from metricsd.export.prometheus import Family, with_label
from metricsd.hist import Hist
from metricsd.trackers.base import rate
from metricsd.trackers.requests import TOKEN_TYPES
from metricsd.window import HistView

if TYPE_CHECKING:
    from metricsd.trackers.requests import RequestTracker

__all__ = ["by_endpoint", "json_view", "recent_view", "request_families", "summary_view"]

QS = (0.5, 0.9, 0.95, 0.99)
DEFAULT_WINDOW = 300.0


def merge_views(views: list[HistView]) -> HistView | None:
    """One view from several series' windows (same layout): counts add, min/max combine."""
    views = [v for v in views if v.count]
    if not views:
        return None
    counts = np.sum([v.counts.astype(np.uint64) for v in views], axis=0)
    return HistView(
        views[0].layout,
        counts,
        sum(v.count for v in views),
        math.fsum(v.sum for v in views),
        min(v.min for v in views),
        max(v.max for v in views),
        max(v.span for v in views),
    )


def request_families(tracker: RequestTracker, now: float) -> list[Family]:
    prom = tracker.config.prometheus
    requests = Family("llm_requests", "counter", "Requests completed, by status.")
    duration = Family("llm_request_duration_seconds", "histogram", "Request duration.")
    tokens = Family("llm_tokens", "counter", "Tokens processed, by type.")
    queue_wait: dict[tuple[str, str], tuple[list[int], float]] = {}
    for (_provider, endpoint, model), s in sorted(tracker.series.items()):
        labels = s.labels  # rendered once per series
        for status, count in sorted(s.statuses.items()):
            requests.counter(count, with_label(labels, "status", status))
        if s.buckets.count:
            duration.histogram(labels, prom.duration_buckets, s.buckets.cumulative(), s.buckets.sum)
        token_counts = s.tokens.tolist()
        for i, token_type in enumerate(TOKEN_TYPES):
            tokens.counter(token_counts[i], with_label(labels, "type", token_type))
        if s.queue_buckets is not None and s.queue_buckets.count:
            cum, total = queue_wait.get(
                (endpoint, model), ([0] * (len(prom.duration_buckets) + 1), 0.0)
            )
            queue_wait[(endpoint, model)] = (
                [a + b for a, b in zip(cum, s.queue_buckets.cumulative(), strict=True)],
                total + s.queue_buckets.sum,
            )
    request_tokens = Family("llm_request_tokens", "histogram", "Tokens per request, by type.")
    for (model, token_type), b in sorted(tracker.token_hist.items()):
        request_tokens.histogram(
            (("model", model), ("type", token_type)), prom.token_buckets, b.cumulative(), b.sum
        )
    finish = Family("llm_finish_reason", "counter", "Requests by finish reason.")
    for (model, reason), c in sorted(tracker.finish.items()):
        finish.counter(c[0], (("model", model), ("finish_reason", reason)))
    errors = Family("llm_errors", "counter", "Failed requests, by error type and status.")
    for (endpoint, model, error_type, status), c in sorted(tracker.errors.items()):
        errors.counter(
            c[0],
            (
                ("endpoint", endpoint),
                ("model", model),
                ("error_type", error_type),
                ("status", status),
            ),
        )
    depth = Family("llm_queue_depth", "gauge", "Latest reported queue depth.")
    for (name,), q in sorted(tracker.queues.items()):
        depth.add(q[0], (("queue", name),))
    wait = Family("llm_queue_wait_seconds", "histogram", "Time requests waited in a queue.")
    for (endpoint, model), (cum, total) in sorted(queue_wait.items()):
        wait.histogram(
            (("endpoint", endpoint), ("model", model)), prom.duration_buckets, cum, total
        )
    lookups = Family("llm_cache_lookups", "counter", "Prompt-cache lookups, by result.")
    cache_tokens = Family(
        "llm_cache_tokens", "counter", "Prompt-cache tokens looked up and matched."
    )
    for (endpoint, model), cache in sorted(tracker.cache.items()):
        where = (("endpoint", endpoint), ("model", model))
        lookups.counter(cache.hits, (*where, ("result", "hit")))
        lookups.counter(cache.misses, (*where, ("result", "miss")))
        cache_tokens.counter(cache.total, (*where, ("type", "total")))
        cache_tokens.counter(cache.matched, (*where, ("type", "matched")))
    return [
        requests,
        duration,
        tokens,
        request_tokens,
        finish,
        errors,
        depth,
        wait,
        lookups,
        cache_tokens,
    ]


def _stats(
    count: float, span: float, age: float, view: HistView | None, unit: float
) -> dict[str, float]:
    """FakeAI's ``{rate, avg, min, max, p50, p90, p99}`` (+ p95), latencies divided by ``unit``."""
    out = {"rate": rate(count, span, age)}
    if view is None:
        out.update(
            {"avg": 0.0, "min": 0.0, "max": 0.0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0}
        )
        return out
    block = view.block(QS)
    for name in ("avg", "min", "max", "p50", "p90", "p95", "p99"):
        out[name] = float(block[name]) / unit
    return out


def by_endpoint(
    tracker: RequestTracker, now: float, window: float = DEFAULT_WINDOW, key_index: int = 1
) -> dict[str, dict[str, Any]]:
    """Windowed counters and merged latency per endpoint (``key_index`` 2: per model)."""
    acc: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"counts": np.zeros(7), "views": [], "span": 0.0, "first": math.inf}
    )
    for key, s in tracker.series.items():
        counts, span = s.window.window(now, window)
        entry = acc[key[key_index]]
        entry["counts"] = entry["counts"] + counts
        entry["span"] = max(entry["span"], span)
        entry["first"] = min(entry["first"], s.first_seen)
        entry["views"].append(s.latency.window(now, window))
    return dict(acc)


def json_view(
    tracker: RequestTracker, now: float, streaming_stats: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``GET /metrics/json``: FakeAI's ``GET /metrics`` shape, latencies in seconds."""
    out: dict[str, Any] = {k: {} for k in ("requests", "responses", "tokens", "errors", "latency")}
    for endpoint, e in sorted(by_endpoint(tracker, now).items()):
        age = now - e["first"]
        c, span = e["counts"], e["span"]
        view = merge_views(e["views"])
        out["requests"][endpoint] = _stats(c[0], span, age, None, 1.0)
        out["responses"][endpoint] = _stats(c[0], span, age, view, 1000.0)
        out["latency"][endpoint] = _stats(c[0], span, age, view, 1000.0)
        out["tokens"][endpoint] = _stats(c[2] + c[3], span, age, None, 1.0)
        out["errors"][endpoint] = _stats(c[1], span, age, None, 1.0)
    out["streaming_stats"] = streaming_stats or {
        "active_streams": 0,
        "completed_streams": 0,
        "failed_streams": 0,
        "ttft": {},
        "tokens_per_second": {},
    }
    by_model: dict[str, Any] = {}
    for model, e in sorted(by_endpoint(tracker, now, key_index=2).items()):
        age = now - e["first"]
        c, span = e["counts"], e["span"]
        stats = _stats(c[0], span, age, merge_views(e["views"]), 1000.0)
        stats["tokens_rate"] = rate(c[2] + c[3], span, age)
        stats["errors_rate"] = rate(c[1], span, age)
        stats["error_rate"] = float(c[1] / c[0]) if c[0] else 0.0
        stats["requests"] = int(c[0])
        by_model[model] = stats
    out["by_model"] = by_model
    return out


def summary_view(tracker: RequestTracker, now: float, window_seconds: float) -> dict[str, Any]:
    """``GET /metrics/summary``: steer_llm_sdk's summary over a window."""
    totals = np.zeros(7)
    views: list[HistView] = []
    providers: dict[str, int] = defaultdict(int)
    models: dict[str, int] = defaultdict(int)
    for (provider, _endpoint, model), s in tracker.series.items():
        counts, _span = s.window.window(now, window_seconds)
        if counts[0] == 0:
            continue
        totals += counts
        providers[provider] += int(counts[0])
        models[model] += int(counts[0])
        views.append(s.latency.window(now, window_seconds))
    view = merge_views(views)
    requests = int(totals[0])
    return {
        "requests": requests,
        "avg_latency_ms": (view.sum / view.count) if view else 0.0,
        "p95_latency_ms": view.quantiles((0.95,))[0] if view else 0.0,
        "error_rate": float(totals[1] / totals[0]) if requests else 0.0,
        "total_tokens": int(totals[2] + totals[3]),
        "providers": dict(sorted(providers.items())),
        "models": dict(sorted(models.items())),
        "window_seconds": window_seconds,
    }


def recent_view(tracker: RequestTracker, limit: int) -> list[dict[str, Any]]:
    """``GET /metrics/recent``: the newest outcomes first."""
    return tracker.recent.newest(limit)


def histograms_view(
    tracker: RequestTracker, now: float, name: str, window: float
) -> dict[str, Any]:
    """``GET /metrics/histograms``: HDR-encoded windows per series, for exact merging elsewhere."""
    out: list[dict[str, Any]] = []
    for (provider, endpoint, model), s in sorted(tracker.series.items()):
        rings = {"llm_request_duration_seconds": s.latency, "llm_queue_wait_seconds": s.queue_wait}
        for family, ring in rings.items():
            if ring is None or (name and name != family):
                continue
            view = ring.window(now, window)
            if view.count == 0:
                continue
            hist = Hist(view.layout)
            hist.counts[:] = view.counts
            layout = view.layout
            out.append(
                {
                    "name": family,
                    "labels": {"provider": provider, "endpoint": endpoint, "model": model},
                    "window_seconds": window,
                    "count": view.count,
                    "sum": view.sum / 1000.0,
                    "unit": "microseconds",
                    "lowest": layout.lowest,
                    "highest": layout.highest,
                    "significant_figures": layout.significant_figures,
                    "encoding": "hdr",
                    "histogram": hist.encode(),
                }
            )
    return {"histograms": out}
