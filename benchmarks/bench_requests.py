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
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import best_of, print_table

from metricsd.config import load_config
from metricsd.engine import Engine
from metricsd.hist import Layout
from metricsd.protocol import decode
from metricsd.trackers.requests import FIELDS, RequestTracker
from metricsd.window import CounterRing, Geometry, HistRing

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


def memory_per_series() -> int:
    """Bytes of window arrays held by one series after an hour at 50 requests/s."""
    geometry = Geometry()
    ring = HistRing(geometry, Layout())
    counters = CounterRing(geometry, len(FIELDS))
    rng = np.random.default_rng(1)
    for t in range(3600):
        ring.record(float(t), rng.lognormal(5.0, 1.0, 50))
        counters.add(float(t), np.ones(len(FIELDS)))
    ring.window(3600.0, 300)
    return ring.nbytes() + counters.nbytes()


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
