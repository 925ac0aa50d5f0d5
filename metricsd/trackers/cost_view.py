"""The cost tracker frozen for a snapshot, and what is read from it: Prometheus families and
the JSON shapes of SPEC §2 and §4.6.

Amounts are exact integers of pUSD inside; JSON shows USD numbers rounded to 1e-9 and, for
totals, ``*_usd_str`` strings with every digit; Prometheus gets the nearest float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from metricsd.budgets import Budget, period_bounds, status, used_since
from metricsd.config import Config
from metricsd.export.prometheus import Family, histogram_samples, render_labels
from metricsd.pricing import PICO, PriceTable, usd, usd_str
from metricsd.series import TableView
from metricsd.trackers.base import UNKNOWN
from metricsd.trackers.cost_state import HOURS_KEPT, Totals

if TYPE_CHECKING:
    from metricsd.trackers.cost import CostTracker

__all__ = ["CostView", "budget_status", "projection"]

MONTH_SECONDS: Final = 30 * 86400
ALL_KEYS: Final = "*"


def budget_status(
    budgets: dict[str, Budget],
    totals_for: Any,
    tz: ZoneInfo,
    key_id: str,
    wall: float,
) -> dict[str, Any] | None:
    """The status of SPEC §2 at ``wall`` (periods evaluated then), or None without a budget."""
    budget = budgets.get(key_id)
    if budget is None:
        return None
    first_day, start, resets = period_bounds(budget.period, wall, tz)
    totals = totals_for(budget.key_id)
    used = used_since(totals.days, totals.total, first_day) if totals is not None else 0
    return status(budget, used, start, resets)


@dataclass(frozen=True, slots=True)
class CostView:
    """Everything the cost tracker's readers need, frozen at one tick."""

    config: Config
    pricing: PriceTable
    tz: ZoneInfo
    start: float
    wall_offset: float
    series: TableView
    series_total: Any
    hist: TableView
    hist_b: Any
    hist_s: Any
    all: Totals
    keys: dict[str, Totals]
    unpriced: dict[str, int]
    clamped: int
    cache_savings: dict[str, list[int]]
    batch_savings: list[int]
    budgets: dict[str, Budget]
    alerts_sent: dict[str, int]
    suggestions: dict[tuple[str, str], dict[str, Any]]

    @classmethod
    def of(cls, t: CostTracker, keys: dict[str, Totals]) -> CostView:
        return cls(
            t.config,
            t.pricing,
            t.tz,
            t.start,
            t.wall_offset,
            t.series.view(),
            t.series.arrays["total"].copy(),
            t.hist.view(),
            t.hist.arrays["b"].copy(),
            t.hist.arrays["s"].copy(),
            t.all.copy(),
            keys,
            dict(t.unpriced),
            t.clamped,
            {m: list(v) for m, v in t.cache_savings.items()},
            list(t.batch_savings),
            {k: _copy_budget(b) for k, b in t.budgets.items()},
            dict(t.alerts_sent),
            dict(t.suggestions),
        )

    def _totals_for(self, key_id: str) -> Totals | None:
        return self.all if key_id == ALL_KEYS else self.keys.get(key_id)

    def budget_status(self, key_id: str, wall: float) -> dict[str, Any] | None:
        return budget_status(self.budgets, self._totals_for, self.tz, key_id, wall)

    def summary(self, now: float, wall: float) -> dict[str, Any]:
        return summary_view(self, now, wall)

    def key(self, key_id: str, now: float, wall: float) -> dict[str, Any] | None:
        return key_view(self, key_id, now, wall)

    def budgets_view(self, wall: float) -> dict[str, Any]:
        return budgets_view(self, wall)

    def suggestions_view(self, key_id: str | None) -> list[dict[str, Any]]:
        return suggestions_view(self, key_id)

    def live(self, now: float, models: frozenset[str]) -> dict[str, Any]:
        """The stream's ``cost`` category; a model filter narrows ``by_model`` (the totals
        and the hourly rate are not kept per model)."""
        view = stream_view(self, now)
        if models:
            view["by_model"] = {m: v for m, v in view["by_model"].items() if m in models}
        return view

    def families(self, now: float) -> list[Family]:
        return cost_families(self, now)


def _copy_budget(b: Budget) -> Budget:
    return Budget(
        b.key_id, b.limit, b.period, b.limit_type, b.threshold, b.alert_period, set(b.alerted)
    )


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


def summary_view(tracker: CostView, now: float, wall: float) -> dict[str, Any]:
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


def key_view(tracker: CostView, key_id: str, now: float, wall: float) -> dict[str, Any] | None:
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


def stream_view(tracker: CostView, now: float) -> dict[str, Any]:
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


def budgets_view(tracker: CostView, wall: float) -> dict[str, Any]:
    """``GET /metrics/budgets``."""
    statuses = [tracker.budget_status(k, wall) for k in sorted(tracker.budgets)]
    return {"timezone": tracker.config.cost.timezone, "budgets": [s for s in statuses if s]}


def suggestions_view(tracker: CostView, key_id: str | None) -> list[dict[str, Any]]:
    """``GET /metrics/costs/suggestions``: largest savings first."""
    found = [s for (k, _t), s in tracker.suggestions.items() if key_id is None or k == key_id]
    return sorted(found, key=lambda s: (-s["potential_savings_usd"], s["key_id"]))


def cost_families(tracker: CostView, now: float) -> list[Family]:
    prom = tracker.config.prometheus
    cost = Family("llm_cost_usd", "counter", "Spend in USD, by model, endpoint and key.")
    view, totals = tracker.series, tracker.series_total
    order = view.order
    keys = view.ordered

    def cost_samples(i: int) -> list[tuple[str, str, float]]:
        key = keys[i]
        assert key is not None
        labels = render_labels((("model", key[0]), ("endpoint", key[1]), ("key_id", key[2])))
        return [("_total", labels, int(totals[order[i]]) / PICO)]

    cost.per_series(keys, view.ordered_versions(), cost_samples)
    hist = Family("llm_request_cost_usd", "histogram", "Cost of each priced request in USD.")
    for (model,), sid in tracker.hist.items():
        hist.samples.extend(
            histogram_samples(
                render_labels((("model", model),)),
                prom.cost_buckets,
                [int(v) for v in np.cumsum(tracker.hist_b[sid])],
                int(tracker.hist_s[sid]) / PICO,
            )
        )
    unpriced = Family(
        "llm_unpriced_requests", "counter", "Requests with tokens but no price (counted at 0)."
    )
    unpriced.per_label("model", tracker.unpriced, "_total")
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
        by_model.per_label("model", tracker.all.by_model, scale=PICO)
        out += [total_usd, by_model, percentage]
    return out
