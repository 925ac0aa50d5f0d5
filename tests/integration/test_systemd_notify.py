"""The real daemon process against a real ``NOTIFY_SOCKET``: what systemd would receive."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon


@pytest.fixture
def notify() -> Iterator[tuple[socket.socket, str]]:
    with tempfile.TemporaryDirectory(prefix="msd") as tmp:  # AF_UNIX paths: ≤ 107 bytes
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        yield sock, path
        sock.close()


def collect(
    sock: socket.socket, seconds: float, until: str | None = None
) -> list[tuple[float, str]]:
    """Datagrams received within ``seconds`` (or until one equals/starts with ``until``)."""
    out: list[tuple[float, str]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(4096).decode()
        except TimeoutError:
            break
        out.append((time.monotonic(), data))
        if until is not None and data.startswith(until):
            break
    return out


def test_ready_watchdog_and_stopping(
    daemon_factory: Any, notify: tuple[socket.socket, str]
) -> None:
    sock, path = notify
    d: Daemon = daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    (ready_at, ready), *_ = collect(sock, 5.0, until="READY=1")
    assert ready == f"READY=1\nSTATUS=ready http={d.http} ingest={d.ingest[0]}"
    messages = collect(sock, 1.0)
    times = [t for t, text in messages if text == "WATCHDOG=1"]
    assert [text for _, text in messages] == ["WATCHDOG=1"] * len(times)
    assert 4 <= len(times) <= 5  # one every 0.2 s (half of WATCHDOG_USEC)
    gaps = [b - a for a, b in zip([ready_at, *times], times, strict=False)]
    assert all(0.1 <= g <= 0.35 for g in gaps), gaps
    d.proc.send_signal(signal.SIGTERM)
    rest = [text for _, text in collect(sock, 10.0, until="STOPPING=1")]
    assert rest[-1] == "STOPPING=1\nSTATUS=stopping"
    assert set(rest[:-1]) <= {"WATCHDOG=1"}
    assert d.proc.wait(10) == 0
    assert collect(sock, 0.2) == []  # nothing after STOPPING=1, no ping from a stopping daemon


def test_no_watchdog_pings_for_another_pid(
    daemon_factory: Any, notify: tuple[socket.socket, str]
) -> None:
    sock, path = notify
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    daemon_factory(env=env)
    (_, ready), *_ = collect(sock, 5.0, until="READY=1")
    assert ready.startswith("READY=1\n")
    assert collect(sock, 0.5) == []


def test_abstract_notify_socket(daemon_factory: Any) -> None:
    name = f"metricsd-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        d: Daemon = daemon_factory(env={"NOTIFY_SOCKET": "@" + name})
        (_, ready), *_ = collect(sock, 5.0, until="READY=1")
        assert ready == f"READY=1\nSTATUS=ready http={d.http} ingest={d.ingest[0]}"
    finally:
        sock.close()
