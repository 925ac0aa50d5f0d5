"""sd_notify and the watchdog task, on a real AF_UNIX datagram socket and a real asyncio loop.

The watchdog tests block the loop the way a stuck daemon would (a synchronous call on the loop)
and check the pings stop, and that a loop that keeps stalling sends none either."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from metricsd.systemd import Notifier, watchdog, watchdog_interval


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="msd") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2.0)
        yield sock, path
        sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram already queued (without waiting)."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2.0)
    return out


class Recording(Notifier):
    """A real notifier that also remembers when each message was sent."""

    def __init__(self, path: str) -> None:
        super().__init__({"NOTIFY_SOCKET": path})
        self.sent: list[tuple[float, str]] = []

    def notify(self, *lines: str) -> bool:
        self.sent.append((time.monotonic(), "\n".join(lines)))
        return super().notify(*lines)


def test_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("ready http=http://127.0.0.1:1")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready http=http://127.0.0.1:1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    assert notifier.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.reloading()
    first, second = sock.recv(4096).decode().split("\n")
    assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")
    notifier.close()


def test_abstract_namespace() -> None:
    name = f"metricsd-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_without_a_socket_nothing_is_sent_and_nothing_raises(tmp_path: Path) -> None:
    assert not Notifier({}).enabled
    assert Notifier({}).ready() is False
    assert Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled is False
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert gone.enabled and gone.ready() is False and gone.notify("WATCHDOG=1") is False


def test_watchdog_interval_from_the_environment() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "42"}, pid=42) == 0.4
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "43"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "x"}, pid=42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    own = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": own}) == 1.0


def pings(notifier: Recording, start: float, end: float = float("inf")) -> list[float]:
    return [t for t, text in notifier.sent if text == "WATCHDOG=1" and start <= t <= end]


async def test_pings_at_half_the_interval(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    notifier = Recording(path)
    start = time.monotonic()
    task = asyncio.create_task(watchdog(notifier, 0.4))
    await asyncio.sleep(0.95)
    task.cancel()
    times = pings(notifier, start)
    assert len(times) == 4  # at 0.2, 0.4, 0.6 and 0.8 s
    gaps = [b - a for a, b in zip([start, *times], times, strict=False)]
    assert all(0.18 <= g <= 0.3 for g in gaps), gaps
    assert received(sock) == ["WATCHDOG=1"] * 4


async def test_a_blocked_loop_sends_no_ping_and_the_first_check_after_it_withholds_one(
    notify_socket: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = notify_socket
    notifier = Recording(path)
    task = asyncio.create_task(watchdog(notifier, 0.4))
    await asyncio.sleep(0.5)
    before = pings(notifier, 0.0)
    assert len(before) == 2

    async def stuck() -> None:
        time.sleep(0.7)  # a synchronous call on the event loop: nothing else runs

    block_start = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="metricsd.systemd"):
        await asyncio.create_task(stuck())
        block_end = time.monotonic()
        await asyncio.sleep(0.35)
    task.cancel()
    assert pings(notifier, block_start, block_end) == []
    after = pings(notifier, block_end)
    # Without the lag check the overdue ping would go out the moment the loop runs again; with
    # it, the next one comes a full period later, after systemd's deadline has passed.
    assert len(after) == 1 and after[0] - block_end >= 0.18
    assert after[0] - before[-1] > 0.4  # longer than WatchdogSec: systemd restarts the unit
    (message,) = [r.getMessage() for r in caplog.records if "withheld" in r.getMessage()]
    prefix = "watchdog ping withheld: the event loop stalled for "
    assert message.startswith(prefix) and message.endswith(" s")
    assert 0.6 <= float(message[len(prefix) : -2]) <= 0.8  # the lag seen after the 0.7 s block
    assert received(sock) == ["WATCHDOG=1"] * 3


async def test_a_loop_that_keeps_stalling_sends_no_pings(
    notify_socket: tuple[socket.socket, str],
) -> None:
    _sock, path = notify_socket
    notifier = Recording(path)

    async def sluggish(until: float) -> None:
        # Runs now and then, but stalls 0.3 s each time: pings could slip through the gaps.
        while time.monotonic() < until:
            time.sleep(0.3)
            await asyncio.sleep(0.02)

    start = time.monotonic()
    task = asyncio.create_task(watchdog(notifier, 0.4))
    await sluggish(start + 1.0)
    stalls_end = time.monotonic()
    await asyncio.sleep(0.4)
    task.cancel()
    assert pings(notifier, start, stalls_end) == []
    assert len(pings(notifier, stalls_end)) >= 1  # healthy again: pings resume


async def test_unhealthy_daemon_gets_no_pings(notify_socket: tuple[socket.socket, str]) -> None:
    _sock, path = notify_socket
    notifier = Recording(path)
    healthy = False
    start = time.monotonic()
    task = asyncio.create_task(watchdog(notifier, 0.2, healthy=lambda: healthy))
    await asyncio.sleep(0.45)
    assert pings(notifier, start) == []
    healthy = True
    flipped = time.monotonic()
    await asyncio.sleep(0.3)
    task.cancel()
    times = pings(notifier, flipped)
    assert len(times) in (2, 3) and times[0] - flipped <= 0.12  # every 0.1 s again
    assert all(0.08 <= b - a <= 0.15 for a, b in itertools.pairwise(times))
