"""Cardinality flood: distinct label values by the million against a running daemon (SPEC §3.3).

P distinct values in each of five dimensions (models, endpoints, API keys, error messages,
stream ids), sent as columnar batches. With small caps from a config file
(``limits.max_series = 1000``, ``limits.max_patterns = 100``, ``limits.max_active_streams =
1000``, ``cost.max_keys = 1000``) every table must end exactly at its cap, every event beyond
it must be counted where the overflow is counted, and resident memory must stop growing once
the caps are reached (the peak is reported).

``python -m tests.reliability.flood_scenario [--per-dimension P] [--batch N]`` runs it against
a daemon of its own and prints the figures (``scripts/cardinality-flood``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import Daemon
from tests.reliability.reliability_support import (
    LatencyProbe,
    at_least,
    log_failures,
    mib,
    peak_rss,
    rss,
    wait_until,
    write_config,
)

MiB = 1 << 20
MAX_SERIES = 1000
MAX_PATTERNS = 100
MAX_STREAMS = 1000
MAX_KEYS = 1000
#: After the first fifth of the flood every cap is reached: from there on, resident memory may
#: only grow by this much (allocator noise, ZeroMQ buffers), however many values arrive.
RSS_GROWTH_LIMIT = 48 * MiB
PEAK_RSS_LIMIT = 400 * MiB

CONFIG = f"""
[limits]
max_series = {MAX_SERIES}
max_patterns = {MAX_PATTERNS}
max_active_streams = {MAX_STREAMS}

[cost]
max_keys = {MAX_KEYS}
"""


def word(i: int) -> str:
    """A distinct lowercase word per integer: error messages must differ after the
    normalisation that turns digit runs into <NUM>."""
    letters = []
    while True:
        i, r = divmod(i, 26)
        letters.append(chr(97 + r))
        if i == 0:
            return "".join(reversed(letters))


def batches(dimension: str, start: int, size: int) -> dict[str, Any]:
    """One columnar batch of ``size`` events, each with a new value in ``dimension``."""
    ids = range(start, start + size)
    durations = [float(1 + i % 50) for i in ids]
    if dimension == "model":
        return {
            "type": "request",
            "const": {"endpoint": "/v1/chat/completions"},
            "cols": {"model": [f"model-{i}" for i in ids], "duration_ms": durations},
        }
    if dimension == "endpoint":
        return {
            "type": "request",
            "const": {"model": "gpt-4o"},
            "cols": {"endpoint": [f"/v1/tenant/{i}" for i in ids], "duration_ms": durations},
        }
    if dimension == "api_key":
        return {
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": "/v1/chat/completions"},
            "cols": {
                "api_key": [f"sk-flood-{i}" for i in ids],
                "duration_ms": durations,
                "input_tokens": [100] * size,
                "output_tokens": [10] * size,
            },
        }
    if dimension == "error_message":
        return {
            "type": "error",
            "const": {"error_type": "upstream", "endpoint": "/v1/chat/completions"},
            "cols": {"error_message": [f"upstream said {word(i)}" for i in ids]},
        }
    assert dimension == "stream_id"
    return {
        "type": "stream.start",
        "const": {"model": "gpt-4o", "endpoint": "/v1/chat/completions"},
        "cols": {"stream_id": [f"stream-{i}" for i in ids]},
    }


DIMENSIONS = ("model", "endpoint", "api_key", "error_message", "stream_id")


def received(d: Daemon) -> float:
    status, _, body = d.request("/metrics", timeout=60.0)
    assert status == 200
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("metricsd_events_received_total{")
    )


@dataclass
class Flood:
    sent: int
    seconds: float
    rss_after_caps: int
    rss_after_all: int
    peak_rss: int
    worst_healthz: float


def flood(d: Daemon, per_dimension: int, batch: int) -> Flood:
    """``per_dimension`` new values in each dimension, one batch per dimension per round;
    each round is waited for, so the memory measured is the daemon's tables, not frames
    queued in ZeroMQ."""
    rounds = per_dimension // batch
    sent = 0
    rss_after_caps = 0
    started = time.monotonic()
    with LatencyProbe(d) as probe:
        for r in range(rounds):
            for dimension in DIMENSIONS:
                d.send(batches(dimension, r * batch, batch))
                sent += batch
                if r == 0 and dimension == "model":
                    # The first batch alone fills every per-series table to its cap (one new
                    # model per event), so what overflows after it is known exactly.
                    wait_until(lambda: received(d), at_least(sent), 120.0)
            got = wait_until(lambda: received(d), at_least(sent), 120.0, step=0.05)
            assert got == sent, (got, sent)
            if r == max(0, rounds // 10 - 1):
                rss_after_caps = rss(d)  # every cap is reached after 10 % (cap ≤ 10 % of values)
    return Flood(
        sent=sent,
        seconds=time.monotonic() - started,
        rss_after_caps=rss_after_caps,
        rss_after_all=rss(d),
        peak_rss=peak_rss(d),
        worst_healthz=probe.worst,
    )


def check_caps(d: Daemon, per_dimension: int, batch: int) -> dict[str, float]:
    """Every table at its cap, every overflow counted: exact figures, derived here.

    P values per dimension. The first batch (P models) fills each per-series table with one
    event per series; every later event of that tracker lands in ``__overflow__``.
    - requests: P model + P endpoint + P key + P error events, and the P - 1000 streams
      evicted as ``abandoned`` (each one request outcome); all but the first 1000 overflow.
    - cost: the same minus the error events, all but 1000 overflow; and of the P keys, 999 get
      an entry (the first batch's events without a key took one), P - 999 lookups overflow.
    - errors: 500 / {upstream, stream_abandoned} / one endpoint / {unknown, gpt-4o}: 6 series.
    - patterns: P distinct messages, plus the ``stream_abandoned`` pattern again in every round
      that evicts streams (the messages of the round before pushed it out): the table keeps
      100 and evicts the rest.
    """
    s = d.samples()

    def value(name: str, **labels: str) -> float:
        return s.get((name, tuple(sorted(labels.items()))), 0.0)

    p = per_dimension
    rounds = p // batch
    abandon_rounds = rounds if batch > MAX_STREAMS else rounds - 1
    figures = {
        "series_requests": value("metricsd_series", tracker="requests"),
        "series_cost": value("metricsd_series", tracker="cost"),
        "series_errors": value("metricsd_series", tracker="errors"),
        "overflow_requests": value("metricsd_series_overflow_total", tracker="requests"),
        "overflow_cost": value("metricsd_series_overflow_total", tracker="cost"),
        "overflow_errors": value("metricsd_series_overflow_total", tracker="errors"),
        "patterns": value("llm_error_patterns"),
        "patterns_evicted": value("metricsd_error_patterns_evicted_total"),
        "streams_active": sum(v for (n, _), v in s.items() if n == "llm_streams_active"),
        "streams_evicted": value("metricsd_streams_evicted_total"),
        "requests_total": sum(v for (n, _), v in s.items() if n == "llm_requests_total"),
    }
    assert figures == {
        "series_requests": MAX_SERIES + 1,  # the cap, plus the __overflow__ series
        "series_cost": MAX_SERIES + 1,
        "series_errors": 6,
        "overflow_requests": 5 * p - MAX_STREAMS - MAX_SERIES,
        "overflow_cost": (4 * p - MAX_STREAMS - MAX_SERIES) + (p - (MAX_KEYS - 1)),
        "overflow_errors": 0,
        "patterns": MAX_PATTERNS,
        "patterns_evicted": p + abandon_rounds - MAX_PATTERNS,
        "streams_active": MAX_STREAMS,
        "streams_evicted": p - MAX_STREAMS,
        "requests_total": 5 * p - MAX_STREAMS,  # every outcome counted, overflow included
    }
    over = (("endpoint", "__overflow__"), ("model", "__overflow__"))
    folded = sum(
        v for (n, labels), v in s.items() if n == "llm_requests_total" and set(over) <= set(labels)
    )
    assert folded == figures["overflow_requests"]
    return figures


def report(f: Flood, figures: dict[str, float]) -> None:
    print(
        f"cardinality flood: {f.sent:,} distinct values in {f.seconds:.1f} s "
        f"({f.sent / f.seconds:,.0f}/s); RSS after the caps were reached {mib(f.rss_after_caps)}, "
        f"at the end {mib(f.rss_after_all)}, peak {mib(f.peak_rss)}; worst /healthz "
        f"{f.worst_healthz * 1000:.0f} ms; {figures}"
    )


def main() -> None:
    import argparse
    import shutil
    import tempfile

    from tests.conftest import start_daemon

    parser = argparse.ArgumentParser(description="Cardinality flood against a fresh daemon.")
    parser.add_argument("--per-dimension", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=2000)
    args = parser.parse_args()
    if args.per_dimension % args.batch or args.batch < MAX_SERIES:
        parser.error(f"--per-dimension must be a multiple of --batch, and --batch ≥ {MAX_SERIES}")
    tmp = Path(tempfile.mkdtemp(prefix="metricsd-flood-"))
    d = start_daemon(tmp, "--config", str(write_config(tmp, CONFIG)))
    try:
        f = flood(d, args.per_dimension, args.batch)
        figures = check_caps(d, args.per_dimension, args.batch)
        report(f, figures)
        assert not log_failures(d), log_failures(d)
    finally:
        d.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
