"""ZeroMQ ingest: one PULL socket bound to every configured endpoint, read on the engine thread.

The socket is made and bound by the daemon (before the engine thread starts), then only the
engine thread (:mod:`metricsd.runner`) reads it: each wake-up takes what is queued, up to a frame
count and a time budget, decodes it as one pool (:class:`metricsd.decode.Decoder`) and applies
it. The receive high-water mark bounds what ZeroMQ queues for us; beyond it, ZeroMQ pushes back
on the emitters, whose non-blocking sends then count their own drops (SPEC §1.1).

A peer is bounded too (SPEC §8): ZeroMQ refuses a message larger than a frame may be (the
receive size limit follows ``ingest.max_frame_bytes``), a peer that does not finish its
handshake within ``ingest.handshake_timeout`` is dropped, and heartbeats drop dead peers.
How many peers may be connected at once is bounded by :class:`PeerGate`, the socket's ZAP
handler, which also checks CURVE client keys.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import zmq
from zmq.utils import z85

from metricsd.config import IngestConfig
from metricsd.decode import Decoder
from metricsd.engine import Engine
from metricsd.security import ZAP_DOMAIN

__all__ = ["FRAME_MARGIN", "Ingest", "PeerGate"]

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
        self.context = context
        self.gate: PeerGate | None = None

    def guard(self, max_peers: int, key_check: Callable[[bytes], bool] | None = None) -> None:
        """Start the ZAP handler (before ``bind``: ZeroMQ copies the ZAP domain into each
        listener at bind time, so no peer is ever let in unchecked). ``max_peers``: 0 for no
        cap; ``key_check``: is this CURVE public key (Z85) allowed? (None: any key)."""
        if not max_peers and key_check is None:
            return
        self.gate = PeerGate(self.context, max_peers, self.config.handshake_timeout, key_check)
        self.gate.start(self.sync)

    def bind(self, before_bind: Callable[[str], None] | None = None) -> list[str]:
        """Bind every endpoint; return the real addresses (port 0 resolved). ``before_bind``
        runs before each bind (per-endpoint socket options: CURVE, see metricsd.security)."""
        for endpoint in self.config.endpoints:
            if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
                endpoint = endpoint[:-2] + ":*"
            if self.gate is not None:
                # Every handshake (NULL ones too) goes through the gate.
                self.socket.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
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
        if self.gate is not None:
            self.gate.stop()


#: Where libzmq sends authentication requests (ZAP, RFC 27): one handler per context.
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
_MONITORED: Final = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_EVENT: Final = struct.Struct("=Hi")  # a monitor event's first frame: event id, value
#: How often (seconds) refusals at the cap are logged, with their count.
_REPORT_EVERY: Final = 60.0


class PeerGate:
    """The ingest socket's ZAP handler, on a thread of its own: a cap on connected peers, and
    the CURVE client-key check.

    libzmq asks the handler about every new connection during its handshake (the socket has a
    ZAP domain, NULL mechanism included); a peer is let in while fewer than ``max_peers`` are.

    A peer beyond the cap gets ZAP status 300 ("temporary failure"): libzmq then sends it no
    ERROR command (after which an emitter would never reconnect) and holds the connection until
    the handshake timeout (a CURVE one is closed at once); the emitter reconnects after its
    reconnect interval, and is let in once a peer has left. An unknown CURVE key gets 400, as
    before the cap existed: that emitter stops trying.

    Who is connected: the socket's monitor reports each connection accepted and closed, with
    its descriptor, but a ZAP request does not say which connection it is for. What settles
    it is the handshake timeout ``T``: a connection still open ``T`` after it was accepted has
    been let in (any other is dropped by then), and one let in within the last ``T`` seconds is
    counted from the admission itself. So "peers" = connections open for longer than ``T`` +
    admissions in the last ``T``: never fewer than are really connected (a peer let in and gone
    within ``T`` counts until ``T`` has passed), so the cap is never exceeded, and peers held
    while being refused, or still in their handshake, do not count. The monitor's "accepted"
    event of a connection is queued before its handshake starts, so it is always counted by
    the time the connection's ZAP request is read.

    Counters and gauges are plain ints written by this thread and read by the renderer.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        max_peers: int,
        handshake_timeout: float,
        key_check: Callable[[bytes], bool] | None = None,
    ) -> None:
        # A synchronous view of the daemon's context: the ZAP endpoint is per context.
        self.context: zmq.Context[Any] = zmq.Context.shadow(context.underlying)
        self.max_peers = max_peers
        self.settle = handshake_timeout
        self.key_check = key_check
        #: Peers connected (see the class docstring): what the cap compares with.
        self.peers = 0
        #: Connections open: let in, in their handshake, or held while being refused.
        self.connections = 0
        self.refused: dict[str, int] = {"max_peers": 0, "curve_key": 0}
        self._open: dict[int, int] = {}  # descriptor → serial of the connection using it
        self._young: deque[tuple[float, int, int]] = deque()  # (accepted at, fd, serial)
        self._settled: set[int] = set()  # open for longer than the handshake timeout
        self._admitted: deque[float] = deque()  # admissions of the last handshake timeout
        self._serial = 0
        self._zap: zmq.Socket[bytes] | None = None
        self._monitor: zmq.Socket[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_report = -_REPORT_EVERY
        self._unreported = 0

    def start(self, sock: zmq.Socket[Any]) -> None:
        """Bind the ZAP endpoint and monitor ``sock`` (call before it binds), then serve."""
        zap: zmq.Socket[bytes] = self.context.socket(zmq.ROUTER)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        address = f"inproc://metricsd.ingest.monitor.{id(self):x}"
        sock.monitor(address, _MONITORED)
        monitor: zmq.Socket[bytes] = self.context.socket(zmq.PAIR)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(address)
        self._zap, self._monitor = zap, monitor
        # The sockets move to the thread (starting a thread is a full memory barrier).
        self._thread = threading.Thread(target=self._serve, name="metricsd-zap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _serve(self) -> None:
        zap, monitor = self._zap, self._monitor
        assert zap is not None and monitor is not None
        poller = zmq.Poller()
        poller.register(zap, zmq.POLLIN)
        poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                self._drain(monitor)
                while zap in ready:
                    try:
                        request = zap.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._drain(monitor)  # the requester's own "accepted" is queued by now
                    reply = self.reply(request)
                    if reply:
                        zap.send_multipart(reply)
                self._recount(time.monotonic())
        except zmq.ContextTerminated:
            pass
        except Exception:  # the handshakes wait on this thread: say loudly why it stopped
            log.exception("the ingest ZAP handler stopped")
        finally:
            zap.close(linger=0)
            monitor.close(linger=0)

    def _drain(self, monitor: zmq.Socket[bytes]) -> None:
        """Apply the queued monitor events."""
        while True:
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2 or len(frames[0]) != _EVENT.size:
                continue
            event, fd = _EVENT.unpack(frames[0])
            if event == zmq.EVENT_ACCEPTED:
                self.accepted(fd, time.monotonic())
            elif event == zmq.EVENT_DISCONNECTED:
                self.closed(fd)

    def accepted(self, fd: int, now: float) -> None:
        self._serial += 1
        self._open[fd] = self._serial
        self._young.append((now, fd, self._serial))

    def closed(self, fd: int) -> None:
        self._open.pop(fd, None)
        self._settled.discard(fd)

    def _recount(self, now: float) -> int:
        """Settle the connections older than the handshake timeout; update the gauges."""
        limit = now - self.settle
        young, admitted = self._young, self._admitted
        while young and young[0][0] <= limit:
            _, fd, serial = young.popleft()
            if self._open.get(fd) == serial:  # still the connection accepted then
                self._settled.add(fd)
        while admitted and admitted[0] <= limit:
            admitted.popleft()
        self.peers = len(self._settled) + len(admitted)
        self.connections = len(self._open)
        return self.peers

    def reply(self, frames: list[bytes]) -> list[bytes]:
        """The ZAP reply to one request (RFC 27: routing envelope, then version, request id,
        status code, status text, user id, metadata); nothing for a request too malformed to
        answer (libzmq never sends one)."""
        try:
            split = frames.index(b"")
        except ValueError:
            return []
        envelope, request = frames[: split + 1], frames[split + 1 :]
        if len(request) < 6:
            return []
        request_id, mechanism, credentials = request[1], request[5], request[6:]
        try:
            status, text = self.decide(mechanism, credentials, time.monotonic())
        except Exception:  # a temporary refusal: the peer tries again, nothing is let in
            log.exception("error deciding on a ZeroMQ peer")
            status, text = b"300", b"internal error"
        return [*envelope, b"1.0", request_id, status, text, b"", b""]

    def decide(self, mechanism: bytes, credentials: list[bytes], now: float) -> tuple[bytes, bytes]:
        if mechanism == b"CURVE" and self.key_check is not None:
            key = credentials[0] if credentials else b""
            if len(key) != 32 or not self.key_check(z85.encode(key)):
                self.refused["curve_key"] += 1
                return b"400", b"unknown key"
        if self.max_peers and self._recount(now) >= self.max_peers:
            self.refused["max_peers"] += 1
            self._report(now)
            return b"300", b"too many peers"
        self._admitted.append(now)
        self.peers += 1
        return b"200", b"OK"

    def _report(self, now: float) -> None:
        """One warning a minute while peers are refused, with how many."""
        self._unreported += 1
        if now - self._last_report >= _REPORT_EVERY:
            log.warning(
                "refused %d ZeroMQ peer connection(s): %d peers connected, ingest.max_peers is %d",
                self._unreported,
                self.peers,
                self.max_peers,
            )
            self._last_report = now
            self._unreported = 0
