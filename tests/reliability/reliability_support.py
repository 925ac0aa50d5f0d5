"""Helpers shared by the reliability tests: process memory, counters, logs, bounded waits."""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tests.conftest import Daemon
from tests.conftest import stalled_client as stalled_client  # re-exported for the scenarios

T = TypeVar("T")

#: What must never appear in a daemon's log during an attack: an unhandled exception anywhere
#: (ingest, tick, HTTP handlers, aiohttp itself).
LOG_FAILURES = re.compile(
    r"Traceback|error applying a frame|error building the snapshot|unhandled error"
    r"|Error handling request|Task exception was never retrieved"
)
#: A Python exception's name or traceback text in a response body.
EXCEPTION_TEXT = re.compile(
    r"Traceback|File \"|\b[A-Z][A-Za-z]*(?:Error|Exception)\b|\bKeyboardInterrupt\b"
)


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"{field} not in /proc/{pid}/status"
    return int(match.group(1)) * 1024


def rss(d: Daemon) -> int:
    return proc_status(d.proc.pid, "VmRSS")


def peak_rss(d: Daemon) -> int:
    return proc_status(d.proc.pid, "VmHWM")


def by_label(d: Daemon, name: str, label: str) -> dict[str, float]:
    """Every sample of ``name`` keyed by one label's value."""
    out: dict[str, float] = {}
    for (sample, labels), value in d.samples().items():
        if sample == name:
            out[dict(labels).get(label, "")] = value
    return out


def total(d: Daemon, name: str) -> float:
    return sum(v for (sample, _), v in d.samples().items() if sample == name)


def wait_until(
    probe: Callable[[], T], done: Callable[[T], bool], timeout: float, step: float = 0.1
) -> T:
    """Poll ``probe`` until ``done(value)`` or the timeout; returns the last value."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(step)
        value = probe()
    return value


_RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def at_least(want: float) -> Callable[[float], bool]:
    """For ``wait_until``: done once the value reaches ``want``."""
    return lambda value: value >= want


def log_failures(d: Daemon, allow_http_parse_errors: bool = False) -> list[str]:
    """The log records (first line each) that show an unhandled exception.

    ``allow_http_parse_errors``: aiohttp logs a malformed HTTP request (a bad version line, a
    header over 8 KiB) at ERROR with a traceback, before metricsd sees it; a test that sends
    such requests on purpose passes True to leave exactly those records out.
    """
    records: list[list[str]] = []
    for line in d.log_path.read_text(errors="replace").splitlines():
        if _RECORD_START.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    failures = []
    for record in records:
        text = "\n".join(record)
        if not LOG_FAILURES.search(text):
            continue
        if allow_http_parse_errors and "aiohttp.http_exceptions." in text:
            continue
        failures.append(record[0])
    return failures


def write_config(tmp_path: Path, text: str, name: str = "metricsd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def assert_healthy(d: Daemon) -> None:
    status, _, body = d.request("/healthz", timeout=5.0)
    assert status == 200 and b'"ok"' in body, (status, body)


def body_has_exception_text(body: bytes) -> Any:
    return EXCEPTION_TEXT.search(body.decode("utf-8", "replace"))


class LatencyProbe:
    """A thread that times ``GET /healthz`` over and over until stopped.

    ``target`` is a daemon, or a function returning the current one (it may change across a
    restart: requests that fail while none listens are counted in ``failures``, not timed).
    """

    def __init__(self, target: Daemon | Callable[[], Daemon]) -> None:
        self.target = target
        self.worst = 0.0
        self.count = 0
        self.failures = 0
        #: While set (a planned restart), nothing is timed: requests then wait for a daemon
        #: that is shutting down, which is not the latency under load being measured.
        self.paused = threading.Event()
        self._epoch = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.paused.is_set():
                self._stop.wait(0.05)
                continue
            d = self.target() if callable(self.target) else self.target
            epoch = self._epoch
            started = time.monotonic()
            try:
                status, _, _ = d.request("/healthz", timeout=60.0)
            except OSError:
                status = 0
            if self.paused.is_set() or epoch != self._epoch:
                continue
            if status == 200:
                self.worst = max(self.worst, time.monotonic() - started)
                self.count += 1
            else:
                self.failures += 1
            self._stop.wait(0.05)

    def pause(self) -> None:
        self._epoch += 1
        self.paused.set()

    def resume(self) -> None:
        self.paused.clear()

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=70.0)


def wide_updates(d: Daemon) -> None:
    """1000 endpoints: stream updates of ~100 KB, so a client that never reads falls
    behind within seconds."""
    base = d.value("metricsd_events_received_total", type="request")
    d.send(
        {
            "type": "request",
            "const": {"model": "gpt-4o", "source": "setup"},
            "cols": {
                "endpoint": [f"/v1/endpoint/{i:04d}/with/a/long/path" for i in range(1000)],
                "duration_ms": [5.0 + i for i in range(1000)],
            },
        }
    )
    deadline = time.monotonic() + 10.0
    while (
        d.value("metricsd_events_received_total", type="request") < base + 1000
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)


# --- raw wire helpers ------------------------------------------------------------------------


def http_address(d: Daemon) -> tuple[str, int]:
    url = urlsplit(d.http)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def ingest_address(d: Daemon) -> tuple[str, int]:
    host, _, port = d.ingest[0].removeprefix("tcp://").rpartition(":")
    return host, int(port)


def raw_exchange(d: Daemon, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a new HTTP connection; the response, once it is complete (its head
    and ``Content-Length`` bytes of body; a 101 has none), or what came until the daemon
    closed the connection or the timeout."""
    with socket.create_connection(http_address(d), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                reply += chunk
                if _complete(reply):
                    break
    return reply


def _complete(reply: bytes) -> bool:
    head, found, body = reply.partition(b"\r\n\r\n")
    if not found:
        return False
    if status_of(head) == 101:
        return True
    match = re.search(rb"^content-length:\s*(\d+)\s*$", head, re.IGNORECASE | re.MULTILINE)
    return match is not None and len(body) >= int(match.group(1))


def status_of(reply: bytes) -> int:
    """The status code of a raw HTTP reply (0 when there is none)."""
    line = reply.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) >= 2 and line[1].isdigit() else 0


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Read (and drop) what the other side sends until it closes the connection: True if it
    did within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def exposition(d: Daemon) -> str:
    status, _, body = d.request("/metrics")
    assert status == 200, status
    return body.decode()


def sample_lines(text: str, name: str) -> list[str]:
    """The sample lines of one metric name (``name{…} value`` or ``name value``)."""
    return [line for line in text.splitlines() if line.split("{", 1)[0].split(" ", 1)[0] == name]


# ZMTP 3.0 (rfc.zeromq.org/spec/23), just enough to be a PUSH peer by hand: the greeting, the
# NULL mechanism's READY command, and a message frame's header.


def zmtp_greeting() -> bytes:
    return b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32


def zmtp_ready(socket_type: bytes = b"PUSH") -> bytes:
    name = b"Socket-Type"
    body = b"\x05READY" + bytes([len(name)]) + name + struct.pack(">I", len(socket_type))
    body += socket_type
    return bytes([0x04, len(body)]) + body


def zmtp_frame_header(size: int) -> bytes:
    """A final (not "more") message frame of ``size`` bytes: short or long form."""
    if size < 256:
        return bytes([0x00, size])
    return b"\x02" + struct.pack(">Q", size)


def zmtp_peer(d: Daemon, timeout: float = 5.0) -> socket.socket:
    """A raw TCP connection to the ingest endpoint that has sent its greeting and READY and
    read the daemon's greeting."""
    sock = socket.create_connection(ingest_address(d), timeout=timeout)
    sock.sendall(zmtp_greeting())
    greeting = b""
    while len(greeting) < 64:
        chunk = sock.recv(64 - len(greeting))
        assert chunk, "the daemon closed the connection during the greeting"
        greeting += chunk
    assert greeting[0] == 0xFF and greeting[9] == 0x7F and greeting[10] == 3, greeting
    sock.sendall(zmtp_ready())
    return sock
