"""The JSON views of SPEC §2, by name: pure functions of a :class:`~metricsd.snapshot.Snapshot`.

The HTTP routes ask a snapshot for a view by name (``snapshot.view("summary", 300.0)``); the
snapshot computes it once and shares it. Nothing here reads a tracker: only their frozen data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from metricsd.snapshot import Snapshot

__all__ = ["VIEWS"]


def _json(s: Snapshot) -> Any:
    streaming = s.part("streaming")
    stats = streaming.json_stats(s.now) if streaming is not None else None
    return s.parts["requests"].json(s.now, stats)


def _summary(s: Snapshot, window: float) -> Any:
    return s.parts["requests"].summary(s.now, window)


def _recent(s: Snapshot, limit: int) -> Any:
    return s.parts["requests"].recent_rows(limit)


def _histograms(s: Snapshot, name: str, window: float) -> Any:
    return s.parts["requests"].histograms(s.now, name, window)


def _streaming(s: Snapshot, model: str | None) -> Any:
    return s.parts["streaming"].view(s.now, model)


def _errors(s: Snapshot) -> Any:
    return s.parts["errors"].errors(s.now)


def _patterns(s: Snapshot, min_count: int, recent_only: bool, limit: int | None) -> Any:
    return s.parts["errors"].error_patterns(s.now, min_count, recent_only, limit)


def _slo(s: Snapshot) -> Any:
    return s.parts["slo"].view()


def _costs(s: Snapshot) -> Any:
    return s.parts["cost"].summary(s.now, s.wall)


def _cost_key(s: Snapshot, key_id: str, wall: float) -> Any:
    return s.parts["cost"].key(key_id, s.now, wall)


def _budgets(s: Snapshot, wall: float) -> Any:
    return s.parts["cost"].budgets_view(wall)


def _budget(s: Snapshot, key_id: str, wall: float) -> Any:
    return s.parts["cost"].budget_status(key_id, wall)


def _suggestions(s: Snapshot, key_id: str | None) -> Any:
    return s.parts["cost"].suggestions_view(key_id)


VIEWS: Final[dict[str, Callable[..., Any]]] = {
    "json": _json,
    "summary": _summary,
    "recent": _recent,
    "histograms": _histograms,
    "streaming": _streaming,
    "errors": _errors,
    "error_patterns": _patterns,
    "slo": _slo,
    "costs": _costs,
    "cost_key": _cost_key,
    "budgets": _budgets,
    "budget": _budget,
    "suggestions": _suggestions,
}
