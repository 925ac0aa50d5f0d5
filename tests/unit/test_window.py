"""window: exact windowed counts and percentiles as a synthetic clock moves."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pytest

from metricsd.hist import Layout
from metricsd.series import OVERFLOW, SeriesTable
from metricsd.window import CounterLog, Geometry, HistLog, HistView, hist_entries

G = Geometry(slot_seconds=10.0)
L = Layout()
ONE = np.zeros(1, dtype=np.intp)  # a single series, id 0


def record(log: HistLog, now: float, values: np.ndarray) -> None:
    log.record(now, hist_entries(L, values, None, ONE))


def window(log: HistLog, now: float, seconds: float) -> HistView:
    """The window of the single series as one histogram."""
    return log.freeze(now).reduce(now, seconds, ONE, 1).view(0)


def held_bytes(log: CounterLog | HistLog, now: float) -> int:
    """Bytes of the arrays a log holds at ``now``: every slot and group of its rings, the one
    being written included (what grows with data)."""
    frozen = log.freeze(now)
    total = 0
    for s in (*frozen.short, *frozen.long):
        for f in fields(s):
            value: Any = getattr(s, f.name)
            if isinstance(value, np.ndarray):
                total += int(value.nbytes)
    return total


def test_counter_window_spans_and_expiry() -> None:
    ring = CounterLog(G, 2)
    for t in range(0, 600):  # one event per second for 10 minutes
        ring.add(float(t), ONE, [1, 2])
    now = 599.5
    sums, span = ring.window(now, 300, 1)
    # The current slot (590-599.5) plus the 29 before it: 290 s of full slots + 9.5 s.
    assert span == pytest.approx(299.5)
    assert sums[0].tolist() == [300.0, 600.0]
    sums, span = ring.window(now, 60, 1)
    assert sums[0].tolist() == [60.0, 120.0] and span == pytest.approx(59.5)
    sums, span = ring.window(now, 3600, 1)
    assert sums[0].tolist() == [600.0, 1200.0]
    sums, _ = ring.window(1000.0, 300, 1)  # long idle: the window is empty again
    assert sums[0].tolist() == [0.0, 0.0]


def test_hist_window_matches_exact_values() -> None:
    ring = HistLog(G, L)
    rng = np.random.default_rng(5)
    recorded: list[tuple[float, np.ndarray]] = []
    for t in range(0, 700, 2):
        v = rng.lognormal(3.0, 1.0, 50)
        recorded.append((float(t), v))
        record(ring, float(t), v)
    now = 699.0
    for seconds in (60, 300, 3600):
        view = window(ring, now, seconds)
        start = now - view.span
        inside = np.concatenate([v for t, v in recorded if t >= start])
        assert view.count == inside.size
        assert view.min == inside.min() and view.max == inside.max()
        assert view.sum == pytest.approx(inside.sum(), rel=1e-12)
        exact = np.percentile(inside, [50, 90, 99])
        for got, want in zip(view.quantiles((0.5, 0.9, 0.99)), exact, strict=True):
            assert abs(got - want) / want <= 0.01


def test_dense_five_minute_sum_equals_sparse_merge() -> None:
    ring = HistLog(G, L)
    rng = np.random.default_rng(1)
    for t in range(0, 1200, 3):
        record(ring, float(t), rng.exponential(100.0, 20))
    now = 1199.0
    dense = window(ring, now, 300)  # the full short ring
    sparse = window(ring, now, 299)  # same slots, planned from a shorter window
    assert np.array_equal(dense.counts.astype(np.uint64), sparse.counts)
    assert dense.count == sparse.count


def test_idle_ring_releases_memory() -> None:
    ring = HistLog(G, L)
    record(ring, 0.0, np.array([1.0, 2.0]))
    assert held_bytes(ring, 0.0) > 0
    assert window(ring, 10_000.0, 300).count == 0
    assert held_bytes(ring, 10_000.0) == 0


def test_memory_per_latency_series_under_target() -> None:
    """One hour of a busy, wide latency distribution stays under 64 KB of arrays."""
    ring = HistLog(G, L)
    rng = np.random.default_rng(2)
    for t in range(0, 3600):
        record(ring, float(t), rng.lognormal(5.0, 1.0, 50))
    window(ring, 3600.0, 300)
    counters = CounterLog(G, 7)
    assert held_bytes(ring, 3600.0) + held_bytes(counters, 3600.0) <= 64 * 1024


def test_series_registry_cap_and_overflow() -> None:
    table = SeriesTable("t", 2, max_series=100, ttl=60)
    table.add_array("count")
    for i in range(5000):
        sid = table.id((f"model-{i}", "/e"), now=0.0, version=1)
        table.arrays["count"][sid] += 1
    assert len(table) == 101
    assert table.overflowed == 4900
    overflow = table.get((OVERFLOW, OVERFLOW))
    assert overflow is not None and table.arrays["count"][overflow] == 4900
    table.id(("model-1", "/e"), now=100.0, version=2)
    assert len(table.expire(100.0)) == 100  # everything idle > 60 s, except the one just touched
    assert [k for k, _ in table.items()] == [("model-1", "/e")]
