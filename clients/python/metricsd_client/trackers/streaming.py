"""``StreamingMetricsTracker``: FakeAI's streaming tracker API, computed by metricsd.

The methods and the ``get_metrics()`` fields keep the seed documents' names; the numbers are the
daemon's (SPEC §4.2): counts are lifetime, distributions cover the last 5 minutes, TTFT/ITL and
durations are in milliseconds, ``tokens_per_second`` is the decode rate
``(tokens − 1) / (last token − first token)`` (FakeAI's per-stream definition) and
``e2e_tokens_per_second`` the end-to-end rate, and ``success_rate`` is completed ÷ finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from metricsd_client._keys import hash_key
from metricsd_client.trackers._base import TrackerBase

__all__ = ["StreamingAggregateMetrics", "StreamingMetrics", "StreamingMetricsTracker"]


def _block(view: dict[str, Any], name: str) -> dict[str, float]:
    block = view.get(name) or {}
    return {k: float(v) for k, v in block.items() if isinstance(v, int | float)}


@dataclass
class StreamingMetrics:
    """``get_metrics()``: the daemon's ``/metrics/streaming`` under the seed's field names.

    ``raw`` (and :meth:`to_dict`) hold the whole view, including ``by_model``.
    """

    total_streams: int = 0
    active_streams: int = 0
    completed_streams: int = 0
    failed_streams: int = 0
    cancelled_streams: int = 0
    abandoned_streams: int = 0
    total_tokens_generated: int = 0
    total_bytes_sent: int = 0
    total_backpressure_events: int = 0
    stalls: int = 0
    success_rate: float = 0.0
    avg_ttft: float = 0.0
    min_ttft: float = 0.0
    max_ttft: float = 0.0
    p50_ttft: float = 0.0
    p90_ttft: float = 0.0
    p95_ttft: float = 0.0
    p99_ttft: float = 0.0
    avg_itl: float = 0.0
    p50_itl: float = 0.0
    p90_itl: float = 0.0
    p95_itl: float = 0.0
    p99_itl: float = 0.0
    avg_duration: float = 0.0
    p50_duration: float = 0.0
    p90_duration: float = 0.0
    p95_duration: float = 0.0
    p99_duration: float = 0.0
    avg_tokens_per_second: float = 0.0
    min_tokens_per_second: float = 0.0
    max_tokens_per_second: float = 0.0
    p50_tokens_per_second: float = 0.0
    p90_tokens_per_second: float = 0.0
    p95_tokens_per_second: float = 0.0
    p99_tokens_per_second: float = 0.0
    avg_e2e_tokens_per_second: float = 0.0
    p50_e2e_tokens_per_second: float = 0.0
    p95_e2e_tokens_per_second: float = 0.0
    p99_e2e_tokens_per_second: float = 0.0
    jitter_ms: float = 0.0
    smoothness: float = 0.0
    streams_by_model: dict[str, int] = field(default_factory=dict)
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    window_seconds: float = 300.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, view: dict[str, Any]) -> StreamingMetrics:
        out = cls(raw=view)
        for name in (
            "total_streams",
            "active_streams",
            "completed_streams",
            "failed_streams",
            "cancelled_streams",
            "abandoned_streams",
            "total_tokens_generated",
            "total_bytes_sent",
            "total_backpressure_events",
            "stalls",
        ):
            setattr(out, name, int(view.get(name) or 0))
        out.success_rate = float(view.get("success_rate") or 0.0)
        out.window_seconds = float(view.get("window_seconds") or 300.0)
        out.streams_by_model = dict(view.get("streams_by_model") or {})
        out.tokens_by_model = dict(view.get("tokens_by_model") or {})
        blocks = {
            "ttft": "ttft",
            "itl": "itl",
            "duration": "duration",
            "tokens_per_second": "tokens_per_second",
            "e2e_tokens_per_second": "e2e_tokens_per_second",
        }
        for suffix, name in blocks.items():
            block = _block(view, name)
            for stat in ("avg", "min", "max", "p50", "p90", "p95", "p99"):
                attr = f"{stat}_{suffix}"
                if hasattr(out, attr):
                    setattr(out, attr, block.get(stat, 0.0))
        out.jitter_ms = _block(view, "jitter_ms").get("avg", 0.0)
        out.smoothness = _block(view, "smoothness").get("avg", 0.0)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


#: The seed's name for the same object.
StreamingAggregateMetrics = StreamingMetrics


def _ts(timestamp: float | None, timestamp_ns: int | None = None) -> float:
    if timestamp is not None:
        return float(timestamp)
    if timestamp_ns is not None:
        return timestamp_ns / 1e9
    return time.time()


class StreamingMetricsTracker(TrackerBase):
    """Track streamed responses: lifecycle events go to the daemon, metrics come back from it.

    Each method sends one event (SPEC ``stream.*``) and returns at once; the daemon keys streams
    by ``stream_id``, so ids must be unique among the streams in flight on that daemon (across
    processes). ``max_active_streams`` and the other sizing arguments of the seed's constructor
    are accepted for compatibility; the daemon's limits apply (``limits.max_active_streams``).
    See :class:`~metricsd_client.trackers._base.TrackerBase` for the connection arguments.
    """

    _kind_flag = "enable_streaming_metrics"

    def __init__(
        self,
        max_active_streams: int = 10_000,
        max_completed_streams: int = 1000,
        aggregation_window_seconds: float = 300.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.max_active_streams = max_active_streams
        self.max_completed_streams = max_completed_streams
        self.aggregation_window_seconds = aggregation_window_seconds

    def start_stream(
        self,
        stream_id: str,
        model: str,
        prompt_tokens: int = 0,
        temperature: float | None = None,
        max_tokens: int | None = None,
        client_id: str | None = None,
        *,
        endpoint: str | None = None,
        api_key: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        provider: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """A stream began (its prompt tokens are billed with its output when it ends)."""
        if not self._on:
            return
        self._emit.stream_start(
            stream_id,
            prompt_tokens=prompt_tokens,
            temperature=temperature,
            max_tokens=max_tokens,
            client_id=client_id,
            provider=provider,
            endpoint=endpoint,
            model=model,
            key_id=hash_key(api_key) if api_key else None,
            user_id=user_id,
            request_id=request_id,
            ts=_ts(timestamp),
        )

    def record_token(
        self,
        stream_id: str,
        token: str = "",
        chunk_size_bytes: int | None = None,
        *,
        n: int = 1,
        timestamp_ns: int | None = None,
        timestamp: float | None = None,
    ) -> None:
        """``n`` tokens arrived (one chunk). The chunk size defaults to the token's UTF-8 size;
        the token text itself is not sent."""
        if not self._on:
            return
        size = chunk_size_bytes or len(token.encode("utf-8", "surrogatepass"))
        self._emit.stream_token(stream_id, n=n, bytes=size, ts=_ts(timestamp, timestamp_ns))

    def complete_stream(
        self,
        stream_id: str,
        finish_reason: str = "stop",
        client_id: str | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """The stream finished normally."""
        if not self._on:
            return
        self._emit.stream_end(
            stream_id, status="completed", finish_reason=finish_reason, ts=_ts(timestamp)
        )

    def fail_stream(
        self,
        stream_id: str,
        error_message: str | None = None,
        *,
        error_type: str | None = None,
        timestamp: float | None = None,
    ) -> None:
        """The stream failed (counted as an error outcome of its endpoint and model)."""
        if not self._on:
            return
        self._emit.stream_end(
            stream_id,
            status="failed",
            error_type=error_type,
            error_message=error_message,
            ts=_ts(timestamp),
        )

    def cancel_stream(
        self,
        stream_id: str,
        error_message: str | None = None,
        client_id: str | None = None,
        *,
        timestamp: float | None = None,
    ) -> None:
        """The client went away or the stream was stopped."""
        if not self._on:
            return
        self._emit.stream_end(
            stream_id, status="cancelled", error_message=error_message, ts=_ts(timestamp)
        )

    def record_backpressure(self, stream_id: str, buffer_size: int = 0) -> None:
        """The producer saw the client reading too slowly."""
        if not self._on:
            return
        self._emit.stream_backpressure(stream_id, buffer_size=buffer_size)

    def get_metrics(
        self, model: str | None = None, *, consistent: bool | None = None
    ) -> StreamingMetrics:
        """All streams' metrics (or one model's), as the daemon computes them."""
        self._sync(consistent)
        return StreamingMetrics.from_view(self._backend.streaming(model))

    def get_active_stream_count(self, *, consistent: bool | None = None) -> int:
        return self.get_metrics(consistent=consistent).active_streams
