"""Cost and budget routes (SPEC §2): ``/metrics/costs…`` and ``/metrics/budgets…``.

``{key}`` in a path is a key_id (``k_`` + 12 hex), ``*`` (every key, budgets only) or a raw API
key, which is hashed at once (SPEC §1.6): no response, log line or stored state ever holds it.
Budget reads use the current wall clock, so a period that has just ended is seen as ended by
the very next request; budget writes are commands the engine applies, answered once a snapshot
that shows them is published.
"""

from __future__ import annotations

import json
import re
import time
from typing import Final

from aiohttp import web

from metricsd.budgets import BudgetError
from metricsd.keys import hash_key
from metricsd.web.app import SOURCE, error_response, json_response, snapshot, view_response

__all__ = ["ALL_KEYS", "add_routes", "key_id_of"]

ALL_KEYS: Final = "*"
_KEY_ID: Final = re.compile(r"k_[0-9a-f]{12}\Z")


def key_id_of(key: str) -> str:
    """A path's ``{key}`` → key_id: key_ids and ``*`` as they are, anything else hashed."""
    if key == ALL_KEYS or _KEY_ID.match(key):
        return key
    return hash_key(key)


def _key(request: web.Request) -> str:
    return key_id_of(request.match_info["key"])


def _cost_part(request: web.Request) -> None:
    if snapshot(request).part("cost") is None:
        raise web.HTTPNotFound()


async def costs(request: web.Request) -> web.Response:
    return await view_response(request, "cost", "costs")


async def key_costs(request: web.Request) -> web.Response:
    key_id = _key(request)
    snap = snapshot(request)
    _cost_part(request)
    wall = time.time()
    view = await request.app[SOURCE].run(lambda: snap.compute("cost_key", key_id, wall))
    if view is None:
        return error_response(404, "no costs recorded for this key")
    return json_response(view)


async def suggestions(request: web.Request) -> web.Response:
    key = request.query.get("key")
    return await view_response(request, "cost", "suggestions", key_id_of(key) if key else None)


async def budgets(request: web.Request) -> web.Response:
    snap = snapshot(request)
    _cost_part(request)
    wall = time.time()
    return json_response(await request.app[SOURCE].run(lambda: snap.compute("budgets", wall)))


async def get_budget(request: web.Request) -> web.Response:
    key_id = _key(request)
    snap = snapshot(request)
    _cost_part(request)
    wall = time.time()
    found = await request.app[SOURCE].run(lambda: snap.compute("budget", key_id, wall))
    if found is None:
        return error_response(404, "no budget for this key")
    return json_response(found)


async def put_budget(request: web.Request) -> web.Response:
    key_id = _key(request)
    _cost_part(request)
    raw = await request.read()  # over http.max_body_bytes: 413 from the error middleware
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # RecursionError: deep nesting
        return error_response(400, "the body must be a JSON object")
    try:
        created, result = await request.app[SOURCE].command("put_budget", key_id, body, time.time())
    except BudgetError as exc:
        return error_response(400, str(exc))
    return json_response(result, 201 if created else 200)


async def delete_budget(request: web.Request) -> web.Response:
    key_id = _key(request)
    _cost_part(request)
    if not await request.app[SOURCE].command("delete_budget", key_id):
        return error_response(404, "no budget for this key")
    return json_response({"key_id": key_id, "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/metrics/costs", costs)
    app.router.add_get("/metrics/costs/suggestions", suggestions)
    app.router.add_get("/metrics/costs/keys/{key}", key_costs)
    app.router.add_get("/metrics/budgets", budgets)
    app.router.add_get("/metrics/budgets/{key}", get_budget)
    app.router.add_put("/metrics/budgets/{key}", put_budget)
    app.router.add_delete("/metrics/budgets/{key}", delete_budget)
