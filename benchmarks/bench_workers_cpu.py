"""Where the CPU goes with ``--workers N``: events/s and CPU seconds per process.

Usage: ``python benchmarks/bench_workers_cpu.py [--workers 1,2] [--seconds 5]``

For each N a daemon is started (``metricsd serve --workers N``); this process sends our
emitter's mixed frames (``emitter-mixed`` of ``metricsd bench``) as fast as ZeroMQ takes them
for ``--seconds``, waits until the daemon has counted every event, and reads the CPU time of the
serving process, of each worker (from /proc) and of the sender itself. The shares say what is
serialised (the serving process) and what runs in parallel (the workers), and the sum against
one process's is what the split costs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from metricsd.bench import _Daemon, _received, emitter_frames


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def run(workers: int, seconds: float, frames: list[bytes]) -> dict[str, float]:
    daemon = _Daemon(["--workers", str(workers), "--tick", "0.1"])
    try:
        time.sleep(1.5 if workers > 1 else 0.3)  # the workers start and connect
        pids = {"serving": daemon.pid}
        pids.update({f"worker {i}": pid for i, pid in enumerate(_children(daemon.pid))})
        before = {name: _cpu(pid) for name, pid in pids.items()}
        counted = _received(daemon.http, "request", None)
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.connect(daemon.ingest)
        started, mine, sent = time.perf_counter(), time.process_time(), 0
        while time.perf_counter() - started < seconds:
            for frame in frames:
                sock.send(frame)
            sent += len(frames) * 1000
        sock.close(linger=-1)
        ctx.term()
        while _received(daemon.http, "request", None) - counted < sent:
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        out = {"events_per_second": sent / elapsed, "seconds": elapsed}
        out["sender"] = time.process_time() - mine
        out.update({name: _cpu(pid) - before[name] for name, pid in pids.items()})
        return out
    finally:
        daemon.close(kill=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    frames = emitter_frames(np.random.default_rng(0), 400)
    print(f"emitter-mixed, {args.seconds:g} s of sending per count; CPU seconds per process")
    for n in [int(x) for x in args.workers.split(",")]:
        r = run(n, args.seconds, frames)
        rest = {k: v for k, v in r.items() if k not in ("events_per_second", "seconds")}
        cpu = "  ".join(f"{k} {v:.2f}" for k, v in rest.items())
        total = sum(v for k, v in rest.items() if k != "sender")
        print(
            f"--workers {n}: {r['events_per_second']:>11,.0f} ev/s in {r['seconds']:.1f} s;  {cpu};"
            f"  daemon {total / r['events_per_second'] / r['seconds'] * 1e9:.0f} µs CPU per 1k ev"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
