"""ZeroMQ ingest: one PULL socket bound to every configured endpoint, feeding the engine.

Each wake-up drains up to ``max_frames_per_wakeup`` frames without awaiting, decodes them and
applies them, then yields to the event loop so HTTP and WebSocket work is never starved. The
receive high-water mark bounds what ZeroMQ queues for us; beyond it, ZeroMQ pushes back on the
emitters, whose non-blocking sends then count their own drops (SPEC §1.1).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

import zmq
import zmq.asyncio

from metricsd.config import IngestConfig
from metricsd.engine import Engine
from metricsd.protocol import Decoder

__all__ = ["Ingest"]

log = logging.getLogger("metricsd.ingest")


class Ingest:
    """Owns the PULL socket; ``run()`` is the receive loop, ``drain()`` empties it at shutdown."""

    def __init__(
        self,
        config: IngestConfig,
        engine: Engine,
        context: zmq.asyncio.Context,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.engine = engine
        self.clock = clock
        self.socket = context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, config.rcvhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        # Frames over the limit are counted as ``too_large`` by the decoder; far larger ones are
        # refused by ZeroMQ itself (the peer is disconnected), so a hostile sender cannot make
        # the daemon buffer an arbitrarily large message.
        self.socket.setsockopt(zmq.MAXMSGSIZE, max(16 << 20, 4 * config.max_frame_bytes))
        # A synchronous view of the same socket: draining with NOBLOCK needs no Future per frame.
        self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(self.socket.underlying)
        self.endpoints: list[str] = []
        self._stopping = False

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
            self.endpoints.append(last.decode() if isinstance(last, bytes) else str(last))
            if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
                # ingest.ipc_mode whatever the umask (systemd's UMask=0077 would make it 0700).
                os.chmod(endpoint[len("ipc://") :], int(self.config.ipc_mode, 8))
        return self.endpoints

    def _drain_nowait(self, limit: int, first: list[bytes] | None = None) -> int:
        """Receive up to ``limit`` queued frames (after ``first``), decode them together and
        apply them in one go; returns how many frames were handled."""
        engine = self.engine
        wall = time.time()
        decoder = Decoder(wall, engine.limits)
        add = decoder.add
        sock = self._sync
        handled = 0
        if first is not None:
            handled = 1
            if len(first) == 1:
                add(first[0])
            else:
                engine.reject_frame("shape")
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
        if decoder.frames:
            engine.apply(decoder.finish(), self.clock(), wall, frames=decoder.frames)
        return handled

    async def run(self) -> None:
        """Receive until cancelled or stopped."""
        sock = self.socket
        limit = self.config.max_frames_per_wakeup
        while not self._stopping:
            parts = await sock.recv_multipart()
            try:
                self._drain_nowait(limit, first=parts)
            except Exception:  # a tracker bug must not stop ingest; it is logged, not hidden
                log.exception("error applying a frame")
            await asyncio.sleep(0)

    def drain(self, quiet: float = 0.2, max_seconds: float | None = None) -> tuple[int, int]:
        """At shutdown: apply everything the socket holds, until nothing has come for ``quiet``
        seconds (at most ``max_seconds``, default ``ingest.drain_timeout``). Returns the frames
        applied and the frames still queued after the limit (received, not decoded: dropped).

        The endpoints are unbound first: that closes the emitters' connections, so they keep
        what they have not yet written in their own queues (and send it to the next daemon),
        while everything ZeroMQ already took in stays in the socket and is applied here. Without
        it, an emitter that never pauses would keep the socket busy until the limit and the
        close would drop whatever was queued then. What remains in flight is what sat in the
        kernel's TCP buffers at that instant, which no PUSH/PULL design can recover."""
        self._stopping = True
        for endpoint in self.endpoints:
            try:
                self._sync.unbind(endpoint)
            except zmq.ZMQError as exc:  # not fatal: the drain below still bounds the stop
                log.warning("could not unbind %s at shutdown: %s", endpoint, exc)
        limit = self.config.drain_timeout if max_seconds is None else max_seconds
        total = 0
        deadline = time.monotonic() + limit
        last = time.monotonic()
        while (now := time.monotonic()) < deadline:
            n = self._drain_nowait(10_000)
            total += n
            if n:
                last = now
            elif now - last >= quiet:
                return total, 0
            else:
                self._sync.poll(timeout=20)
        # Out of time: count what is left (a receive costs about a microsecond; the queue is
        # bounded by the receive high-water mark), so the loss is stated, not silent.
        left = 0
        while True:
            try:
                self._sync.recv(zmq.NOBLOCK)
            except zmq.Again:
                return total, left
            while self._sync.rcvmore:  # a multipart message is one frame, as in _drain_nowait
                self._sync.recv()
            left += 1

    def close(self) -> None:
        self.socket.close(linger=0)
