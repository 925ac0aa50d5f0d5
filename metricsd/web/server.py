"""The HTTP server's limits (SPEC §8): bounded connections, timeouts, quiet bad requests.

aiohttp serves every request; these subclasses only bound what a peer can hold:

- at most ``http.max_connections`` open connections (lowered to fit the descriptor limit, see
  :func:`descriptor_budget`), so sockets cannot exhaust the process's descriptors. At the cap a
  new connection takes the place of the connection idle longest (one waiting for its request
  to arrive: partial, or kept alive between requests), so a flood of slow or idle connections
  cannot keep ``/healthz`` or a scrape out; only when every connection is busy with a request
  is the new one closed at once (and counted);
- a connection that has not completed a request within ``http.request_timeout`` seconds (a
  slow or partial request) is closed, as is an idle kept-alive one;
- a request the HTTP parser refuses (a request line or header over the limit, garbage) gets
  ``{"error": "bad request"}`` and one log line naming the kind of error, never its text: the
  request line may hold a raw API key.

And the event loop's own complaint when ``accept()`` fails for lack of descriptors is logged
once a minute with a count, not once per failure with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = [
    "ACCEPT_BATCH",
    "LimitedRunner",
    "descriptor_budget",
    "install_accept_guard",
    "raise_fd_limit",
    "widen_backlog",
]

log = logging.getLogger("metricsd.http")

#: Descriptors kept for everything but peers: the interpreter, logs, ZeroMQ's own sockets and
#: pipes, the state file, worker threads (about 20 are open when the daemon is idle).
RESERVED_FDS = 64
#: Connections the event loop accepts per wake-up (asyncio's ``backlog`` argument; the kernel's
#: queue is widened afterwards, see :func:`widen_backlog`). A large batch would open that many
#: descriptors before any of them is counted against the cap.
ACCEPT_BATCH = 16


class _Handler(RequestHandler):
    """One connection: refused beyond the cap; parser errors answered without their text."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if (
            isinstance(server, _Server)
            and server.max_connections
            and len(server._connections) >= server.max_connections
        ):
            idle = server.idlest()
            if idle is None:  # every connection is serving a request: this one waits outside
                server.refused += 1
                if isinstance(transport, asyncio.Transport):
                    transport.abort()
                else:
                    transport.close()
                return
            server.evicted += 1
            idle.force_close()
        super().connection_made(transport)

    def idle_deadline(self) -> float | None:
        """When this connection, waiting for a request, will be closed for idleness (it was
        connected, or its last response finished, ``http.request_timeout`` before), or None
        while it serves a request or is closing. Reads aiohttp's handler state: a pending
        ``_waiter`` is exactly "no complete request yet"."""
        waiter = getattr(self, "_waiter", None)
        if waiter is None or waiter.done() or self.transport is None:
            return None
        deadline: float = getattr(self, "_next_keepalive_close_time", 0.0)
        return deadline

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._manager is None or self not in self._manager.connections:
            return  # refused in connection_made: never counted
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 400 and exc is not None:
            server = self._manager
            if isinstance(server, _Server):
                server.bad_requests += 1
            log.info("bad HTTP request from %s: %s", request.remote, type(exc).__name__)
            resp = web.Response(
                status=400, text='{"error": "bad request"}', content_type="application/json"
            )
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)


class _Server(web.Server):
    """aiohttp's server with the counters above (made by aiohttp, then given this class)."""

    max_connections = 0
    refused = 0
    evicted = 0
    bad_requests = 0

    def idlest(self) -> _Handler | None:
        """The connection that has waited longest for a request, if any is waiting."""
        best: _Handler | None = None
        best_deadline = float("inf")
        for handler in self._connections:
            if not isinstance(handler, _Handler):
                continue
            deadline = handler.idle_deadline()
            if deadline is not None and deadline < best_deadline:
                best, best_deadline = handler, deadline
        return best

    def __call__(self) -> RequestHandler:
        try:
            return _Handler(self, loop=self._loop, **self._kwargs)
        except TypeError:  # an aiohttp without the loop argument
            return _Handler(self, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An :class:`aiohttp.web.AppRunner` whose server bounds connections (module docstring)."""

    def __init__(
        self, app: web.Application, *, max_connections: int, request_timeout: float, **kw: Any
    ) -> None:
        super().__init__(app, keepalive_timeout=request_timeout, **kw)
        self.max_connections = max_connections

    @property
    def backlog(self) -> int:
        """The kernel's listen backlog: a burst of up to the cap is queued, not dropped (a
        dropped SYN costs the client a second before it retries; the kernel clamps the value
        to ``net.core.somaxconn``)."""
        return max(128, self.max_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.max_connections = self.max_connections
        return server

    @property
    def stats(self) -> tuple[int, int, int, int]:
        """(open connections, refused at the cap, evicted at the cap, bad requests)."""
        server = self.server
        if not isinstance(server, _Server):
            return 0, 0, 0, 0
        return len(server.connections), server.refused, server.evicted, server.bad_requests


def install_accept_guard(loop: asyncio.AbstractEventLoop, interval: float = 60.0) -> None:
    """Log the loop's "out of descriptors" accept failures once per ``interval`` with a count;
    everything else goes to the default handler."""
    last = [-interval]
    missed = [0]

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "accept() out of system resource" in message:
            missed[0] += 1
            now = time.monotonic()
            if now - last[0] >= interval:
                log.warning(
                    "cannot accept connections: out of file descriptors (%d times since the "
                    "last report)",
                    missed[0],
                )
                last[0] = now
                missed[0] = 0
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def widen_backlog(sockets: Iterable[Any], backlog: int) -> None:
    """Set the kernel's listen backlog of listening sockets already served by the loop (which
    was given :data:`ACCEPT_BATCH`); ``listen`` on a duplicate descriptor changes the socket
    itself."""
    for sock in sockets:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.listen(backlog)


def descriptor_budget(limit: int, max_connections: int, max_peers: int) -> tuple[int, int]:
    """(HTTP connections, ZeroMQ peers) that fit in ``limit`` descriptors: each cap as
    configured, but at most half of what :data:`RESERVED_FDS` leaves (and at least 16), so
    neither kind of peer can take the descriptors the other needs to be served. A
    ``max_peers`` of 0 (no cap) stays 0."""
    if limit < 0 or limit >= 1 << 40:  # RLIM_INFINITY
        return max_connections, max_peers
    share = max(16, (limit - RESERVED_FDS) // 2)
    return min(max_connections, share), (min(max_peers, share) if max_peers else 0)


def raise_fd_limit(want: int = 65536) -> int:
    """Raise the soft descriptor limit towards the hard one (a daemon serves many peers)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            return soft
    return soft
