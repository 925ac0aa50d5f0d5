"""``--workers``: what a worker adds up merges into the serving process's state exactly.

Each structure a worker's delta carries (series tables, counter and histogram logs, SLO count
rings, cost totals) is merged here with worked numbers, against the same data recorded in one
place; the whole path (real worker processes, every tracker) is in
tests/integration/test_workers.py.
"""

from __future__ import annotations

import struct

import msgpack
import numpy as np
import pytest

from metricsd.config import load_config
from metricsd.persist import Reader, pack_state, unpack_state
from metricsd.series import OVERFLOW, SeriesTable
from metricsd.trackers.cost_state import Totals, UsageRing
from metricsd.trackers.requests import LATENCY_LAYOUT
from metricsd.trackers.slo import CountRing
from metricsd.window import CounterLog, Geometry, HistLog, hist_entries
from metricsd.wiring import build_engine
from metricsd.workers import WorkerPool

GEO = Geometry(slot_seconds=10.0, short_slots=30, group_slots=30, long_groups=12)


def _wire(state: object) -> object:
    """As a delta travels: packed by the worker, unpacked by the serving process."""
    return unpack_state(pack_state(state))


def _table(cap: int = 8) -> SeriesTable:
    t = SeriesTable("t", 1, cap, ttl=1e9)
    t.add_array("count")
    t.add_array("first", (), np.float64, -1.0, merge="first")
    t.add_array("depth", (), np.float64, 0.0, merge="last")
    return t


def test_series_merge_rules_and_the_fold_at_the_cap() -> None:
    main, delta = _table(cap=3), _table()
    ids = main.ids([("a",), ("b",)], [1, 1], 0.0, 1)
    main.arrays["count"][ids] = [5, 7]
    main.arrays["first"][ids] = [2.0, 9.0]
    main.arrays["depth"][ids] = [1.0, 1.0]
    ids = delta.ids([("b",), ("c",), ("d",)], [1, 1, 1], 0.0, 1)
    delta.arrays["count"][ids] = [10, 20, 30]
    delta.arrays["first"][ids] = [4.0, 6.0, 8.0]
    delta.arrays["depth"][ids] = [3.0, 4.0, 5.0]
    state, _rows = delta.state()
    remap = main.absorb(_wire(state), Reader("t"), 20.0, 2)
    # b exists; c takes the last place under the cap; d folds into __overflow__ (counted by
    # its 30 events, the table's ``count``).
    assert [main.keys[i] for i in remap.tolist()] == [("b",), ("c",), (OVERFLOW,)]
    got = {main.keys[i]: i for i in main.index.values()}
    count, first, depth = (main.arrays[n] for n in ("count", "first", "depth"))
    assert count[got[("a",)]] == 5 and count[got[("b",)]] == 17 and count[got[("c",)]] == 20
    assert first[got[("b",)]] == 4.0  # the earlier of 9.0 and 4.0
    assert first[got[("a",)]] == 2.0 and first[got[("c",)]] == 6.0
    assert depth[got[("b",)]] == 3.0  # a gauge: the delta's value
    assert main.overflowed == 30
    # A delta's own fold (counted in its table) is not counted again.
    folded = _table(cap=1)
    ids = folded.ids([("x",), ("y",)], [1, 4], 0.0, 1)
    folded.arrays["count"][ids] = [1, 4]
    state, _rows = folded.state()
    assert folded.overflowed == 4
    main.absorb(_wire(state), Reader("t"), 21.0, 3)
    assert main.overflowed == 30 + 4 + 1  # its 4, and x, new here at the cap (one event)
    assert main.versions[got[("b",)]] == 2 and main.last_seen[got[("b",)]] == 20.0


def test_counter_slots_merge_into_the_open_slot_and_the_closed_ones() -> None:
    main = CounterLog(GEO, 2)
    main.add(5.0, np.array([0]), [[1, 2]])  # slot 0
    main.add(15.0, np.array([1]), [[5, 5]])  # slot 1
    main.add(25.0, np.array([1]), [[10, 20]])  # slot 2, open
    delta = CounterLog(GEO, 2)
    delta.add(15.0, np.array([0]), [[100, 200]])  # slot 1: merged into main's closed slot
    delta.add(25.0, np.array([0, 0]), [[1000, 2000], [1, 1]])  # slot 2: into the open slot
    main.absorb(_wire(delta.state(25.0, np.arange(1))), np.array([1]), Reader("w"), "w", 25.0)
    frozen = main.freeze(25.0)
    assert [s.index for s in frozen.short] == [0, 1, 2]  # one slot per index, in order
    sums, _span = main.window(25.0, 30.0, 2)
    assert sums.tolist() == [[1, 2], [5 + 10 + 100 + 1001, 5 + 20 + 200 + 2001]]
    assert main.window(25.0, 10.0, 2)[0].tolist() == [[0, 0], [1011, 2021]]
    assert main.window(25.0, 20.0, 2)[0].tolist() == [[0, 0], [1116, 2226]]


def test_a_delta_slot_the_main_log_never_had_is_inserted_in_order() -> None:
    main = CounterLog(GEO, 1)
    main.add(5.0, np.array([0]), [[1]])
    main.add(25.0, np.array([0]), [[1]])
    delta = CounterLog(GEO, 1)
    delta.add(15.0, np.array([0, 1]), [[7], [8]])  # slot 1, absent from main
    # Two saved rows fold into one series here: their values add up.
    main.absorb(_wire(delta.state(15.0, np.arange(2))), np.array([0, 0]), Reader("w"), "w", 25.0)
    frozen = main.freeze(25.0)
    assert [s.index for s in frozen.short] == [0, 1, 2]
    assert frozen.short[1].ids.tolist() == [0] and frozen.short[1].values.tolist() == [[15.0]]
    assert main.window(25.0, 30.0, 1)[0].tolist() == [[17.0]]


def _record(log: HistLog, now: float, series: int, values: list[float]) -> None:
    entries = hist_entries(LATENCY_LAYOUT, np.array(values), None, np.array([series]))
    log.record(now, entries)


def test_histogram_slots_merge_like_one_log_that_saw_every_value() -> None:
    one, main, delta = HistLog(GEO, LATENCY_LAYOUT), HistLog(GEO, LATENCY_LAYOUT), None
    delta = HistLog(GEO, LATENCY_LAYOUT)
    for log, series in ((one, 1), (main, 1)):
        _record(log, 5.0, series, [1.0, 2.0])
        _record(log, 25.0, series, [40.0])
    for log, series, now, values in ((one, 1, 5.0, [3.0]), (delta, 0, 5.0, [3.0])):
        _record(log, now, series, values)
    for log, series in ((one, 1), (delta, 0)):
        _record(log, 15.0, series, [4.0, 4.0])
        _record(log, 25.0, series, [0.5])
    main.absorb(_wire(delta.state(25.0, np.arange(1))), np.array([1]), Reader("w"), "w", 25.0)
    groups = np.array([0, 0])
    for seconds in (10.0, 20.0, 30.0, 3600.0):
        a = one.freeze(25.0).reduce(25.0, seconds, groups, 1)
        b = main.freeze(25.0).reduce(25.0, seconds, groups, 1)
        assert a.count.tolist() == b.count.tolist()
        assert a.total.tolist() == b.total.tolist()
        assert (a.lo.tolist(), a.hi.tolist()) == (b.lo.tolist(), b.hi.tolist())
        assert a.keys.tolist() == b.keys.tolist() and a.counts.tolist() == b.counts.tolist()
    whole = main.freeze(25.0).reduce(25.0, 30.0, groups, 1)
    assert whole.count.tolist() == [7] and (whole.lo[0], whole.hi[0]) == (0.5, 40.0)


def test_count_rings_add_slot_by_slot_and_drop_what_fell_out() -> None:
    main, delta = CountRing(60.0, 4), CountRing(60.0, 4)
    main.add(0.0, 10, 1)  # slot 0
    main.add(130.0, 20, 2)  # slot 2
    delta.add(70.0, 100, 10)  # slot 1
    delta.add(200.0, 1000, 100)  # slot 3: moves main's head
    main.merge(delta.counts.copy(), delta.head)
    assert main.head == 3
    assert main.sums(200.0, 240.0) == (1130, 113)
    assert main.sums(200.0, 120.0) == (1020, 102)
    old = CountRing(60.0, 4)
    old.add(0.0, 5, 5)  # slot 0 …
    main.add(300.0, 1, 0)  # … which main (head 5, slots 2–5) no longer keeps
    main.merge(old.counts.copy(), old.head)
    assert main.sums(300.0, 240.0) == (1021, 102)


def test_cost_totals_and_usage_days_merge_exactly() -> None:
    a, b = Totals(cap=2), Totals(cap=2)
    a.add("m1", "/e1", 10**20 + 1, 1, [1, 2, 3, 4], hour=5, day=100)
    b.add("m1", "/e1", 7, 2, [10, 20, 30, 40], hour=5, day=100)
    b.add("m2", "/e2", 3, 1, [0, 0, 0, 0], hour=6, day=101)
    b.add("m3", "/e1", 2, 1, [0, 0, 0, 0], hour=6, day=101)
    a.merge(Totals.restore(_wire(b.state()), Reader("c"), "k", 2))
    assert a.total == 10**20 + 13 and a.requests == 5
    assert a.tokens == [11, 22, 33, 44]
    # b folded its third model (and counted it); a takes the fold as it is, counted once.
    assert b.by_model == {"m1": 7, "m2": 3, OVERFLOW: 2} and b.overflowed == 1
    assert a.by_model == {"m1": 10**20 + 8, "m2": 3, OVERFLOW: 2}
    assert a.hours == {5: 10**20 + 8, 6: 5} and a.days == {100: 10**20 + 8, 101: 5}
    assert a.overflowed == 1
    ring, other = UsageRing(), UsageRing()
    ring.add(86400.0 * 3, [1.0] * 12)
    other.add(86400.0 * 3, [2.0] * 12)  # same day: adds
    other.add(86400.0 * 4, [5.0] * 12)  # a newer day: taken
    ring.merge(other)
    sums, _span = ring.window(86400.0 * 4, 2, 0.0)
    assert sums["requests"] == 8.0


@pytest.mark.parametrize("rule", ["sum", "max"])
def test_an_unknown_merge_rule_is_refused(rule: str) -> None:
    with pytest.raises(ValueError, match="merge rule"):
        SeriesTable("t", 1, 4, 1.0).add_array("x", merge=rule)


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # not msgpack
        msgpack.packb([1, 2]),  # not a map of trackers
        msgpack.packb({"nope": {}}),  # no such tracker
        msgpack.packb({"requests": {"series": "x"}}),  # a tracker's state that does not parse
    ],
)
def test_a_delta_that_cannot_be_read_is_counted_lost(payload: bytes) -> None:
    engine = build_engine(load_config(environ={}), 0.0, 1.0)
    pool = WorkerPool(2, engine.limits, engine, lambda: 5.0, wall=lambda: 1.0)
    try:
        engine.remote = dict(pool.remote)
        pool.workers[1].unmerged = 7
        header = struct.pack("<QQ", 1, pool.workers[1].generation)
        pool._receive([b"delta", header, struct.pack("<Q", 7), payload])
        assert (pool.bad_results, pool.lost_frames, pool.workers[1].unmerged) == (1, 7, 0)
        # One from a worker since replaced (another generation) was counted with it: dropped.
        pool.workers[1].unmerged = 3
        stale = struct.pack("<QQ", 1, pool.workers[1].generation + 1)
        pool._receive([b"delta", stale, struct.pack("<Q", 3), payload])
        assert (pool.bad_results, pool.lost_frames, pool.workers[1].unmerged) == (1, 7, 3)
    finally:
        pool.stop()
