"""Label-set registry: one per tracker, with a cardinality cap, overflow folding and idle TTL.

SPEC §3.3: at most ``max_series`` label sets per tracker; a new label set beyond the cap is folded
into ``__overflow__`` for every label (so its numbers still count, in one place) and counted.
Series idle longer than ``ttl`` seconds are dropped. The registry stores whatever state object
the tracker makes for a series; it never looks inside.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["OVERFLOW", "SeriesRegistry"]

OVERFLOW = "__overflow__"
S = TypeVar("S")


class SeriesRegistry(Generic[S]):
    """label tuple → series state, bounded."""

    __slots__ = ("_factory", "_last_seen", "_series", "max_series", "name", "overflowed", "ttl")

    def __init__(
        self, name: str, factory: Callable[[tuple[str, ...]], S], max_series: int, ttl: float
    ) -> None:
        self.name = name
        self._factory = factory
        self.max_series = max_series
        self.ttl = ttl
        self._series: dict[tuple[str, ...], S] = {}
        self._last_seen: dict[tuple[str, ...], float] = {}
        self.overflowed = 0  # label sets folded into the overflow series (lifetime)

    def get(self, labels: tuple[str, ...], now: float, count: int = 1) -> S:
        """The series for ``labels``, created (or folded into overflow) as needed.

        ``count`` is how many events this lookup stands for, so the overflow counter counts
        events folded, not lookups.
        """
        series = self._series.get(labels)
        if series is None:
            if len(self._series) >= self.max_series:
                self.overflowed += count
                labels = (OVERFLOW,) * len(labels)
                series = self._series.get(labels)
            if series is None:
                series = self._factory(labels)
                self._series[labels] = series
        self._last_seen[labels] = now
        return series

    def expire(self, now: float) -> int:
        """Drop series idle for longer than the TTL; returns how many were dropped."""
        cutoff = now - self.ttl
        stale = [k for k, t in self._last_seen.items() if t < cutoff]
        for key in stale:
            del self._series[key]
            del self._last_seen[key]
        return len(stale)

    def items(self) -> Iterator[tuple[tuple[str, ...], S]]:
        return iter(list(self._series.items()))

    def last_seen(self, labels: tuple[str, ...]) -> float:
        return self._last_seen[labels]

    def __getstate__(self) -> dict[str, Any]:
        """Saved without its factory: the restoring tracker's registry keeps its own."""
        return {
            "name": self.name,
            "series": self._series,
            "last_seen": self._last_seen,
            "overflowed": self.overflowed,
            "max_series": self.max_series,
            "ttl": self.ttl,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.name = state["name"]
        self._series = state["series"]
        self._last_seen = state["last_seen"]
        self.overflowed = state["overflowed"]
        self.max_series = state["max_series"]
        self.ttl = state["ttl"]
        self._factory = _no_factory

    def adopt(self, saved: SeriesRegistry[S]) -> None:
        """Take a saved registry's series (a restore); caps and TTL stay as configured now.

        Beyond a (lowered) cap the newest series are kept.
        """
        keys = sorted(saved._series, key=saved._last_seen.__getitem__)[-self.max_series :]
        self._series = {k: saved._series[k] for k in keys}
        self._last_seen = {k: saved._last_seen[k] for k in keys}
        self.overflowed = saved.overflowed

    def __len__(self) -> int:
        return len(self._series)

    def __contains__(self, labels: object) -> bool:
        return labels in self._series


def _no_factory(labels: tuple[str, ...]) -> Any:
    raise RuntimeError("a restored registry must be adopted by a live one before use")
