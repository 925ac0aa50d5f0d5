"""The HTTP surface (SPEC §2): routes, auth, JSON errors. Handlers only read snapshots.

Every handler is a thin adapter: it takes the latest :class:`~metricsd.snapshot.Snapshot` from
the :class:`~metricsd.web.source.Source`, asks a worker thread for a view of it (computed once
per tick and shared by every reader, serialised once too) and returns the bytes. Nothing here
imports a tracker or waits for the engine, so ``/healthz`` answers at once however busy ingest is.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from metricsd.export.prometheus import (
    CONTENT_TYPE_OPENMETRICS,
    CONTENT_TYPE_TEXT,
    wants_openmetrics,
)
from metricsd.jsonutil import dumps
from metricsd.snapshot import Snapshot
from metricsd.web.source import Source

__all__ = [
    "SOURCE",
    "bearer",
    "build_app",
    "error_response",
    "is_loopback_host",
    "json_response",
    "number",
    "snapshot",
    "view_response",
]

log = logging.getLogger("metricsd.http")

SOURCE: web.AppKey[Source] = web.AppKey("source", object)  # type: ignore[arg-type]
TOKEN: web.AppKey[str] = web.AppKey("token", str)
HOST_CHECK: web.AppKey[bool] = web.AppKey("host_check", bool)

#: Routes that never need the token: health checks, and the dashboard's static files (they hold
#: no data; the page's WebSocket needs the token, which the page takes from its own ?token=).
_PUBLIC = frozenset({"/healthz", "/readyz", "/dashboard", "/dashboard.js", "/favicon.ico"})
#: The only route where the token may come as ``?token=`` (a browser cannot set headers on a
#: WebSocket); elsewhere it would end up in URLs, histories and logs (SPEC §8).
_QUERY_TOKEN = frozenset({"/metrics/stream"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
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
        route = request.match_info.route.resource
        pattern = route.canonical if route is not None else "?"
        # The route's pattern, never the path: a path may hold a raw API key.
        log.exception("unhandled error in %s %s", request.method, pattern)
        return error_response(500, "internal error")


def bearer(header: str) -> str | None:
    """The credentials of an ``Authorization: Bearer …`` header (the scheme is
    case-insensitive, RFC 7235), or None."""
    scheme, _, value = header.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer token on every route but the health checks (SPEC §2.1, §8), compared in constant
    time; ``?token=`` only where a browser needs it (the WebSocket)."""
    token = request.app[TOKEN]
    if token and request.path not in _PUBLIC:
        given = bearer(request.headers.get("Authorization", ""))
        if given is None and request.path in _QUERY_TOKEN:
            given = request.query.get("token", "")
        if not hmac.compare_digest((given or "").encode(), token.encode()):
            return error_response(401, "missing or invalid bearer token")
    return await handler(request)


def is_loopback_host(host: str) -> bool:
    """A ``Host`` header naming this machine by a loopback name or address (port ignored)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@web.middleware
async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a loopback bind without a token, serve only requests addressed to a loopback name:
    a page on another site that rebinds its DNS name to 127.0.0.1 sends its own name as
    ``Host`` and is refused (SPEC §8)."""
    if request.app[HOST_CHECK] and not is_loopback_host(request.host):
        return error_response(421, "misdirected request: this daemon answers on loopback names")
    return await handler(request)


def snapshot(request: web.Request) -> Snapshot:
    snap = request.app[SOURCE].latest()
    if snap is None:
        raise web.HTTPServiceUnavailable(reason="not ready")
    return snap


async def view_response(request: web.Request, part: str, name: str, *args: Any) -> web.Response:
    """A snapshot view as JSON, computed and serialised once per snapshot on a worker."""
    snap = snapshot(request)
    if snap.part(part) is None:
        raise web.HTTPNotFound()

    def build() -> str:
        return snap.cached(("text", name, *args), lambda: dumps(snap.view(name, *args)))  # type: ignore[no-any-return]

    text = await request.app[SOURCE].run(build)
    return web.Response(text=text, content_type="application/json")


def number(request: web.Request, name: str, default: float, lo: float, hi: float) -> float:
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


async def no_content(_request: web.Request) -> web.Response:
    return web.Response(status=204)


async def healthz(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if request.app[SOURCE].ready:
        return json_response({"status": "ready"})
    return json_response({"status": "starting"}, 503)


async def prometheus(request: web.Request) -> web.Response:
    snap = snapshot(request)
    om = wants_openmetrics(request.headers.get("Accept", ""))
    body = await request.app[SOURCE].exposition(snap, om)
    content_type = CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT
    return web.Response(body=body, headers={"Content-Type": content_type})


async def metrics_json(request: web.Request) -> web.Response:
    return await view_response(request, "requests", "json")


async def metrics_summary(request: web.Request) -> web.Response:
    window = number(request, "window_seconds", 300.0, 1.0, 3600.0)
    return await view_response(request, "requests", "summary", window)


async def metrics_recent(request: web.Request) -> web.Response:
    limit = int(number(request, "limit", 100, 0, 100_000))
    return await view_response(request, "requests", "recent", limit)


async def metrics_histograms(request: web.Request) -> web.Response:
    encoding = request.query.get("encoding", "hdr")
    if encoding != "hdr":
        raise web.HTTPBadRequest(reason="encoding must be hdr")
    name = request.query.get("name", "")
    if len(name) > 256:
        raise web.HTTPBadRequest(reason="name is too long")
    window = number(request, "window_seconds", 300.0, 1.0, 3600.0)
    return await view_response(request, "requests", "histograms", name, window)


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
    source: Source, token: str, max_body: int, host_check: bool = False
) -> web.Application:
    """The application. ``host_check``: refuse requests whose ``Host`` is not a loopback name
    (for a loopback bind without a token)."""
    from metricsd.web.routes import add_routes
    from metricsd.web.routes_cost import add_routes as add_cost_routes

    app = web.Application(
        middlewares=[errors_middleware, host_middleware, auth_middleware],
        client_max_size=max_body,
    )
    app[SOURCE] = source
    app[TOKEN] = token
    app[HOST_CHECK] = host_check
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
    add_routes(app)
    add_cost_routes(app)
    return app
