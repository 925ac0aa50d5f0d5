"""The HTTP surface (SPEC §2): routes, auth, JSON errors. Handlers only read the snapshot.

Every handler is a thin adapter: it picks the latest :class:`~metricsd.engine.Snapshot`, asks it
for a view (computed at most once per tick and shared by every reader) and serialises it.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from metricsd.engine import Engine, Snapshot
from metricsd.export.prometheus import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    wants_openmetrics,
)
from metricsd.jsonutil import dumps
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.requests_export import histograms_view, json_view, recent_view, summary_view
from metricsd.web.routes_cost import add_routes as add_cost_routes
from metricsd.web.routes_errors import add_routes as add_error_routes
from metricsd.web.routes_streaming import add_routes as add_streaming_routes
from metricsd.web.routes_streaming import streaming_stats

__all__ = ["ENGINE", "REQUESTS", "build_app", "json_response"]

log = logging.getLogger("metricsd.http")

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
REQUESTS: web.AppKey[RequestTracker] = web.AppKey("requests", RequestTracker)
TOKEN: web.AppKey[str] = web.AppKey("token", str)

#: Routes that never need the token: health checks, and the dashboard's static files (they hold
#: no data; the page's WebSocket needs the token, which the page takes from its own ?token=).
_PUBLIC = frozenset({"/healthz", "/readyz", "/dashboard", "/dashboard.js", "/favicon.ico"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error is JSON ``{"error": ...}``; exception text never reaches a client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason if exc.status != 404 else "not found"
        if isinstance(exc, web.HTTPRequestEntityTooLarge):
            reason = "request body too large"
        return error_response(exc.status, reason.lower())
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token on every route but the health checks (SPEC §2.1), compared in constant time."""
    token = request.app[TOKEN]
    if token and request.path not in _PUBLIC:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            return error_response(401, "missing or invalid bearer token")
    return await handler(request)


def _snapshot(request: web.Request) -> Snapshot:
    snap = request.app[ENGINE].snapshot_
    if snap is None:
        raise web.HTTPServiceUnavailable(reason="not ready")
    return snap


async def no_content(_request: web.Request) -> web.Response:
    return web.Response(status=204)


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[ENGINE].ready:
        return json_response({"status": "ready"})
    return json_response({"status": "starting"}, 503)


async def prometheus(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    engine = request.app[ENGINE]
    engine.last_scrape = engine.clock()
    if wants_openmetrics(request.headers.get("Accept", "")):
        return web.Response(
            body=snap.openmetrics, headers={"Content-Type": CONTENT_TYPE_OPENMETRICS}
        )
    return web.Response(body=snap.text, headers={"Content-Type": CONTENT_TYPE_TEXT})


def _number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(reason=f"{name} must be a number") from None
    if not (lo <= value <= hi):
        raise web.HTTPBadRequest(reason=f"{name} must be between {lo:g} and {hi:g}")
    return value


async def metrics_json(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    tracker = request.app[REQUESTS]

    def build() -> dict[str, Any]:
        return json_view(tracker, snap.now, streaming_stats(request.app, snap.now))

    return json_response(snap.view(("json",), build))


async def metrics_summary(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    window = _number(request, "window_seconds", 300.0, 1.0, 3600.0)
    tracker = request.app[REQUESTS]
    return json_response(
        snap.view(("summary", window), lambda: summary_view(tracker, snap.now, window))
    )


async def metrics_recent(request: web.Request) -> web.Response:
    limit = int(_number(request, "limit", 100, 0, 100_000))
    return json_response(recent_view(request.app[REQUESTS], limit))


async def metrics_histograms(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    encoding = request.query.get("encoding", "hdr")
    if encoding != "hdr":
        raise web.HTTPBadRequest(reason="encoding must be hdr")
    name = request.query.get("name", "")
    window = _number(request, "window_seconds", 300.0, 1.0, 3600.0)
    tracker = request.app[REQUESTS]
    return json_response(
        snap.view(("hist", name, window), lambda: histograms_view(tracker, snap.now, name, window))
    )


def _static(name: str, content_type: str) -> Handler:
    body = resources.files("metricsd.web").joinpath("dashboard", name).read_bytes()
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "no-cache",
        # The page loads nothing from elsewhere; say so to the browser.
        "Content-Security-Policy": (
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
            "connect-src 'self' ws: wss:; img-src 'self' data:"
        ),
        "X-Content-Type-Options": "nosniff",
    }

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    return handler


def build_app(
    engine: Engine, requests: RequestTracker, token: str, max_body: int
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware], client_max_size=max_body
    )
    app[ENGINE] = engine
    app[REQUESTS] = requests
    app[TOKEN] = token
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/dashboard", _static("index.html", "text/html; charset=utf-8"))
    app.router.add_get("/dashboard.js", _static("dashboard.js", "text/javascript; charset=utf-8"))
    app.router.add_get("/favicon.ico", no_content)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/metrics/prometheus", prometheus)
    app.router.add_get("/metrics/json", metrics_json)
    app.router.add_get("/metrics/summary", metrics_summary)
    app.router.add_get("/metrics/recent", metrics_recent)
    app.router.add_get("/metrics/histograms", metrics_histograms)
    add_streaming_routes(app, engine)
    add_error_routes(app, engine)
    add_cost_routes(app, engine)
    return app
