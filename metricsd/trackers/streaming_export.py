"""Views of the streaming tracker: Prometheus families and the JSON of SPEC §4.2.

Counts are lifetime; distributions (blocks ``{avg, min, max, p50, p90, p95, p99, count}``) are
over the 5-minute window, merged across models from each model's HDR histograms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metricsd.export.prometheus import Family, format_float
from metricsd.hist import Buckets
from metricsd.trackers.requests_export import merge_views
from metricsd.trackers.streaming_series import ORPHAN_TYPES, RINGS, STATUSES, StreamSeries
from metricsd.window import HistView

if TYPE_CHECKING:
    from metricsd.trackers.streaming import StreamingTracker

__all__ = ["json_streaming_stats", "streaming_families", "streaming_view"]

WINDOW = 300.0
QS = (0.5, 0.9, 0.95, 0.99)
#: JSON block name → window ring name.
BLOCKS = {
    "ttft": "ttft",
    "itl": "itl",
    "time_per_output_token": "tpot",
    "duration": "duration",
    "tokens_per_second": "tps",
    "e2e_tokens_per_second": "e2e_tps",
    "jitter_ms": "jitter",
    "smoothness": "smoothness",
}


def _histogram(family: Family, labels: Any, bounds: tuple[float, ...], b: Buckets) -> None:
    if b.count:
        family.histogram(labels, bounds, b.cumulative(), b.sum)


def streaming_families(tracker: StreamingTracker, now: float) -> list[Family]:
    tracker.flush()
    prom = tracker.config.prometheus
    ttft = Family(
        "llm_time_to_first_token_seconds", "histogram", "Time from stream start to first token."
    )
    for (endpoint, model), b in sorted(tracker.ttft_buckets.items()):
        _histogram(ttft, (("endpoint", endpoint), ("model", model)), prom.ttft_buckets, b)
    itl = Family(
        "llm_inter_token_latency_seconds",
        "histogram",
        "Time between successive token events per token (one sample per gap).",
    )
    tpot = Family(
        "llm_time_per_output_token_seconds",
        "histogram",
        "Mean inter-token latency of each finished stream (one sample per stream).",
    )
    tps = Family(
        "llm_stream_output_tokens_per_second",
        "histogram",
        "Decode rate of each finished stream: (tokens - 1) / (last token - first token).",
    )
    streams = Family("llm_streams", "counter", "Streams finished, by status.")
    active = Family("llm_streams_active", "gauge", "Streams started and not yet finished.")
    stalls = Family("llm_stream_stalls", "counter", "Inter-token gaps above the stall threshold.")
    backpressure = Family(
        "llm_stream_backpressure", "counter", "Backpressure events reported by producers."
    )
    tokens = Family("llm_stream_tokens", "counter", "Tokens streamed.")
    nbytes = Family("llm_stream_bytes", "counter", "Bytes streamed, as reported by producers.")
    active_now = tracker.active_by_model()
    for (model,), s in sorted(tracker.series.items()):
        labels = (("model", model),)
        _histogram(itl, labels, prom.itl_buckets, s.itl_buckets)
        _histogram(tpot, labels, prom.itl_buckets, s.tpot_buckets)
        _histogram(tps, labels, prom.tps_buckets, s.tps_buckets)
        for status in STATUSES:
            streams.counter(s.statuses[status], (*labels, ("status", status)))
        active.add(active_now.pop(model, 0), labels)
        stalls.counter(s.stalls, labels)
        backpressure.counter(s.backpressure, labels)
        tokens.counter(s.tokens, labels)
        nbytes.counter(s.nbytes, labels)
    for model, count in sorted(active_now.items()):  # series dropped while streams run
        active.add(count, (("model", model),))
    evicted = Family(
        "metricsd_streams_evicted",
        "counter",
        "Active streams ended as abandoned to make room at limits.max_active_streams.",
    )
    evicted.counter(tracker.evicted)
    orphaned = Family(
        "metricsd_stream_events_orphaned",
        "counter",
        "Stream events for unknown stream ids, and duplicate starts, by type.",
    )
    for event_type in ORPHAN_TYPES:
        orphaned.counter(tracker.orphaned[event_type], (("type", event_type),))
    out = [ttft, itl, tpot, tps, streams, active, stalls, backpressure, tokens, nbytes]
    out += [evicted, orphaned]
    if prom.compat:
        out += _compat(tracker, now)
    return out


def _summary(name: str, help_text: str, view: HistView | None) -> Family:
    """A summary over the window: quantiles (only with data) and the real ``_sum``/``_count``."""
    family = Family(name, "summary", help_text)
    if view is not None and view.count:
        for q, value in zip(QS, view.quantiles(QS), strict=True):
            family.add(value, (("quantile", format_float(q)),))
    family.add(view.sum if view else 0.0, (), "_sum")
    family.add(view.count if view else 0, (), "_count")
    return family


def _compat(tracker: StreamingTracker, now: float) -> list[Family]:
    """The seed documents' names (SPEC §3.2)."""
    totals = tracker.totals
    started = Family("streaming_total_streams", "counter", "Streams started (lifetime).")
    started.counter(totals["started"])
    failed = Family("streaming_failed_streams", "counter", "Streams that ended failed.")
    failed.counter(totals["failed"])
    active = Family("streaming_active_streams", "gauge", "Streams in progress.")
    active.add(len(tracker.table))
    views = _views(list(tracker.series.items()), now)
    return [
        _summary(
            "streaming_ttft_milliseconds",
            "Time to first token in ms over the last 5 minutes.",
            views["ttft"],
        ),
        _summary(
            "streaming_tokens_per_second",
            "Decode rate of finished streams over the last 5 minutes.",
            views["tps"],
        ),
        started,
        failed,
        active,
    ]


def _views(
    items: list[tuple[tuple[str, ...], StreamSeries]], now: float
) -> dict[str, HistView | None]:
    return {
        ring: merge_views([s.rings[ring].window(now, WINDOW) for _k, s in items]) for ring in RINGS
    }


def _block(view: HistView | None) -> dict[str, float | int]:
    if view is None:
        return {"avg": 0.0, "min": 0.0, "max": 0.0, **dict.fromkeys(_QNAMES, 0.0), "count": 0}
    return {k: (int(v) if k == "count" else float(v)) for k, v in view.block(QS).items()}


_QNAMES = ("p50", "p90", "p95", "p99")


def _blocks(views: dict[str, HistView | None]) -> dict[str, Any]:
    return {name: _block(views[ring]) for name, ring in BLOCKS.items()}


def _counts(statuses: Any, started: int, active: int) -> dict[str, Any]:
    completed = int(statuses["completed"])
    finished = sum(int(statuses[s]) for s in STATUSES)
    return {
        "total_streams": int(started),
        "active_streams": int(active),
        "completed_streams": completed,
        "failed_streams": int(statuses["failed"]),
        "cancelled_streams": int(statuses["cancelled"]),
        "abandoned_streams": int(statuses["abandoned"]),
        "successful_streams": completed,
        "success_rate": completed / finished if finished else 0.0,
    }


def streaming_view(
    tracker: StreamingTracker, now: float, model: str | None = None
) -> dict[str, Any]:
    """``GET /metrics/streaming`` (SPEC §4.2); with ``model``, that model's numbers only."""
    tracker.flush()
    items = [(k, s) for k, s in sorted(tracker.series.items()) if model is None or k[0] == model]
    active = tracker.active_by_model()
    by_model: dict[str, Any] = {}
    per_model: list[dict[str, HistView | None]] = []
    for key, s in items:
        views = _views([(key, s)], now)
        per_model.append(views)
        entry = _counts(s.statuses, s.started, active.get(key[0], 0))
        entry.update(_lifetime(s.tokens, s.nbytes, s.backpressure, s.stalls))
        entry.update(_blocks(views))
        by_model[key[0]] = entry
    if model is None:
        totals = tracker.totals
        out = _counts(totals, totals["started"], len(tracker.table))
        out["evicted_streams"] = tracker.evicted
        out.update(
            _lifetime(totals["tokens"], totals["bytes"], totals["backpressure"], totals["stalls"])
        )
    elif model in by_model:
        out = {k: v for k, v in by_model[model].items() if not isinstance(v, dict)}
    else:
        out = _counts(dict.fromkeys(STATUSES, 0), 0, 0)
        out.update(_lifetime(0, 0, 0, 0))
    merged = {
        ring: merge_views([v for views in per_model if (v := views[ring]) is not None])
        for ring in RINGS
    }
    out.update(_blocks(merged))
    out["ttft_percentiles"] = out["ttft"] if out["ttft"]["count"] else None
    out["streams_by_model"] = {m: e["total_streams"] for m, e in by_model.items()}
    out["tokens_by_model"] = {m: e["total_tokens_generated"] for m, e in by_model.items()}
    out["by_model"] = by_model
    out["window_seconds"] = WINDOW
    out.update(_mix(tracker, model))
    return out


def _lifetime(tokens: int, nbytes: int, backpressure: int, stalls: int) -> dict[str, int]:
    return {
        "total_tokens_generated": int(tokens),
        "total_bytes_sent": int(nbytes),
        "total_backpressure_events": int(backpressure),
        "stalls": int(stalls),
    }


def _mix(tracker: StreamingTracker, model: str | None) -> dict[str, Any]:
    """The request mix the React dashboard reads: lifetime counts, mean durations in ms."""
    acc = [0.0, 0.0, 0.0, 0.0]
    for (name,), m in tracker.mix.items():
        if model is None or name == model:
            acc = [a + b for a, b in zip(acc, m, strict=True)]
    streaming, plain = int(acc[0]), int(acc[2])
    total = streaming + plain
    return {
        "streaming_requests": streaming,
        "non_streaming_requests": plain,
        "streaming_percentage": streaming / total * 100.0 if total else 0.0,
        "avg_streaming_latency": acc[1] / streaming if streaming else 0.0,
        "avg_non_streaming_latency": acc[3] / plain if plain else 0.0,
    }


def _seconds_block(view: HistView | None, unit: float) -> dict[str, float]:
    """FakeAI's ``{avg, min, max, p50, p90, p99}``, or ``{}`` with no data."""
    if view is None or view.count == 0:
        return {}
    block = view.block(QS)
    return {k: float(block[k]) / unit for k in ("avg", "min", "max", "p50", "p90", "p99")}


def json_streaming_stats(tracker: StreamingTracker, now: float) -> dict[str, Any]:
    """The ``streaming_stats`` part of ``GET /metrics/json`` (TTFT in seconds)."""
    tracker.flush()
    views = _views(list(tracker.series.items()), now)
    return {
        "active_streams": len(tracker.table),
        "completed_streams": int(tracker.totals["completed"]),
        "failed_streams": int(tracker.totals["failed"]),
        "ttft": _seconds_block(views["ttft"], 1000.0),
        "tokens_per_second": _seconds_block(views["tps"], 1.0),
    }


def live_view(tracker: StreamingTracker, now: float, models: frozenset[str]) -> dict[str, Any]:
    """The ``streaming`` category of the live stream (SPEC §5.2): ms blocks, absent when empty.

    ``models`` (empty: all) narrows every number, the active count included.
    """
    tracker.flush()
    items = [(k, s) for k, s in tracker.series.items() if not models or k[0] in models]
    if models:
        active = sum(c for m, c in tracker.active_by_model().items() if m in models)
        completed = sum(s.statuses["completed"] for _k, s in items)
        failed = sum(s.statuses["failed"] for _k, s in items)
    else:
        active = len(tracker.table)
        completed, failed = tracker.totals["completed"], tracker.totals["failed"]
    out: dict[str, Any] = {
        "active_streams": int(active),
        "completed_streams": int(completed),
        "failed_streams": int(failed),
    }
    views = _views(items, now)
    for name, ring in (("ttft", "ttft"), ("tokens_per_second", "tps")):
        block = _seconds_block(views[ring], 1.0)
        if block:
            out[name] = block
    return out
