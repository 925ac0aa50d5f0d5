"""The HTTP server's limits (SPEC §8): bounded connections, timeouts, quiet bad requests.

aiohttp serves every request; these subclasses only bound what a peer can hold:

- at most ``http.max_connections`` open connections (a new one beyond it is closed at once and
  counted), so sockets cannot exhaust the process's descriptors;
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
import resource
import time
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

__all__ = ["LimitedRunner", "install_accept_guard", "raise_fd_limit"]

log = logging.getLogger("metricsd.http")


class _Handler(RequestHandler):
    """One connection: refused beyond the cap; parser errors answered without their text."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._manager
        if (
            isinstance(server, _Server)
            and server.max_connections
            and len(server.connections) >= server.max_connections
        ):
            server.refused += 1
            if isinstance(transport, asyncio.Transport):
                transport.abort()
            else:
                transport.close()
            return
        super().connection_made(transport)

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
    bad_requests = 0

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

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.max_connections = self.max_connections
        return server

    @property
    def stats(self) -> tuple[int, int, int]:
        """(open connections, connections refused at the cap, bad requests)."""
        server = self.server
        if not isinstance(server, _Server):
            return 0, 0, 0
        return len(server.connections), server.refused, server.bad_requests


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
