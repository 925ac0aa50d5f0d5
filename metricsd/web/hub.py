"""The WebSocket hub: one snapshot per tick, rendered once per filter set, fanned out safely.

Each client has a writer task and two outboxes: a bounded FIFO of control replies and alerts,
and a single slot for the next ``metrics_update`` (the latest snapshot wins: an update not yet
sent when the next one is ready is replaced and counted as dropped). A client that keeps
losing updates for ``http.ws_slow_grace`` seconds is closed with 1008; it never delays others,
because no send happens on the tick path. Inbound messages go through the pure
:class:`~metricsd.web.stream.Session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from metricsd.config import HttpConfig
from metricsd.jsonutil import dumps
from metricsd.web.live import Base, LiveSource, build_base, render, totals
from metricsd.web.stream import FilterKey, Limits, PolicyViolation, Session

if TYPE_CHECKING:
    from metricsd.engine import Engine
    from metricsd.trackers.requests import RequestTracker

__all__ = ["Hub"]

log = logging.getLogger("metricsd.stream")

ALL: FilterKey = (frozenset(), frozenset(), frozenset({"all"}))
_CONTROL_LIMIT = 256  # queued control replies/alerts per client before it is closed
_HISTORY_SECONDS = 60
#: How long a close may wait to hand its close frame to a peer; then the connection is dropped.
_CLOSE_TIMEOUT = 2.0


async def close_or_abort(
    ws: web.WebSocketResponse, transport: asyncio.Transport | None, code: int, message: bytes
) -> None:
    """Close with ``code``; a peer that has not taken everything sent to it (the close frame
    included) within ``_CLOSE_TIMEOUT`` seconds stopped reading: it is disconnected instead, so
    it holds no socket open (a stalled peer would otherwise keep its connection forever, and
    stop the daemon from exiting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CLOSE_TIMEOUT
    # Not wait_for: it waits for the cancelled close, which a write stuck on a full socket
    # does not finish.
    closing = loop.create_task(ws.close(code=code, message=message))
    closing.add_done_callback(_retrieve)
    await asyncio.wait({closing}, timeout=_CLOSE_TIMEOUT)
    while transport is not None and transport.get_write_buffer_size() and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if transport is not None and (not closing.done() or transport.get_write_buffer_size()):
        transport.abort()  # the stuck write fails, and the close task ends with it
    if not closing.done():
        closing.cancel()


def _retrieve(task: asyncio.Task[bool]) -> None:
    """A close that failed because the connection was dropped is expected: not an error."""
    if not task.cancelled():
        task.exception()


class Client:
    """One connection: its session, outboxes and writer task."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        session: Session,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.session = session
        self.transport = transport
        self.control: deque[str] = deque()
        self.update: str | None = None
        self.wake = asyncio.Event()
        self.dropped = 0
        self.slow_since: float | None = None
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def send_control(self, message: dict[str, Any]) -> bool:
        if len(self.control) >= _CONTROL_LIMIT:
            return False
        self.control.append(dumps(message))
        self.wake.set()
        return True

    def offer(self, text: str, now: float) -> bool:
        """Queue an update; returns False if one was still waiting (it is replaced)."""
        replaced = self.update is not None
        self.update = text
        self.wake.set()
        if replaced:
            self.dropped += 1
            if self.slow_since is None:
                self.slow_since = now
        return not replaced

    async def writer(self) -> None:
        ws = self.ws
        while not ws.closed:
            await self.wake.wait()
            self.wake.clear()
            while self.control and not ws.closed:
                await ws.send_str(self.control.popleft())
            if self.update is not None and not ws.closed:
                text, self.update = self.update, None
                await ws.send_str(text)
                if self.update is None:
                    self.slow_since = None


class Hub:
    """Owns the connected clients; ``tick`` is called by the daemon after each snapshot."""

    def __init__(
        self,
        engine: Engine,
        requests: RequestTracker,
        sources: list[LiveSource],
        config: HttpConfig,
        alert_sources: list[Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.requests = requests
        self.sources = sources
        self.config = config
        self.alert_sources = alert_sources or []
        self.clock = clock
        self.wall = wall
        self.clients: set[Client] = set()
        self.limits = Limits(rate=config.ws_message_rate, burst=config.ws_message_burst)
        self.history: deque[dict[str, float]] = deque(maxlen=_HISTORY_SECONDS)
        self._last_history = -1.0
        self.base: Base | None = None
        self.dropped_updates = 0
        self.slack = 0.0  # half the engine tick, set by the daemon
        self.renders = 0  # distinct filter sets rendered (lifetime), for tests and benchmarks
        self._closing: set[asyncio.Task[None]] = set()  # closes under way (see _close)

    # --- the tick -------------------------------------------------------------------------

    def tick(self, now: float, wall: float) -> None:
        started = time.perf_counter()
        self._broadcast(now, wall)
        self.engine.ws_broadcast_seconds = time.perf_counter() - started

    def _broadcast(self, now: float, wall: float) -> None:
        self._alerts(wall)
        self.base = build_base(self.requests, self.sources, now, wall) if self.clients else None
        if now - self._last_history >= 1.0:
            self._last_history = now
            base = self.base or build_base(self.requests, self.sources, now, wall)
            t = render(base, (frozenset(), frozenset(), frozenset({"throughput"})))["throughput"]
            self.history.append(
                {
                    "timestamp": wall,
                    "total_requests_per_sec": t["total_requests_per_sec"],
                    "total_tokens_per_sec": t["total_tokens_per_sec"],
                }
            )
        if self.base is None:
            return
        rendered: dict[FilterKey, tuple[dict[str, Any], str]] = {}
        for client in list(self.clients):
            session = client.session
            if client.closing:
                continue
            if (
                client.slow_since is not None
                and now - client.slow_since > self.config.ws_slow_grace
            ):
                self._close(client, 1008, "too slow to keep up")
                continue
            if not session.due(now, self.slack):
                continue
            key = session.key()
            if key not in rendered:
                t0 = time.perf_counter()
                data = render(self.base, key)
                rendered[key] = (data, dumps(data))
                self.renders += 1
                self.engine.ws_render_seconds = time.perf_counter() - t0
            data, data_json = rendered[key]
            deltas = session.deltas(totals(data, self.base, key))
            session.last_update = now
            text = (
                f'{{"type":"metrics_update","timestamp":{dumps(wall)},'
                f'"data":{data_json},"deltas":{dumps(deltas)}}}'
            )
            if not client.offer(text, now):
                self.dropped_updates += 1
        self.engine.ws_dropped_updates = self.dropped_updates

    def _alerts(self, wall: float) -> None:
        """Push ``budget_alert`` / ``slo_alert`` records the trackers queued, to every client."""
        for source in self.alert_sources:
            outbox = getattr(source, "alerts", None)
            while outbox:
                alert = outbox.popleft()
                for client in list(self.clients):
                    if not client.send_control(alert):
                        self._close(client, 1008, "too slow to keep up")

    # --- connections ----------------------------------------------------------------------

    def origin_allowed(self, request: web.Request) -> bool:
        """Browsers send Origin: it must be the daemon's own host or an allowed origin."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True  # not a browser: auth (if any) already decided
        if origin in self.config.allowed_origins:
            return True
        return urlsplit(origin).netloc.lower() == request.host.lower()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        from metricsd.web.app import error_response

        if not self.origin_allowed(request):
            return error_response(403, "origin not allowed")
        if len(self.clients) >= self.config.max_ws_clients:
            return error_response(503, "too many WebSocket clients")
        # timeout: how long a close waits for the peer's close frame (a stalled peer never sends
        # one); the connection is dropped after it.
        ws = web.WebSocketResponse(
            heartbeat=self.config.ws_heartbeat, max_msg_size=64 * 1024, timeout=2.0
        )
        await ws.prepare(request)
        now = self.clock()
        client = Client(ws, Session(connected_at=now, limits=self.limits), request.transport)
        self.clients.add(client)
        self.engine.ws_clients = len(self.clients)
        writer = client.task = asyncio.create_task(client.writer())
        try:
            client.send_control(self._historical(now))
            async for msg in ws:
                now = self.clock()
                if msg.type == WSMsgType.TEXT:
                    replies = client.session.receive(msg.data, now, self.wall())
                elif msg.type == WSMsgType.BINARY:
                    replies = client.session.receive_binary(now, self.wall())
                else:
                    break
                for reply in replies:
                    if not client.send_control(reply):
                        raise PolicyViolation("too many unread replies")
        except PolicyViolation as exc:
            client.closing = True
            log.info("closing a WebSocket client (1008): %s", exc)
            writer.cancel()
            await close_or_abort(ws, client.transport, 1008, str(exc).encode()[:120])
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.clients.discard(client)
            self.engine.ws_clients = len(self.clients)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if not ws.closed:
                await close_or_abort(ws, client.transport, 1000, b"")
        return ws

    def _historical(self, now: float) -> dict[str, Any]:
        wall = self.wall()
        base = self.base or build_base(self.requests, self.sources, now, wall)
        return {
            "type": "historical_data",
            "timestamp": wall,
            "data": render(base, ALL),
            "history": list(self.history),
        }

    def _close(self, client: Client, code: int, reason: str) -> None:
        if client.closing:
            return
        client.closing = True
        log.info("closing a WebSocket client (%d): %s", code, reason)
        # It is no longer served: stop counting it now, not when the close handshake ends.
        self.clients.discard(client)
        self.engine.ws_clients = len(self.clients)
        if client.task is not None:
            client.task.cancel()  # a writer blocked on a full socket would delay the close
        task = asyncio.get_running_loop().create_task(
            close_or_abort(client.ws, client.transport, code, reason.encode()[:120])
        )
        self._closing.add(task)  # a reference, so the task is not collected while it runs
        task.add_done_callback(self._closing.discard)

    async def close_all(self, code: int = 1001) -> None:
        """At shutdown: close every client with ``code`` (1001, going away)."""
        clients = list(self.clients)
        for client in clients:
            client.closing = True
        await asyncio.gather(
            *(close_or_abort(c.ws, c.transport, code, b"server shutting down") for c in clients),
            *self._closing,
            return_exceptions=True,
        )
