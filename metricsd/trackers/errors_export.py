"""Views of the error tracker: Prometheus families and the JSON of ``/metrics/errors`` and
``/metrics/error-patterns`` (SPEC §4.4). Every number is a plain ``int``/``float``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metricsd.export.prometheus import Family
from metricsd.series import SeriesRegistry
from metricsd.trackers.errors import WINDOW_SECONDS, RecentError

if TYPE_CHECKING:
    from metricsd.trackers.errors import ErrorTracker

__all__ = ["error_families", "errors_view", "patterns_view"]

TOP_PATTERNS = 10
DEFAULT_MIN_COUNT = 3


def error_families(tracker: ErrorTracker, now: float) -> list[Family]:
    """``llm_error_patterns`` and friends. ``llm_errors_total`` belongs to the request tracker."""
    patterns = Family("llm_error_patterns", "gauge", "Distinct error patterns held.")
    patterns.add(len(tracker.patterns))
    bursts = Family("llm_error_bursts", "counter", "Error bursts: seconds with at least 10 errors.")
    bursts.counter(tracker.bursts.total)
    evicted = Family(
        "metricsd_error_patterns_evicted",
        "counter",
        "Error patterns dropped (least recently seen) because the table was full.",
    )
    evicted.counter(tracker.patterns.evicted)
    out = [patterns, bursts, evicted]
    if tracker.config.prometheus.compat:
        errors = Family("error_total_errors", "counter", "Failed outcomes (seed name).")
        errors.counter(tracker.total_errors)
        requests = Family("error_total_requests", "counter", "Outcomes (seed name).")
        requests.counter(tracker.total_requests)
        out += [errors, requests]
    return out


def _ratio(part: int, whole: int, empty: float) -> float:
    return part / whole if whole else empty


def _distribution(registry: SeriesRegistry[list[int]]) -> dict[str, int]:
    """label → count, most frequent first."""
    items = sorted(((k[0], c[0]) for k, c in registry.items()), key=lambda kv: (-kv[1], kv[0]))
    return {label: int(count) for label, count in items}


def errors_view(tracker: ErrorTracker, now: float) -> dict[str, Any]:
    """``GET /metrics/errors``."""
    total, errors = tracker.total_requests, tracker.total_errors
    w_requests, w_errors = tracker.windowed(now)
    return {
        "total_requests": total,
        "total_errors": errors,
        "total_successes": total - errors,
        "error_rate": _ratio(errors, total, 0.0),
        "success_rate": _ratio(total - errors, total, 1.0),
        "windowed": {
            "requests": w_requests,
            "errors": w_errors,
            "error_rate": _ratio(w_errors, w_requests, 0.0),
            "window_seconds": WINDOW_SECONDS,
        },
        "by_status_code": _distribution(tracker.by_status),
        "by_error_type": _distribution(tracker.by_type),
        "by_endpoint": _distribution(tracker.by_endpoint),
        "by_model": _distribution(tracker.by_model),
        "top_patterns": [p.to_dict() for p in tracker.patterns.select(limit=TOP_PATTERNS)],
        "bursts": tracker.bursts.recent(),
        "pattern_count": len(tracker.patterns),
        "patterns_evicted": tracker.patterns.evicted,
        "recent_errors": [
            {
                "timestamp": e.timestamp,
                "endpoint": e.endpoint,
                "model": e.model,
                "status": e.status,
                "error_type": e.error_type,
                "message": e.message,
                "fingerprint": e.fingerprint,
                "request_id": e.request_id,
                "key_id": e.key_id,
            }
            for e in map(RecentError._make, reversed(tracker.recent))
        ],
    }


def patterns_view(
    tracker: ErrorTracker,
    now: float,
    min_count: int = DEFAULT_MIN_COUNT,
    recent_only: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """``GET /metrics/error-patterns``: most frequent first; ``recent_only`` keeps patterns
    seen within the last 5 minutes."""
    since = now - WINDOW_SECONDS if recent_only else None
    return [p.to_dict() for p in tracker.patterns.select(min_count, since, limit)]
