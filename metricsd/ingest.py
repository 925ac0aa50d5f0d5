"""ZeroMQ ingest: one PULL socket bound to every configured endpoint, read on the engine thread.

The socket is made and bound by the daemon (before the engine thread starts), then only the
engine thread (:mod:`metricsd.runner`) reads it: each wake-up takes what is queued, up to a frame
count and a time budget, decodes it as one pool (:class:`metricsd.decode.Decoder`) and applies
it. The receive high-water mark bounds what ZeroMQ queues for us; beyond it, ZeroMQ pushes back
on the emitters, whose non-blocking sends then count their own drops (SPEC §1.1).

A peer is bounded too (SPEC §8): ZeroMQ refuses a message larger than a frame may be (the
receive size limit follows ``ingest.max_frame_bytes``), a peer that does not finish its
handshake within ``ingest.handshake_timeout`` is dropped, and heartbeats drop dead peers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import zmq

from metricsd.config import IngestConfig
from metricsd.decode import Decoder
from metricsd.engine import Engine

__all__ = ["FRAME_MARGIN", "Ingest"]

log = logging.getLogger("metricsd.ingest")

#: Bytes over ``ingest.max_frame_bytes`` ZeroMQ still accepts (then the decoder counts the frame
#: as ``too_large``); a larger message is refused by ZeroMQ and its peer disconnected.
FRAME_MARGIN = 64 * 1024


class Ingest:
    """Owns the PULL socket; see the module docstring."""

    def __init__(
        self,
        config: IngestConfig,
        engine: Engine,
        context: zmq.Context[Any],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = engine
        #: The daemon's clock (monotonic, continued across restarts).
        self.now = clock
        self.socket = context.socket(zmq.PULL)
        sock = self.socket
        sock.setsockopt(zmq.RCVHWM, config.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes + FRAME_MARGIN)
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(config.handshake_timeout * 1000))
        if config.heartbeat > 0:
            ivl = int(config.heartbeat * 1000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
            sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * ivl)
        # A synchronous view of the same socket (the daemon's context may be an asyncio one,
        # for the CURVE handler): the engine thread reads it with plain blocking-free calls.
        self.sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self.endpoints: list[str] = []

    def bind(self, before_bind: Callable[[str], None] | None = None) -> list[str]:
        """Bind every endpoint; return the real addresses (port 0 resolved). ``before_bind``
        runs before each bind (per-endpoint socket options: CURVE, see metricsd.security)."""
        for endpoint in self.config.endpoints:
            if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
                endpoint = endpoint[:-2] + ":*"
            if before_bind is not None:
                before_bind(endpoint)
            self.socket.bind(endpoint)
            last = self.socket.getsockopt(zmq.LAST_ENDPOINT)
            bound = last.decode() if isinstance(last, bytes) else str(last)
            self.endpoints.append(bound)
            if bound.startswith("ipc://"):
                self._ipc_mode(bound[len("ipc://") :])
        return self.endpoints

    def _ipc_mode(self, path: str) -> None:
        """ipc sockets get ``ingest.ipc_mode`` whatever the umask (systemd's UMask=0077 would
        make them 0700, and applications of the daemon's group could not connect)."""
        if path.startswith("@") or not path:
            return  # abstract namespace: no file
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.chmod(path, int(self.config.ipc_mode, 8))

    def receive(self, limit: int, budget: float) -> int:
        """One wake-up: take up to ``limit`` queued frames, or what arrives within ``budget``
        seconds of decoding, decode them together and apply them; returns the frames taken."""
        engine = self.engine
        wall = time.time()
        decoder = Decoder(wall, engine.limits)
        add = decoder.add
        sock = self.sync
        handled = 0
        deadline = time.monotonic() + budget
        while handled < limit:
            try:
                data = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            handled += 1
            if sock.rcvmore:  # a multipart message is one invalid frame: take all its parts
                while sock.rcvmore:
                    sock.recv()
                engine.reject_frame("shape")
            else:
                add(data)
            if (handled & 15) == 0 and time.monotonic() >= deadline:
                break
        if decoder.frames:
            engine.apply(decoder.finish(), self.now(), wall, frames=decoder.frames)
        return handled

    def unbind_all(self) -> None:
        """Stop taking connections: emitters keep what they have not written for the next
        daemon, while everything ZeroMQ already took in stays in the socket to be applied."""
        for endpoint in self.endpoints:
            try:
                self.sync.unbind(endpoint)
            except zmq.ZMQError as exc:  # not fatal: the drain still bounds the stop
                log.warning("could not unbind %s at shutdown: %s", endpoint, exc)

    def drain(
        self, quiet: float = 0.2, max_seconds: float | None = None, budget: float = 0.05
    ) -> tuple[int, int]:
        """At shutdown (on the engine thread): unbind, then apply everything the socket holds,
        until nothing has come for ``quiet`` seconds (at most ``max_seconds``, default
        ``ingest.drain_timeout``). Returns the frames applied and the frames still queued
        after the limit (received, not decoded: dropped, and counted)."""
        self.unbind_all()
        limit = self.config.drain_timeout if max_seconds is None else max_seconds
        total = 0
        deadline = time.monotonic() + limit
        last = time.monotonic()
        while (now := time.monotonic()) < deadline:
            n = self.receive(10_000, min(budget, max(0.0, deadline - now)))
            total += n
            if n:
                last = now
            elif now - last >= quiet:
                return total, 0
            else:
                self.sync.poll(timeout=20)
        # Out of time: count what is left (a receive costs about a microsecond; the queue is
        # bounded by the receive high-water mark), so the loss is stated, not silent.
        left = 0
        while True:
            try:
                self.sync.recv(zmq.NOBLOCK)
            except zmq.Again:
                return total, left
            while self.sync.rcvmore:  # a multipart message is one frame, as in receive
                self.sync.recv()
            left += 1

    def close(self) -> None:
        self.socket.close(linger=0)
