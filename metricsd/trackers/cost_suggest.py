"""Cost-saving suggestions (SPEC §4.6), evaluated per key on a timer and de-duplicated.

Every ``cost.suggestion_interval`` seconds (from the tracker's ``expire``), each key that spent
since the last evaluation, or that holds a suggestion (its window slides), is evaluated again
over its last 7 days (or the time since the daemon started, when shorter), at most
``PER_TICK`` keys per tick so a tick stays short, and its suggestions are replaced: at most one
per (key, type). Rules, each with ``potential_savings_usd`` per 30 days and the numbers behind it:

- ``cheaper_model``: traffic on a model that has a cheaper alternative of the same family in the
  price table's ``[alternatives]``; the key's own token mix repriced at the alternative's prices.
- ``prompt_caching``: long prompts (≥ ``cost.long_prompt_tokens``) on a model with a cached price,
  less than 10 % of whose input is read from the cache; assumes half of it could be.
- ``batch_api``: requests neither streamed nor batched (non-interactive candidates), at the
  batch discount.

A rule fires when its monthly savings reach ``cost.suggestion_min_savings_usd`` and its traffic
``cost.suggestion_min_requests`` requests. Amounts here are estimates, in float pUSD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from metricsd.pricing import PICO, PriceTable, TokenPrice

if TYPE_CHECKING:
    from metricsd.config import CostConfig
    from metricsd.trackers.cost import CostTracker
    from metricsd.trackers.cost_state import Totals

__all__ = ["PER_TICK", "TYPES", "evaluate", "refresh"]

TYPES: Final = ("cheaper_model", "prompt_caching", "batch_api")
PER_TICK: Final = 256
WINDOW_DAYS: Final = 7
MONTH_SECONDS: Final = 30 * 86400.0
CACHEABLE_SHARE: Final = 0.5  # of long prompts' uncached input, assumed cacheable
LOW_CACHING: Final = 0.1  # cached share of long prompts below which caching is suggested


def refresh(tracker: CostTracker, keys: list[str], now: float) -> None:
    """Re-evaluate ``keys``: their suggestions are replaced by what the rules find now."""
    wall = now + tracker.wall_offset
    cfg = tracker.config.cost
    for key in keys:
        for kind in TYPES:
            tracker.suggestions.pop((key, kind), None)
        state = tracker.keys.get(key)
        if state is None:
            continue
        for found in evaluate(key, state, tracker.pricing, cfg, now, wall, tracker.start):
            tracker.suggestions[(key, found["suggestion_type"])] = found
    tracker.suggested_at = wall


def _usd(pico: float) -> float:
    return round(pico / PICO, 6)


def _cost(w: dict[str, float], p: TokenPrice) -> float:
    cached = p.input if p.cached is None else p.cached
    write = p.input if p.cache_write is None else p.cache_write
    return (
        w["full"] * p.input
        + w["cached"] * cached
        + w["cache_write"] * write
        + w["output"] * p.output
    )


def evaluate(
    key: str,
    state: Totals,
    table: PriceTable,
    cfg: CostConfig,
    now: float,
    wall: float,
    since: float,
) -> list[dict[str, Any]]:
    """The suggestions for one key (at most one per type)."""
    cheaper: list[dict[str, Any]] = []
    caching: list[dict[str, Any]] = []
    sync: list[dict[str, Any]] = []
    discount = float(table.batch_discount)
    for model, ring in sorted(state.usage.items()):
        w, span = ring.window(now, WINDOW_DAYS, since)
        basis = max(span, cfg.projection_min_seconds)
        scale = MONTH_SECONDS / basis
        res = table.resolve(model)
        if res is None or res.tokens is None:
            continue
        alt_name = table.alternatives.get(res.name) if res.kind == "text" else None
        alt = table.resolve(alt_name) if alt_name else None
        if (
            alt is not None
            and alt.tokens is not None
            and w["requests"] >= cfg.suggestion_min_requests
            and w["list_cost"] > 0
        ):
            repriced = _cost(w, alt.tokens)
            if repriced < w["list_cost"]:
                saved = w["cost"] * (1 - repriced / w["list_cost"])
                cheaper.append(
                    {
                        "current_model": model,
                        "suggested_model": alt.name,
                        "requests": int(w["requests"]),
                        "current_cost_usd": _usd(w["cost"]),
                        "cost_at_suggested_usd": _usd(w["cost"] - saved),
                        "window_seconds": round(basis, 3),
                        "monthly_savings_usd": _usd(saved * scale),
                    }
                )
        p = res.tokens
        prompt = w["long_full"] + w["long_cached"]
        if (
            p.cached is not None
            and p.cached < p.input
            and w["long_requests"] >= cfg.suggestion_min_requests
            and prompt > 0
            and w["long_cached"] / prompt < LOW_CACHING
        ):
            saved = CACHEABLE_SHARE * w["long_full"] * (p.input - p.cached)
            caching.append(
                {
                    "model": model,
                    "long_prompt_requests": int(w["long_requests"]),
                    "avg_prompt_tokens": round(prompt / w["long_requests"], 1),
                    "cached_share": round(w["long_cached"] / prompt, 6),
                    "assumed_cacheable_share": CACHEABLE_SHARE,
                    "window_seconds": round(basis, 3),
                    "monthly_savings_usd": _usd(saved * scale),
                }
            )
        if discount > 0 and w["sync_requests"] > 0:
            sync.append(
                {
                    "model": model,
                    "requests": int(w["sync_requests"]),
                    "cost_usd": _usd(w["sync_cost"]),
                    "window_seconds": round(basis, 3),
                    "monthly_savings_usd": _usd(w["sync_cost"] * discount * scale),
                }
            )
    out: list[dict[str, Any]] = []
    if cheaper:
        top = max(cheaper, key=lambda c: c["monthly_savings_usd"])
        out.append(
            _suggestion(
                key,
                "cheaper_model",
                f"Move {top['current_model']} traffic to {top['suggested_model']} (same family, "
                "lower prices); estimated from this key's own token mix.",
                cheaper,
                wall,
                {"current_model": top["current_model"], "suggested_model": top["suggested_model"]},
            )
        )
    if caching:
        out.append(
            _suggestion(
                key,
                "prompt_caching",
                f"Prompts of {cfg.long_prompt_tokens}+ tokens are rarely read from the prompt "
                "cache: put the shared part of the prompt first so the provider can cache it.",
                caching,
                wall,
                {"long_prompt_tokens": cfg.long_prompt_tokens},
            )
        )
    if sync and sum(s["requests"] for s in sync) >= cfg.suggestion_min_requests:
        out.append(
            _suggestion(
                key,
                "batch_api",
                f"Requests that are neither streamed nor batched could use the Batch API "
                f"({discount:.0%} off) if they can wait for the result.",
                sync,
                wall,
                {"batch_discount": discount},
            )
        )
    minimum = cfg.suggestion_min_savings_usd
    return [
        s for s in out if s["potential_savings_usd"] >= minimum and s["potential_savings_usd"] > 0
    ]


def _suggestion(
    key: str,
    kind: str,
    description: str,
    items: list[dict[str, Any]],
    wall: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    items.sort(key=lambda i: -i["monthly_savings_usd"])
    return {
        "key_id": key,
        "suggestion_type": kind,
        "description": description,
        "potential_savings_usd": round(sum(i["monthly_savings_usd"] for i in items), 6),
        "details": {**extra, "models": items[:20]},
        "evaluated_at": wall,
    }
