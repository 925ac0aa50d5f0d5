"""Views of the cost tracker: Prometheus families and the JSON shapes of SPEC §2 and §4.6.

Amounts are exact integers of pUSD inside; JSON shows USD numbers rounded to 1e-9 and, for
totals, ``*_usd_str`` strings with every digit; Prometheus gets the nearest float.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from metricsd.export.prometheus import Family
from metricsd.pricing import PICO, usd, usd_str
from metricsd.trackers.base import UNKNOWN
from metricsd.trackers.cost_state import HOURS_KEPT, Totals

if TYPE_CHECKING:
    from metricsd.trackers.cost import CostTracker

__all__ = [
    "budgets_view",
    "cost_families",
    "key_view",
    "projection",
    "stream_view",
    "suggestions_view",
    "summary_view",
]

MONTH_SECONDS: Final = 30 * 86400


def _money(name: str, pico: int) -> dict[str, Any]:
    return {f"{name}_usd": usd(pico), f"{name}_usd_str": usd_str(pico)}


def _windows(totals: Totals, now: float) -> dict[str, Any]:
    """The last 24 h (current hour + 23) and 7 d (current hour + 167) of spend."""
    hour = int(now // 3600)
    return {
        **_money("cost_24h", totals.since_hour(hour - 23)),
        **_money("cost_7d", totals.since_hour(hour - HOURS_KEPT + 1)),
    }


def projection(totals: Totals, now: float, since: float, min_basis: float) -> dict[str, Any]:
    """Spend over the last min(7 d, observed span) ÷ that span × 30 d, and the span used.

    The observed span runs from ``since`` (when the tracker started observing). It is taken as
    at least ``min_basis`` seconds, so a few seconds of data do not project to absurd amounts;
    ``projection_basis_seconds`` is the divisor really used.
    """
    first = int(now // 3600) - HOURS_KEPT + 1
    window = now - first * 3600.0
    observed = max(0.0, now - since)
    if observed >= window:
        spend, basis = totals.since_hour(first), window
    else:
        spend, basis = sum(totals.hours.values()), observed
    basis = max(basis, min_basis)
    return {
        "projected_monthly_cost_usd": usd(round(spend * MONTH_SECONDS / basis)),
        "projection_basis_seconds": round(basis, 3),
        "observed_seconds": round(observed, 3),
    }


def _usd_map(values: dict[str, int]) -> dict[str, float]:
    return {k: usd(v) for k, v in sorted(values.items())}


def summary_view(tracker: CostTracker, now: float, wall: float) -> dict[str, Any]:
    """``GET /metrics/costs``."""
    t = tracker.all
    cache = [0, 0, 0, 0]
    for entry in tracker.cache_savings.values():
        cache = [a + b for a, b in zip(cache, entry, strict=True)]
    cached_tokens, regular, cached_cost, premium = cache
    batch_requests, batch_regular, batch_billed = tracker.batch_savings
    return {
        "timestamp": wall,
        **_money("total_cost", t.total),
        **_windows(t, now),
        "by_model": _usd_map(t.by_model),
        "by_endpoint": _usd_map(t.by_endpoint),
        "by_key": {k: usd(s.total) for k, s in sorted(tracker.keys.items())},
        "total_requests": t.requests,
        "unique_api_keys": sum(1 for k in tracker.keys if k != UNKNOWN),
        "tokens": dict(zip(("input", "output", "cached", "cache_write"), t.tokens, strict=True)),
        "cache_savings": {
            "cached_tokens": cached_tokens,
            **_money("savings", regular - cached_cost),
            "regular_cost_usd": usd(regular),
            "cached_cost_usd": usd(cached_cost),
            "write_premium_usd": usd(premium),
            "net_savings_usd": usd(regular - cached_cost - premium),
            "by_model": {
                m: usd(e[1] - e[2]) for m, e in sorted(tracker.cache_savings.items()) if e[1]
            },
        },
        "batch_savings": {
            "batch_requests": batch_requests,
            **_money("savings", batch_regular - batch_billed),
            "regular_cost_usd": usd(batch_regular),
            "batch_cost_usd": usd(batch_billed),
        },
        **projection(t, now, tracker.start, tracker.config.cost.projection_min_seconds),
        "unpriced_requests": sum(tracker.unpriced.values()),
        "unpriced_by_model": dict(sorted(tracker.unpriced.items())),
        "clamped_requests": tracker.clamped,
        "pricing": {"updated": tracker.pricing.updated, "sources": list(tracker.pricing.sources)},
    }


def key_view(tracker: CostTracker, key_id: str, now: float, wall: float) -> dict[str, Any] | None:
    """``GET /metrics/costs/keys/{key}``; None for a key never seen."""
    t = tracker.keys.get(key_id)
    if t is None:
        return None
    tokens = dict(zip(("input", "output", "cached", "cache_write"), t.tokens, strict=True))
    return {
        "key_id": key_id,
        **_money("total_cost", t.total),
        **_windows(t, now),
        "by_model": _usd_map(t.by_model),
        "by_endpoint": _usd_map(t.by_endpoint),
        "tokens": {**tokens, "total": tokens["input"] + tokens["output"]},
        "requests": t.requests,
        **projection(t, now, tracker.start, tracker.config.cost.projection_min_seconds),
        "budget": tracker.budget_status(key_id, wall),
    }


def stream_view(tracker: CostTracker, now: float) -> dict[str, Any]:
    """The WebSocket ``cost`` category (SPEC §5.2): ``{total_usd, usd_per_hour, by_model}``.

    ``usd_per_hour``: spend in the current and the previous hour ÷ the time they cover (at
    least a minute, at most the time since the first cost was seen) × 3600.
    """
    t = tracker.all
    first = int(now // 3600) - 1
    span = min(now - first * 3600.0, max(0.0, now - tracker.start))
    per_hour = t.since_hour(first) * 3600 / max(span, 60.0)
    return {
        "total_usd": usd(t.total),
        "usd_per_hour": usd(round(per_hour)),
        "by_model": _usd_map(t.by_model),
    }


def budgets_view(tracker: CostTracker, wall: float) -> dict[str, Any]:
    """``GET /metrics/budgets``."""
    statuses = [tracker.budget_status(k, wall) for k in sorted(tracker.budgets)]
    return {"timezone": tracker.config.cost.timezone, "budgets": [s for s in statuses if s]}


def suggestions_view(tracker: CostTracker, key_id: str | None) -> list[dict[str, Any]]:
    """``GET /metrics/costs/suggestions``: largest savings first."""
    found = [s for (k, _t), s in tracker.suggestions.items() if key_id is None or k == key_id]
    return sorted(found, key=lambda s: (-s["potential_savings_usd"], s["key_id"]))


def cost_families(tracker: CostTracker, now: float) -> list[Family]:
    prom = tracker.config.prometheus
    cost = Family("llm_cost_usd", "counter", "Spend in USD, by model, endpoint and key.")
    for (model, endpoint, key), total in sorted(tracker.series.items()):
        cost.counter(total[0] / PICO, (("model", model), ("endpoint", endpoint), ("key_id", key)))
    hist = Family("llm_request_cost_usd", "histogram", "Cost of each priced request in USD.")
    for (model,), b in sorted(tracker.hist.items()):
        hist.histogram((("model", model),), prom.cost_buckets, b.cumulative(), b.sum / PICO)
    unpriced = Family(
        "llm_unpriced_requests", "counter", "Requests with tokens but no price (counted at 0)."
    )
    for model, count in sorted(tracker.unpriced.items()):
        unpriced.counter(count, (("model", model),))
    limit = Family("llm_budget_limit_usd", "gauge", "Budget limit in USD for the period.")
    used = Family("llm_budget_used_usd", "gauge", "Spend in USD in the budget's current period.")
    exceeded = Family("llm_budget_exceeded", "gauge", "1 when the budget's spend ≥ its limit.")
    percentage = Family(
        "cost_budget_usage_percentage", "gauge", "Budget spend as a percentage of its limit."
    )
    wall = now + tracker.wall_offset
    for key in sorted(tracker.budgets):
        s = tracker.budget_status(key, wall)
        if s is None:
            continue
        labels = (("key_id", key),)
        limit.add(s["limit_usd"], labels)
        used.add(s["used_usd"], labels)
        exceeded.add(1 if s["exceeded"] else 0, labels)
        percentage.add(s["percentage"], labels)
    clamped = Family(
        "metricsd_cost_clamped",
        "counter",
        "Requests whose cached (and cache-write) tokens exceeded their input tokens (clamped).",
    )
    clamped.counter(tracker.clamped)
    alerts = Family("metricsd_budget_alerts", "counter", "budget_alert records emitted, by level.")
    for level, count in sorted(tracker.alerts_sent.items()):
        alerts.counter(count, (("level", level),))
    out = [cost, hist, unpriced, limit, used, exceeded, clamped, alerts]
    if prom.compat:
        total_usd = Family("cost_total_usd", "gauge", "Lifetime spend in USD (seed name).")
        total_usd.add(tracker.all.total / PICO)
        by_model = Family(
            "cost_by_model_usd", "gauge", "Lifetime spend by model in USD (seed name)."
        )
        for model, pico in sorted(tracker.all.by_model.items()):
            by_model.add(pico / PICO, (("model", model),))
        out += [total_usd, by_model, percentage]
    return out
