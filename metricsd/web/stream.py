"""The ``/metrics/stream`` WebSocket protocol as a pure session object (SPEC §5).

A :class:`Session` never touches a socket: text in (``receive``), messages out (plain dicts the
caller serialises), plus the per-client state the protocol needs: filters, interval, the last
snapshot sent (for per-client deltas) and an inbound rate limit. The aiohttp glue and the hub
that fans snapshots out live in ``web/hub.py``. Wire-compatible with FakeAI's ``MetricsStreamer``
(its shipped clients work unchanged), with its filter and delta bugs fixed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CATEGORIES",
    "FilterKey",
    "Limits",
    "Session",
    "compute_deltas",
]

#: FakeAI's six categories, then metricsd's two.
CATEGORIES: Final = ("throughput", "latency", "cache", "queue", "streaming", "error", "cost", "slo")
METRIC_TYPES: Final = frozenset((*CATEGORIES, "all"))
DEFAULT_INTERVAL: Final = 1.0

#: (endpoints, models, metric types): what decides the rendered ``data`` of an update.
FilterKey = tuple[frozenset[str], frozenset[str], frozenset[str]]


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-client limits (SPEC §5.3, §5.5)."""

    min_interval: float = 0.1
    max_interval: float = 60.0
    max_endpoints: int = 64
    max_models: int = 64
    #: A filter value longer than any label can be (the protocol's string limit) is refused.
    max_value_length: int = 256
    max_message_bytes: int = 16 * 1024
    #: Inbound messages: a bucket of ``burst`` refilled at ``rate`` per second; beyond it the
    #: client is closed with 1008.
    rate: float = 20.0
    burst: float = 40.0


class PolicyViolation(Exception):
    """The client broke a limit that closes the connection (WebSocket close code 1008)."""


@dataclass(slots=True)
class Session:
    """One client's protocol state."""

    connected_at: float
    limits: Limits = field(default_factory=Limits)
    endpoints: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)
    metric_types: set[str] = field(default_factory=lambda: {"all"})
    interval: float = DEFAULT_INTERVAL
    last_update: float = 0.0
    last_sent: dict[str, float] | None = None  # totals of the last update sent, for deltas
    _tokens: float = 0.0
    _token_time: float = 0.0

    def __post_init__(self) -> None:
        self.last_update = self.connected_at
        self._tokens = self.limits.burst
        self._token_time = self.connected_at

    # --- inbound --------------------------------------------------------------------------

    def receive(self, text: str, now: float, wall: float | None = None) -> list[dict[str, Any]]:
        """Handle one text message; returns the replies, in order. Raises PolicyViolation.

        ``now`` is the monotonic clock (rate limit); ``wall`` the Unix time put in replies.
        """
        self._charge(now)
        now = now if wall is None else wall
        if len(text) > self.limits.max_message_bytes:
            return [error(now, "message too large")]
        try:
            message = json.loads(text)
        except (ValueError, RecursionError) as exc:  # ValueError: also integers > 4300 digits
            return [
                error(
                    now,
                    f"Invalid JSON: {exc}"
                    if isinstance(exc, json.JSONDecodeError)
                    else "Invalid JSON",
                )
            ]
        if not isinstance(message, dict):
            return [error(now, "a message must be a JSON object with a string 'type'")]
        kind = message.get("type")
        if kind == "subscribe":
            return self._subscribe(message.get("filters", {}), now)
        if kind == "unsubscribe":
            self.reset()
            return [{"type": "unsubscribed", "timestamp": now}]
        if kind == "ping":
            return [{"type": "pong", "timestamp": now}]
        if not isinstance(kind, str):
            return [error(now, "Unknown message type: a string 'type' is required")]
        return [error(now, f"Unknown message type: {kind[:64]}")]

    def receive_binary(self, now: float, wall: float | None = None) -> list[dict[str, Any]]:
        self._charge(now)
        return [
            error(
                now if wall is None else wall, "binary messages are not supported; send JSON text"
            )
        ]

    def _charge(self, now: float) -> None:
        limits = self.limits
        self._tokens = min(limits.burst, self._tokens + (now - self._token_time) * limits.rate)
        self._token_time = now
        if self._tokens < 1.0:
            raise PolicyViolation("message rate limit exceeded")
        self._tokens -= 1.0

    def reset(self) -> None:
        """``unsubscribe``: back to the defaults (and the defaults keep streaming)."""
        self.endpoints.clear()
        self.models.clear()
        self.metric_types = {"all"}
        self.interval = DEFAULT_INTERVAL

    def _subscribe(self, filters: Any, now: float) -> list[dict[str, Any]]:
        if filters is None:
            filters = {}
        if not isinstance(filters, dict):
            return [error(now, "filters must be an object")]
        # Validate everything first, then apply: a bad field changes nothing (FakeAI applied
        # half a subscription before failing).
        endpoint, model = filters.get("endpoint"), filters.get("model")
        metric_type, interval = filters.get("metric_type"), filters.get("interval")
        problems: list[str] = []
        for name, value in (("endpoint", endpoint), ("model", model)):
            if value is not None and not isinstance(value, str):
                problems.append(f"{name} must be a string")
            elif isinstance(value, str) and len(value) > self.limits.max_value_length:
                problems.append(f"{name} is longer than {self.limits.max_value_length} characters")
        if metric_type is not None and (
            not isinstance(metric_type, str) or metric_type not in METRIC_TYPES
        ):
            shown = metric_type if isinstance(metric_type, str) else json.dumps(metric_type)[:64]
            problems.append(f"Invalid metric type: {str(shown)[:64]}")
        new_interval: float | None = None
        if interval is not None:
            if isinstance(interval, bool) or not isinstance(interval, (int, float)):
                problems.append("interval must be a number of seconds")
            elif interval <= 0 or (isinstance(interval, float) and not math.isfinite(interval)):
                # (an int past the float range is fine: it compares exactly, and is clamped)
                problems.append("interval must be a positive number of seconds")
            else:
                new_interval = min(
                    self.limits.max_interval, max(self.limits.min_interval, interval)
                )
        if problems:
            return [error(now, "; ".join(problems))]
        if (
            endpoint
            and endpoint not in self.endpoints
            and len(self.endpoints) >= self.limits.max_endpoints
        ):
            problems.append(f"at most {self.limits.max_endpoints} endpoints per client")
        if model and model not in self.models and len(self.models) >= self.limits.max_models:
            problems.append(f"at most {self.limits.max_models} models per client")
        if problems:
            return [error(now, "; ".join(problems))]
        if endpoint:
            self.endpoints.add(endpoint)
        if model:
            self.models.add(model)
        if metric_type is not None:
            if metric_type == "all":
                self.metric_types = {"all"}
            elif self.metric_types == {"all"}:
                self.metric_types = {metric_type}  # the first named type replaces the default
            else:
                self.metric_types.add(metric_type)
        if new_interval is not None:
            self.interval = new_interval
        return [{"type": "subscribed", "timestamp": now, "filters": self.filters()}]

    def filters(self) -> dict[str, Any]:
        return {
            "endpoints": sorted(self.endpoints),
            "models": sorted(self.models),
            "metric_types": sorted(self.metric_types),
            "interval": self.interval,
        }

    # --- outbound -------------------------------------------------------------------------

    def key(self) -> FilterKey:
        return (frozenset(self.endpoints), frozenset(self.models), frozenset(self.metric_types))

    def due(self, now: float, slack: float = 0.0) -> bool:
        """No update before one interval has passed since connect or the last update.

        ``slack`` (half a tick) absorbs timer jitter: a tick that wakes a millisecond early
        must not push the update to the following tick.
        """
        return now - self.last_update >= self.interval - slack - 1e-9

    def deltas(self, totals: dict[str, float]) -> dict[str, Any]:
        """Deltas against the last update sent to *this* client; ``{}`` on its first."""
        previous, self.last_sent = self.last_sent, totals
        return compute_deltas(previous, totals)


def compute_deltas(previous: dict[str, float] | None, current: dict[str, float]) -> dict[str, Any]:
    """SPEC §5.4: throughput totals and the active-streams change, or ``{}`` with no baseline."""
    if previous is None:
        return {}
    out: dict[str, Any] = {}
    if "total_requests_per_sec" in current and "total_requests_per_sec" in previous:
        out["throughput"] = {
            "total_requests_per_sec": current["total_requests_per_sec"]
            - previous["total_requests_per_sec"],
            "total_tokens_per_sec": current["total_tokens_per_sec"]
            - previous["total_tokens_per_sec"],
        }
    if "active_streams" in current and "active_streams" in previous:
        out["streaming"] = {
            "active_streams_delta": int(current["active_streams"] - previous["active_streams"])
        }
    return out


def error(now: float, message: str) -> dict[str, Any]:
    return {"type": "error", "timestamp": now, "message": message}
