"""Cost and budget routes (SPEC §2): ``/metrics/costs…`` and ``/metrics/budgets…``.

``{key}`` in a path is a key_id (``k_`` + 12 hex), ``*`` (every key, budgets only) or a raw API
key, which is hashed at once (SPEC §1.6): no response, log line or stored state ever holds it.
Budget reads and writes use the current wall clock, so a period that has just ended is seen as
ended by the very next request.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from metricsd.budgets import BudgetError
from metricsd.engine import Engine, Snapshot
from metricsd.jsonutil import dumps
from metricsd.protocol import hash_key
from metricsd.trackers.cost import ALL_KEYS, CostTracker
from metricsd.trackers.cost_export import budgets_view, key_view, suggestions_view, summary_view

__all__ = ["COST", "add_routes", "key_id_of"]

log = logging.getLogger("metricsd.http")
COST: web.AppKey[CostTracker] = web.AppKey("cost", CostTracker)
_ENGINE: web.AppKey[Engine] = web.AppKey("cost_engine", Engine)
_KEY_ID: Final = re.compile(r"k_[0-9a-f]{12}\Z")


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


def _snapshot(request: web.Request) -> Snapshot:
    snap = request.app[_ENGINE].snapshot_
    if snap is None:
        raise web.HTTPServiceUnavailable(reason="not ready")
    return snap


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guard(handler: Handler) -> Handler:
    """Errors are logged with the route's pattern, never the path: the path may hold a raw key
    (the app's error middleware, which logs ``request.path``, never sees them)."""

    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            route = request.match_info.route.resource
            pattern = route.canonical if route is not None else "?"
            log.exception("unhandled error in %s %s", request.method, pattern)
            return error_response(500, "internal error")

    return guarded


def key_id_of(key: str) -> str:
    """A path's ``{key}`` → key_id: key_ids and ``*`` as they are, anything else hashed."""
    if key == ALL_KEYS or _KEY_ID.match(key):
        return key
    return hash_key(key)


def _key(request: web.Request) -> str:
    return key_id_of(request.match_info["key"])


@_guard
async def costs(request: web.Request) -> web.Response:
    snap = _snapshot(request)
    tracker = request.app[COST]
    return json_response(snap.view(("costs",), lambda: summary_view(tracker, snap.now, snap.wall)))


@_guard
async def key_costs(request: web.Request) -> web.Response:
    key_id = _key(request)
    view = key_view(request.app[COST], key_id, request.app[_ENGINE].clock(), time.time())
    if view is None:
        return error_response(404, "no costs recorded for this key")
    return json_response(view)


@_guard
async def suggestions(request: web.Request) -> web.Response:
    key = request.query.get("key")
    key_id = key_id_of(key) if key else None
    return json_response(suggestions_view(request.app[COST], key_id))


@_guard
async def budgets(request: web.Request) -> web.Response:
    return json_response(budgets_view(request.app[COST], time.time()))


@_guard
async def get_budget(request: web.Request) -> web.Response:
    found = request.app[COST].budget_status(_key(request), time.time())
    if found is None:
        return error_response(404, "no budget for this key")
    return json_response(found)


@_guard
async def put_budget(request: web.Request) -> web.Response:
    key_id = _key(request)
    raw = await request.read()  # over http.max_body_bytes: 413 from the error middleware
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return error_response(400, "the body must be a JSON object")
    tracker = request.app[COST]
    created = key_id not in tracker.budgets
    try:
        result = tracker.put_budget(key_id, body, time.time())
    except BudgetError as exc:
        return error_response(400, str(exc))
    return json_response(result, 201 if created else 200)


@_guard
async def delete_budget(request: web.Request) -> web.Response:
    key_id = _key(request)
    if not request.app[COST].delete_budget(key_id):
        return error_response(404, "no budget for this key")
    return json_response({"key_id": key_id, "deleted": True})


def add_routes(app: web.Application, engine: Engine) -> None:
    """Register the routes when the engine has a cost tracker."""
    tracker = next((t for t in engine.trackers if isinstance(t, CostTracker)), None)
    if tracker is None:
        return
    app[COST] = tracker
    app[_ENGINE] = engine
    app.router.add_get("/metrics/costs", costs)
    app.router.add_get("/metrics/costs/suggestions", suggestions)
    app.router.add_get("/metrics/costs/keys/{key}", key_costs)
    app.router.add_get("/metrics/budgets", budgets)
    app.router.add_get("/metrics/budgets/{key}", get_budget)
    app.router.add_put("/metrics/budgets/{key}", put_budget)
    app.router.add_delete("/metrics/budgets/{key}", delete_budget)
