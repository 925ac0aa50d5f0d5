"""Helpers shared by the reliability tests: process memory, counters, logs, bounded waits."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.conftest import Daemon

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


def log_failures(d: Daemon) -> list[str]:
    text = d.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if LOG_FAILURES.search(line)]


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
