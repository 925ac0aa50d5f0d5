"""Bounded state of the error tracker: the pattern table and the burst detector (SPEC §4.4).

Both are fed per *group* of errors (one call per distinct (error type, endpoint, message) in a
batch, or per batch), never per event, and both have a fixed upper bound on memory:

- :class:`PatternTable` holds at most ``max_patterns`` patterns in least-recently-seen order; a
  new pattern at the cap evicts the oldest and counts it. Each pattern's own sets are capped too
  (models, example request ids) or of fixed size (the distinct-user counter).
- :class:`BurstDetector` counts errors in ten 100 ms buckets (the last second), so memory is
  constant however fast errors arrive.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from typing import Any, Final

__all__ = ["BurstDetector", "DistinctCounter", "Pattern", "PatternTable"]

MAX_MODELS: Final = 20
MAX_REQUEST_IDS: Final = 5
MAX_SAMPLE: Final = 256


class DistinctCounter:
    """Approximate count of distinct strings in a fixed 4 096-bit bitmap (linear counting).

    Exact in practice for small counts (a collision among n values has probability about
    n² / 8 192: under 1 % for 10 users), within a few percent up to ~10 000, and saturating at
    about 34 000 (every bit set). 512 bytes per pattern at most, whatever the traffic.
    """

    BITS: Final = 4096
    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits = 0

    def add(self, value: str) -> None:
        # CRC-32: fast, and the same in every process (unlike hash()), so a count restored
        # from saved state keeps meaning the same users.
        self.bits |= 1 << (zlib.crc32(value.encode("utf-8", "surrogatepass")) % self.BITS)

    def estimate(self) -> int:
        ones = self.bits.bit_count()
        if ones == 0:
            return 0
        zeros = max(self.BITS - ones, 1)  # all bits set: report the saturation value
        return round(-self.BITS * math.log(zeros / self.BITS))


class Pattern:
    """One error pattern: errors whose (type, endpoint, normalised message) hash the same."""

    __slots__ = (
        "count",
        "endpoint",
        "error_type",
        "fingerprint",
        "first_seen",
        "last_seen",
        "last_seen_at",
        "models",
        "normalised",
        "request_ids",
        "sample",
        "status",
        "users",
        "version",
    )

    def __init__(
        self,
        fingerprint: str,
        error_type: str,
        endpoint: str,
        status: int,
        normalised: str,
        sample: str,
        wall: float,
    ) -> None:
        self.fingerprint = fingerprint
        self.error_type = error_type
        self.endpoint = endpoint
        self.status = status  # of the first occurrence
        self.normalised = normalised
        self.sample = sample[:MAX_SAMPLE]  # the first raw message, cut
        self.count = 0
        self.first_seen = wall
        self.last_seen = wall
        self.last_seen_at = 0.0  # daemon monotonic time, for the recent_only filter
        self.models: set[str] = set()
        self.users = DistinctCounter()
        self.request_ids: deque[str] = deque(maxlen=MAX_REQUEST_IDS)  # the most recent ones
        self.version = 0  # bumped on every change, so a snapshot re-reads only what changed

    def to_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "error_type": self.error_type,
            "endpoint": self.endpoint,
            "status": self.status,
            "normalized_message": self.normalised,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "affected_models": sorted(self.models),
            "affected_users_count": self.users.estimate(),
            "example_request_ids": list(self.request_ids),
            "sample_message": self.sample,
        }


class PatternTable:
    """fingerprint → :class:`Pattern`, at most ``max_patterns``, least recently seen evicted."""

    __slots__ = ("_patterns", "evicted", "max_patterns")

    def __init__(self, max_patterns: int) -> None:
        self.max_patterns = max_patterns
        self._patterns: OrderedDict[str, Pattern] = OrderedDict()
        self.evicted = 0  # patterns dropped at the cap (lifetime)

    def record(
        self,
        fingerprint: str,
        *,
        error_type: str,
        endpoint: str,
        status: int,
        normalised: str,
        message: str,
        count: int,
        models: Iterable[str],
        users: Iterable[str],
        request_ids: Iterable[str],
        now: float,
        wall: float,
    ) -> Pattern:
        """Add ``count`` occurrences of one pattern, seen at ``now`` (monotonic) / ``wall``."""
        pattern = self._patterns.get(fingerprint)
        if pattern is None:
            if len(self._patterns) >= self.max_patterns:
                self._patterns.popitem(last=False)
                self.evicted += 1
            pattern = Pattern(fingerprint, error_type, endpoint, status, normalised, message, wall)
            self._patterns[fingerprint] = pattern
        else:
            self._patterns.move_to_end(fingerprint)
        pattern.count += count
        pattern.last_seen = max(pattern.last_seen, wall)
        pattern.last_seen_at = now
        for model in models:
            if len(pattern.models) >= MAX_MODELS:
                break
            pattern.models.add(model)
        for user in users:
            pattern.users.add(user)
        pattern.request_ids.extend(request_ids)
        pattern.version += 1
        return pattern

    def select(
        self, min_count: int = 1, seen_since: float | None = None, limit: int | None = None
    ) -> list[Pattern]:
        """Patterns with ``count ≥ min_count`` (seen at or after ``seen_since`` if given), most
        frequent first (ties: most recently seen first)."""
        chosen = [
            p
            for p in self._patterns.values()
            if p.count >= min_count and (seen_since is None or p.last_seen_at >= seen_since)
        ]
        chosen.sort(key=lambda p: (-p.count, -p.last_seen_at, p.fingerprint))
        return chosen if limit is None else chosen[:limit]

    def __len__(self) -> int:
        return len(self._patterns)

    def __iter__(self) -> Iterator[Pattern]:
        return iter(list(self._patterns.values()))

    def get(self, fingerprint: str) -> Pattern | None:
        return self._patterns.get(fingerprint)

    def state(self) -> dict[str, Any]:
        """Patterns in least-recently-seen order (plain values)."""
        return {
            "evicted": self.evicted,
            "patterns": [
                {
                    "fingerprint": p.fingerprint,
                    "error_type": p.error_type,
                    "endpoint": p.endpoint,
                    "status": p.status,
                    "normalised": p.normalised,
                    "sample": p.sample,
                    "count": p.count,
                    "first_seen": p.first_seen,
                    "last_seen": p.last_seen,
                    "last_seen_at": p.last_seen_at,
                    "models": sorted(p.models),
                    "users": p.users.bits,
                    "request_ids": list(p.request_ids),
                }
                for p in self._patterns.values()
            ],
        }

    def restore(self, state: Any, r: Any) -> None:
        m = r.map(state, "patterns")
        self.evicted = r.int(m.get("evicted"), "patterns.evicted", 0)
        self._patterns.clear()
        saved = r.list(m.get("patterns"), "patterns.patterns", 1 << 20)
        for raw in saved[-self.max_patterns :]:
            d = r.map(raw, "patterns[]")
            p = Pattern(
                r.str(d.get("fingerprint"), "fingerprint", 64),
                r.str(d.get("error_type"), "error_type"),
                r.str(d.get("endpoint"), "endpoint"),
                r.int(d.get("status"), "status"),
                r.str(d.get("normalised"), "normalised"),
                r.str(d.get("sample"), "sample"),
                r.float(d.get("first_seen"), "first_seen"),
            )
            p.count = r.int(d.get("count"), "count", 0)
            p.last_seen = r.float(d.get("last_seen"), "last_seen")
            p.last_seen_at = r.float(d.get("last_seen_at"), "last_seen_at")
            p.models = {r.str(x, "models") for x in r.list(d.get("models"), "models", MAX_MODELS)}
            bits = r.int(d.get("users"), "users", 0)
            if bits >> DistinctCounter.BITS:
                raise r.fail("users bitmap too wide", "patterns")
            p.users.bits = bits
            p.request_ids.extend(
                r.str(x, "request_ids")
                for x in r.list(d.get("request_ids"), "request_ids", MAX_REQUEST_IDS)
            )
            self._patterns[p.fingerprint] = p


class BurstDetector:
    """≥ ``threshold`` errors within 1 s (daemon clock) make one burst event per second.

    Errors are counted in ten 100 ms buckets, so "within 1 s" is measured at 100 ms resolution.
    When the last second holds ``threshold`` errors and no burst is open, a burst opens: an event
    ``{timestamp, error_count, threshold, duration_seconds: 1.0}`` is appended (at most
    ``max_events`` kept). For the next second the burst stays open and its ``error_count``
    follows the peak number of errors seen within one second; a burst still going on after that
    opens the next event. So a steady error storm gives one event per second, not one per error.
    """

    RESOLUTION: Final = 0.1
    BUCKETS: Final = 10

    __slots__ = ("_counts", "_index", "_open", "_open_at", "events", "threshold", "total")

    def __init__(self, threshold: int = 10, max_events: int = 100) -> None:
        self.threshold = threshold
        self._counts = [0] * self.BUCKETS
        self._index = [-(1 << 62)] * self.BUCKETS
        self._open: dict[str, Any] | None = None
        self._open_at = 0.0
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self.total = 0  # burst events (lifetime)

    def add(self, now: float, wall: float, errors: int) -> None:
        if errors <= 0:
            return
        bucket = math.floor(now / self.RESOLUTION + 1e-9)
        pos = bucket % self.BUCKETS
        if self._index[pos] != bucket:
            self._index[pos] = bucket
            self._counts[pos] = 0
        self._counts[pos] += errors
        oldest = bucket - self.BUCKETS + 1
        in_last_second = sum(
            c for c, i in zip(self._counts, self._index, strict=True) if i >= oldest
        )
        if self._open is not None and now - self._open_at < 1.0:
            self._open["error_count"] = max(self._open["error_count"], in_last_second)
            return
        self._open = None
        if in_last_second >= self.threshold:
            self._open = {
                "timestamp": wall,
                "error_count": in_last_second,
                "threshold": self.threshold,
                "duration_seconds": 1.0,
            }
            self._open_at = now
            self.events.append(self._open)
            self.total += 1

    def recent(self) -> list[dict[str, Any]]:
        """Copies of the kept events, oldest first."""
        return [dict(e) for e in self.events]

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "events": self.recent()}

    def restore(self, state: Any, r: Any) -> None:
        """Lifetime count and the kept events; the last second's buckets start empty."""
        m = r.map(state, "bursts")
        self.total = r.int(m.get("total"), "bursts.total", 0)
        self.events.clear()
        for raw in r.list(m.get("events"), "bursts.events", self.events.maxlen or 100):
            e = r.map(raw, "bursts.events")
            self.events.append(
                {
                    "timestamp": r.float(e.get("timestamp"), "timestamp"),
                    "error_count": r.int(e.get("error_count"), "error_count", 0),
                    "threshold": r.int(e.get("threshold"), "threshold", 0),
                    "duration_seconds": r.float(e.get("duration_seconds"), "duration_seconds"),
                }
            )
