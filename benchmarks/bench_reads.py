"""Reads do not grow with history: views after 10 000 000 events cost what they cost after 10 000.

Usage: ``python benchmarks/bench_reads.py [--events 10000000] [--json]``

One set of trackers (the daemon's) takes request traffic in columnar batches (8 models × 4
endpoints × 20 keys, 10 % errors with varied messages, a few streams); `/metrics/costs`,
`/metrics/errors`, `/metrics/streaming` (and `/metrics/json`, `/metrics/slo`) are timed after
10 000 events and again after the full count. A read is a view computed from the engine's
snapshot (every time: a snapshot otherwise keeps the views it computed); the snapshot itself,
taken once per tick, is timed too, once after each feed. Also reports the process RSS at the end.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table

from metricsd.app import Daemon
from metricsd.config import load_config
from metricsd.protocol import Decoder
from metricsd.snapshot import Snapshot

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4",
    "claude-3-5-sonnet",
    "claude-3-haiku",
    "text-embedding-3-small",
    "o1-mini",
    "gpt-3.5-turbo",
]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]


def frames(rng: np.random.Generator, count: int, n: int) -> list[bytes]:
    out = []
    for i in range(count):
        status = np.where(rng.random(n) < 0.1, rng.choice([429, 500, 503], n), 200)
        messages = [
            f"upstream error {int(x)} for req-{int(x) * 7}" if s >= 400 else ""
            for x, s in zip(rng.integers(0, 10_000, n), status, strict=True)
        ]
        out.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {
                        "model": MODELS[i % 8],
                        "endpoint": ENDPOINTS[i % 4],
                        "api_key": f"sk-bench-{i % 20}",
                        "streaming": bool(i % 2),
                        "ttft_ms": 120.0,
                    },
                    "cols": {
                        "duration_ms": msgpack.ExtType(
                            1, rng.lognormal(5.5, 0.7, n).astype("<f8").tobytes()
                        ),
                        "input_tokens": msgpack.ExtType(
                            2, rng.integers(10, 4000, n).astype("<i8").tobytes()
                        ),
                        "output_tokens": msgpack.ExtType(
                            2, rng.integers(1, 900, n).astype("<i8").tobytes()
                        ),
                        "status": msgpack.ExtType(2, status.astype("<i8").tobytes()),
                        "error_message": messages,
                    },
                }
            )
        )
    return out


def time_views(views: dict[str, Callable[[], Any]], reps: int = 20) -> dict[str, float]:
    out = {}
    for name, view in views.items():
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            view()
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    daemon = Daemon(load_config(environ={}))
    engine = daemon.engine
    rng = np.random.default_rng(0)
    batch = 1000
    pool = frames(rng, 64, batch)
    clock = [0.0]

    def feed(events: int) -> None:
        for i in range(events // batch):
            clock[0] += 0.0005  # 2 000 batches/s of daemon time: 2 M events/s
            decoder = Decoder(1.7e9 + clock[0], engine.limits)
            decoder.add(pool[i % len(pool)])
            engine.apply(decoder.finish(), clock[0], 1.7e9 + clock[0])

    def snapshot() -> tuple[Snapshot, float]:
        """The engine's snapshot now (what every read uses), and how long it took."""
        now, wall = clock[0], 1.7e9 + clock[0]
        t0 = time.perf_counter()
        snap = engine.snapshot(now, wall)
        return snap, time.perf_counter() - t0

    def views(snap: Snapshot) -> dict[str, Callable[[], Any]]:
        # ``compute``: the view computed on every call (``view`` would keep the first result).
        return {
            "/metrics/costs": lambda: snap.compute("costs"),
            "/metrics/errors": lambda: snap.compute("errors"),
            "/metrics/streaming": lambda: snap.compute("streaming", None),
            "/metrics/json": lambda: snap.compute("json"),
            "/metrics/slo": lambda: snap.compute("slo"),
        }

    feed(10_000)
    snap, small_tick = snapshot()
    small = time_views(views(snap))
    small["engine.snapshot (the tick)"] = small_tick
    started = time.perf_counter()
    feed(args.events - 10_000)
    fed_seconds = time.perf_counter() - started
    snap, large_tick = snapshot()
    large = time_views(views(snap))
    large["engine.snapshot (the tick)"] = large_tick
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rows = [
        (
            name,
            f"{small[name] * 1e3:8.3f} ms {large[name] * 1e3:8.3f} ms "
            f"ratio {large[name] / small[name]:5.2f}",
        )
        for name in small
    ]
    rows.append(
        ("events applied after the first read", f"{args.events - 10_000:,} in {fed_seconds:.1f} s")
    )
    rows.append(("peak RSS", f"{rss / 2**20:.0f} MiB"))
    print_table(
        f"reads after 10 000 vs {args.events:,} events (views: best of 20)",
        rows,
        {
            "small_seconds": small,
            "large_seconds": large,
            "events": args.events,
            "ratios": {k: large[k] / small[k] for k in small},
            "peak_rss_bytes": rss,
        },
        args.json,
    )
    daemon.context.destroy(linger=0)  # closes the ingest socket it made, so this returns


if __name__ == "__main__":
    main()
