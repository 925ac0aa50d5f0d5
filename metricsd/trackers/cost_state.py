"""State the cost tracker keeps per key and for all keys: exact totals and bounded time buckets.

Every amount is an exact integer of pUSD (see :mod:`metricsd.pricing`), held as a Python int so
no total can overflow. Time buckets are sparse dicts pruned as time moves on:

- ``hours``: spend per hour of the daemon's monotonic clock (arrival time, like every window in
  metricsd), the last 7 days, for the 24 h and 7 d views and the projection;
- ``days``: spend per local calendar day in ``cost.timezone`` (wall clock at arrival), the last
  62 days, for budget periods (a month is at most 31 days);
- ``usage``: per model, float day buckets of the token mix, for the suggestions (estimates, so
  floats are fine there).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.budgets import KEEP_DAYS
from metricsd.series import OVERFLOW

__all__ = ["HOURS_KEPT", "USAGE_FIELDS", "PicoBuckets", "Totals", "UsageRing", "exact_sum"]

HOURS_KEPT: Final = 7 * 24
#: Per-model day buckets for suggestions (token-priced rows only).
USAGE_FIELDS: Final = (
    "requests",
    "cost",  # billed pUSD
    "list_cost",  # pUSD before the batch discount
    "full",  # input tokens at the full input price
    "cached",
    "cache_write",
    "output",
    "long_requests",  # requests with input_tokens ≥ cost.long_prompt_tokens
    "long_full",
    "long_cached",
    "sync_requests",  # request events neither streamed nor batched
    "sync_cost",
)
USAGE_DAYS: Final = 8
MAX_MODELS_PER_KEY: Final = 64
_INT64_SAFE: Final = 1 << 63


def exact_sum(values: npt.NDArray[Any]) -> int:
    """Sum of an integer column as a Python int, exact even where int64 would wrap."""
    if values.size == 0:
        return 0
    if values.dtype != object and int(np.abs(values).max()) * values.size >= _INT64_SAFE:
        values = values.astype(object)
    return int(values.sum())


class PicoBuckets:
    """Exact Prometheus bucket counts of pUSD values (bounds converted to whole pUSD once)."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: npt.NDArray[np.int64]) -> None:
        self.bounds = bounds
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.count = 0
        self.sum = 0

    def record(self, values: npt.NDArray[Any], total: int) -> None:
        """Count ``values`` (pUSD); ``total`` is their exact sum, known to the caller."""
        if values.size == 0:
            return
        if values.dtype == object:  # beyond int64: past every bound, into +Inf
            big = np.array([v >= _INT64_SAFE for v in values], dtype=bool)
            self.counts[-1] += int(np.count_nonzero(big))
            small = values[~big].astype(np.int64)
        else:
            small = values
        # side="left": a value equal to a bound is in that bound's bucket (le = ≤).
        self.counts += np.bincount(
            np.searchsorted(self.bounds, small, side="left"), minlength=len(self.counts)
        )
        self.count += int(values.size)
        self.sum += total

    def cumulative(self) -> list[int]:
        return [int(c) for c in np.cumsum(self.counts)]


class Totals:
    """Spend of one key (or of every key): lifetime, by model and endpoint, per hour and day."""

    __slots__ = (
        "by_endpoint",
        "by_model",
        "cap",
        "days",
        "hours",
        "overflowed",
        "requests",
        "tokens",
        "total",
        "usage",
    )

    def __init__(self, cap: int) -> None:
        self.total = 0
        self.requests = 0
        self.tokens = [0, 0, 0, 0]  # input, output, cached, cache_write
        self.by_model: dict[str, int] = {}
        self.by_endpoint: dict[str, int] = {}
        self.hours: dict[int, int] = {}
        self.days: dict[int, int] = {}
        self.usage: dict[str, UsageRing] = {}
        self.cap = cap
        self.overflowed = 0

    def _label(self, table: dict[str, int], name: str) -> str:
        if name in table or len(table) < self.cap:
            return name
        self.overflowed += 1
        return OVERFLOW

    def add(
        self,
        model: str,
        endpoint: str,
        cost: int,
        requests: int,
        tokens: list[int],
        hour: int,
        day: int,
    ) -> None:
        self.total += cost
        self.requests += requests
        for i, t in enumerate(tokens):
            self.tokens[i] += t
        model = self._label(self.by_model, model)
        self.by_model[model] = self.by_model.get(model, 0) + cost
        endpoint = self._label(self.by_endpoint, endpoint)
        self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + cost
        _bucket(self.hours, hour, cost, HOURS_KEPT)
        _bucket(self.days, day, cost, KEEP_DAYS)

    def merge(self, other: Totals) -> None:
        """Add another key's totals (``--workers``: a worker's delta) to these."""
        self.total += other.total
        self.requests += other.requests
        for i, t in enumerate(other.tokens):
            self.tokens[i] += t
        for table, theirs in (
            (self.by_model, other.by_model),
            (self.by_endpoint, other.by_endpoint),
        ):
            for name, cost in theirs.items():
                if name != OVERFLOW:  # what the other folded was counted there
                    name = self._label(table, name)
                table[name] = table.get(name, 0) + cost
        for hour, cost in other.hours.items():
            _bucket(self.hours, hour, cost, HOURS_KEPT)
        for day, cost in other.days.items():
            _bucket(self.days, day, cost, KEEP_DAYS)
        for model, ring in other.usage.items():
            mine = self.usage_ring(model)
            if mine is not None:
                mine.merge(ring)
        self.overflowed += other.overflowed

    def copy(self) -> Totals:
        """A copy that later additions to this one do not change (for a snapshot)."""
        out = Totals(self.cap)
        out.total = self.total
        out.requests = self.requests
        out.tokens = list(self.tokens)
        out.by_model = dict(self.by_model)
        out.by_endpoint = dict(self.by_endpoint)
        out.hours = dict(self.hours)
        out.days = dict(self.days)
        out.usage = {m: r.copy() for m, r in self.usage.items()}
        out.overflowed = self.overflowed
        return out

    def state(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "requests": self.requests,
            "tokens": list(self.tokens),
            "by_model": dict(self.by_model),
            "by_endpoint": dict(self.by_endpoint),
            "hours": [[h, v] for h, v in self.hours.items()],
            "days": [[d, v] for d, v in self.days.items()],
            "usage": {m: {"idx": u.idx, "data": u.data} for m, u in self.usage.items()},
            "overflowed": self.overflowed,
        }

    @classmethod
    def restore(cls, value: Any, r: Any, path: str, cap: int) -> Totals:
        m = r.map(value, path)
        out = cls(cap)
        out.total = r.int(m.get("total"), f"{path}.total")
        out.requests = r.int(m.get("requests"), f"{path}.requests", 0)
        tokens = r.list(m.get("tokens"), f"{path}.tokens", 4)
        if len(tokens) != 4:
            raise r.fail("not four token counts", path)
        out.tokens = [r.int(t, f"{path}.tokens", 0) for t in tokens]
        out.by_model = _amounts(m.get("by_model"), r, f"{path}.by_model", cap + 1)
        out.by_endpoint = _amounts(m.get("by_endpoint"), r, f"{path}.by_endpoint", cap + 1)
        out.hours = _buckets(m.get("hours"), r, f"{path}.hours", HOURS_KEPT + 1)
        out.days = _buckets(m.get("days"), r, f"{path}.days", KEEP_DAYS + 1)
        usage = r.map(m.get("usage"), f"{path}.usage")
        if len(usage) > MAX_MODELS_PER_KEY:
            raise r.fail("too many models", path)
        for model, ring in usage.items():
            u = r.map(ring, f"{path}.usage")
            got = UsageRing()
            got.idx = r.array(u.get("idx"), f"{path}.usage.idx", np.int64)
            got.data = r.array(
                u.get("data"), f"{path}.usage.data", np.float64, (len(USAGE_FIELDS),), finite=True
            )
            if len(got.idx) != USAGE_DAYS or len(got.data) != USAGE_DAYS:
                raise r.fail("a usage ring of the wrong size", path)
            out.usage[r.str(model, path)] = got
        out.overflowed = r.int(m.get("overflowed"), f"{path}.overflowed", 0)
        return out

    def since_hour(self, first: int) -> int:
        return sum(v for h, v in self.hours.items() if h >= first)

    def usage_ring(self, model: str) -> UsageRing | None:
        ring = self.usage.get(model)
        if ring is None:
            if len(self.usage) >= MAX_MODELS_PER_KEY:
                return None  # suggestions cover the first models seen; costs are unaffected
            ring = self.usage[model] = UsageRing()
        return ring


def _bucket(buckets: dict[int, int], index: int, cost: int, keep: int) -> None:
    """Add to one time bucket; a new bucket drops those ``keep`` or more older than it."""
    if index not in buckets:
        for old in [b for b in buckets if b <= index - keep]:
            del buckets[old]
        buckets[index] = 0
    buckets[index] += cost


def _amounts(value: Any, r: Any, path: str, limit: int) -> dict[str, int]:
    m = r.map(value, path)
    if len(m) > limit:
        raise r.fail("too many entries", path)
    return {r.str(k, path): r.int(v, path) for k, v in m.items()}


def _buckets(value: Any, r: Any, path: str, limit: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for item in r.list(value, path, limit):
        pair = r.list(item, path, 2)
        if len(pair) != 2:
            raise r.fail("not (time, amount)", path)
        out[r.int(pair[0], path)] = r.int(pair[1], path)
    return out


class UsageRing:
    """Per-day sums of :data:`USAGE_FIELDS` over the last ``USAGE_DAYS`` monotonic days."""

    __slots__ = ("data", "idx")

    def __init__(self) -> None:
        self.idx = np.full(USAGE_DAYS, -(1 << 62), dtype=np.int64)
        self.data = np.zeros((USAGE_DAYS, len(USAGE_FIELDS)), dtype=np.float64)

    def copy(self) -> UsageRing:
        out = UsageRing()
        out.idx = self.idx.copy()
        out.data = self.data.copy()
        return out

    def add(self, now: float, values: list[float]) -> None:
        day = int(now // 86400)
        pos = day % USAGE_DAYS
        if self.idx[pos] != day:
            self.idx[pos] = day
            self.data[pos] = 0.0
        self.data[pos] += values

    def merge(self, other: UsageRing) -> None:
        """Add another ring's days; a day older than the one this ring holds in its place is
        gone here already."""
        for pos in range(USAGE_DAYS):
            day = int(other.idx[pos])
            if day == self.idx[pos]:
                self.data[pos] += other.data[pos]
            elif day > self.idx[pos]:
                self.idx[pos] = day
                self.data[pos] = other.data[pos]

    def window(self, now: float, days: int, since: float) -> tuple[dict[str, float], float]:
        """Sums over the current day and the ``days − 1`` before it, and the span covered
        (no more than the time since ``since``, when observation began)."""
        first = int(now // 86400) - days + 1
        sums = self.data[self.idx >= first].sum(axis=0)
        span = min(now - first * 86400.0, now - since)
        return dict(zip(USAGE_FIELDS, sums.tolist(), strict=True)), span
