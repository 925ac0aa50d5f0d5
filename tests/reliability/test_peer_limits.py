"""Peers that try to pin memory or descriptors (issue 17, rows 5, 9, 10; SPEC §8), and the cap
on connected ZeroMQ peers (``ingest.max_peers``), against the real daemon.

- Row 5: five WebSocket clients each send 128 subscriptions with 16 KB filter values: each is
  refused with a short error that does not repeat it; with the longest values accepted, the
  replies stay bounded by the filter caps; resident memory grows by at most 64 MiB.
- Row 9: twenty raw ZMTP peers each announce a 15 MiB message and send all of it but one
  byte: the daemon refuses the size at once; resident memory grows by at most 20 MiB.
- Row 10: 300 idle ZeroMQ peers (beyond a cap of 100) and 1 000 slow partial HTTP requests:
  ``/healthz`` answers within 100 ms throughout, every partial request is closed after
  ``http.request_timeout``, exactly ``max_peers`` peers are let in. At a descriptor limit of
  256 the same holds (the caps shrink to fit); when descriptors do run out, the log gets one
  line, not a traceback per accept, and ``/healthz`` answers again as they free up.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import (
    LatencyProbe,
    assert_healthy,
    at_least,
    closed_by_peer,
    http_address,
    ingest_address,
    log_failures,
    mib,
    rss,
    wait_until,
    write_config,
    zmtp_frame_header,
    zmtp_peer,
)

MiB = 1 << 20
TIMEOUT = 5.0
PARTIAL_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n"


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def open_fds(d: Daemon) -> int:
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def descriptors(want: int) -> None:
    """Let this test process open ``want`` sockets (skip where the hard limit forbids it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# --- row 5 -----------------------------------------------------------------------------------


def replies(ws: ClientConnection, count: int) -> list[str]:
    """The next ``count`` replies to subscriptions (updates in between are skipped)."""
    out: list[str] = []
    while len(out) < count:
        text = ws.recv(timeout=TIMEOUT)
        assert isinstance(text, str)
        if json.loads(text)["type"] in ("subscribed", "error"):
            out.append(text)
    return out


def test_websocket_subscriptions_with_huge_filters_stay_small(
    daemon_factory: Any, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path, "[http]\nws_message_rate = 10000.0\nws_message_burst = 10000.0\n"
    )
    d: Daemon = daemon_factory("--config", str(config))
    url = d.http.replace("http://", "ws://") + "/metrics/stream"
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(url, open_timeout=TIMEOUT, max_size=None)) for _ in range(5)
        ]
        for ws in clients:
            assert json.loads(ws.recv(timeout=TIMEOUT))["type"] == "historical_data"
        base = rss(d)
        # The probe: 128 filters of 16 KB per client.
        for k, ws in enumerate(clients):
            values = [f"/v1/{k}/{i}/".ljust(16_000, "x") for i in range(128)]
            for value in values:
                ws.send(json.dumps({"type": "subscribe", "filters": {"endpoint": value}}))
            got = replies(ws, 128)
            assert all(
                json.loads(r) == {**json.loads(r), "type": "error"}
                and "endpoint is longer than 256 characters" in r
                for r in got
            ), got[0]
            assert max(len(r) for r in got) <= 256
            assert not any(v[:40] in r for v in values for r in got[:3])
        huge = rss(d) - base
        # The longest values accepted (256 characters), twice the per-client cap: the replies
        # echo the current filters (FakeAI's protocol) and so stay within what the caps allow.
        largest = 0
        for k, ws in enumerate(clients):
            got = []
            for i in range(128):  # one at a time: a client that never reads is closed (1008)
                value = f"/v1/{k}/{i}/".ljust(256, "y")
                model = f"model-{k}-{i}-".ljust(256, "z")
                filters = {"endpoint": value, "model": model}
                ws.send(json.dumps({"type": "subscribe", "filters": filters}))
                got.extend(json.loads(r) for r in replies(ws, 1))
            subscribed = [r for r in got if r["type"] == "subscribed"]
            assert len(subscribed) == 64
            assert all("at most 64 endpoints per client" in r["message"] for r in got[64:])
            assert len(subscribed[-1]["filters"]["endpoints"]) == 64
            largest = max(largest, *(len(json.dumps(r)) for r in got))
        assert largest <= 64 * 2 * (256 + 4) + 256, largest
        # They are still served: an update comes for every client.
        for ws in clients:
            deadline = time.monotonic() + TIMEOUT
            while json.loads(ws.recv(timeout=TIMEOUT))["type"] != "metrics_update":
                assert time.monotonic() < deadline
        growth = rss(d) - base
        print(
            f"5 clients x 128 subscriptions: 16 KB values +{mib(huge)}, 256-character values "
            f"(largest reply {largest} bytes) +{mib(growth)} resident"
        )
        assert huge <= 64 * MiB and growth <= 64 * MiB
    assert_healthy(d)
    assert log_failures(d) == []


# --- row 9 -----------------------------------------------------------------------------------


def test_partial_huge_zeromq_messages_hold_no_memory(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory()
    # The hand-made ZMTP is right: a small frame sent this way is received and counted.
    control = msgpack.packb({"type": "request", "model": "zmtp", "duration_ms": 1.0})
    with zmtp_peer(d) as peer:
        peer.sendall(zmtp_frame_header(len(control)) + control)
        assert d.wait_for("metricsd_events_received_total", 1, type="request") == 1
    time.sleep(0.5)
    base = rss(d)
    size = 15 * MiB
    chunk = b"\x00" * (256 * 1024)
    peers: list[socket.socket] = []
    refused = 0
    try:
        for _ in range(20):
            peer = zmtp_peer(d)
            peers.append(peer)
            sent = 0
            try:
                peer.sendall(zmtp_frame_header(size))
                while sent < size - 1:
                    n = min(len(chunk), size - 1 - sent)
                    peer.sendall(chunk[:n])
                    sent += n
            except (ConnectionResetError, BrokenPipeError):
                refused += 1
        time.sleep(0.5)
        growth = rss(d) - base
        closed = sum(closed_by_peer(p, TIMEOUT) for p in peers)
    finally:
        for peer in peers:
            peer.close()
    print(f"20 peers x (15 MiB - 1 byte): +{mib(growth)} resident; {closed} disconnected")
    assert growth <= 20 * MiB, mib(growth)
    assert closed == 20  # each refused at its frame header (ZMQ_MAXMSGSIZE), not held
    assert d.value("metricsd_frames_received_total") == 1
    assert_healthy(d)
    assert log_failures(d) == []


# --- row 10 ----------------------------------------------------------------------------------


def open_partial_requests(d: Daemon, count: int) -> list[socket.socket]:
    """``count`` connections each holding a request whose headers never end (in batches of
    50, 20 ms apart: 2 500 connections a second)."""
    out: list[socket.socket] = []
    for start in range(0, count, 50):
        for _ in range(min(50, count - start)):
            sock = socket.create_connection(http_address(d), timeout=TIMEOUT)
            sock.sendall(PARTIAL_REQUEST)
            out.append(sock)
        time.sleep(0.02)
    return out


def idle_peers(ctx: zmq.Context[Any], d: Daemon, count: int) -> list[zmq.Socket[Any]]:
    """PUSH peers that connect, queue one event each, and then idle (heartbeats only)."""
    event = msgpack.packb({"type": "request", "model": "idle-peer", "duration_ms": 1.0})
    out = []
    for _ in range(count):
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(d.ingest[0])
        sock.send(event, zmq.NOBLOCK)  # queued until this peer is let in
        out.append(sock)
    return out


def still_open(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """Those of ``socks`` the daemon has not closed by ``deadline`` (the others are closed
    here too)."""
    left = []
    for sock in socks:
        if closed_by_peer(sock, max(0.01, deadline - time.monotonic())):
            sock.close()
        else:
            left.append(sock)
    return left


ROW10_CONFIG = """
[http]
request_timeout = 2.0

[ingest]
max_peers = {max_peers}
handshake_timeout = 1.0
"""


def test_idle_peers_and_slow_requests_never_delay_healthz(
    daemon_factory: Any, tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    descriptors(4096)
    config = write_config(tmp_path, ROW10_CONFIG.format(max_peers=100))
    d: Daemon = daemon_factory("--config", str(config))
    with LatencyProbe(d) as probe:
        peers = idle_peers(zctx, d, 300)
        partial = open_partial_requests(d, 1000)
        opened = time.monotonic()
        left = still_open(partial, opened + 2.0 + 2.0)
        held = time.monotonic() - opened
        closed = len(partial) - len(left)
        for sock in left:
            sock.close()
        time.sleep(0.5)
    print(
        f"300 idle peers, 1000 partial requests: /healthz worst {probe.worst * 1000:.1f} ms "
        f"over {probe.count} requests; partial requests closed {closed} "
        f"(the last {held:.1f} s after they were all open)"
    )
    assert probe.failures == 0 and probe.count >= 40
    assert probe.worst <= 0.1
    assert closed == 1000
    # Exactly the cap was let in: one event from each of 100 peers, none from the others.
    assert d.wait_for("metricsd_events_received_total", 100, type="request") == 100
    time.sleep(0.5)
    assert d.value("metricsd_events_received_total", type="request") == 100
    assert d.value("metricsd_ingest_peers_refused_total", reason="max_peers") >= 200
    # The gauge never reads low; a refused connection still open just past the handshake
    # timeout (its close not yet seen, on a loaded machine) counts until it is.
    assert wait_until(lambda: d.value("metricsd_ingest_peers"), lambda v: v == 100, 10.0) == 100
    assert d.value("metricsd_ingest_connections") >= 100
    log = d.log_path.read_text()
    assert log.count("ZeroMQ peer connection(s): ") == 1  # one line a minute, with a count
    for sock in peers:
        sock.close()
    assert wait_until(lambda: d.value("metricsd_ingest_peers"), lambda v: v == 0, 10.0) == 0
    assert log_failures(d) == []


def test_at_a_low_descriptor_limit_healthz_keeps_answering(
    tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    descriptors(2048)
    limit = 256

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    config = write_config(tmp_path, ROW10_CONFIG.format(max_peers=1024))
    d = start_daemon(tmp_path, "--config", str(config), preexec_fn=low_limit)
    try:
        log = d.log_path.read_text()
        assert (
            "the descriptor limit (256) is too low for http.max_connections (2000) and "
            "ingest.max_peers (1024): serving at most 96 HTTP connections and 96 peers"
        ) in log
        # More slow requests than descriptors: the idlest make room for new ones.
        with LatencyProbe(d) as probe:
            peers = idle_peers(zctx, d, 50)
            partial = open_partial_requests(d, 400)
            early = still_open(partial, time.monotonic() + 1.0)
            left = still_open(early, time.monotonic() + 3.0)
            closed_early, closed = len(partial) - len(early), len(partial) - len(left)
            for sock in left:
                sock.close()
        print(
            f"descriptor limit {limit}: 50 peers, 400 partial requests: /healthz worst "
            f"{probe.worst * 1000:.1f} ms over {probe.count}; {closed_early} partial requests "
            f"made room for newer ones"
        )
        assert probe.failures == 0 and probe.worst <= 0.1
        assert closed_early >= 400 - 96 and closed == 400
        assert d.wait_for("metricsd_events_received_total", 50, type="request") == 50
        assert "cannot accept connections" not in d.log_path.read_text()
        # Descriptors do run out: raw connections to the ingest port that never greet, until
        # the handshake timeout (1 s) drops them. A /healthz sent meanwhile is answered once
        # descriptors free up, and the log gets one line.
        raw = []
        while open_fds(d) < limit and len(raw) < 600:
            raw.extend(
                socket.create_connection(ingest_address(d), timeout=TIMEOUT) for _ in range(20)
            )
            time.sleep(0.005)
        assert open_fds(d) >= limit  # every descriptor taken
        started = time.monotonic()
        status, _, _ = d.request("/healthz", timeout=10.0)
        waited = time.monotonic() - started
        for sock in raw:
            sock.close()
        print(f"descriptors exhausted: /healthz answered after {waited:.2f} s")
        assert status == 200 and waited < 4.0
        assert_healthy(d)
        log = d.log_path.read_text()
        assert 1 <= log.count("cannot accept connections: out of file descriptors") <= 3
        assert "Traceback" not in log
        for sock in peers:
            sock.close()
    finally:
        assert d.stop() == 0


# --- the cap on connected ZeroMQ peers ---------------------------------------------------------


def push(ctx: zmq.Context[Any], d: Daemon, timeout_ms: int) -> zmq.Socket[Any]:
    """A PUSH socket that sends only on a completed (admitted) connection."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    sock.connect(d.ingest[0])
    return sock


def test_peers_beyond_max_peers_are_refused_until_one_leaves(
    daemon_factory: Any, tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    config = write_config(tmp_path, "[ingest]\nmax_peers = 3\nhandshake_timeout = 1.0\n")
    d: Daemon = daemon_factory("--config", str(config))
    frame = msgpack.packb({"type": "request", "model": "capped", "duration_ms": 1.0})
    admitted = [push(zctx, d, 3000) for _ in range(3)]
    for sock in admitted:
        sock.send(frame)
    assert d.wait_for("metricsd_events_received_total", 3, type="request") == 3
    assert d.value("metricsd_ingest_peers") == 3
    waiting = [push(zctx, d, 500) for _ in range(2)]
    for sock in waiting:
        with pytest.raises(zmq.Again):  # never let in while three are connected
            sock.send(frame)
    refused = d.value("metricsd_ingest_peers_refused_total", reason="max_peers")
    assert refused >= 2
    assert d.value("metricsd_ingest_peers_refused_total", reason="curve_key") == 0
    # Two leave: the waiting peers are let in on their next attempt (after the handshake
    # timeout that held their refused connection, and their reconnect interval).
    for sock in admitted[:2]:
        sock.close()
    for sock in waiting:
        sock.setsockopt(zmq.SNDTIMEO, 5000)
        sock.send(frame)
    assert d.wait_for("metricsd_events_received_total", 5, type="request") == 5
    assert wait_until(lambda: d.value("metricsd_ingest_peers"), lambda v: v == 3, 5.0) == 3
    log = d.log_path.read_text()
    assert log.count("ZeroMQ peer connection(s): ") == 1
    assert "ingest.max_peers is 3" in log
    # Unlimited: 0 turns the cap off.
    d2: Daemon = daemon_factory(
        "--config", str(write_config(tmp_path, "[ingest]\nmax_peers = 0\n", "nocap.toml"))
    )
    many = [push(zctx, d2, 3000) for _ in range(10)]
    for sock in many:
        sock.send(frame)
    assert d2.wait_for("metricsd_events_received_total", 10, type="request") == 10
    assert wait_until(lambda: d.value("metricsd_frames_received_total"), at_least(5), TIMEOUT) == 5
    assert log_failures(d) == [] and log_failures(d2) == []
