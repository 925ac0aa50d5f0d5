"""Print the SLO status a metricsd daemon computes, for a terminal, cron or a CI gate.

    python examples/slo_status.py                       # METRICSD_URL, METRICSD_TOKEN
    python examples/slo_status.py --objective 0.995     # judge against another objective
    python examples/slo_status.py --json

Exit status: 0 when the SLO holds, 2 when it is violated, 1 when the daemon cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys

from metricsd_client import ErrorMetricsTracker, MetricsdError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the daemon's HTTP address (default: $METRICSD_URL)")
    parser.add_argument("--token", help="bearer token (default: $METRICSD_TOKEN)")
    parser.add_argument("--objective", type=float, help="e.g. 0.999 (default: the daemon's)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)

    tracker = ErrorMetricsTracker(
        error_budget_slo=args.objective,
        url=args.url,
        token=args.token,
        consistent=False,  # a reader only: nothing of ours to wait for
        timeout=5.0,
    )
    try:
        slo = tracker.get_slo_status()
    except MetricsdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps(slo.to_dict(), indent=2, sort_keys=True))
    else:
        days = slo.window_seconds / 86400
        print(f"SLO {slo.name}: objective {slo.target_success_rate:.4%} over {days:g} days")
        print(
            f"  requests {slo.total_requests}, bad {slo.failed_requests}, "
            f"success rate {slo.current_success_rate:.4%}"
        )
        left, total = slo.error_budget_remaining, slo.error_budget_total
        print(f"  error budget left {slo.error_budget_percentage:.1f}% ({left:g} of {total:g})")
        rates = "  ".join(f"{w}={r:.2f}" for w, r in slo.burn_rates.items())
        print(f"  burn rates  {rates}")
        alerts = [name for name, on in slo.alerts.items() if on]
        print(f"  alerts      {', '.join(alerts) or 'none'}")
        print("  VIOLATED" if slo.slo_violated else "  ok")
    return 2 if slo.slo_violated else 0


if __name__ == "__main__":
    sys.exit(main())
