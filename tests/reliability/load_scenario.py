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

import json
import random
import re
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

from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

from tests.conftest import Daemon
from tests.reliability.reliability_support import LatencyProbe, stalled_client, wide_updates

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "load"
#: The SLO objective each config generation sets (SIGHUP must make the last one current).
OBJECTIVES = (0.999, 0.995, 0.99)
#: What the daemon logs about the frames it drained at SIGTERM.
DRAINED = re.compile(r"applied (\d+) frames left in the socket at shutdown")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(generation: int) -> str:
    """The config file; each generation changes what SIGHUP reloads (SLO, budget, a price)."""
    objective = OBJECTIVES[generation % len(OBJECTIVES)]
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
input = {1 + generation % 100 / 100:.2f}
output = 2.0
"""


PER_FRAME = 500


def sender(
    endpoint: str,
    rate: float,
    duration: float,
    per_frame: int = PER_FRAME,
    source: str = SOURCE,
    frames: int = 0,
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
            "--frames",
            str(frames),
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


def measure_ceiling(d: Daemon, endpoint: str, seconds: float = 2.0) -> float:
    """Events/s the daemon applies from a burst sent as fast as a blocking sender can.

    A first burst of 1 000 frames estimates the rate; the second is sized to take about
    ``seconds`` at that rate, and the measure is its events ÷ the time from its first send to
    its last event applied (so no backlog is left behind for the next phase).
    """
    rate = 0.0
    for frames in (1000, 0):
        if not frames:
            frames = max(1000, int(rate * seconds / PER_FRAME))
        base = scrape(d)["applied"]
        started = time.monotonic()
        proc = sender(endpoint, 0, 120.0, source="ceiling", frames=frames)
        want = base + frames * PER_FRAME
        deadline = started + 120.0
        while scrape(d)["applied"] < want and time.monotonic() < deadline:
            time.sleep(0.02)
        rate = frames * PER_FRAME / (time.monotonic() - started)
        result = sender_result(proc, 60.0)
        assert result["dropped"] == 0, result
    return rate


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
                    for _ in range(self.rng.randrange(1, 3)):
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
    worst_healthz: float = 0.0
    slo_target: float = 0.0
    slo_target_written: float = 0.0
    drained: list[int] = field(default_factory=list)
    stop_seconds: list[float] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        """Events/s the sender offered while it ran (the restarts' gaps left out)."""
        return float(self.sender["offered"]) / max(float(self.sender["seconds"]), 1e-9)

    def summary(self) -> str:
        s = self.sender
        return (
            f"seed {self.seed}: ceiling {self.ceiling:,.0f} events/s, load {self.rate:,.0f} "
            f"events/s (achieved {self.achieved:,.0f}, senders ran {s['sender_seconds']} s) "
            f"for {self.duration:.0f} s; "
            f"SIGTERM at {self.sigterm_at} s "
            f"(exit took {[round(r, 1) for r in self.stop_seconds]} s, start "
            f"{[round(r, 1) for r in self.restart_seconds]} s, frames drained "
            f"at each stop {self.drained}); "
            f"offered {s['offered']:,} = applied {self.applied:,.0f} + dropped "
            f"{s['dropped']:,} (reported {self.reported_dropped:,.0f}); {self.reloads} SIGHUP "
            f"reloads; {self.ws_joined} WebSocket clients joined and dropped "
            f"({self.ws_refused} refused while down); slow clients closed: {self.slow_closed}; "
            f"worst /healthz {self.worst_healthz * 1000:.0f} ms"
        )


def run(
    start: Callable[..., Daemon],
    tmp_path: Path,
    duration: float,
    restarts: int = 1,
    fraction: float = 0.8,
    reload_every: float = 1.0,
    seed: int | None = None,
    sender_through_stop: bool = False,
) -> Outcome:
    """The whole scenario; ``start(*args)`` starts a daemon (the tests' ``daemon_factory``).

    ``sender_through_stop``: the sender keeps sending while the daemon stops and restarts
    (its non-blocking sends queue, then drop and count, while no daemon listens). Otherwise
    the sender stops at the moment of each SIGTERM (an application stopped with its daemon)
    and a new one starts with the new daemon.
    """
    seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
    rng = random.Random(seed)
    state = tmp_path / "state.bin"
    config = tmp_path / "load.toml"
    config.write_text(config_text(0))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    args = ("--config", str(config), "--state", str(state), "--ingest", endpoint)
    d = start(*args)
    wide_updates(d)
    # SIGTERMs at random moments in the middle of the run, at least 3 s apart.
    span = (0.25 * duration, 0.75 * duration)
    sigterm_at = sorted(round(rng.uniform(*span), 2) for _ in range(restarts))
    for i in range(1, len(sigterm_at)):
        sigterm_at[i] = max(sigterm_at[i], sigterm_at[i - 1] + 3.0)
    current = [d]
    exit_codes: list[int] = []
    restart_seconds: list[float] = []
    stop_seconds: list[float] = []
    drained: list[int] = []
    results: list[dict[str, Any]] = []
    reloads = 0
    slow_closed = 0
    with (
        WsChurn(
            lambda: current[0].http.replace("http://", "ws://") + "/metrics/stream", rng
        ) as churn,
        LatencyProbe(lambda: current[0]) as probe,
    ):
        # The ceiling is measured with the stream's clients connected (they cost the daemon
        # CPU on every tick), so 80 % of it is a rate the daemon can sustain in this run.
        probe.pause()
        slow = stalled_client(current[0])
        ceiling = measure_ceiling(d, endpoint)
        slow.close()
        probe.resume()
        before = scrape(d)  # the ceiling phase's events: not part of the accounting below
        rate = fraction * ceiling
        started = time.monotonic()
        proc = sender(endpoint, rate, duration)
        slow = stalled_client(current[0])
        next_reload = reload_every
        pending = list(sigterm_at)
        generation = 0
        while (elapsed := time.monotonic() - started) < duration:
            if pending and elapsed >= pending[0]:
                pending.pop(0)
                probe.pause()
                if not sender_through_stop:
                    proc.send_signal(signal.SIGTERM)
                old = current[0]
                t0 = time.monotonic()
                old.proc.send_signal(signal.SIGTERM)
                exit_codes.append(old.proc.wait(30.0))
                stop_seconds.append(time.monotonic() - t0)
                slow.close()
                log = old.log_path.read_text()
                reloads += log.count("SIGHUP: reloaded")
                drained += [int(n) for n in DRAINED.findall(log)]
                slow_closed += log.count("too slow to keep up")
                t0 = time.monotonic()
                current[0] = start(*args)
                restart_seconds.append(time.monotonic() - t0)
                slow = stalled_client(current[0])
                probe.resume()
                if not sender_through_stop:
                    results.append(sender_result(proc, 60.0))
                    remaining = duration - (time.monotonic() - started)
                    proc = sender(endpoint, rate, max(remaining, 0.1))
            elif elapsed >= next_reload:
                next_reload += reload_every
                generation += 1
                config.write_text(config_text(generation))
                current[0].proc.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        results.append(sender_result(proc, 120.0))
        slow.close()
    d = current[0]
    result = {
        "sent": sum(r["sent"] for r in results),
        "dropped": sum(r["dropped"] for r in results),
        "offered": sum(r["offered"] for r in results),
        "reported": all(r["reported"] for r in results),
        "senders": len(results),
        "seconds": sum(r["seconds"] for r in results),
        "sender_seconds": [r["seconds"] for r in results],
    }
    want = before["applied"] + result["sent"]
    now = settle(d, want, result["dropped"])
    slo_target = float(d.get_json("/metrics/slo")["slo_target"])
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
        worst_healthz=probe.worst,
        slo_target=slo_target,
        slo_target_written=OBJECTIVES[generation % len(OBJECTIVES)],
        drained=drained,
        stop_seconds=stop_seconds,
    )


def settle(d: Daemon, applied: float, dropped: float, timeout: float = 30.0) -> dict[str, float]:
    """Wait until the daemon shows the expected counts, or they stop moving for 2 s."""
    deadline = time.monotonic() + timeout
    now = scrape(d)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        if now["applied"] >= applied and now["reported_dropped"] >= dropped:
            break
        time.sleep(0.2)
        fresh = scrape(d)
        if fresh != now:
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= 2.0:
            break
        now = fresh
    time.sleep(0.5)  # anything late (or counted twice) would show up now
    return scrape(d)


def main() -> None:
    import argparse
    import shutil
    import tempfile

    from tests.conftest import start_daemon

    parser = argparse.ArgumentParser(description="Load with faults against fresh daemons.")
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of load")
    parser.add_argument("--restarts", type=int, default=3, help="SIGTERMs at random moments")
    parser.add_argument("--fraction", type=float, default=0.8, help="of the measured ceiling")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--sender-through-stop",
        action="store_true",
        help="the sender keeps sending while the daemon stops and restarts",
    )
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="metricsd-load-"))
    started: list[Daemon] = []

    def start(*daemon_args: str) -> Daemon:
        d = start_daemon(tmp, *daemon_args)
        started.append(d)
        return d

    try:
        outcome = run(
            start,
            tmp,
            args.duration,
            restarts=args.restarts,
            fraction=args.fraction,
            seed=args.seed,
            sender_through_stop=args.sender_through_stop,
        )
        print(outcome.summary())
        lost = outcome.sender["sent"] - outcome.applied
        print(f"lost without being counted: {lost:,.0f} events")
        sys.exit(0 if lost == 0 and outcome.reported_dropped == outcome.sender["dropped"] else 1)
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
