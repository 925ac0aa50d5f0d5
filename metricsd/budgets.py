"""Budgets (SPEC §4.6): calendar periods, status, alerts and input validation. Pure functions.

A budget limits one key's spend (or every key's, key ``*``) over a calendar period in the
configured timezone: ``daily`` (from local midnight), ``weekly`` (from Monday 00:00),
``monthly`` (from the 1st, 00:00) or ``never`` (lifetime). Spend is kept per local calendar day,
so the spend of a period is the sum of its days: a budget created mid-period counts the period's
earlier spend, and a period boundary is a change of the day being summed from, seen by the very
next read or write (there is no reset job that could run late). Every function takes the wall
clock as an argument; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from metricsd.pricing import PricingError, load_pricing, to_pico, usd, usd_str

if TYPE_CHECKING:
    from metricsd.config import CostConfig

__all__ = [
    "PERIODS",
    "Budget",
    "BudgetError",
    "alerts_due",
    "check_cost_config",
    "local_day",
    "parse_update",
    "period_bounds",
    "status",
    "used_since",
]

PERIODS: Final = ("daily", "weekly", "monthly", "never")
LIMIT_TYPES: Final = ("soft", "hard")
FIELDS: Final = ("limit_usd", "period", "limit_type", "alert_threshold")
MAX_LIMIT_USD: Final = 10**12
#: Days of per-key spend kept: the longest period (a month, 31 days) plus slack.
KEEP_DAYS: Final = 62


class BudgetError(ValueError):
    """A budget definition is invalid; the message says which field and why."""


@dataclass
class Budget:
    """One budget. ``limit`` in pUSD; ``alerted``: levels already sent for ``alert_period``."""

    key_id: str
    limit: int
    period: str = "monthly"
    limit_type: str = "soft"
    threshold: Decimal = Decimal("0.8")
    alert_period: float | None = None
    alerted: set[str] = field(default_factory=set)

    @property
    def threshold_fraction(self) -> Fraction:
        return Fraction(self.threshold)


# --- calendar ---------------------------------------------------------------------------------


def local_day(wall: float, tz: ZoneInfo) -> int:
    """The local calendar day of a Unix time, as a proleptic ordinal (``date.toordinal``)."""
    return datetime.fromtimestamp(wall, tz).date().toordinal()


def _midnight(day: date, tz: ZoneInfo) -> float:
    return datetime.combine(day, time(), tzinfo=tz).timestamp()


def period_bounds(period: str, wall: float, tz: ZoneInfo) -> tuple[int | None, float, float | None]:
    """(first day ordinal, period start, next period start) in Unix seconds.

    ``never``: (None, 0.0, None): the period is the key's whole history.
    """
    if period == "never":
        return None, 0.0, None
    today = datetime.fromtimestamp(wall, tz).date()
    if period == "daily":
        start, nxt = today, today + timedelta(days=1)
    elif period == "weekly":
        start = today - timedelta(days=today.weekday())
        nxt = start + timedelta(days=7)
    else:
        start = today.replace(day=1)
        nxt = date(start.year + (start.month == 12), start.month % 12 + 1, 1)
    return start.toordinal(), _midnight(start, tz), _midnight(nxt, tz)


def used_since(days: Mapping[int, int], lifetime: int, first_day: int | None) -> int:
    """Spend (pUSD) from ``first_day`` on, from per-day totals; the lifetime total for None."""
    if first_day is None:
        return lifetime
    return sum(v for d, v in days.items() if d >= first_day)


# --- status and alerts ------------------------------------------------------------------------


def status(budget: Budget, used: int, start: float, resets_at: float | None) -> dict[str, Any]:
    """The JSON status of SPEC §2 (``GET /metrics/budgets/{key}``)."""
    exceeded = used >= budget.limit
    percentage = used * 100 / budget.limit if budget.limit else 100.0
    return {
        "key_id": budget.key_id,
        "limit_usd": usd(budget.limit),
        "used_usd": usd(used),
        "used_usd_str": usd_str(used),
        "remaining_usd": usd(budget.limit - used),
        "exceeded": exceeded,
        "allowed": not (exceeded and budget.limit_type == "hard"),
        "percentage": round(float(percentage), 6),
        "period": budget.period,
        "limit_type": budget.limit_type,
        "alert_threshold": float(budget.threshold),
        "period_start": start if budget.period != "never" else None,
        "resets_at": resets_at,
    }


def alerts_due(budget: Budget, used: int, start: float, wall: float) -> list[dict[str, Any]]:
    """``budget_alert`` records for the levels crossed and not yet sent in this period."""
    if budget.alert_period != start:
        budget.alert_period = start
        budget.alerted.clear()
    out: list[dict[str, Any]] = []
    threshold = budget.threshold_fraction
    crossed = {
        "threshold": used * threshold.denominator >= budget.limit * threshold.numerator,
        "exceeded": used >= budget.limit,
    }
    for level, hit in crossed.items():
        if hit and level not in budget.alerted:
            budget.alerted.add(level)
            out.append(
                {
                    "type": "budget_alert",
                    "timestamp": wall,
                    "key_id": budget.key_id,
                    "level": level,
                    "used_usd": usd(used),
                    "limit_usd": usd(budget.limit),
                    "period": budget.period,
                    "limit_type": budget.limit_type,
                }
            )
    return out


# --- validation -------------------------------------------------------------------------------


def _number(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BudgetError(f"{name} must be a number, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BudgetError(f"{name} must be finite")
    return Decimal(repr(value) if isinstance(value, float) else value)


def parse_update(body: Any, creating: bool) -> dict[str, Any]:
    """Validate a budget body ``{limit_usd, period?, limit_type?, alert_threshold?}``.

    Returns the fields given, converted (``limit`` in pUSD, ``threshold`` a Decimal).
    """
    if not isinstance(body, Mapping):
        raise BudgetError("the body must be a JSON object")
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise BudgetError(f"unknown field {unknown[0]!r} (expected {', '.join(FIELDS)})")
    out: dict[str, Any] = {}
    if "limit_usd" in body:
        limit = _number(body["limit_usd"], "limit_usd")
        if limit < 0 or limit > MAX_LIMIT_USD:
            raise BudgetError(f"limit_usd must be between 0 and {MAX_LIMIT_USD}")
        out["limit"] = to_pico(limit)
    elif creating:
        raise BudgetError("limit_usd is required to create a budget")
    if "period" in body:
        if body["period"] not in PERIODS:
            raise BudgetError(f"period must be one of {', '.join(PERIODS)}")
        out["period"] = body["period"]
    if "limit_type" in body:
        if body["limit_type"] not in LIMIT_TYPES:
            raise BudgetError(f"limit_type must be one of {', '.join(LIMIT_TYPES)}")
        out["limit_type"] = body["limit_type"]
    if "alert_threshold" in body:
        threshold = _number(body["alert_threshold"], "alert_threshold")
        if not 0 < threshold <= 1:
            raise BudgetError("alert_threshold must be in (0, 1]")
        out["threshold"] = threshold
    return out


def apply_update(key_id: str, existing: Budget | None, fields: dict[str, Any]) -> Budget:
    """Create, or update the fields given (omitted fields keep their value). Changing the limit
    or the threshold re-arms this period's alerts."""
    if existing is None:
        return Budget(key_id, **fields)
    if (
        fields.get("limit", existing.limit) != existing.limit
        or fields.get("threshold", existing.threshold) != existing.threshold
    ):
        existing.alerted.clear()
    for name, value in fields.items():
        setattr(existing, name, value)
    return existing


def check_cost_config(cost: CostConfig) -> None:
    """The ``[cost]`` checks of ``config._check``; raises ConfigError naming the key."""
    from metricsd.config import ConfigError

    try:
        ZoneInfo(cost.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"cost.timezone: unknown timezone {cost.timezone!r}") from None
    if cost.webhook_url and not cost.webhook_url.startswith(("http://", "https://")):
        raise ConfigError("cost.webhook_url: must be an http:// or https:// URL")
    for name in ("webhook_timeout", "suggestion_interval", "projection_min_seconds"):
        if not getattr(cost, name) > 0:
            raise ConfigError(f"cost.{name}: must be > 0")
    if cost.suggestion_min_savings_usd < 0:
        raise ConfigError("cost.suggestion_min_savings_usd: must be ≥ 0")
    for name in ("max_keys", "max_budgets", "webhook_queue", "alerts_size", "long_prompt_tokens"):
        if getattr(cost, name) < 1:
            raise ConfigError(f"cost.{name}: must be ≥ 1")
    if cost.suggestion_min_requests < 0:
        raise ConfigError("cost.suggestion_min_requests: must be ≥ 0")
    if len(cost.budgets) > cost.max_budgets:
        raise ConfigError(f"cost.budgets: more than cost.max_budgets ({cost.max_budgets})")
    seen: set[str] = set()
    for i, b in enumerate(cost.budgets):
        path = f"cost.budgets[{i}]"
        if not b.key:
            raise ConfigError(f"{path}.key: required (a key_id, a raw API key, or *)")
        if b.key in seen:
            raise ConfigError(f"{path}.key: a second budget for the same key")
        seen.add(b.key)
        if b.limit_usd < 0:
            raise ConfigError(f"{path}.limit_usd: required, a number ≥ 0")
        try:
            parse_update(
                {
                    "limit_usd": b.limit_usd,
                    "period": b.period,
                    "limit_type": b.limit_type,
                    "alert_threshold": b.alert_threshold,
                },
                creating=True,
            )
        except BudgetError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    try:
        load_pricing(cost)
    except PricingError as exc:
        raise ConfigError(str(exc)) from None
