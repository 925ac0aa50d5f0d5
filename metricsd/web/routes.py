"""Routes of the streaming, error and SLO views (SPEC §2, §4.2, §4.4, §4.5)."""

from __future__ import annotations

from aiohttp import web

from metricsd.web.app import view_response

__all__ = ["add_routes"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
MAX_LIMIT = 100_000
#: SPEC §4.4: ``min_count`` defaults to 3.
DEFAULT_MIN_COUNT = 3
_MAX_MODEL = 256  # the protocol's string limit: no longer model name can exist


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


async def metrics_streaming(request: web.Request) -> web.Response:
    model = request.query.get("model") or None
    if model is not None and len(model) > _MAX_MODEL:
        raise web.HTTPBadRequest(reason="model is too long")
    return await view_response(request, "streaming", "streaming", model)


async def metrics_errors(request: web.Request) -> web.Response:
    return await view_response(request, "errors", "errors")


async def metrics_slo(request: web.Request) -> web.Response:
    return await view_response(request, "slo", "slo")


async def error_patterns(request: web.Request) -> web.Response:
    min_count = _int(request, "min_count", DEFAULT_MIN_COUNT, 0, 2**62) or 0
    recent_only = _bool(request, "recent_only")
    limit = _int(request, "limit", None, 0, MAX_LIMIT)
    return await view_response(request, "errors", "error_patterns", min_count, recent_only, limit)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics/streaming", metrics_streaming)
    app.router.add_get("/metrics/errors", metrics_errors)
    app.router.add_get("/metrics/error-patterns", error_patterns)
    app.router.add_get("/metrics/slo", metrics_slo)
