"""Sustained load with faults, and exact delivery accounting across a restart (SPEC §1.5, §6, §7).

1. Measure the daemon's ceiling: a blocking sender as fast as it can for a few seconds; the
   rate of events the daemon applies while saturated.
2. Run a paced sender at a fraction of it (80 %) for ``duration`` seconds, with non-blocking
   sends that count their own drops, while:
   - SIGHUP reloads a rewritten config file every ``reload_every`` seconds;
   - WebSocket clients join and drop (clean closes and abrupt disconnects);
   - a slow client subscribes at 0.1 s and never reads (the daemon must close it with 1008);
   - SIGTERM arrives at a random moment; the daemon must exit 0, and is started again on the
     same ingest endpoint and ``--state`` file while the sender keeps going.
3. Then: events offered = events applied + events the sender counted as dropped, to the event.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from tests.conftest import Daemon

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "load"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(generation: int) -> str:
    """The config file; each generation changes what SIGHUP reloads (SLO, budget, a price)."""
    objective = (0.999, 0.995, 0.99)[generation % 3]
    return f"""
[http]
ws_slow_grace = 1.0

[state]
interval = 2.0

[[slo]]
name = "availability"
objective = {objective}

[cost]
[[cost.budgets]]
key = "*"
limit_usd = {100 + generation}
period = "daily"

[cost.prices.models."load-model"]
input = {1.0 + generation / 100}
output = 2.0
"""


def sender(
    endpoint: str, rate: float, duration: float, per_frame: int = 100, source: str = SOURCE
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.load_sender",
            "--endpoint",
            endpoint,
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--per-frame",
            str(per_frame),
            "--source",
            source,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def sender_result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


def scrape(d: Daemon) -> dict[str, float]:
    """(requests applied, drops reported by the sender), from /metrics."""
    samples = d.samples()
    return {
        "applied": samples.get(("metricsd_events_received_total", (("type", "request"),)), 0.0),
        "reported_dropped": samples.get(
            ("metricsd_client_dropped_events_total", (("source", SOURCE),)), 0.0
        ),
        "invalid": sum(v for (n, _), v in samples.items() if n == "metricsd_events_invalid_total"),
    }


def measure_ceiling(d: Daemon, endpoint: str, seconds: float = 4.0) -> float:
    """Events/s the daemon applies while a blocking sender saturates it."""
    proc = sender(endpoint, 0, seconds + 1.0, source="ceiling")
    time.sleep(1.0)  # warm up
    t0, a0 = time.monotonic(), scrape(d)["applied"]
    time.sleep(seconds - 1.0)
    t1, a1 = time.monotonic(), scrape(d)["applied"]
    result = sender_result(proc, 60.0)
    # Let everything queued drain before the measured phase starts.
    deadline = time.monotonic() + 60.0
    while scrape(d)["applied"] < result["sent"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return (a1 - a0) / (t1 - t0)


class WsChurn:
    """WebSocket clients joining and dropping, in a loop, until stopped."""

    def __init__(self, url: Callable[[], str], rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        self.joined = 0
        self.refused = 0  # the daemon was down (restart) or full
        self.messages = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self.url(), open_timeout=2.0, close_timeout=1.0) as ws:
                    first = json.loads(ws.recv(timeout=5.0))
                    assert first["type"] == "historical_data"
                    self.joined += 1
                    ws.send(json.dumps({"type": "subscribe", "filters": {"interval": 0.2}}))
                    for _ in range(self.rng.randrange(1, 6)):
                        json.loads(ws.recv(timeout=5.0))
                        self.messages += 1
                    if self.rng.random() < 0.5:
                        ws.socket.shutdown(socket.SHUT_RDWR)  # drop without a close frame
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                self.refused += 1
                self._stop.wait(0.2)

    def __enter__(self) -> WsChurn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15.0)


def stalled_client(d: Daemon) -> socket.socket:
    """A WebSocket client that subscribes at 0.1 s and then never reads."""
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


@dataclass
class Outcome:
    seed: int
    ceiling: float
    rate: float
    duration: float
    sigterm_at: list[float]
    sender: dict[str, Any]
    applied: float
    reported_dropped: float
    invalid: float
    reloads: int
    ws_joined: int
    ws_refused: int
    slow_closed: int
    exit_codes: list[int] = field(default_factory=list)
    restart_seconds: list[float] = field(default_factory=list)

    def summary(self) -> str:
        s = self.sender
        return (
            f"seed {self.seed}: ceiling {self.ceiling:,.0f} events/s, load {self.rate:,.0f} "
            f"events/s for {self.duration:.0f} s; SIGTERM at {self.sigterm_at} s "
            f"(restart took {[round(r, 1) for r in self.restart_seconds]} s); "
            f"offered {s['offered']:,} = applied {self.applied:,.0f} + dropped "
            f"{s['dropped']:,} (reported {self.reported_dropped:,.0f}); {self.reloads} SIGHUP "
            f"reloads; {self.ws_joined} WebSocket clients joined and dropped "
            f"({self.ws_refused} refused while down); slow clients closed: {self.slow_closed}"
        )


def run(
    start: Callable[..., Daemon],
    tmp_path: Path,
    duration: float,
    restarts: int = 1,
    fraction: float = 0.8,
    reload_every: float = 1.0,
    seed: int | None = None,
) -> Outcome:
    """The whole scenario; ``start(*args)`` starts a daemon (the tests' ``daemon_factory``)."""
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    state = tmp_path / "state.bin"
    config = tmp_path / "load.toml"
    config.write_text(config_text(0))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ("--config", str(config), "--state", str(state), "--ingest", endpoint)
    d = start(*args)
    ceiling = measure_ceiling(d, endpoint)
    before = scrape(d)  # the ceiling phase's events: not part of the accounting below
    rate = fraction * ceiling
    # SIGTERMs at random moments in the middle of the run, at least 3 s apart.
    span = (0.25 * duration, 0.75 * duration)
    sigterm_at = sorted(round(rng.uniform(*span), 2) for _ in range(restarts))
    for i in range(1, len(sigterm_at)):
        sigterm_at[i] = max(sigterm_at[i], sigterm_at[i - 1] + 3.0)
    current = [d]
    exit_codes: list[int] = []
    restart_seconds: list[float] = []
    reloads = 0
    slow_closed = 0
    proc = sender(endpoint, rate, duration)
    started = time.monotonic()
    with WsChurn(
        lambda: current[0].http.replace("http://", "ws://") + "/metrics/stream", rng
    ) as churn:
        slow = stalled_client(current[0])
        next_reload = reload_every
        pending = list(sigterm_at)
        generation = 0
        while (elapsed := time.monotonic() - started) < duration:
            if pending and elapsed >= pending[0]:
                pending.pop(0)
                slow_closed += current[0].log_path.read_text().count("too slow to keep up")
                slow.close()
                old = current[0]
                old.proc.send_signal(signal.SIGTERM)
                exit_codes.append(old.proc.wait(30.0))
                reloads += old.log_path.read_text().count("SIGHUP: reloaded")
                t0 = time.monotonic()
                current[0] = start(*args)
                restart_seconds.append(time.monotonic() - t0)
                slow = stalled_client(current[0])
            elif elapsed >= next_reload:
                next_reload += reload_every
                generation += 1
                config.write_text(config_text(generation))
                current[0].proc.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        result = sender_result(proc, 120.0)
        # Give the slow client time to be noticed on the last daemon too.
        time.sleep(2.0)
        slow.close()
    d = current[0]
    want = before["applied"] + result["sent"]
    deadline = time.monotonic() + 60.0
    now = scrape(d)
    while (
        now["applied"] < want or now["reported_dropped"] < result["dropped"]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
        now = scrape(d)
    time.sleep(0.5)  # anything late would show up now
    now = scrape(d)
    log = d.log_path.read_text()
    return Outcome(
        seed=seed,
        ceiling=ceiling,
        rate=rate,
        duration=duration,
        sigterm_at=sigterm_at,
        sender=result,
        applied=now["applied"] - before["applied"],
        reported_dropped=now["reported_dropped"],
        invalid=now["invalid"],
        reloads=reloads + log.count("SIGHUP: reloaded"),
        ws_joined=churn.joined,
        ws_refused=churn.refused,
        slow_closed=slow_closed + log.count("too slow to keep up"),
        exit_codes=exit_codes,
        restart_seconds=restart_seconds,
    )
