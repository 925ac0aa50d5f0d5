"""window: exact windowed counts and percentiles as a synthetic clock moves."""

from __future__ import annotations

import numpy as np
import pytest

from metricsd.hist import Layout
from metricsd.series import OVERFLOW, SeriesRegistry
from metricsd.window import CounterRing, Geometry, HistRing

G = Geometry(slot_seconds=10.0)
L = Layout()


def test_counter_window_spans_and_expiry() -> None:
    ring = CounterRing(G, 2)
    for t in range(0, 600):  # one event per second for 10 minutes
        ring.add(float(t), [1, 2])
    now = 599.5
    sums, span = ring.window(now, 300)
    # The current slot (590-599.5) plus the 29 before it: 290 s of full slots + 9.5 s.
    assert span == pytest.approx(299.5)
    assert sums.tolist() == [300.0, 600.0]
    sums, span = ring.window(now, 60)
    assert sums.tolist() == [60.0, 120.0] and span == pytest.approx(59.5)
    sums, span = ring.window(now, 3600)
    assert sums.tolist() == [600.0, 1200.0]
    sums, _ = ring.window(1000.0, 300)  # long idle: the window is empty again
    assert sums.tolist() == [0.0, 0.0]


def test_hist_window_matches_exact_values() -> None:
    ring = HistRing(G, L)
    rng = np.random.default_rng(5)
    recorded: list[tuple[float, np.ndarray]] = []
    for t in range(0, 700, 2):
        v = rng.lognormal(3.0, 1.0, 50)
        recorded.append((float(t), v))
        ring.record(float(t), v)
    now = 699.0
    for seconds in (60, 300, 3600):
        view = ring.window(now, seconds)
        start = now - view.span
        inside = np.concatenate([v for t, v in recorded if t >= start])
        assert view.count == inside.size
        assert view.min == inside.min() and view.max == inside.max()
        assert view.sum == pytest.approx(inside.sum(), rel=1e-12)
        exact = np.percentile(inside, [50, 90, 99])
        for got, want in zip(view.quantiles((0.5, 0.9, 0.99)), exact, strict=True):
            assert abs(got - want) / want <= 0.01


def test_dense_five_minute_sum_equals_sparse_merge() -> None:
    ring = HistRing(G, L)
    rng = np.random.default_rng(1)
    for t in range(0, 1200, 3):
        ring.record(float(t), rng.exponential(100.0, 20))
    now = 1199.0
    dense = ring.window(now, 300)  # served from the running sum
    sparse = ring.window(now, 299)  # same slots, merged from the sparse ring
    assert np.array_equal(dense.counts.astype(np.uint64), sparse.counts)
    assert dense.count == sparse.count


def test_idle_ring_releases_memory() -> None:
    ring = HistRing(G, L)
    ring.record(0.0, np.array([1.0, 2.0]))
    assert ring.nbytes() > 0
    assert ring.window(10_000.0, 300).count == 0
    assert ring.nbytes() == 0


def test_memory_per_latency_series_under_target() -> None:
    """One hour of a busy, wide latency distribution stays under 64 KB of arrays."""
    ring = HistRing(G, L)
    rng = np.random.default_rng(2)
    for t in range(0, 3600):
        ring.record(float(t), rng.lognormal(5.0, 1.0, 50))
    ring.window(3600.0, 300)
    counters = CounterRing(G, 7)
    assert ring.nbytes() + counters.nbytes() <= 64 * 1024


def test_series_registry_cap_and_overflow() -> None:
    reg: SeriesRegistry[list[int]] = SeriesRegistry("t", lambda _k: [0], max_series=100, ttl=60)
    for i in range(5000):
        reg.get((f"model-{i}", "/e"), now=0.0)[0] += 1
    assert len(reg) == 101
    assert reg.overflowed == 4900
    assert reg.get((OVERFLOW, OVERFLOW), 0.0)[0] == 4900
    reg.get(("model-1", "/e"), now=100.0)
    assert reg.expire(100.0) == 100  # everything idle > 60 s, except the one just touched
    assert list(k for k, _ in reg.items()) == [("model-1", "/e")]
