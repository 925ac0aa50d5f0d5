"""Pricing request events (the cost tracker) through ``engine.apply``, against decoding only.

Usage: ``python benchmarks/bench_cost.py [--frames N] [--batch B] [--keys K] [--reps R] [--json]``

Frames are columnar batches of B ``request`` events, each batch one model and one API key (as
the Python client groups them), rotating over 8 priced models (text with and without a cached
price, an Anthropic model, a fine-tuned model) and K keys; a tenth of the rows carry cached
tokens and a twentieth are batch requests. The baseline decodes the same frames with
``protocol.decode`` (which also hashes the keys); the candidate decodes them and applies them to
an engine holding only the cost tracker, in the same run, interleaved, best of R.
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
from metricsd.protocol import decode
from metricsd.trackers.cost import CostTracker

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4",
    "gpt-3.5-turbo",
    "o1-mini",
    "claude-3-5-sonnet",
    "text-embedding-3-small",
    "ft:gpt-4o-mini-2024-07-18:org::x",
]
ENDPOINTS = ["/v1/chat/completions", "/v1/responses", "/v1/embeddings"]
WALL = 1.7e9


def make_frames(count: int, batch: int, keys: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        inputs = rng.integers(10, 4000, batch)
        cached = np.where(rng.random(batch) < 0.1, inputs // 2, 0)
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {
                        "model": MODELS[i % len(MODELS)],
                        "endpoint": ENDPOINTS[i % len(ENDPOINTS)],
                        "api_key": f"sk-bench-{i % keys}",
                    },
                    "cols": {
                        "duration_ms": np.round(rng.lognormal(5, 1, batch), 3).tolist(),
                        "input_tokens": inputs.tolist(),
                        "cached_tokens": cached.tolist(),
                        "output_tokens": rng.integers(1, 800, batch).tolist(),
                        "batch": (rng.random(batch) < 0.05).tolist(),
                    },
                }
            )
        )
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = make_frames(args.frames, args.batch, args.keys)
    config = load_config(environ={})
    limits = Engine(config).limits
    tracker = CostTracker(config, 0.0, WALL)
    engine = Engine(config, [tracker])
    clock = [0.0]

    def decode_only() -> int:
        n = 0
        for f in frames:
            n += decode(f, WALL, limits).accepted
        return n

    def apply() -> int:
        n = 0
        for f in frames:
            clock[0] += 0.001
            result = decode(f, WALL + clock[0], limits)
            engine.apply(result, clock[0], WALL + clock[0])
            n += result.accepted
        return n

    rates = best_of({"decode only": decode_only, "decode + apply": apply}, args.reps)
    ratio = rates["decode + apply"] / rates["decode only"]
    per_event = 1e9 / rates["decode + apply"] - 1e9 / rates["decode only"]
    print_table(
        f"cost: request events, columnar batches of {args.batch}, "
        f"{len(MODELS)} models × {args.keys} keys",
        [
            ("decode only", f"{rates['decode only']:>12,.0f} events/s"),
            ("decode + apply (cost)", f"{rates['decode + apply']:>12,.0f} events/s"),
            ("ratio", f"{ratio:>12.2f}"),
            ("apply cost per event", f"{per_event:>12.1f} ns"),
        ],
        {
            "decode_only_eps": rates["decode only"],
            "apply_eps": rates["decode + apply"],
            "ratio": ratio,
            "apply_ns_per_event": per_event,
            "total_usd": tracker.all.total / 10**12,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
