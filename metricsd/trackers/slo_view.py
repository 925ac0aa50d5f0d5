"""The SLO tracker frozen for a snapshot: ``GET /metrics/slo`` (SPEC §4.5), the live stream's
``slo`` category and the Prometheus families, canonical (``llm_slo_*``), Sloth-compatible
(``slo:*``) and seed-compatible (``error_*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metricsd.config import Config
from metricsd.export.prometheus import Family, Labels
from metricsd.trackers.slo import WINDOWS, SloFrozen, _duration_name

__all__ = ["SloView", "duration_name", "slo_object"]

duration_name = _duration_name


def slo_object(slo: SloFrozen) -> dict[str, Any]:
    """One SLO in the ``/metrics/slo`` shape (FakeAI's ``SLOStatus`` fields and more)."""
    st = slo.status
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
        "endpoint_error_rates": dict(slo.endpoint_rates),
    }


@dataclass(frozen=True, slots=True)
class SloView:
    config: Config
    slos: tuple[SloFrozen, ...]

    def view(self) -> dict[str, Any]:
        """``GET /metrics/slo``: every SLO under ``slos`` (config order), and the first SLO's
        fields also at the top level, so seed clients read ``slo_violated``, ``burn_rate``, …
        directly."""
        objects = [slo_object(s) for s in self.slos]
        return {**objects[0], "slos": objects}

    def live(self, models: frozenset[str]) -> dict[str, Any]:
        """The WebSocket ``slo`` category (SPEC §5.2): ``{name: {burn_rates,
        error_budget_percentage}}``. An SLO is not split by model, so a model filter keeps it."""
        return {
            slo.name: {
                "burn_rates": dict(slo.status.burn_rates),
                "error_budget_percentage": slo.status.budget_percentage,
            }
            for slo in self.slos
        }

    def active_alerts(self) -> list[dict[str, Any]]:
        """The alerts in force now, one per SLO and level."""
        out = []
        for slo in self.slos:
            for level in ("page", "ticket"):
                if getattr(slo.status, level):
                    out.append(
                        {"slo": slo.name, "level": level, "burn_rates": dict(slo.status.burn_rates)}
                    )
        return out

    def families(self, now: float) -> list[Family]:
        prom = self.config.prometheus
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
        for slo in self.slos:
            st = slo.status
            label = (("slo", slo.name),)
            objective.add(slo.config.objective, label)
            for window, value in st.burn_rates.items():
                burn.add(value, (*label, ("window", window)))
            remaining.add(st.budget_percentage / 100.0, label)
            if prom.sloth:
                _sloth(sloth, slo)
        out = [objective, burn, remaining, *sloth.values()]
        if prom.compat:
            out += _compat(self.slos[0])
        return out


def _sloth_family(into: dict[str, Family], name: str, help_text: str) -> Family:
    family = into.get(name)
    if family is None:
        family = into[name] = Family(name, "gauge", help_text)
    return family


def _sloth(into: dict[str, Family], slo: SloFrozen) -> None:
    """The recording-rule names Sloth generates, so Sloth's Grafana dashboards read them."""
    service = slo.config.service
    ids: Labels = (
        ("sloth_id", f"{service}-{slo.name}"),
        ("sloth_service", service),
        ("sloth_slo", slo.name),
    )
    windows = list(WINDOWS)
    if slo.period not in windows:
        windows.append(slo.period)
    for window in windows:
        total, bad = slo.ratios[window]
        _sloth_family(
            into, f"slo:sli_error:ratio_rate{window}", f"SLI error ratio over {window}."
        ).add(bad / total if total else 0.0, (*ids, ("sloth_window", window)))
    st = slo.status
    values = (
        ("slo:objective:ratio", "SLO objective ratio.", slo.config.objective),
        ("slo:error_budget:ratio", "Error budget ratio (1 - objective).", slo.allowed),
        ("slo:time_period:days", "SLO period in days.", slo.config.budget_window / 86400.0),
        ("slo:current_burn_rate:ratio", "Burn rate over 5m.", st.burn_rates["5m"]),
        ("slo:period_burn_rate:ratio", "Burn rate over the SLO period.", slo.period_burn),
        (
            "slo:period_error_budget_remaining:ratio",
            "Error budget remaining over the period (1 - period burn rate; negative when spent).",
            1.0 - slo.period_burn,
        ),
    )
    for name, help_text, value in values:
        _sloth_family(into, name, help_text).add(value, ids)
    objective_label = f"{slo.config.objective * 100:g}"
    _sloth_family(into, "sloth_slo_info", "SLO information.").add(
        1, (*ids, ("sloth_objective", objective_label))
    )


def _compat(slo: SloFrozen) -> list[Family]:
    """The seed documents' names, for the first SLO."""
    st = slo.status
    burn = Family("error_burn_rate", "gauge", "Error-budget burn rate over 1h (seed name).")
    burn.add(st.burn_rates["1h"])
    violated = Family("error_slo_violated", "gauge", "1 when the SLO is violated (seed name).")
    violated.add(1 if st.violated else 0)
    percentage = Family(
        "error_budget_percentage", "gauge", "Error budget remaining, percent (seed name)."
    )
    percentage.add(st.budget_percentage)
    return [burn, violated, percentage]
