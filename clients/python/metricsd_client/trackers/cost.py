"""``CostTracker``: FakeAI's cost tracker API (usage, budgets, projections, suggestions),
priced and enforced by metricsd (SPEC §4.6).

Usage is sent as ``usage`` events (cost only: they do not count as requests of the request,
error or SLO trackers). API keys are hashed in this process (``k_`` + 12 hex digits of SHA-256)
and only the key_id leaves it.

What :meth:`CostTracker.record_usage` returns, by ``pricing``:

- ``"local"``: the cost computed in this process by the daemon's own price table and pricing
  code (needs the ``metricsd`` package; ``pricing_file`` selects the same table the daemon
  uses when it is not the built-in one). Instant; equal to what the daemon bills as long as
  both use the same table.
- ``"daemon"``: the change of the key's total on the daemon across the call (the call flushes
  and waits for the daemon, like a consistent read: it blocks for up to a tick). Exactly what
  the daemon billed, unless another process bills the same key at the same moment.
- ``"auto"`` (default): ``"local"`` when ``metricsd`` can be imported, else ``"daemon"``.

With ``embedded=True`` the embedded daemon's own charge is returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from metricsd_client._keys import key_id_of
from metricsd_client.http import MetricsdHTTPError
from metricsd_client.trackers._base import TrackerBase

__all__ = [
    "BudgetLimitType",
    "BudgetPeriod",
    "BudgetStatus",
    "CostOptimizationSuggestion",
    "CostTracker",
]

IMAGES_ENDPOINT = "/v1/images/generations"
AUDIO_ENDPOINTS = frozenset({"/v1/audio/speech", "/v1/audio/transcriptions"})


class BudgetPeriod(StrEnum):
    """Budget periods, aligned to the calendar in the daemon's ``cost.timezone``."""

    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    NEVER = "never"


class BudgetLimitType(StrEnum):
    """``hard``: ``allowed`` turns false once the limit is reached (callers enforce it)."""

    SOFT = "soft"
    HARD = "hard"


@dataclass
class BudgetStatus:
    """A budget and its spend in the current period (``GET /metrics/budgets/{key}``)."""

    key_id: str
    limit: float
    used: float
    remaining: float
    exceeded: bool
    allowed: bool
    percentage: float
    period: str
    limit_type: str
    alert_threshold: float
    period_start: float | None = None
    resets_at: float | None = None
    #: With fleet budgets (the daemon's ``cost.budget_store``): ``"ok"`` or ``"stale"``, and
    #: the age of the last read of the fleet's totals; None for a daemon on its own.
    fleet: str | None = None
    fleet_age_seconds: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> BudgetStatus:
        return cls(
            key_id=str(view["key_id"]),
            limit=float(view["limit_usd"]),
            used=float(view["used_usd"]),
            remaining=float(view["remaining_usd"]),
            exceeded=bool(view["exceeded"]),
            allowed=bool(view["allowed"]),
            percentage=float(view["percentage"]),
            period=str(view["period"]),
            limit_type=str(view["limit_type"]),
            alert_threshold=float(view["alert_threshold"]),
            period_start=view.get("period_start"),
            resets_at=view.get("resets_at"),
            fleet=view.get("fleet"),
            fleet_age_seconds=view.get("fleet_age_seconds"),
            raw=view,
        )

    def get_usage_percentage(self) -> float:
        """Spend as a percentage of the limit (100 for a zero limit)."""
        return self.percentage

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass
class CostOptimizationSuggestion:
    """A way to spend less, with its estimated monthly saving and the numbers behind it."""

    api_key: str  # the key_id: raw keys never come back from the daemon
    suggestion_type: str
    description: str
    potential_savings: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key_id(self) -> str:
        return self.api_key

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> CostOptimizationSuggestion:
        return cls(
            api_key=str(view.get("key_id") or ""),
            suggestion_type=str(view.get("suggestion_type") or ""),
            description=str(view.get("description") or ""),
            potential_savings=float(view.get("potential_savings_usd") or 0.0),
            details=dict(view.get("details") or {}),
        )


_PERIODS = {24: "cost_24h_usd", 168: "cost_7d_usd"}


def _period_field(period_hours: float | None) -> str:
    if not period_hours:
        return "total_cost_usd"
    found = _PERIODS.get(int(period_hours)) if float(period_hours).is_integer() else None
    if found is None:
        raise ValueError("period_hours: the daemon keeps the last 24 h and 7 d (24 or 168)")
    return found


class CostTracker(TrackerBase):
    """Record billable usage; read costs, budgets, projections and suggestions from metricsd.

    See the module docstring for ``pricing`` and :class:`TrackerBase` for the connection
    arguments.
    """

    _kind_flag = "enable_cost_tracking"

    def __init__(
        self, *, pricing: str = "auto", pricing_file: str | None = None, **options: Any
    ) -> None:
        if pricing not in ("auto", "local", "daemon"):
            raise ValueError("pricing must be 'auto', 'local' or 'daemon'")
        super().__init__(**options)
        self._pricer: Any = None
        if self.embedded:
            self.pricing = "embedded"
        else:
            if pricing == "auto":
                try:
                    from metricsd_client._embedded import require_metricsd

                    require_metricsd()
                    pricing = "local"
                except ImportError:
                    pricing = "daemon"
            if pricing == "local":
                from metricsd_client._embedded import EmbeddedBackend

                self._pricer = EmbeddedBackend(pricing_file=pricing_file, cost_only=True)
            self.pricing = pricing

    # --- writes -----------------------------------------------------------------------------

    def record_usage(
        self,
        api_key: str,
        model: str,
        endpoint: str,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cached_tokens: int = 0,
        metadata: dict[str, Any] | None = None,
        *,
        batch: bool | None = None,
        cost_usd: float | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
    ) -> float:
        """Record usage and return its cost in USD (see the module docstring).

        ``metadata`` as in FakeAI: ``size``, ``quality`` and ``n`` for image generation,
        ``characters`` for audio; ``batch`` (or ``metadata["batch"]``) bills at the batch
        discount; ``cost_usd`` overrides the price table.
        """
        if not self._on:
            return 0.0
        meta = metadata or {}
        images = None
        if endpoint == IMAGES_ENDPOINT or any(k in meta for k in ("size", "quality", "n")):
            images = {
                "size": str(meta.get("size", "1024x1024")),
                "quality": str(meta.get("quality", "standard")),
                "n": int(meta.get("n", 1)),
            }
        characters = meta.get("characters")
        if characters is None and endpoint in AUDIO_ENDPOINTS:
            characters = 0
        if batch is None and "batch" in meta:
            batch = bool(meta["batch"])
        key_id = key_id_of(api_key)
        fields: dict[str, Any] = {
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "cached_tokens": int(cached_tokens),
            "images": images,
            "characters": None if characters is None else int(characters),
            "batch": batch,
            "cost_usd": cost_usd,
            "model": model,
            "endpoint": endpoint,
        }
        if self.pricing == "embedded":
            return float(self._backend.charge(key_id, fields, user_id, request_id))  # type: ignore[attr-defined]
        if self.pricing == "local":
            self._emit.usage(key_id=key_id, user_id=user_id, request_id=request_id, **fields)
            return float(self._pricer.charge(None, fields, None, None))
        before = self._key_total(key_id, sync=True)
        self._emit.usage(key_id=key_id, user_id=user_id, request_id=request_id, **fields)
        after = self._key_total(key_id, sync=True)
        return float(after - before)

    def _key_total(self, key_id: str, *, sync: bool) -> Decimal:
        if sync:
            self._backend.sync(self.timeout)
        view = self._backend.key_costs(key_id)
        return Decimal(str(view["total_cost_usd_str"])) if view else Decimal(0)

    def set_budget(
        self,
        api_key: str,
        limit: float,
        period: BudgetPeriod | str = BudgetPeriod.MONTHLY,
        limit_type: BudgetLimitType | str = BudgetLimitType.SOFT,
        alert_threshold: float = 0.8,
    ) -> BudgetStatus:
        """Create or replace a key's budget (``api_key`` may be a raw key, a key_id or ``*``).
        The period's earlier spend counts (in consistent mode, the usage recorded before this
        call included). Bad values raise ValueError with the daemon's message."""
        self._sync(None)
        body = {
            "limit_usd": limit,
            "period": str(BudgetPeriod(period)),
            "limit_type": str(BudgetLimitType(limit_type)),
            "alert_threshold": alert_threshold,
        }
        try:
            return BudgetStatus.from_view(self._backend.put_budget(key_id_of(api_key), body))
        except MetricsdHTTPError as exc:
            if exc.status == 400:
                raise ValueError(exc.message) from None
            raise

    def delete_budget(self, api_key: str) -> bool:
        """Remove a key's budget; False if it had none."""
        return self._backend.delete_budget(key_id_of(api_key))

    # --- reads ------------------------------------------------------------------------------

    def get_budget_status(
        self, api_key: str, *, consistent: bool | None = None
    ) -> BudgetStatus | None:
        """The key's budget in its current period, or None without a budget."""
        self._sync(consistent)
        found = self._backend.budget(key_id_of(api_key))
        return None if found is None else BudgetStatus.from_view(found)

    def check_budget(
        self, api_key: str, *, consistent: bool | None = None
    ) -> tuple[float, float, bool]:
        """``(used, remaining, exceeded)`` in USD; ``(0.0, inf, False)`` without a budget."""
        status = self.get_budget_status(api_key, consistent=consistent)
        if status is None:
            return 0.0, math.inf, False
        return status.used, status.remaining, status.exceeded

    def is_allowed(self, api_key: str, *, consistent: bool | None = None) -> bool:
        """False once a hard budget is exceeded (the call to make before spending)."""
        status = self.get_budget_status(api_key, consistent=consistent)
        return True if status is None else status.allowed

    def get_all_budgets(self, *, consistent: bool | None = None) -> list[BudgetStatus]:
        self._sync(consistent)
        return [BudgetStatus.from_view(b) for b in self._backend.budgets().get("budgets", [])]

    def get_summary(self, *, consistent: bool | None = None) -> dict[str, Any]:
        """The daemon's ``/metrics/costs``."""
        self._sync(consistent)
        return self._backend.costs()

    def get_cost_by_key(
        self, api_key: str, period_hours: float | None = None, *, consistent: bool | None = None
    ) -> dict[str, Any]:
        """One key's costs (``/metrics/costs/keys/{key}``), with ``total_cost`` set to the
        lifetime, last-24 h or last-7 d spend by ``period_hours`` (None, 24, 168)."""
        name = _period_field(period_hours)
        self._sync(consistent)
        key_id = key_id_of(api_key)
        view = self._backend.key_costs(key_id)
        if view is None:
            return {"key_id": key_id, "total_cost": 0.0, "by_model": {}, "by_endpoint": {},
                    "tokens": {}, "requests": 0, "budget": None}  # fmt: skip
        view["total_cost"] = float(view.get(name) or 0.0)
        return view

    def get_total_cost(
        self, period_hours: float | None = None, *, consistent: bool | None = None
    ) -> float:
        return float(self.get_summary(consistent=consistent).get(_period_field(period_hours)) or 0)

    def get_cost_by_model(self, *, consistent: bool | None = None) -> dict[str, float]:
        return dict(self.get_summary(consistent=consistent).get("by_model") or {})

    def get_cost_by_endpoint(self, *, consistent: bool | None = None) -> dict[str, float]:
        return dict(self.get_summary(consistent=consistent).get("by_endpoint") or {})

    def get_cache_savings(self, *, consistent: bool | None = None) -> dict[str, Any]:
        return dict(self.get_summary(consistent=consistent).get("cache_savings") or {})

    def get_batch_savings(self, *, consistent: bool | None = None) -> dict[str, Any]:
        return dict(self.get_summary(consistent=consistent).get("batch_savings") or {})

    def get_projected_monthly_cost(
        self, api_key: str | None = None, *, consistent: bool | None = None
    ) -> float:
        """Spend over the last min(7 d, observed span) scaled to 30 days (all keys, or one);
        the daemon takes at least ``cost.projection_min_seconds`` (1 h) as the span."""
        if api_key is None:
            view: dict[str, Any] | None = self.get_summary(consistent=consistent)
        else:
            self._sync(consistent)
            view = self._backend.key_costs(key_id_of(api_key))
        return float((view or {}).get("projected_monthly_cost_usd") or 0.0)

    def get_optimization_suggestions(
        self, api_key: str | None = None, *, consistent: bool | None = None
    ) -> list[CostOptimizationSuggestion]:
        """Suggestions for one key or all, largest saving first. A daemon evaluates them every
        ``cost.suggestion_interval`` (60 s by default); an embedded tracker at each call."""
        self._sync(consistent)
        key_id = key_id_of(api_key) if api_key else None
        found = self._backend.suggestions(key_id)
        return [CostOptimizationSuggestion.from_view(s) for s in found]
