"""The ingest socket's ZAP handler without sockets: who is let in, how peers are counted, the
ZAP reply frames; and the descriptor budget of the caps. (The same gate with real pyzmq peers:
tests/reliability/test_peer_limits.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from metricsd.ingest import PeerGate
from metricsd.web.server import descriptor_budget

T = 5.0  # the handshake timeout
OK, LATER, NO = (b"200", b"OK"), (b"300", b"too many peers"), (b"400", b"unknown key")


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.term()


def gate(context: zmq.Context[Any], max_peers: int, **kw: Any) -> PeerGate:
    return PeerGate(context, max_peers, T, **kw)


def test_a_burst_lets_in_exactly_the_cap(context: zmq.Context[Any]) -> None:
    g = gate(context, 100)
    for fd in range(300):  # all accepted before any handshake ends (a restart's reconnects)
        g.accepted(1000 + fd, 0.0)
    decisions = [g.decide(b"NULL", [], 0.001 * i) for i in range(300)]
    assert decisions.count(OK) == 100 and decisions[:100] == [OK] * 100
    assert decisions[100:] == [LATER] * 200
    assert g.refused == {"max_peers": 200, "curve_key": 0}
    # The refused connections are dropped at their handshake timeout; the others settle.
    for fd in range(100, 300):
        g.closed(1000 + fd)
    assert g._recount(T + 1.0) == 100
    assert g.decide(b"NULL", [], T + 1.0) == LATER
    # One peer leaves: the next one is let in, and then no more.
    g.closed(1000)
    assert g.decide(b"NULL", [], T + 1.1) == OK
    assert g.decide(b"NULL", [], T + 1.2) == LATER


def test_peers_held_while_refused_or_still_in_their_handshake_do_not_count(
    context: zmq.Context[Any],
) -> None:
    g = gate(context, 2)
    for fd in (10, 11):
        g.accepted(fd, 0.0)
    assert [g.decide(b"NULL", [], 0.1) for _ in range(2)] == [OK, OK]
    for fd in range(20, 60):  # connections that never finish their handshake, and refused ones
        g.accepted(fd, 0.2)
    assert g._recount(0.3) == 2
    assert g.connections == 42
    g.closed(10)
    # Within the handshake timeout of its admission a peer that left still counts (the
    # count never falls below the truth); once it has passed, its place is free.
    assert g.decide(b"NULL", [], 1.0) == LATER
    for fd in range(20, 60):
        g.closed(fd)  # dropped at their handshake timeout
    assert g._recount(T + 0.5) == 1
    assert g.decide(b"NULL", [], T + 0.5) == OK


def test_a_reused_descriptor_is_a_new_connection(context: zmq.Context[Any]) -> None:
    g = gate(context, 5)
    g.accepted(7, 0.0)
    g.closed(7)
    g.accepted(7, 4.0)  # the same number, another connection, still in its handshake
    assert g._recount(T + 0.5) == 0  # the first one's settling does not settle the second
    assert g._recount(4.0 + T + 0.1) == 1


def test_no_cap_and_curve_keys(context: zmq.Context[Any]) -> None:
    public, _secret = zmq.curve_keypair()
    raw = z85.decode(public)
    other = z85.decode(zmq.curve_keypair()[0])
    g = gate(context, 0, key_check=lambda key: key == public)
    for fd in range(50):
        g.accepted(fd, 0.0)
    assert all(g.decide(b"NULL", [], 0.0) == OK for _ in range(50))  # 0: no cap
    assert g.decide(b"CURVE", [raw], 0.0) == OK
    assert g.decide(b"CURVE", [other], 0.0) == NO
    assert g.decide(b"CURVE", [b"short"], 0.0) == NO
    assert g.refused == {"max_peers": 0, "curve_key": 2}


def test_zap_reply_frames(context: zmq.Context[Any]) -> None:
    g = gate(context, 1)
    g.accepted(3, time.monotonic())  # reply() decides at the current time
    request = [b"peer-id", b"", b"1.0", b"42", b"metricsd", b"127.0.0.1", b"", b"NULL"]
    assert g.reply(request) == [b"peer-id", b"", b"1.0", b"42", b"200", b"OK", b"", b""]
    g.accepted(4, time.monotonic())
    assert g.reply(request)[4:6] == [b"300", b"too many peers"]
    assert g.reply([b"no delimiter"]) == [] and g.reply([b"", b"1.0"]) == []


@pytest.mark.parametrize(
    ("limit", "connections", "peers", "expected"),
    [
        (65536, 2000, 1024, (2000, 1024)),
        (4096, 2000, 1024, (2000, 1024)),
        (1024, 2000, 1024, (480, 480)),
        (256, 2000, 1024, (96, 96)),
        (256, 50, 0, (50, 0)),  # 0: no cap, whatever the limit
        (80, 2000, 1024, (16, 16)),
        (2**63 - 1, 2000, 1024, (2000, 1024)),  # RLIM_INFINITY
    ],
)
def test_descriptor_budget(
    limit: int, connections: int, peers: int, expected: tuple[int, int]
) -> None:
    assert descriptor_budget(limit, connections, peers) == expected
