"""HTTP routes of the error and SLO trackers: ``/metrics/errors``, ``/metrics/slo`` and
``/metrics/error-patterns`` (SPEC §2, §4.4, §4.5). Views are built once per tick and shared."""

from __future__ import annotations

from aiohttp import web

from metricsd.engine import Engine, Snapshot
from metricsd.jsonutil import dumps
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.errors_export import DEFAULT_MIN_COUNT, errors_view, patterns_view
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.slo_export import slo_view

__all__ = ["ERRORS", "SLO", "add_routes"]

ERRORS: web.AppKey[ErrorTracker] = web.AppKey("errors", ErrorTracker)
SLO: web.AppKey[SloTracker] = web.AppKey("slo", SloTracker)
_ENGINE: web.AppKey[Engine] = web.AppKey("errors_engine", Engine)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
MAX_LIMIT = 100_000


def _json(value: object) -> web.Response:
    return web.Response(text=dumps(value), content_type="application/json")


def _snapshot(request: web.Request) -> Snapshot:
    snap = request.app[_ENGINE].snapshot_
    if snap is None:
        raise web.HTTPServiceUnavailable(reason="not ready")
    return snap


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise web.HTTPBadRequest(reason=f"{name} must be between {lo} and {hi}")
    return value


def _bool(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise web.HTTPBadRequest(reason=f"{name} must be true or false")


async def metrics_errors(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    tracker = request.app[ERRORS]
    return _json(snap.view(("errors",), lambda: errors_view(tracker, snap.now)))


async def metrics_slo(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    tracker = request.app[SLO]
    return _json(snap.view(("slo",), lambda: slo_view(tracker, snap.now)))


async def error_patterns(request: web.Request) -> web.Response:
    min_count = _int(request, "min_count", DEFAULT_MIN_COUNT, 0, 2**62) or 0
    recent_only = _bool(request, "recent_only")
    limit = _int(request, "limit", None, 0, MAX_LIMIT)
    snap = _snapshot(request)
    tracker = request.app[ERRORS]
    return _json(
        snap.view(
            ("error-patterns", min_count, recent_only, limit),
            lambda: patterns_view(tracker, snap.now, min_count, recent_only, limit),
        )
    )


def add_routes(app: web.Application, engine: Engine) -> None:
    """Register the routes for the error and SLO trackers the engine holds (if any)."""
    app[_ENGINE] = engine
    for tracker in engine.trackers:
        if isinstance(tracker, ErrorTracker):
            app[ERRORS] = tracker
            app.router.add_get("/metrics/errors", metrics_errors)
            app.router.add_get("/metrics/error-patterns", error_patterns)
        elif isinstance(tracker, SloTracker):
            app[SLO] = tracker
            app.router.add_get("/metrics/slo", metrics_slo)
