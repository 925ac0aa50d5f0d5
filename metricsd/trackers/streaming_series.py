"""Per-model state of the streaming tracker, and the constants its views share.

A :class:`StreamSeries` holds what the streams of one model produced: windowed HDR histograms
(for the JSON views and the compat summaries), exact Prometheus buckets and lifetime counters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np

from metricsd.config import Config
from metricsd.hist import Buckets, Layout
from metricsd.trackers.streaming_state import F64, I64
from metricsd.window import Geometry, HistRing

__all__ = [
    "DEFAULT_ERROR",
    "ORPHAN_TYPES",
    "RINGS",
    "STATUSES",
    "STATUS_CODES",
    "StreamSeries",
    "by_code",
    "layouts",
    "pick",
]

STATUSES = ("completed", "failed", "cancelled", "abandoned")
#: HTTP status of the request outcome a finished stream becomes (499: client closed request).
STATUS_CODES = {"completed": 200, "cancelled": 499, "failed": 500, "abandoned": 500}
#: ``error_type`` of that outcome when the end event gives none.
DEFAULT_ERROR = {
    "failed": "stream_failed",
    "cancelled": "stream_cancelled",
    "abandoned": "stream_abandoned",
}
RINGS = ("ttft", "itl", "tpot", "tps", "e2e_tps", "duration", "jitter", "smoothness")
ORPHAN_TYPES = ("stream.start", "stream.token", "stream.end", "stream.backpressure")
_FLUSH_VALUES = 65_536  # buffered values per series before a forced flush


def layouts(significant_figures: int) -> dict[str, Layout]:
    """Histogram layouts: ms latencies kept in µs up to 1 h; rates in milli-tokens/s."""
    latency = Layout(highest=3_600_000_000, significant_figures=significant_figures, scale=1000.0)
    rate = Layout(highest=10_000_000_000, significant_figures=significant_figures, scale=1000.0)
    score = Layout(highest=100_000, significant_figures=significant_figures, scale=1000.0)
    out = dict.fromkeys(("ttft", "itl", "tpot", "duration", "jitter"), latency)
    out.update({"tps": rate, "e2e_tps": rate, "smoothness": score})
    return out


class StreamSeries:
    """What the streams of one model produced: windows, exact buckets, lifetime counters."""

    __slots__ = (
        "backpressure",
        "geometry",
        "itl_buckets",
        "nbytes",
        "pending",
        "pending_n",
        "pending_now",
        "rings",
        "stalls",
        "started",
        "statuses",
        "tokens",
        "tpot_buckets",
        "tps_buckets",
    )

    def __init__(self, geometry: Geometry, config: Config, layout: dict[str, Layout]) -> None:
        self.geometry = geometry
        self.rings = {name: HistRing(geometry, layout[name]) for name in RINGS}
        self.pending: dict[str, list[F64]] = {}
        self.pending_now = 0.0
        self.pending_n = 0
        prom = config.prometheus
        self.itl_buckets = Buckets(prom.itl_buckets)
        self.tpot_buckets = Buckets(prom.itl_buckets)
        self.tps_buckets = Buckets(prom.tps_buckets)
        self.statuses: Counter[str] = Counter()
        self.started = 0
        self.stalls = 0
        self.backpressure = 0
        self.tokens = 0
        self.nbytes = 0

    def record(self, name: str, now: float, values: F64) -> None:
        """Record the finite values of a column (NaN marks "not defined").

        Values wait in a buffer until the window slot changes, the buffer is full, or the tick
        flushes it: one histogram update per model and slot instead of one per batch (a batch
        of a thousand tokens from a thousand streams otherwise pays that fixed cost per model).
        The slot is the one of the last batch buffered, so windows place every value exactly.
        """
        values = values[~np.isnan(values)]
        if values.size == 0:
            return
        if self.pending_n and self.geometry.slot(now) != self.geometry.slot(self.pending_now):
            self.flush()
        self.pending.setdefault(name, []).append(values)
        self.pending_now = now
        self.pending_n += values.size
        if self.pending_n >= _FLUSH_VALUES:
            self.flush()

    def flush(self) -> None:
        """Move buffered values into the windows and the exact Prometheus buckets."""
        for name, chunks in self.pending.items():
            values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
            self.rings[name].record(self.pending_now, values)
            if name == "itl":
                self.itl_buckets.record_array(values / 1000.0)
            elif name == "tpot":
                self.tpot_buckets.record_array(values / 1000.0)
            elif name == "tps":
                self.tps_buckets.record_array(values)
        self.pending.clear()
        self.pending_n = 0


def by_code(codes: I64) -> Iterator[tuple[int, I64 | None]]:
    """(code, row indexes) per distinct code; indexes None when every row shares the code."""
    if codes.size == 0:
        return
    first = int(codes[0])
    if bool((codes == first).all()):
        yield first, None
        return
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    heads = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for head, tail in zip(heads.tolist(), [*heads[1:].tolist(), ordered.size], strict=True):
        yield int(ordered[head]), order[head:tail]


def pick(values: Any, rows: I64 | None) -> Any:
    return values if rows is None else values[rows]
