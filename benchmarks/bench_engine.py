"""Decode and apply of our emitter's mixed frames in process: µs per 1 000 events.

Usage: ``python benchmarks/bench_engine.py [--events N] [--per-wakeup K] [--reps R]``

The ``emitter-mixed`` frames of ``metricsd bench`` (packed by the Python client) are decoded K
at a time with one :class:`metricsd.decode.Decoder`, as one ingest wake-up does, and applied to
a fresh engine with every tracker; CPU time (``time.process_time``), best of R runs. The same
frames are also packed the way the client did before dictionary columns (one batch per label
set), decoded in the same run: the ratio is what the dictionary columns buy the decoder.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from metricsd.bench import MIXED_ROWS, emitter_frames
from metricsd.config import load_config
from metricsd.decode import Decoder
from metricsd.wiring import build_engine


def _frames(events: int, dictionary: bool) -> list[bytes]:
    from metricsd_client import _wire

    saved = _wire._DICT_TYPES
    if not dictionary:
        _wire._DICT_TYPES = frozenset()  # type: ignore[misc]
    try:
        return emitter_frames(np.random.default_rng(0), max(1, events // MIXED_ROWS))
    finally:
        _wire._DICT_TYPES = saved  # type: ignore[misc]


def _run(frames: list[bytes], per_wakeup: int, reps: int) -> tuple[float, float]:
    """(decode, apply) CPU seconds, best of ``reps``."""
    best_decode = best_apply = float("inf")
    for _ in range(reps):
        wall = time.time()
        engine = build_engine(load_config(environ={}), 0.0, wall)
        t = time.process_time()
        results = []
        for i in range(0, len(frames), per_wakeup):
            decoder = Decoder(wall, engine.limits)
            for frame in frames[i : i + per_wakeup]:
                decoder.add(frame)
            results.append((decoder.finish(), len(frames[i : i + per_wakeup])))
        best_decode = min(best_decode, time.process_time() - t)
        t = time.process_time()
        for result, count in results:
            engine.apply(result, 10.0, wall, frames=count)
        best_apply = min(best_apply, time.process_time() - t)
    return best_decode, best_apply


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=256_000)
    ap.add_argument("--per-wakeup", type=int, default=64)
    ap.add_argument("--reps", type=int, default=4)
    args = ap.parse_args(argv)
    per_k = args.events / 1000
    rows = []
    for label, dictionary in (("dictionary columns (the client now)", True),
                              ("one batch per label set (the client before)", False)):  # fmt: skip
        frames = _frames(args.events, dictionary)
        decode, apply = _run(frames, args.per_wakeup, args.reps)
        rows.append((label, decode / per_k * 1e6, apply / per_k * 1e6))
    print(f"{'frames':<46} {'decode µs/1k ev':>16} {'apply µs/1k ev':>15}")
    for label, decode, apply in rows:
        print(f"{label:<46} {decode:>16,.0f} {apply:>15,.0f}")
    print(f"decode, before ÷ now: {rows[1][1] / rows[0][1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
