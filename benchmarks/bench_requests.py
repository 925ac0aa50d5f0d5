"""Request events through ``engine.apply`` against decoding the same frames only.

Usage: ``python benchmarks/bench_requests.py [--frames N] [--batch B] [--reps R] [--json]``

Frames are columnar batches of B ``request`` events (one model and endpoint per batch, 8 models
× 4 endpoints in rotation), as the Python client sends them. The baseline decodes the same frames
with ``protocol.decode`` and does nothing else; the candidate decodes and applies them to the
request tracker. Also reports the memory held by one busy latency series after an hour.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, print_table

from metricsd.config import load_config
from metricsd.engine import Engine
from metricsd.hist import Layout
from metricsd.protocol import decode
from metricsd.trackers.requests import FIELDS, RequestTracker
from metricsd.window import CounterLog, Geometry, HistLog, hist_entries

MODELS = [f"model-{i}" for i in range(8)]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"]


def make_frames(count: int, batch: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {
                        "model": MODELS[i % 8],
                        "endpoint": ENDPOINTS[i % 4],
                        "source": "bench",
                    },
                    "cols": {
                        "ts": (1.7e9 + rng.random(batch)).tolist(),
                        "duration_ms": np.round(rng.lognormal(5, 1, batch), 3).tolist(),
                        "input_tokens": rng.integers(10, 2000, batch).tolist(),
                        "output_tokens": rng.integers(1, 800, batch).tolist(),
                        "status": np.where(rng.random(batch) < 0.02, 500, 200).tolist(),
                    },
                }
            )
        )
    return frames


def held_bytes(log: CounterLog | HistLog, now: float) -> int:
    """Bytes of the arrays a window log holds at ``now``: every slot and group of its rings,
    the one being written included."""
    frozen = log.freeze(now)
    total = 0
    for s in (*frozen.short, *frozen.long):
        for f in fields(s):
            value: Any = getattr(s, f.name)
            if isinstance(value, np.ndarray):
                total += int(value.nbytes)
    return total


def memory_per_series() -> int:
    """Bytes of window arrays held by one series after an hour at 50 requests/s."""
    geometry = Geometry()
    layout = Layout()
    one = np.zeros(1, dtype=np.intp)  # the series' id
    ring = HistLog(geometry, layout)
    counters = CounterLog(geometry, len(FIELDS))
    rng = np.random.default_rng(1)
    for t in range(3600):
        ring.record(float(t), hist_entries(layout, rng.lognormal(5.0, 1.0, 50), None, one))
        counters.add(float(t), one, np.ones(len(FIELDS)))
    ring.freeze(3600.0).reduce(3600.0, 300, one, 1)
    return held_bytes(ring, 3600.0) + held_bytes(counters, 3600.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = make_frames(args.frames, args.batch)
    config = load_config(environ={})
    limits = Engine(config).limits
    engine = Engine(config, [RequestTracker(config, Geometry(), 0.0)])
    clock = [0.0]

    def decode_only() -> int:
        n = 0
        for f in frames:
            n += decode(f, 1.7e9, limits).accepted
        return n

    def apply() -> int:
        n = 0
        for f in frames:
            clock[0] += 0.001
            result = decode(f, 1.7e9, limits)
            engine.apply(result, clock[0], 1.7e9)
            n += result.accepted
        return n

    rates = best_of({"decode only": decode_only, "decode + apply": apply}, args.reps)
    ratio = rates["decode + apply"] / rates["decode only"]
    memory = memory_per_series()
    print_table(
        f"request events, columnar batches of {args.batch}",
        [
            ("decode only", f"{rates['decode only']:>12,.0f} events/s"),
            ("decode + apply", f"{rates['decode + apply']:>12,.0f} events/s"),
            ("ratio", f"{ratio:>12.2f}"),
            ("memory, one busy latency series (1 h)", f"{memory:>12,} bytes"),
        ],
        {
            "decode_only_eps": rates["decode only"],
            "apply_eps": rates["decode + apply"],
            "ratio": ratio,
            "series_bytes": memory,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
