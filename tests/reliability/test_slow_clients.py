"""WebSocket clients that stop reading (SPEC §5.5, §6).

A client that subscribes and then never reads fills its socket buffers; the daemon closes it
with 1008 after ``http.ws_slow_grace``. Its close frame cannot be delivered (the peer reads
nothing), so the daemon must drop the connection rather than wait on it forever:

- otherwise each such client keeps a socket (and its buffers) open after it stopped counting
  against ``http.max_ws_clients``, so the limit does not bound connections;
- and SIGTERM waits forever for the close handshake of a stalled client: the daemon never
  exits (its state is saved, but the ingest endpoint stays bound, so no new daemon can start).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from tests.conftest import Daemon
from tests.reliability.reliability_support import (
    assert_healthy,
    log_failures,
    stalled_client,
    wait_until,
    wide_updates,
    write_config,
)

MAX_WS = 4


def open_fds(d: Daemon) -> int:
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


def disconnected(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Read what the daemon had sent until the connection ends (EOF or reset)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_stalled_clients_are_dropped_and_free_their_connections(
    daemon_factory: Any, tmp_path: Path
) -> None:
    config = write_config(tmp_path, f"[http]\nws_slow_grace = 1.0\nmax_ws_clients = {MAX_WS}\n")
    d: Daemon = daemon_factory("--config", str(config))
    wide_updates(d)
    baseline = open_fds(d)
    stalled = [stalled_client(d) for _ in range(MAX_WS)]  # every slot taken
    try:
        closes = wait_until(
            lambda: d.log_path.read_text().count("too slow to keep up"),
            lambda n: n >= MAX_WS,
            30.0,
        )
        assert closes == MAX_WS
        # Closed with 1008 and then dropped: the daemon holds no socket for them.
        fds = wait_until(lambda: open_fds(d), lambda n: n <= baseline, 10.0)
        assert fds <= baseline, (fds, baseline)
        assert all(disconnected(s) for s in stalled)
    finally:
        for s in stalled:
            s.close()
    assert d.value("metricsd_ws_clients") == 0
    assert_healthy(d)
    assert log_failures(d) == []


def test_sigterm_with_stalled_clients_exits_promptly(daemon_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    config = write_config(tmp_path, "[http]\nws_slow_grace = 1000.0\n")  # never closed for it
    d: Daemon = daemon_factory("--config", str(config), "--state", str(state))
    wide_updates(d)
    stalled = [stalled_client(d) for _ in range(3)]
    try:
        time.sleep(1.0)  # their buffers fill up
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(15.0) == 0
        elapsed = time.monotonic() - started
        print(f"SIGTERM with 3 stalled WebSocket clients: exit 0 after {elapsed:.1f} s")
        assert elapsed < 10.0
        assert state.exists()
    finally:
        for s in stalled:
            s.close()
