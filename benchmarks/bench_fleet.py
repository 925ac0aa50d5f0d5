"""Fleet budgets: one tick's round trip to Redis, and the engine thread's share of a tick.

Usage: ``python benchmarks/bench_fleet.py [--budgets N ...] [--daemons D] [--reps R] [--json]``

Starts a ``redis-server`` on a free loopback port (Debian's package; nothing is persisted). For
each N, the store holds N budgeted keys' spend hashes, each with fields of D daemons, and one
daemon's store thread runs round trips as it does each tick: with every key's spend moved (N
writes and N reads in one pipeline) and with none moved (N reads). The engine thread's share is
:meth:`metricsd.fleet.Ledger.tick` with every key moved (a day turning), against the snapshot
it already builds each tick (the baseline, same run). Best of R.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table

from metricsd.config import load_config
from metricsd.engine import Engine
from metricsd.fleet import Ledger, RoundTrip
from metricsd.fleet_store import BudgetStore, connector
from metricsd.protocol import decode
from metricsd.trackers.cost import CostTracker

WALL = 1_774_994_400.0


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port, socket_timeout=2.0)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc, port


def store_trips(port: int, n: int, daemons: int, reps: int) -> tuple[float, float]:
    """Best seconds of a round trip with all N moved, and with none moved."""
    import redis

    ledger = Ledger(f"b{n}:", 1.0)
    names = [f"b{n}:spend:k_{i:012x}:daily:2026-03-31" for i in range(n)]
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hset(name, mapping={f"d{j}": str(10**12 + j) for j in range(daemons - 1)})
    pipe.execute()
    client.close()
    trips: list[RoundTrip] = []
    store = BudgetStore(connector(f"redis://127.0.0.1:{port}/0", None, 5.0), ledger, trips.append)
    moved = none = float("inf")
    for rep in range(reps + 2):  # the first two: connect, mark the empty Redis, write again
        spend = {name: (name, 10**9 * (rep + 1) + i, 1_900_000_000) for i, name in enumerate(names)}
        ledger.outbox.offer(spend, None)
        store._take()
        started = time.perf_counter()
        assert store.round_trip().ok
        if rep >= 2:
            moved = min(moved, time.perf_counter() - started)
        started = time.perf_counter()
        assert store.round_trip().ok
        if rep >= 2:
            none = min(none, time.perf_counter() - started)
    store._client.close()
    return moved, none


def engine_tick(n: int, reps: int) -> tuple[float, float]:
    """Best seconds of Ledger.tick with every key moved, and of the tick's snapshot."""
    config = load_config(environ={}, overrides={"cost": {"max_keys": n + 10, "max_budgets": n}})
    tracker = CostTracker(config, 0.0, WALL)
    engine = Engine(config, [tracker])
    keys = [f"k_{i:012x}" for i in range(n)]
    for key in keys:
        tracker.put_budget(key, {"limit_usd": 100, "period": "daily"}, WALL)
    frame: list[Any] = [
        {"type": "request", "duration_ms": 1.0, "key_id": k, "cost_usd": 0.01} for k in keys
    ]
    packed = msgpack.packb(frame)
    engine.apply(decode(packed, WALL, engine.limits), 1.0, WALL)
    ledger = Ledger("b:", 1.0)
    tick = snap = float("inf")
    everything = set(keys)
    for _ in range(reps):
        ledger.recompute()  # as when a day turns: every budget worked out again
        started = time.perf_counter()
        ledger.tick(tracker, WALL + 2.0, everything)
        tick = min(tick, time.perf_counter() - started)
        tracker.dirty = True
        started = time.perf_counter()
        engine.snapshot(2.0, WALL + 2.0)
        snap = min(snap, time.perf_counter() - started)
    return tick, snap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--daemons", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (Debian package redis-server)")
    rows: list[tuple[str, str]] = []
    extra: dict[str, Any] = {"daemons": args.daemons, "results": []}
    with tempfile.TemporaryDirectory() as workdir:
        proc, port = start_redis(workdir)
        try:
            for n in args.budgets:
                moved, none = store_trips(port, n, args.daemons, args.reps)
                tick, snap = engine_tick(n, args.reps)
                rows.append(
                    (
                        f"{n} budgets",
                        f"round trip all moved {moved * 1e3:8.2f} ms, none moved "
                        f"{none * 1e3:8.2f} ms; ledger tick {tick * 1e3:7.2f} ms "
                        f"(snapshot {snap * 1e3:7.2f} ms)",
                    )
                )
                extra["results"].append(
                    {
                        "budgets": n,
                        "round_trip_all_moved_ms": round(moved * 1e3, 3),
                        "round_trip_none_moved_ms": round(none * 1e3, 3),
                        "ledger_tick_all_moved_ms": round(tick * 1e3, 3),
                        "snapshot_ms": round(snap * 1e3, 3),
                    }
                )
        finally:
            proc.terminate()
            proc.wait(10)
    print_table(f"fleet budgets ({args.daemons} daemons)", rows, extra, args.json)


if __name__ == "__main__":
    main()
