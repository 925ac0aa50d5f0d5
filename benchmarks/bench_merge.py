"""What one ``--workers`` merge costs, as a function of the series a delta touches.

Usage: ``python benchmarks/bench_merge.py [--series 10,100,1000,10000] [--rows 20000] [--reps 3]``

For each series count S, a worker's trackers (:class:`metricsd.worker.Applier`, every tracker
the workers apply) record ``--rows`` request events spread over S label sets (endpoint × model,
a key per model, 4 % errors), as one merge interval's worth of traffic would; then:

- **worker**: the delta is built (every tracker's state, packed) and the trackers start afresh;
- **serving**: the delta is unpacked and added to a serving engine that already holds the same
  S series (the steady state: nothing new to create).

CPU time (``time.process_time``), best of R. The serving column is what each worker costs the
serving process per merge interval (``engine.merge_interval``, 0.25 s): N workers cost N of
them, whatever the event rate. The last column is the same apply of the rows, per event, for
scale.
"""

from __future__ import annotations

import argparse
import sys
import time

import msgpack
import numpy as np

from metricsd.config import load_config
from metricsd.decode import Decoder
from metricsd.persist import unpack_state
from metricsd.wiring import build_engine
from metricsd.worker import Applier
from metricsd.workers import REMOTE, worker_sections


def _frame(rng: np.random.Generator, series: int, rows: int) -> bytes:
    labels = rng.integers(0, series, rows)
    status = np.where(rng.random(rows) < 0.04, 500, 200)
    return msgpack.packb(
        {
            "type": "request",
            "cols": {
                "endpoint": [f"/v1/e{i % 97}" for i in labels.tolist()],
                "model": [f"model-{i // 97}" for i in labels.tolist()],
                "key_id": [f"k_{i // 97:012x}" for i in labels.tolist()],
                "status": status.tolist(),
                "duration_ms": rng.gamma(2.0, 150.0, rows).round(3).tolist(),
                "input_tokens": rng.integers(10, 2000, rows).tolist(),
                "output_tokens": rng.integers(1, 800, rows).tolist(),
            },
        }
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", default="10,100,1000,10000")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    config = load_config(environ={"METRICSD_LIMITS_MAX_SERIES": "20000"})
    names = {name: sorted(types) for name, types in REMOTE.items()}
    print(f"{args.rows:,} request events per delta")
    print(f"{'series':>7} {'worker ms':>10} {'serving ms':>11} {'serving µs/series':>18} "
          f"{'apply µs/1k ev':>15}")  # fmt: skip
    for series in [int(s) for s in args.series.split(",")]:
        rng = np.random.default_rng(series)
        frames = [_frame(rng, series, 5000) for _ in range(max(1, args.rows // 5000))]
        wall = time.time()
        serving = build_engine(config, 0.0, wall)
        serving.remote = dict(REMOTE)
        applier = Applier(names, ["request"], worker_sections(config))
        best = {"apply": float("inf"), "worker": float("inf"), "serving": float("inf")}
        for rep in range(args.reps + 1):  # the first fills the serving engine's series
            decoder = Decoder(wall, serving.limits)
            for frame in frames:  # 5 000 rows a frame (a frame holds at most 10 000)
                decoder.add(frame)
            result = decoder.finish()
            assert not result.rejected, result.rejected
            t = time.process_time()
            applier.apply(result, 1.0 + rep, wall, 1)
            applied = time.process_time() - t
            t = time.process_time()
            _header, body = applier.delta()
            built = time.process_time() - t
            t = time.process_time()
            for name, state in unpack_state(body).items():
                serving.absorb(name, state, 1.0 + rep, wall)
            merged = time.process_time() - t
            if rep:
                best["apply"] = min(best["apply"], applied)
                best["worker"] = min(best["worker"], built)
                best["serving"] = min(best["serving"], merged)
        print(
            f"{series:>7,} {best['worker'] * 1e3:>10.1f} {best['serving'] * 1e3:>11.1f} "
            f"{best['serving'] / series * 1e6:>18.1f} {best['apply'] / args.rows * 1e9:>15.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
