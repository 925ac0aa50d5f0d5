"""Many WebSocket clients on the live stream: broadcast cycle time and the daemon's CPU share.

Usage: ``python benchmarks/bench_stream.py [--clients 1000] [--seconds 20] [--json]``

Starts a real daemon (with ``--demo`` traffic), opens N real WebSocket clients from this process
at a 1 s interval with mixed filters (20 distinct filter sets: all, single endpoints, single
models, single categories), reads every message, and samples the daemon's own gauges:
``metricsd_ws_broadcast_seconds`` (one tick's fan-out: render per filter set + queueing for N
clients) against ``metricsd_ws_render_seconds`` (rendering one filter set), both measured in the
same daemon in the same run, plus the daemon's CPU time from /proc over the measuring period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table

ENDPOINTS = ["/v1/chat/completions", "/v1/messages", "/v1/embeddings"]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "text-embedding-3-small"]
TYPES = ["throughput", "latency", "error", "streaming", "cost", "slo"]


def filter_sets() -> list[dict[str, Any]]:
    sets: list[dict[str, Any]] = [{}]
    sets += [{"endpoint": e} for e in ENDPOINTS]
    sets += [{"model": m} for m in MODELS]
    sets += [{"metric_type": t} for t in TYPES]
    sets += [{"endpoint": e, "metric_type": "latency"} for e in ENDPOINTS]
    sets += [{"model": m, "metric_type": "throughput"} for m in MODELS[:3]]
    return sets[:20]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def gauges(session: aiohttp.ClientSession, http: str) -> dict[str, float]:
    async with session.get(http + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith(("metricsd_ws_", "metricsd_tick_duration_seconds")):
            name, value = line.split(" ")
            out[name] = float(value)
    return out


async def client(
    session: aiohttp.ClientSession,
    url: str,
    filters: dict[str, Any],
    counts: list[int],
    stop: asyncio.Event,
) -> None:
    async with session.ws_connect(
        url, heartbeat=None, timeout=aiohttp.ClientWSTimeout(ws_close=5)
    ) as ws:
        await ws.send_str(
            json.dumps({"type": "subscribe", "filters": {**filters, "interval": 1.0}})
        )
        while not stop.is_set():
            try:
                msg = await ws.receive(timeout=5)
            except TimeoutError:
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                return
            if '"metrics_update"' in msg.data[:40]:
                counts[0] += 1


async def run(n: int, seconds: float, http: str, pid: int) -> dict[str, Any]:
    url = http.replace("http://", "ws://") + "/metrics/stream"
    sets = filter_sets()
    counts = [0]
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [
            asyncio.create_task(client(session, url, sets[i % len(sets)], counts, stop))
            for i in range(n)
        ]
        await asyncio.sleep(5)  # connect and settle
        cycles, renders = [], []
        cpu0, t0, updates0 = cpu_seconds(pid), time.monotonic(), counts[0]
        while time.monotonic() - t0 < seconds:
            g = await gauges(session, http)
            cycles.append(g.get("metricsd_ws_broadcast_seconds", 0.0))
            renders.append(g.get("metricsd_ws_render_seconds", 0.0))
            clients = g.get("metricsd_ws_clients", 0.0)
            await asyncio.sleep(0.5)
        cpu1, t1, updates1 = cpu_seconds(pid), time.monotonic(), counts[0]
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    busy = [c for c in cycles if c > 0]
    cycle = statistics.median(busy) if busy else 0.0
    render = statistics.median([r for r in renders if r > 0] or [0.0])
    return {
        "clients": n,
        "clients_seen": clients,
        "filter_sets": len(sets),
        "updates_per_second": (updates1 - updates0) / (t1 - t0),
        "broadcast_cycle_seconds_median": cycle,
        "render_one_filter_set_seconds_median": render,
        "cycle_over_render": cycle / render if render else None,
        "daemon_cpu_share_of_one_core": (cpu1 - cpu0) / (t1 - t0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricsd",
                "serve",
                "--demo",
                "--http",
                "127.0.0.1:0",
                "--ingest",
                "tcp://127.0.0.1:0",
                "--ready-file",
                str(ready),
                "--log-level",
                "warning",
            ],
        )
        try:
            deadline = time.monotonic() + 20
            while not ready.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            http = json.loads(ready.read_text())["http"]
            result = asyncio.run(run(args.clients, args.seconds, http, proc.pid))
        finally:
            proc.terminate()
            proc.wait(15)
    print_table(
        f"{args.clients} WebSocket clients at 1 Hz, {result['filter_sets']} filter sets",
        [
            ("clients connected (daemon gauge)", f"{result['clients_seen']:.0f}"),
            ("updates received per second", f"{result['updates_per_second']:.0f}"),
            (
                "broadcast cycle (median)",
                f"{result['broadcast_cycle_seconds_median'] * 1000:.1f} ms",
            ),
            (
                "render of one filter set (median)",
                f"{result['render_one_filter_set_seconds_median'] * 1000:.2f} ms",
            ),
            ("cycle ÷ one render", f"{result['cycle_over_render']:.1f}"),
            (
                "daemon CPU, share of one core",
                f"{result['daemon_cpu_share_of_one_core'] * 100:.1f} %",
            ),
        ],
        result,
        args.json,
    )


if __name__ == "__main__":
    main()
