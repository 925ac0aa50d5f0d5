"""``ErrorMetricsTracker``: FakeAI's error and SLO tracker API, computed by metricsd.

Differences from FakeAI, all deliberate (SPEC §4.4, §4.5): every request counts once (an
outcome is a success or an error); the SLO is evaluated over the daemon's budget window (30
days by default) with burn rates over 5m…3d and multi-window alerts; a request is *bad* for the
SLO when its status is ≥ 500 or 429, or when it failed without a status (client errors such as
400 count as errors but not against the SLO); the error budget is a real number
(``total × (1 − objective)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from metricsd_client._keys import hash_key
from metricsd_client.trackers._base import TrackerBase

__all__ = ["ErrorMetricsTracker", "ErrorPattern", "SLOStatus", "slo_for_objective"]


@dataclass
class SLOStatus:
    """``get_slo_status()``: the seed's fields, plus the burn rate per window and the alerts."""

    name: str = "availability"
    target_success_rate: float = 0.999
    window_seconds: float = 0.0
    total_requests: int = 0
    successful_requests: int = 0
    failed_requests: int = 0
    current_success_rate: float = 1.0
    current_error_rate: float = 0.0
    error_budget_total: float = 0.0
    error_budget_consumed: int = 0
    error_budget_remaining: float = 0.0
    error_budget_percentage: float = 100.0
    slo_violated: bool = False
    burn_rate: float = 0.0
    burn_rates: dict[str, float] = field(default_factory=dict)
    alerts: dict[str, bool] = field(default_factory=dict)
    endpoint_error_rates: dict[str, float] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> SLOStatus:
        out = cls(raw=view)
        for name, kind in (
            ("name", str),
            ("target_success_rate", float),
            ("window_seconds", float),
            ("total_requests", int),
            ("successful_requests", int),
            ("failed_requests", int),
            ("current_success_rate", float),
            ("current_error_rate", float),
            ("error_budget_total", float),
            ("error_budget_consumed", int),
            ("error_budget_remaining", float),
            ("error_budget_percentage", float),
            ("slo_violated", bool),
            ("burn_rate", float),
        ):
            if view.get(name) is not None:
                setattr(out, name, kind(view[name]))
        out.burn_rates = {k: float(v) for k, v in (view.get("burn_rates") or {}).items()}
        out.alerts = {k: bool(v) for k, v in (view.get("alerts") or {}).items()}
        out.endpoint_error_rates = dict(view.get("endpoint_error_rates") or {})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def slo_for_objective(view: dict[str, Any], objective: float) -> dict[str, Any]:
    """A ``/metrics/slo`` object re-evaluated for another objective, with the daemon's rules.

    Exact: the counts over the budget window do not depend on the objective, and every burn
    rate is bad ÷ (total × (1 − objective)), so it scales by the ratio of allowed fractions.
    """
    current = Decimal(repr(float(view["target_success_rate"])))
    target = Decimal(repr(float(objective)))
    if current == target:
        return view
    if not 0 < target < 1:
        raise ValueError(f"error_budget_slo must be between 0 and 1, got {objective!r}")
    total = int(view["total_requests"])
    bad = int(view["failed_requests"])
    allowed = 1 - target
    budget = Decimal(total) * allowed
    remaining = max(Decimal(0), budget - bad)
    percentage = float(remaining / budget * 100) if budget > 0 else (0.0 if bad else 100.0)
    factor = (1 - current) / allowed
    rates = {k: float(Decimal(repr(float(v))) * factor) for k, v in view["burn_rates"].items()}
    page = (rates.get("1h", 0) > 14.4 and rates.get("5m", 0) > 14.4) or (
        rates.get("6h", 0) > 6 and rates.get("30m", 0) > 6
    )
    ticket = rates.get("3d", 0) > 1 and rates.get("6h", 0) > 1
    out = dict(view)
    out.update(
        target_success_rate=float(objective),
        slo_target=float(objective),
        error_budget_total=float(budget),
        error_budget_remaining=float(remaining),
        error_budget_percentage=percentage,
        slo_violated=total > 0 and Decimal(total - bad) < Decimal(total) * target,
        burn_rates=rates,
        burn_rate=rates.get("1h", 0.0),
        alerts={"page": page, "ticket": ticket},
        daemon_target_success_rate=float(current),
    )
    return out


@dataclass
class ErrorPattern:
    """One recurring error signature (``get_error_patterns()``)."""

    fingerprint: str
    count: int
    error_type: str = ""
    endpoint: str = ""
    status: int | None = None
    normalized_message: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    affected_models: set[str] = field(default_factory=set)
    affected_users_count: int = 0
    example_request_ids: list[str] = field(default_factory=list)
    sample_message: str = ""

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> ErrorPattern:
        return cls(
            fingerprint=str(view["fingerprint"]),
            count=int(view["count"]),
            error_type=str(view.get("error_type") or ""),
            endpoint=str(view.get("endpoint") or ""),
            status=view.get("status"),
            normalized_message=str(view.get("normalized_message") or ""),
            first_seen=float(view.get("first_seen") or 0.0),
            last_seen=float(view.get("last_seen") or 0.0),
            affected_models=set(view.get("affected_models") or ()),
            affected_users_count=int(view.get("affected_users_count") or 0),
            example_request_ids=list(view.get("example_request_ids") or ()),
            sample_message=str(view.get("sample_message") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "error_type": self.error_type,
            "endpoint": self.endpoint,
            "status": self.status,
            "normalized_message": self.normalized_message,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "affected_models": sorted(self.affected_models),
            "affected_users_count": self.affected_users_count,
            "example_request_ids": list(self.example_request_ids),
            "sample_message": self.sample_message,
        }


class ErrorMetricsTracker(TrackerBase):
    """Record errors and successes; read error rates, patterns and SLO status from the daemon.

    ``error_budget_slo`` (e.g. 0.999): the objective :meth:`get_slo_status` reports against.
    Left as None, the daemon's configured objective is used. A different objective is applied
    exactly to the daemon's counts (:func:`slo_for_objective`); with ``embedded=True`` it
    configures the embedded SLO. ``pattern_threshold`` is the default ``min_count`` of
    :meth:`get_error_patterns`; ``max_recent_errors`` and ``window_seconds`` are accepted for
    compatibility (the daemon's window is 5 minutes).
    """

    _kind_flag = "enable_reliability_metrics"

    def __init__(
        self,
        max_recent_errors: int = 500,
        error_budget_slo: float | None = None,
        window_seconds: float = 300.0,
        pattern_threshold: int = 3,
        **options: Any,
    ) -> None:
        if error_budget_slo is not None and not 0.0 < error_budget_slo < 1.0:
            raise ValueError(f"error_budget_slo must be between 0 and 1, got {error_budget_slo!r}")
        if options.get("embedded") and error_budget_slo is not None:
            options.setdefault("slo_objective", error_budget_slo)
        super().__init__(**options)
        self.error_budget_slo = error_budget_slo
        self.max_recent_errors = max_recent_errors
        self.window_seconds = window_seconds
        self.pattern_threshold = pattern_threshold

    def record_error(
        self,
        endpoint: str,
        status_code: int | None = 500,
        error_type: str = "error",
        error_message: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        request_id: str | None = None,
        user_id: str | None = None,
        stack_trace: str | None = None,
        *,
        duration_ms: float | None = None,
    ) -> None:
        """A failed request. With ``duration_ms`` it is sent as a ``request`` (its latency is
        recorded too), else as an ``error`` event. ``stack_trace`` is not sent."""
        if not self._on:
            return
        key_id = hash_key(api_key) if api_key else None
        if duration_ms is None:
            self._emit.error(
                error_type,
                status=status_code,
                error_message=error_message,
                endpoint=endpoint,
                model=model,
                key_id=key_id,
                user_id=user_id,
                request_id=request_id,
            )
        else:
            self._emit.request(
                duration_ms,
                endpoint=endpoint,
                model=model,
                status=status_code if status_code is not None else 500,
                error_type=error_type,
                error_message=error_message,
                key_id=key_id,
                user_id=user_id,
                request_id=request_id,
            )

    def record_success(
        self,
        endpoint: str,
        model: str | None = None,
        *,
        duration_ms: float | None = None,
        status_code: int = 200,
        api_key: str | None = None,
        request_id: str | None = None,
        user_id: str | None = None,
    ) -> None:
        """A successful request. Pass ``duration_ms`` when known: without it the request is
        recorded with a latency of 0 ms (the protocol's ``request`` needs a duration)."""
        if not self._on:
            return
        self._emit.request(
            0.0 if duration_ms is None else duration_ms,
            endpoint=endpoint,
            model=model,
            status=status_code,
            key_id=hash_key(api_key) if api_key else None,
            user_id=user_id,
            request_id=request_id,
        )

    def record_request(self, endpoint: str, model: str | None = None) -> None:
        """Accepted for compatibility and ignored: metricsd counts each request once, from its
        outcome (:meth:`record_success` or :meth:`record_error`)."""

    def get_metrics(self, *, consistent: bool | None = None) -> dict[str, Any]:
        """The daemon's ``/metrics/errors``, plus the seed's key names."""
        self._sync(consistent)
        view = self._backend.errors()
        by_type = view.get("by_error_type") or {}
        by_endpoint = view.get("by_endpoint") or {}
        by_status = view.get("by_status_code") or {}
        windowed = view.get("windowed") or {}
        view.update(
            recent_errors_count=len(view.get("recent_errors") or ()),
            windowed_errors_count=int(windowed.get("errors") or 0),
            errors_by_endpoint=dict(by_endpoint),
            errors_by_model=dict(view.get("by_model") or {}),
            top_error_types=[{"type": k, "count": v} for k, v in list(by_type.items())[:10]],
            top_error_endpoints=[
                {"endpoint": k, "count": v} for k, v in list(by_endpoint.items())[:10]
            ],
            top_status_codes=[
                {"status_code": int(k), "count": v} for k, v in list(by_status.items())[:10]
            ],
        )
        return view

    def get_slo_status(self, *, consistent: bool | None = None) -> SLOStatus:
        """The first SLO's status, against ``error_budget_slo`` when one was given."""
        self._sync(consistent)
        view = self._backend.slo()
        view.pop("slos", None)
        if self.error_budget_slo is not None:
            view = slo_for_objective(view, self.error_budget_slo)
        return SLOStatus.from_view(view)

    def get_error_patterns(
        self,
        min_count: int | None = None,
        recent_only: bool = True,
        limit: int | None = None,
        *,
        consistent: bool | None = None,
    ) -> list[ErrorPattern]:
        """Patterns seen at least ``min_count`` times (default ``pattern_threshold``), most
        frequent first; ``recent_only`` keeps those seen in the last 5 minutes."""
        self._sync(consistent)
        count = self.pattern_threshold if min_count is None else min_count
        found = self._backend.error_patterns(count, recent_only, limit)
        return [ErrorPattern.from_view(p) for p in found]

    def get_recent_errors(
        self,
        limit: int = 50,
        endpoint: str | None = None,
        error_type: str | None = None,
        *,
        consistent: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The newest errors first (the daemon keeps a bounded ring of them)."""
        recent = self.get_metrics(consistent=consistent).get("recent_errors") or []
        out = [
            e
            for e in recent
            if (endpoint is None or e.get("endpoint") == endpoint)
            and (error_type is None or e.get("error_type") == error_type)
        ]
        return out[: max(0, limit)]
