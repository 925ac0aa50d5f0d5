"""One Python emitter process calling ``request()`` as fast as it can, against a real daemon.

Usage: ``python benchmarks/bench_emitter_lossless.py [--seconds S] [--workers N] [--json]``

The daemon runs as ``metricsd serve`` (its own process); the emitter runs in another process
with default settings and calls ``Emitter.request`` in a loop for ``S`` seconds (default 10) with
mixed traffic: 3 endpoints × 4 models, 4 % errors as 429/500/502/503 with an ``error_type``, a
``key_id`` and a ``finish_reason`` on the others. Then it closes the emitter (flushing what is
left) and reports its calls and its ``dropped`` count; the benchmark waits for the daemon to
count every event and prints both sides. Lossless means ``dropped == 0`` and the daemon's
``metricsd_events_received_total{type="request"}`` equal to the calls.

The figure to compare between runs is the ratio of calls per second here to the same loop
without a daemon's drops (an emitter pointed at nothing measures the caller alone): printed as
``caller-only`` in the same run, so a busy machine shows in both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LOOP = r"""
import json, sys, time
from metricsd_client import Emitter
endpoint, seconds = sys.argv[1], float(sys.argv[2])
ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/embeddings")
MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3-70b")
ERRORS = ((429, "rate_limit"), (500, "internal"), (502, "upstream"), (503, "overloaded"))
em = Emitter(endpoint, source="lossless")
calls = 0
deadline = time.perf_counter() + seconds
while True:
    for i in range(1000):
        k = calls + i
        failed = k % 25 == 7
        status, etype = ERRORS[k % 4] if failed else (200, None)
        em.request(
            80.0 + (k % 400),
            endpoint=ENDPOINTS[k % 3],
            model=MODELS[(k // 3) % 4],
            status=status,
            error_type=etype,
            finish_reason=None if failed else "stop",
            key_id="k_0123456789ab",
            input_tokens=100 + k % 900,
            output_tokens=10 + k % 300,
        )
    calls += 1000
    if time.perf_counter() >= deadline:
        break
elapsed = seconds + (time.perf_counter() - deadline)
em.close(timeout=30.0)
print(json.dumps({"calls": calls, "seconds": elapsed, "dropped": em.dropped}))
"""


def _received(http: str) -> float:
    with urllib.request.urlopen(http + "/metrics", timeout=30) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith('metricsd_events_received_total{type="request"}'):
                return float(line.split()[-1])
    return 0.0


def _loop(endpoint: str, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", LOOP, endpoint, str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--workers", default="1", help="the daemon's --workers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="metricsd-lossless-"))
    ready = tmp / "ready.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "metricsd", "serve", "--http", "127.0.0.1:0",
         "--ingest", "tcp://127.0.0.1:0", "--ready-file", str(ready),
         "--log-level", "warning", "--workers", args.workers],
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        http, ingest = info["http"], info["ingest"][0]
        alone = _loop("tcp://127.0.0.1:9", min(args.seconds, 3.0))  # nobody listens
        sent = _loop(ingest, args.seconds)
        wait_until = time.monotonic() + 60
        counted = _received(http)
        while counted < sent["calls"] - sent["dropped"] and time.monotonic() < wait_until:
            time.sleep(0.2)
            counted = _received(http)
        result = {
            "calls": sent["calls"],
            "calls_per_second": sent["calls"] / sent["seconds"],
            "caller_only_per_second": alone["calls"] / alone["seconds"],
            "dropped": sent["dropped"],
            "daemon_counted": counted,
            "lossless": sent["dropped"] == 0 and counted == sent["calls"],
            "workers": args.workers,
        }
    finally:
        daemon.terminate()
        daemon.wait(30)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"emitter: {result['calls']:,} calls in {args.seconds:g} s "
            f"({result['calls_per_second']:,.0f}/s; "
            f"caller alone {result['caller_only_per_second']:,.0f}/s), "
            f"dropped {result['dropped']}; daemon counted {result['daemon_counted']:,.0f}: "
            f"{'lossless' if result['lossless'] else 'LOST EVENTS'}"
        )
    return 0 if result["lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
