"""Helpers shared by the reliability tests: process memory, counters, logs, bounded waits."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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
