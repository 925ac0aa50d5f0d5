"""Ingest.drain at shutdown, over real ZeroMQ sockets on loopback: everything queued in the
daemon's socket is applied, the endpoints are unbound first (so an emitter's later frames wait
for the next daemon instead of being lost at the close), and what a drain runs out of time for
is counted, not dropped silently."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq
import zmq.asyncio

from metricsd.config import Config, IngestConfig
from metricsd.engine import Engine
from metricsd.ingest import Ingest

FRAME = msgpack.packb({"type": "client", "dropped": 1, "source": "drain-test"})


@pytest.fixture
def contexts() -> Iterator[tuple[zmq.asyncio.Context, zmq.Context[zmq.Socket[bytes]]]]:
    actx, ctx = zmq.asyncio.Context(), zmq.Context()
    yield actx, ctx
    ctx.destroy(linger=0)
    actx.destroy(linger=0)


def _ingest(actx: zmq.asyncio.Context) -> tuple[Ingest, Engine]:
    config = Config(ingest=IngestConfig(endpoints=("tcp://127.0.0.1:0",)))
    engine = Engine(config, [])
    ingest = Ingest(config.ingest, engine, actx)
    ingest.bind()
    return ingest, engine


def _queued(count: int, push: zmq.Socket[bytes]) -> None:
    """Send ``count`` frames and wait until the daemon's socket holds all of them (nothing is
    received: the receive loop is not running)."""
    for _ in range(count):
        push.send(FRAME)
    deadline = time.monotonic() + 10.0
    # The receiving queue's length is not observable; wait for the sender to have written
    # everything to the connection, then give loopback a moment to deliver it.
    while push.getsockopt(zmq.EVENTS) & zmq.POLLOUT == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # loopback: the bytes reach the receiving side's queue within this


def test_drain_applies_everything_queued_then_unbinds(
    contexts: tuple[zmq.asyncio.Context, zmq.Context[zmq.Socket[bytes]]],
) -> None:
    actx, ctx = contexts
    ingest, engine = _ingest(actx)
    endpoint = ingest.endpoints[0]
    push = ctx.socket(zmq.PUSH)
    push.connect(endpoint)
    _queued(500, push)
    assert ingest.drain(quiet=0.2, max_seconds=10.0) == (500, 0)
    assert engine.frames_received == 500
    assert engine.client_dropped == {"drain-test": 500}
    ingest.close()
    # Unbound: the emitter keeps its later frames and delivers them to the next daemon bound
    # on the same endpoint; nothing of them reached (or was lost by) the stopped one.
    for _ in range(50):
        push.send(FRAME, zmq.NOBLOCK)
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    got = 0
    while got < 50 and pull.poll(5000):
        pull.recv()
        got += 1
    assert got == 50
    assert pull.poll(300) == 0  # and not one more
    push.close(linger=0)
    pull.close(linger=0)


def test_drain_out_of_time_counts_what_it_leaves(
    contexts: tuple[zmq.asyncio.Context, zmq.Context[zmq.Socket[bytes]]],
) -> None:
    actx, ctx = contexts
    ingest, engine = _ingest(actx)
    push = ctx.socket(zmq.PUSH)
    push.connect(ingest.endpoints[0])
    _queued(300, push)
    assert ingest.drain(quiet=0.2, max_seconds=0.0) == (0, 300)
    assert engine.frames_received == 0
    ingest.close()
    push.close(linger=0)
