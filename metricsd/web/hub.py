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
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from metricsd.config import HttpConfig
from metricsd.export.prometheus import Family
from metricsd.export.selfmetrics import ws_families
from metricsd.jsonutil import dumps
from metricsd.snapshot import Snapshot
from metricsd.web.live import Base, build_base, render, totals
from metricsd.web.stream import FilterKey, Limits, PolicyViolation, Session

Runner = Callable[[Callable[[], Any]], Awaitable[Any]]

__all__ = ["Hub"]

log = logging.getLogger("metricsd.stream")

ALL: FilterKey = (frozenset(), frozenset(), frozenset({"all"}))
_CONTROL_LIMIT = 256  # queued control replies/alerts per client before it is closed
_CONTROL_BYTES = 1 << 20  # ... or this many bytes of them (SPEC §8: bounded in bytes)
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
        self.control_bytes = 0
        self.update: str | None = None
        self.wake = asyncio.Event()
        self.dropped = 0
        self.slow_since: float | None = None
        self.closing = False
        self.task: asyncio.Task[None] | None = None

    def send_control(self, message: dict[str, Any]) -> bool:
        text = dumps(message)
        if len(self.control) >= _CONTROL_LIMIT or self.control_bytes + len(text) > _CONTROL_BYTES:
            return False
        self.control.append(text)
        self.control_bytes += len(text)
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
                text = self.control.popleft()
                self.control_bytes -= len(text)
                await ws.send_str(text)
            if self.update is not None and not ws.closed:
                text, self.update = self.update, None
                await ws.send_str(text)
                if self.update is None:
                    self.slow_since = None


class Hub:
    """Owns the connected clients; ``publish`` is called with each new snapshot.

    The per-tick work (reading the snapshot into a :class:`Base`, rendering each distinct
    filter set) runs on a worker thread through ``run``; the event loop only hands the
    rendered text to each client's outbox.
    """

    def __init__(
        self,
        config: HttpConfig,
        run: Runner,
        latest: Callable[[], Snapshot | None],
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.run = run
        self.latest = latest
        self.clock = clock
        self.wall = wall
        self.clients: set[Client] = set()
        self.limits = Limits(rate=config.ws_message_rate, burst=config.ws_message_burst)
        self.history: deque[dict[str, float]] = deque(maxlen=_HISTORY_SECONDS)
        self._last_history = -1.0
        self.base: Base | None = None
        self.snapshot: Snapshot | None = None
        self.dropped_updates = 0
        self.slack = 0.0  # half the engine tick, set by the daemon
        self.renders = 0  # distinct filter sets rendered (lifetime), for tests and benchmarks
        self.broadcast_seconds = 0.0
        self.render_seconds = 0.0
        self._busy = False
        self._closing: set[asyncio.Task[None]] = set()  # closes under way (see _close)

    def families(self) -> list[Family]:
        return ws_families(
            len(self.clients), self.dropped_updates, self.broadcast_seconds, self.render_seconds
        )

    # --- the tick -------------------------------------------------------------------------

    def publish(self, snap: Snapshot) -> None:
        """A new snapshot: alerts go out at once; updates are rendered on a worker."""
        self.snapshot = snap
        for alert in snap.alerts:
            self._alert(alert)
        if self._busy:
            return  # the previous broadcast is still rendering: this tick is skipped
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._broadcast(snap))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _alert(self, alert: dict[str, Any]) -> None:
        for client in list(self.clients):
            if not client.send_control(alert):
                self._close(client, 1008, "too slow to keep up")

    async def _broadcast(self, snap: Snapshot) -> None:
        started = time.perf_counter()
        try:
            await self._send_updates(snap)
        except Exception:
            log.exception("error broadcasting the live stream")
        finally:
            self._busy = False
            self.broadcast_seconds = time.perf_counter() - started

    async def _send_updates(self, snap: Snapshot) -> None:
        now, wall = snap.now, snap.wall
        history_due = now - self._last_history >= 1.0
        due: list[Client] = []
        for client in list(self.clients):
            if client.closing:
                continue
            if (
                client.slow_since is not None
                and now - client.slow_since > self.config.ws_slow_grace
            ):
                self._close(client, 1008, "too slow to keep up")
                continue
            if client.session.due(now, self.slack):
                due.append(client)
        if not due and not history_due and not self.clients:
            self.base = None
            return
        keys = list(dict.fromkeys(c.session.key() for c in due))
        # With nobody connected only the throughput history is kept: a lighter read.
        full = bool(self.clients)

        def work() -> tuple[Base, dict[FilterKey, tuple[dict[str, Any], str]], float]:
            base = build_base(snap, full=full)
            rendered: dict[FilterKey, tuple[dict[str, Any], str]] = {}
            last = 0.0
            for key in keys:
                t0 = time.perf_counter()
                data = render(base, key)
                rendered[key] = (data, dumps(data))
                last = time.perf_counter() - t0
            return base, rendered, last

        base, rendered, last = await self.run(work)
        self.base = base if full else None  # a newcomer's first message needs a full one
        self.renders += len(rendered)
        if rendered:
            self.render_seconds = last
        if history_due:
            self._last_history = now
            t = render(base, (frozenset(), frozenset(), frozenset({"throughput"})))["throughput"]
            self.history.append(
                {
                    "timestamp": wall,
                    "total_requests_per_sec": t["total_requests_per_sec"],
                    "total_tokens_per_sec": t["total_tokens_per_sec"],
                }
            )
        for client in due:
            if client.closing:
                continue
            session = client.session
            key = session.key()
            data, data_json = rendered[key]
            deltas = session.deltas(totals(data, base, key))
            session.last_update = now
            text = (
                f'{{"type":"metrics_update","timestamp":{dumps(wall)},'
                f'"data":{data_json},"deltas":{dumps(deltas)}}}'
            )
            if not client.offer(text, now):
                self.dropped_updates += 1

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
        writer = client.task = asyncio.create_task(client.writer())
        try:
            client.send_control(await self._historical())
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
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if not ws.closed:
                await close_or_abort(ws, client.transport, 1000, b"")
        return ws

    async def _historical(self) -> dict[str, Any]:
        wall = self.wall()
        base = self.base
        snap = self.latest()
        if base is None and snap is not None:
            base = await self.run(lambda: build_base(snap))
        data = render(base, ALL) if base is not None else {}
        return {
            "type": "historical_data",
            "timestamp": wall,
            "data": data,
            "history": list(self.history),
        }

    def _close(self, client: Client, code: int, reason: str) -> None:
        if client.closing:
            return
        client.closing = True
        log.info("closing a WebSocket client (%d): %s", code, reason)
        # It is no longer served: stop counting it now, not when the close handshake ends.
        self.clients.discard(client)
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
