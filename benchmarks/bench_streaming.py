"""Token events through ``engine.apply`` against decoding the same frames only.

Usage: ``python benchmarks/bench_streaming.py [--streams S] [--frames N] [--batch B] [--reps R]
[--json]``

S concurrent streams (default 1 000) are started once; each frame is then a columnar batch of B
``stream.token`` events (default 1 000) with ``stream_id``, ``ts`` and ``bytes`` columns, every
stream appearing in every batch in a shuffled order (the worst case for grouping: B distinct
streams per batch). Per run, measured interleaved and best of R:

- ``decode only``: ``protocol.decode`` of the frames, nothing else (the baseline);
- ``apply``: ``engine.apply`` of the same frames already decoded (decoding done before timing),
  with the request and streaming trackers in the engine, as in the daemon;
- ``decode + apply``: both, as the ingest loop does.

Each run gets fresh frames whose emitter timestamps continue the previous run's, so every token
is a real gap of its stream.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table

from metricsd.config import load_config
from metricsd.engine import Engine
from metricsd.protocol import DecodeResult, decode
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.window import Geometry

T0 = 1.7e9
MODELS = [f"model-{i}" for i in range(8)]


def make_frames(streams: int, count: int, batch: int, run: int) -> list[bytes]:
    """``count`` token frames; tokens of a stream come every ~40 ms of emitter time."""
    rng = np.random.default_rng(run)
    ids = np.array([f"stream-{i}" for i in range(streams)])
    frames = []
    per_frame = max(1, batch // streams)
    for i in range(count):
        rows = np.concatenate([rng.permutation(streams) for _ in range(per_frame)])[:batch]
        tick = (run * count + i) * per_frame
        ts = T0 + 1.0 + (tick + rng.random(batch)) * 0.04
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "stream.token",
                    "cols": {
                        "stream_id": ids[rows].tolist(),
                        "ts": ts.tolist(),
                        "bytes": rng.integers(3, 24, batch).tolist(),
                    },
                }
            )
        )
    return frames


def start_frames(streams: int) -> list[bytes]:
    """The streams' starts, 10 000 per frame (the default frame limit)."""
    return [
        msgpack.packb(
            {
                "type": "stream.start",
                "const": {"endpoint": "/v1/chat/completions", "ts": T0},
                "cols": {
                    "stream_id": [f"stream-{i}" for i in range(lo, min(lo + 10_000, streams))],
                    "model": [
                        MODELS[i % len(MODELS)] for i in range(lo, min(lo + 10_000, streams))
                    ],
                },
            }
        )
        for lo in range(0, streams, 10_000)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = load_config(environ={})
    geometry = Geometry()
    streaming = StreamingTracker(config, geometry, 0.0)
    engine = Engine(config, [RequestTracker(config, geometry, 0.0), streaming])
    limits = engine.limits
    for frame in start_frames(args.streams):
        engine.apply(decode(frame, T0, limits), 0.0, T0)
    assert len(streaming.table) == args.streams
    clock = [0.0]
    best = {"decode only": 0.0, "apply": 0.0, "decode + apply": 0.0}

    def timed(name: str, run: Callable[[], int]) -> None:
        gc.collect()
        started = time.perf_counter()
        events = run()
        best[name] = max(best[name], events / (time.perf_counter() - started))

    for rep in range(args.reps):
        frames = make_frames(args.streams, args.frames, args.batch, 2 * rep)

        def decode_only(frames: list[bytes] = frames) -> int:
            return sum(decode(f, T0, limits).accepted for f in frames)

        timed("decode only", decode_only)
        decoded: list[DecodeResult] = [decode(f, T0, limits) for f in frames]

        def apply(results: list[DecodeResult] = decoded) -> int:
            for result in results:
                clock[0] += 0.01
                engine.apply(result, clock[0], T0)
            return sum(r.accepted for r in results)

        timed("apply", apply)
        more = make_frames(args.streams, args.frames, args.batch, 2 * rep + 1)

        def decode_apply(frames: list[bytes] = more) -> int:
            n = 0
            for f in frames:
                clock[0] += 0.01
                result = decode(f, T0, limits)
                engine.apply(result, clock[0], T0)
                n += result.accepted
            return n

        timed("decode + apply", decode_apply)
    assert streaming.orphaned["stream.token"] == 0
    ratio = best["apply"] / best["decode only"]
    print_table(
        f"stream.token events, {args.streams} concurrent streams, columnar batches of {args.batch}",
        [
            ("decode only", f"{best['decode only']:>12,.0f} events/s"),
            ("apply (decoded frames)", f"{best['apply']:>12,.0f} events/s"),
            ("decode + apply", f"{best['decode + apply']:>12,.0f} events/s"),
            ("apply ÷ decode", f"{ratio:>12.2f}"),
        ],
        {
            "streams": args.streams,
            "batch": args.batch,
            "decode_only_eps": best["decode only"],
            "apply_eps": best["apply"],
            "decode_apply_eps": best["decode + apply"],
            "ratio": ratio,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
