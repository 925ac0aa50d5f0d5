"""Views of the SLO tracker: ``GET /metrics/slo`` (SPEC §4.5) and the Prometheus families,
canonical (``llm_slo_*``), Sloth-compatible (``slo:*``) and seed-compatible (``error_*``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from metricsd.export.prometheus import Family, Labels
from metricsd.trackers.slo import WINDOWS

if TYPE_CHECKING:
    from metricsd.trackers.slo import SloState, SloTracker

__all__ = ["duration_name", "slo_families", "slo_object", "slo_view"]


def duration_name(seconds: float) -> str:
    """Prometheus-style duration: 2592000 → ``30d``, 7200 → ``2h``, 90 → ``90s``."""
    whole = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def slo_object(slo: SloState, now: float) -> dict[str, Any]:
    """One SLO in the ``/metrics/slo`` shape (FakeAI's ``SLOStatus`` fields and more)."""
    st = slo.evaluate(now)
    good = st.total - st.bad
    success = good / st.total if st.total else 1.0
    objective = slo.config.objective
    return {
        "name": slo.name,
        "target_success_rate": objective,
        "slo_target": objective,
        "window_seconds": slo.config.budget_window,
        "total_requests": st.total,
        "successful_requests": good,
        "failed_requests": st.bad,
        "current_success_rate": success,
        "success_rate": success,
        "current_error_rate": st.bad / st.total if st.total else 0.0,
        "error_budget_total": st.budget_total,
        "error_budget_consumed": st.bad,
        "error_budget_remaining": st.budget_remaining,
        "error_budget_percentage": st.budget_percentage,
        "slo_violated": st.violated,
        "burn_rate": st.burn_rates["1h"],
        "burn_rates": dict(st.burn_rates),
        "alerts": {"page": st.page, "ticket": st.ticket},
        "endpoint_error_rates": slo.endpoint_error_rates(now),
    }


def slo_view(tracker: SloTracker, now: float) -> dict[str, Any]:
    """``GET /metrics/slo``: every SLO under ``slos`` (config order), and the first SLO's fields
    also at the top level, so seed clients read ``slo_violated``, ``burn_rate``, … directly."""
    objects = [slo_object(s, now) for s in tracker.slos]
    return {**objects[0], "slos": objects}


def slo_families(tracker: SloTracker, now: float) -> list[Family]:
    prom = tracker.config.prometheus
    objective = Family("llm_slo_objective", "gauge", "SLO objective (target good fraction).")
    burn = Family(
        "llm_slo_burn_rate", "gauge", "Error-budget burn rate: bad fraction / (1 - objective)."
    )
    remaining = Family(
        "llm_slo_error_budget_remaining_ratio",
        "gauge",
        "Error budget left over the budget window (0 to 1).",
    )
    sloth: dict[str, Family] = {}
    for slo in tracker.slos:
        st = slo.evaluate(now)
        label = (("slo", slo.name),)
        objective.add(slo.config.objective, label)
        for window, rate in st.burn_rates.items():
            burn.add(rate, (*label, ("window", window)))
        remaining.add(st.budget_percentage / 100.0, label)
        if prom.sloth:
            _sloth(sloth, slo, now)
    out = [objective, burn, remaining, *sloth.values()]
    if prom.compat:
        out += _compat(tracker.slos[0], now)
    return out


def _sloth_family(into: dict[str, Family], name: str, help_text: str) -> Family:
    family = into.get(name)
    if family is None:
        family = into[name] = Family(name, "gauge", help_text)
    return family


def _sloth(into: dict[str, Family], slo: SloState, now: float) -> None:
    """The recording-rule names Sloth generates, so Sloth's Grafana dashboards read them."""
    service = slo.config.service
    ids: Labels = (
        ("sloth_id", f"{service}-{slo.name}"),
        ("sloth_service", service),
        ("sloth_slo", slo.name),
    )
    period = duration_name(slo.config.budget_window)
    windows = dict(WINDOWS)
    windows.setdefault(period, slo.config.budget_window)
    for window, seconds in windows.items():
        total, bad = slo.window(now, seconds)
        _sloth_family(
            into, f"slo:sli_error:ratio_rate{window}", f"SLI error ratio over {window}."
        ).add(bad / total if total else 0.0, (*ids, ("sloth_window", window)))
    st = slo.evaluate(now)
    allowed = float(slo.allowed)
    total, bad = slo.window(now, slo.config.budget_window)
    period_burn = slo.burn(total, bad)
    values = (
        ("slo:objective:ratio", "SLO objective ratio.", slo.config.objective),
        ("slo:error_budget:ratio", "Error budget ratio (1 - objective).", allowed),
        ("slo:time_period:days", "SLO period in days.", slo.config.budget_window / 86400.0),
        ("slo:current_burn_rate:ratio", "Burn rate over 5m.", st.burn_rates["5m"]),
        ("slo:period_burn_rate:ratio", "Burn rate over the SLO period.", period_burn),
        (
            "slo:period_error_budget_remaining:ratio",
            "Error budget remaining over the period (1 - period burn rate; negative when spent).",
            1.0 - period_burn,
        ),
    )
    for name, help_text, value in values:
        _sloth_family(into, name, help_text).add(value, ids)
    objective_label = f"{slo.config.objective * 100:g}"
    _sloth_family(into, "sloth_slo_info", "SLO information.").add(
        1, (*ids, ("sloth_objective", objective_label))
    )


def _compat(slo: SloState, now: float) -> list[Family]:
    """The seed documents' names, for the first SLO."""
    st = slo.evaluate(now)
    burn = Family("error_burn_rate", "gauge", "Error-budget burn rate over 1h (seed name).")
    burn.add(st.burn_rates["1h"])
    violated = Family("error_slo_violated", "gauge", "1 when the SLO is violated (seed name).")
    violated.add(1 if st.violated else 0)
    percentage = Family(
        "error_budget_percentage", "gauge", "Error budget remaining, percent (seed name)."
    )
    percentage.add(st.budget_percentage)
    return [burn, violated, percentage]
