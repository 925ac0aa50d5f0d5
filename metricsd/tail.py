"""``metricsd tail``: a live terminal view of the WebSocket stream."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

import aiohttp

__all__ = ["format_update", "tail"]


def _n(value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.2f}M"
    if a >= 1e4:
        return f"{value / 1e3:.1f}k"
    if a >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def format_update(data: dict[str, Any]) -> str:
    """One update as a small text report (also what ``--once`` prints)."""
    lines: list[str] = []
    t = data.get("throughput", {})
    e = data.get("error", {})
    rps = t.get("total_requests_per_sec", 0.0)
    err = e.get("total_errors_per_sec", 0.0)
    lines.append(
        f"requests/s {_n(rps)}   tokens/s {_n(t.get('total_tokens_per_sec'))}   "
        f"errors/s {_n(err)}   error rate {100 * err / rps if rps else 0.0:.2f} %"
    )
    s = data.get("streaming", {})
    ttft = s.get("ttft") or {}
    lines.append(
        f"streams active {_n(s.get('active_streams'))}   completed {_n(s.get('completed_streams'))}"
        f"   failed {_n(s.get('failed_streams'))}   TTFT avg {_n(ttft.get('avg'))} ms"
        f"   p99 {_n(ttft.get('p99'))} ms"
    )
    cost = data.get("cost", {})
    if cost:
        lines.append(
            f"cost ${cost.get('total_usd', 0):.6f}   ${cost.get('usd_per_hour', 0):.4f}/hour"
        )
    for name, slo in sorted((data.get("slo") or {}).items()):
        burns = slo.get("burn_rates", {})
        lines.append(
            f"slo {name}: burn 5m {_n(burns.get('5m'))} 1h {_n(burns.get('1h'))} "
            f"6h {_n(burns.get('6h'))}   budget left {_n(slo.get('error_budget_percentage'))} %"
        )
    latency = data.get("latency", {})
    if latency:
        width = max(len("endpoint"), *(len(k) for k in latency))
        lines.append(
            f"{'endpoint'.ljust(width)}  {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} "
            f"{'p99 ms':>8} {'max ms':>8}"
        )
        rates = t.get("requests_per_sec", {})
        for endpoint, b in sorted(latency.items()):
            lines.append(
                f"{endpoint.ljust(width)}  {_n(rates.get(endpoint)):>8} {_n(b.get('p50')):>8} "
                f"{_n(b.get('p90')):>8} {_n(b.get('p99')):>8} {_n(b.get('max')):>8}"
            )
    return "\n".join(lines)


async def tail(
    url: str,
    token: str | None,
    filters: dict[str, Any],
    once: bool,
    as_json: bool,
    out: TextIO = sys.stdout,
    timeout: float = 10.0,
) -> int:
    """Follow the stream; returns a process exit code."""
    ws_url = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.ws_connect(ws_url + "/metrics/stream", headers=headers, heartbeat=30) as ws,
    ):
        await ws.send_str(json.dumps({"type": "subscribe", "filters": filters}))
        tty = out.isatty() and not as_json
        while True:
            msg = await ws.receive(timeout=max(timeout, 2 * float(filters.get("interval", 1))))
            if msg.type != aiohttp.WSMsgType.TEXT:
                print("metricsd: the stream closed", file=sys.stderr)
                return 1
            message = json.loads(msg.data)
            kind = message.get("type")
            if kind == "error":
                print(f"metricsd: {message.get('message')}", file=sys.stderr)
                return 2
            if kind in ("budget_alert", "slo_alert"):
                print(json.dumps(message) if as_json else f"ALERT {message}", file=out)
            if kind != "metrics_update":
                continue
            if as_json:
                print(json.dumps(message), file=out, flush=True)
            else:
                if tty:
                    out.write("\x1b[H\x1b[2J")
                print(format_update(message["data"]), file=out, flush=True)
            if once:
                return 0


def run_tail(
    url: str, token: str | None, filters: dict[str, Any], once: bool, as_json: bool
) -> int:
    try:
        return asyncio.run(tail(url, token, filters, once, as_json))
    except KeyboardInterrupt:
        return 0
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"metricsd: cannot follow {url}: {exc}", file=sys.stderr)
        return 1
