"""``GET /metrics/streaming`` (SPEC §4.2) and the ``streaming_stats`` of ``GET /metrics/json``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from metricsd.engine import Engine
from metricsd.jsonutil import dumps
from metricsd.trackers.streaming import StreamingTracker
from metricsd.trackers.streaming_export import json_streaming_stats, streaming_view

__all__ = ["STREAMING", "add_routes", "streaming_stats"]

STREAMING: web.AppKey[StreamingTracker] = web.AppKey("streaming", StreamingTracker)
_ENGINE: web.AppKey[Engine] = web.AppKey("streaming_engine", Engine)
_MAX_MODEL = 256  # the protocol's string limit: no longer model name can exist


async def metrics_streaming(request: web.Request) -> web.Response:
    snap = request.app[_ENGINE].snapshot_
    if snap is None:
        raise web.HTTPServiceUnavailable(reason="not ready")
    tracker = request.app[STREAMING]
    model = request.query.get("model") or None
    if model is not None and len(model) > _MAX_MODEL:
        raise web.HTTPBadRequest(reason="model is too long")
    view = snap.view(("streaming", model), lambda: streaming_view(tracker, snap.now, model))
    return web.Response(text=dumps(view), content_type="application/json")


def streaming_stats(app: web.Application, now: float) -> dict[str, Any] | None:
    """For the ``/metrics/json`` handler: None when no streaming tracker is running."""
    tracker = app.get(STREAMING)
    return None if tracker is None else json_streaming_stats(tracker, now)


def add_routes(app: web.Application, engine: Engine) -> None:
    """Register the routes if the engine runs a streaming tracker."""
    tracker = next((t for t in engine.trackers if isinstance(t, StreamingTracker)), None)
    if tracker is None:
        return
    app[STREAMING] = tracker
    app[_ENGINE] = engine
    app.router.add_get("/metrics/streaming", metrics_streaming)
