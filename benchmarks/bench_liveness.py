"""Liveness under saturated ingest: /healthz and scrapes while the daemon is flooded.

Usage: ``python benchmarks/bench_liveness.py [--seconds 15] [--rss-limit-mib 6144] [--json]``
(the same as ``metricsd bench --liveness``).

The daemon is a black box: started as ``python -m metricsd serve`` (port 0, no state), fed over
ZeroMQ, read over HTTP and /proc. Each figure sits beside a baseline from the same run:

1. idle baseline: 200 sequential ``/healthz`` and ``/metrics/summary`` requests (and 20
   ``/metrics`` scrapes) with 1 000 request series loaded and nothing arriving;
2. saturated: a sender process replays prebuilt ``emitter-mixed`` frames (the Python client's
   own packing, see ``metricsd bench``) as fast as ZeroMQ takes them (blocking sends, SNDHWM
   1 000) for ``--seconds``, while this process polls ``/healthz`` every 50 ms,
   ``/metrics/summary`` every 200 ms and ``/metrics`` every 1 s (one request at a time each:
   a slow answer delays the next poll). Reported: p50/p99/max of each, timeouts (10 s, counted
   in the percentiles at their wait) and errors, the events/s the daemon applied
   (``metricsd_events_received_total`` before the sender starts and right after it stops), the
   rate ZeroMQ accepted from the sender, the daemon's CPU share and peak RSS. If the daemon's
   RSS passes ``--rss-limit-mib`` (its receive queue can hold a lot), the sender stops early;
3. new-label burst (a fresh daemon, 1 000 series loaded): 10 frames of 10 000 request events,
   every event a new model name (the series caps are reached), sent back to back; ``/healthz``
   polled every 20 ms from 1 s before to 5 s after: the second before is the baseline. Also:
   when ``/healthz`` first answered a request sent after the burst, and when the burst was
   applied (counted on ``/metrics/errors``: ``/metrics`` is not scraped in this phase, since a
   scraped daemon renders its exposition every tick, which would be measured instead);
4. SIGTERM while saturated (a fresh daemon): the sender runs for 3 s, then SIGTERM; reported:
   seconds until the process exits, its exit code, and the last lines of its log.

Every HTTP request has a 10 s timeout and every ZeroMQ send a timeout; every process started
is ended in ``finally`` (SIGKILL when it does not stop), so no phase waits much over a minute.
"""

from __future__ import annotations

import argparse
import json
import sys

from metricsd.bench import BenchError, exit_on_sigterm, format_liveness, run_liveness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="saturation phase length")
    parser.add_argument(
        "--rss-limit-mib", type=int, default=6144, help="stop the sender above this daemon RSS"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    exit_on_sigterm()
    try:
        result = run_liveness(
            seconds=args.seconds,
            rss_limit_mib=args.rss_limit_mib,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    except BenchError as exc:
        print(f"bench_liveness: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_liveness(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
