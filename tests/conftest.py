"""Shared fixtures: a real ``metricsd serve`` process on free ports, and wire helpers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

READY_TIMEOUT = 20.0


@dataclass
class Daemon:
    """A running daemon process and how to talk to it."""

    proc: subprocess.Popen[bytes]
    http: str
    ingest: list[str]
    token: str = ""
    log_path: Path = field(default_factory=Path)
    _ctx: zmq.Context[Any] = field(default_factory=zmq.Context)
    _push: zmq.Socket[Any] | None = None

    # --- ZeroMQ ---------------------------------------------------------------------------

    def push(self) -> zmq.Socket[Any]:
        if self._push is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 5000)
            sock.connect(self.ingest[0])
            self._push = sock
        return self._push

    def send(self, obj: Any) -> None:
        self.push().send(msgpack.packb(obj))

    def send_raw(self, data: bytes) -> None:
        self.push().send(data)

    # --- HTTP -----------------------------------------------------------------------------

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, dict[str, str], bytes]:
        hdrs = dict(headers or {})
        if self.token and "Authorization" not in hdrs:
            hdrs["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.http + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get_json(self, path: str) -> Any:
        status, _, body = self.request(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, _, body = self.request("/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for(self, name: str, expected: float, timeout: float = 10.0, **labels: str) -> float:
        """Poll /metrics until the sample reaches ``expected`` (ticks are 0.1 s in tests)."""
        deadline = time.monotonic() + timeout
        value = -1.0
        while time.monotonic() < deadline:
            value = self.value(name, **labels)
            if value >= expected:
                return value
            time.sleep(0.05)
        return value

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        alive = self.proc.poll() is None
        if self._push is not None:
            # Everything sent reaches the daemon before the signal: terminating the context
            # waits (up to the linger) until the queued frames are delivered.
            self._push.close(linger=5000 if alive else 0)
            self._push = None
        self._ctx.term()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_daemon(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    wrapper: Sequence[str] = (),
) -> Daemon:
    """``preexec_fn`` runs in the child before the daemon (e.g. a resource limit);
    ``wrapper`` is a command the daemon runs under (e.g. ``setpriv`` to drop capabilities)."""
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    log_path = tmp_path / f"daemon-{time.monotonic_ns()}.log"
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        "metricsd",
        "serve",
        "--http",
        "127.0.0.1:0",
        "--ingest",
        "tcp://127.0.0.1:0",
        "--tick",
        "0.1",
        "--ready-file",
        str(ready),
        *args,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")}
    full_env.update(env or {})
    log = log_path.open("wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, preexec_fn=preexec_fn
    )
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            token = next((args[i + 1] for i, a in enumerate(args) if a == "--token"), "")
            return Daemon(proc, info["http"], info["ingest"], token=token, log_path=log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"daemon did not become ready:\n{log_path.read_text()}")


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = start_daemon(tmp_path)
    yield d
    d.stop()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Daemon] = []

    def factory(*args: str, **kw: Any) -> Daemon:
        d = start_daemon(tmp_path, *args, **kw)
        started.append(d)
        return d

    yield factory
    for d in started:
        d.stop()


def stalled_client(d: Daemon) -> socket.socket:
    """A raw WebSocket client that subscribes at 0.1 s and then never reads (a tiny receive
    buffer, so it falls behind at once): the daemon must drop its updates, then close it."""
    url = urlsplit(d.http)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.settimeout(5.0)
    sock.connect((url.hostname, url.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /metrics/stream HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    payload = json.dumps({"type": "subscribe", "filters": {"interval": 0.1}}).encode()
    mask = os.urandom(4)
    sock.sendall(
        bytes([0x81, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    return sock
