"""Sliding windows from rings of time slots (SPEC §4 general rules), series-major.

Time is the daemon's monotonic clock, cut into slots (default 10 s). Two rings:

- the *short* ring holds the last ``short_slots`` slots (default 30 × 10 s = 5 min): windows up to
  5 minutes slide in 10-second steps;
- the *long* ring holds groups of ``group_slots`` slots (default 30, i.e. 5 minutes) for
  ``long_groups`` groups (default 12 = 1 hour): longer windows slide in 5-minute steps.

A window of W seconds is the current slot plus the previous ``ceil(W / step) - 1`` ones, and its
real span (``now − start of the oldest slot``) is returned with it, so a rate divides by the time
really covered.

One log holds every series of a tracker: :class:`CounterLog` for additive counters,
:class:`HistLog` for HDR histograms with exact count, sum, min and max beside them. The slot
being written is a dense accumulator indexed by series id; when the slot ends, only the series
it touched are kept, as sorted sparse arrays that never change again. Freezing a log for a
snapshot (:meth:`CounterLog.freeze`, :meth:`HistLog.freeze`) therefore copies only the open
slot's touched rows; readers reduce the frozen slots of a window by any grouping of the series
(per endpoint, per model, all together) with a few numpy calls.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.hist import Layout, exact_sums, exact_value, exact_values, group_quantiles
from metricsd.persist import INT64_MAX

__all__ = [
    "CounterLog",
    "CounterWindows",
    "Geometry",
    "GroupHist",
    "HistLog",
    "HistView",
    "HistWindows",
    "rate",
    "rates",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
#: Observations one slot of a saved histogram may hold (2**53: far beyond any traffic). The
#: HDR histograms a window is merged into count in int64: a window of a few dozen slots at this
#: bound still fits, where a hostile file's counts near 2**64 made the HDR encoder corrupt memory.
MAX_SLOT_COUNT: Final = 1 << 53
_SHIFT: Final = np.uint64(32)
_LOW32: Final = np.uint64(0xFFFFFFFF)
_MAX_CHUNKS: Final = 16  # open chunks of a histogram slot before they are merged
_DENSE_LIMIT: Final = 1 << 22


@dataclass(frozen=True)
class Geometry:
    """Slot sizes shared by every ring of a daemon."""

    slot_seconds: float = 10.0
    short_slots: int = 30
    group_slots: int = 30
    long_groups: int = 12

    @property
    def short_seconds(self) -> float:
        return self.slot_seconds * self.short_slots

    @property
    def long_seconds(self) -> float:
        return self.slot_seconds * self.group_slots * self.long_groups

    def slot(self, now: float) -> int:
        return int(now // self.slot_seconds)

    def plan(self, now: float, seconds: float) -> tuple[bool, int, float]:
        """For a window of ``seconds`` ending at ``now``: (use long ring, first index, span).

        The first index is a slot index (short ring) or a group index (long ring).
        """
        seconds = max(self.slot_seconds, min(seconds, self.long_seconds))
        slot = self.slot(now)
        if seconds <= self.short_seconds:
            k = math.ceil(seconds / self.slot_seconds - 1e-9)
            first = slot - k + 1
            return False, first, now - first * self.slot_seconds
        step = self.group_slots
        k = math.ceil(seconds / (self.slot_seconds * step) - 1e-9)
        first = slot // step - k + 1
        return True, first, now - first * step * self.slot_seconds


def rates(counts: FloatArray, span: float, ages: FloatArray) -> FloatArray:
    """:func:`rate` over arrays of counts and ages."""
    return counts / np.maximum(1.0, np.minimum(span, ages))


def rate(count: float, span: float, age: float) -> float:
    """Events per second over a window: count ÷ min(window span, series age), floored at 1 s.

    The series age stops the start-up spike of dividing by the time since the oldest sample
    (one event 0.2 ms ago would read 5 000/s); the 1 s floor keeps a brand-new series honest.
    """
    return count / max(1.0, min(span, age))


def _grown(arr: npt.NDArray[Any], need: int, fill: Any = 0) -> npt.NDArray[Any]:
    size = max(16, len(arr))
    while size <= need:
        size *= 2
    out = np.full((size, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


# --- counters ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sparse:
    """One closed slot (or group) of counters: the series it touched and their sums."""

    index: int
    ids: npt.NDArray[np.intp]
    values: FloatArray  # (len(ids), F)


class _OpenCounters:
    __slots__ = ("acc", "index", "touched")

    def __init__(self, fields: int) -> None:
        self.index = -(1 << 62)
        self.acc = np.zeros((0, fields), dtype=np.float64)
        self.touched = np.zeros(0, dtype=bool)

    def add(self, ids: npt.NDArray[np.intp], values: FloatArray) -> None:
        top = int(ids.max())
        if top >= len(self.acc):
            self.acc = _grown(self.acc, top)
            self.touched = _grown(self.touched, top, False)
        np.add.at(self.acc, ids, values)
        self.touched[ids] = True

    def close(self) -> _Sparse | None:
        ids = np.flatnonzero(self.touched)
        if ids.size == 0:
            return None
        out = _Sparse(self.index, ids, self.acc[ids].copy())
        self.acc[ids] = 0.0
        self.touched[ids] = False
        return out


def _roll(geometry: Geometry, now: float, short: Any, long: Any, finish: Any) -> None:
    """Move a log's open slot and open group to ``now``: each one the clock has left is closed
    into its ring (``finish`` makes what the ring keeps of it), and closed ones that fell out of
    the longest window are dropped. ``short`` and ``long`` are (open one, ring) pairs."""
    slot = geometry.slot(now)
    for (open_, ring), index, keep in (
        (short, slot, geometry.short_slots),
        (long, slot // geometry.group_slots, geometry.long_groups),
    ):
        if open_.index != index:
            closed = open_.close()
            if closed is not None:
                ring.append(finish(closed))
            open_.index = index
        while ring and ring[0].index <= index - keep:
            ring.popleft()


def _kept(closed: Any) -> Any:
    return closed


def _sealed(closed: Any) -> Any:
    return closed.sealed()  # closed histogram slots are kept compressed


class CounterLog:
    """F additive counters per series over the two rings; see the module docstring."""

    __slots__ = ("_group", "_long", "_short", "_slot", "fields", "geometry")

    def __init__(self, geometry: Geometry, fields: int) -> None:
        self.geometry = geometry
        self.fields = fields
        self._short: deque[_Sparse] = deque()
        self._long: deque[_Sparse] = deque()
        self._slot = _OpenCounters(fields)
        self._group = _OpenCounters(fields)

    def add(self, now: float, ids: npt.NDArray[np.intp], values: npt.ArrayLike) -> None:
        """Add ``values`` (one row of F per id; ids may repeat) at ``now``."""
        if len(ids) == 0:
            return
        self._advance(now)
        vals = np.asarray(values, dtype=np.float64).reshape(len(ids), self.fields)
        self._slot.add(ids, vals)
        self._group.add(ids, vals)

    def _advance(self, now: float) -> None:
        _roll(self.geometry, now, (self._slot, self._short), (self._group, self._long), _kept)

    def freeze(self, now: float) -> CounterWindows:
        self._advance(now)
        short = [*self._short]
        long = [*self._long]
        for open_, ring in ((self._slot, short), (self._group, long)):
            ids = np.flatnonzero(open_.touched)
            if ids.size:
                ring.append(_Sparse(open_.index, ids, open_.acc[ids].copy()))
        return CounterWindows(self.geometry, self.fields, tuple(short), tuple(long))

    def window(self, now: float, seconds: float, size: int) -> tuple[FloatArray, float]:
        return self.freeze(now).window(now, seconds, size)

    # --- persistence ----------------------------------------------------------------------

    def state(self, now: float, keep: npt.NDArray[np.intp]) -> dict[str, Any]:
        """The slots, with series ids renumbered by ``keep`` (old id → saved row, −1 drop)."""
        frozen = self.freeze(now)
        return {
            "short": [_save_sparse(s, keep) for s in frozen.short],
            "long": [_save_sparse(s, keep) for s in frozen.long],
        }

    def restore(self, state: Any, remap: npt.NDArray[np.intp], r: Any, path: str) -> None:
        """Slots saved by :meth:`state`; saved rows become ids through ``remap`` (−1: gone)."""
        m = r.map(state, path)
        self._short = deque(
            _load_sparse(s, remap, self.fields, r, f"{path}.short")
            for s in r.list(m.get("short"), f"{path}.short", 10_000)
        )
        self._long = deque(
            _load_sparse(s, remap, self.fields, r, f"{path}.long")
            for s in r.list(m.get("long"), f"{path}.long", 10_000)
        )

    def saved_counts(self, state: Any, r: Any, path: str, field: int = 0) -> Any:
        """For :meth:`SeriesTable.absorb`: the events behind each saved row, as the sum of
        ``field`` over this log's saved ``state``'s short ring (all a worker's delta holds: it
        spans less than that ring)."""

        def counts(rows: int) -> IntArray:
            m = r.map(state, path)
            out = np.zeros(rows, dtype=np.float64)
            for raw in r.list(m.get("short"), f"{path}.short", 10_000):
                s = _load_sparse(raw, np.arange(rows, dtype=np.intp), self.fields, r, path)
                np.add.at(out, s.ids, s.values[:, field])
            return out.astype(np.int64)

        return counts

    def absorb(
        self, state: Any, remap: npt.NDArray[np.intp], r: Any, path: str, now: float
    ) -> None:
        """Add another log's :meth:`state` (``--workers``: a worker's delta) to this one;
        ``remap`` gives this log's id of each saved row (rows may share one: a fold)."""
        _absorb_rings(
            self,
            r.map(state, path),
            r,
            path,
            now,
            lambda raw, where: _load_sparse(raw, remap, self.fields, r, where),
            lambda open_, s: open_.add(s.ids, s.values),
            _sparse_sum,
        )


def _save_sparse(s: _Sparse, keep: npt.NDArray[np.intp]) -> dict[str, Any]:
    inside = s.ids < len(keep)
    rows = np.full(len(s.ids), -1, dtype=np.intp)
    rows[inside] = keep[s.ids[inside]]
    ok = rows >= 0
    return {"index": s.index, "ids": rows[ok].astype(np.int64), "values": s.values[ok]}


def _remapped(
    ids: npt.NDArray[Any], remap: npt.NDArray[np.intp], r: Any, path: str
) -> npt.NDArray[np.intp]:
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(remap)):
        raise r.fail("a series row out of range", path)
    return remap[ids.astype(np.intp)] if ids.size else np.zeros(0, dtype=np.intp)


def _load_sparse(s: Any, remap: npt.NDArray[np.intp], fields: int, r: Any, path: str) -> _Sparse:
    m = r.map(s, path)
    ids = _remapped(r.array(m.get("ids"), f"{path}.ids", np.int64), remap, r, path)
    values = r.array(m.get("values"), f"{path}.values", np.float64, (fields,), finite=True)
    if len(values) != len(ids):
        raise r.fail("ids and values differ in length", path)
    ok = ids >= 0
    return _Sparse(r.int(m.get("index"), f"{path}.index", hi=INT64_MAX), ids[ok], values[ok])


@dataclass(frozen=True, slots=True)
class CounterWindows:
    """A frozen CounterLog: every slot and group it held at the freeze."""

    geometry: Geometry
    fields: int
    short: tuple[_Sparse, ...]
    long: tuple[_Sparse, ...]

    def window(self, now: float, seconds: float, size: int) -> tuple[FloatArray, float]:
        """Per-series sums over the window (dense, ``size`` rows) and its real span."""
        use_long, first, span = self.geometry.plan(now, seconds)
        out = np.zeros((size, self.fields), dtype=np.float64)
        for s in self.long if use_long else self.short:
            if s.index >= first:
                inside = s.ids < size
                if inside.all():
                    out[s.ids] += s.values
                else:
                    out[s.ids[inside]] += s.values[inside]
        return out, span

    def merged(self, others: list[CounterWindows]) -> CounterWindows:
        """Windows of several logs (same series ids): slots concatenated."""
        return CounterWindows(
            self.geometry,
            self.fields,
            tuple(s for w in (self, *others) for s in w.short),
            tuple(s for w in (self, *others) for s in w.long),
        )


# --- histograms -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _HistSlot:
    """One slot (or group): sparse (series << 32 | bucket) counts and per-series stats.

    A closed slot keeps its buckets sealed (:func:`_seal`: a few bytes per bucket instead of
    sixteen), the open slot of a snapshot as arrays. ``total`` holds exact sums of the values
    (Python ints of 2**-80, an object array)."""

    index: int
    keys_: npt.NDArray[np.uint64] | None
    counts_: npt.NDArray[np.uint64] | None
    ids: npt.NDArray[np.intp]
    count: IntArray
    total: npt.NDArray[Any]
    lo: FloatArray
    hi: FloatArray
    blob: bytes = b""

    def entries(self) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        if self.keys_ is not None and self.counts_ is not None:
            return self.keys_, self.counts_
        return _unseal(self.blob)

    def sealed(self) -> _HistSlot:
        if self.keys_ is None:
            return self
        return _HistSlot(
            self.index,
            None,
            None,
            self.ids,
            self.count,
            self.total,
            self.lo,
            self.hi,
            _seal(self.keys_, self.counts_),
        )

    def nbytes(self) -> int:
        stats = sum(int(a.nbytes) for a in (self.ids, self.count, self.lo, self.hi))
        stats += 32 * len(self.total)  # Python ints of ~100 bits
        if self.keys_ is not None and self.counts_ is not None:
            return stats + int(self.keys_.nbytes + self.counts_.nbytes)
        return stats + len(self.blob)


def _seal(keys: npt.NDArray[np.uint64], counts: Any) -> bytes:
    """Sorted (series << 32 | bucket) keys and counts → compressed bytes: the series as runs,
    bucket indexes as deltas within a run (small, so they compress well), counts as uint32
    (uint64 beyond), zlib level 1."""
    n = len(keys)
    if n == 0:
        return b""
    sid = (keys >> _SHIFT).astype(np.uint32)
    idx = (keys & _LOW32).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    runs = np.diff(np.r_[starts, n]).astype(np.uint32)
    deltas = idx.copy()
    deltas[1:] -= idx[:-1]
    deltas[starts] = idx[starts]
    wide = bool(counts.max() > 0xFFFFFFFF)
    header = np.array([n, len(starts), int(wide)], dtype=np.uint32).tobytes()
    body = (
        sid[starts].tobytes()
        + runs.tobytes()
        + deltas.astype(np.uint32).tobytes()
        + counts.astype(np.uint64 if wide else np.uint32).tobytes()
    )
    return zlib.compress(header + body, 1)


def _unseal(blob: bytes) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    if not blob:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    data = zlib.decompress(blob)
    n, k, wide = np.frombuffer(data, dtype=np.uint32, count=3).tolist()
    at = 12
    usid = np.frombuffer(data, dtype=np.uint32, count=k, offset=at).astype(np.uint64)
    at += 4 * k
    runs = np.frombuffer(data, dtype=np.uint32, count=k, offset=at).astype(np.intp)
    at += 4 * k
    deltas = np.frombuffer(data, dtype=np.uint32, count=n, offset=at).astype(np.int64)
    at += 4 * n
    counts = np.frombuffer(data, dtype=np.uint64 if wide else np.uint32, count=n, offset=at)
    cumulative = np.cumsum(deltas)
    starts = np.r_[0, np.cumsum(runs)[:-1]]
    idx = cumulative - np.repeat(cumulative[starts] - deltas[starts], runs)
    keys = (np.repeat(usid, runs) << _SHIFT) | idx.astype(np.uint64)
    return keys, counts.astype(np.uint64)


class _OpenHist:
    __slots__ = ("chunks", "count", "hi", "index", "lo", "total", "touched")

    def __init__(self) -> None:
        self.index = -(1 << 62)
        self.chunks: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]] = []
        self.count = np.zeros(0, dtype=np.int64)
        self.total: npt.NDArray[Any] = np.zeros(0, dtype=object)  # exact sums (hist.exact_sums)
        self.lo = np.zeros(0, dtype=np.float64)
        self.hi = np.zeros(0, dtype=np.float64)
        self.touched = np.zeros(0, dtype=bool)

    def add(self, e: HistEntries, length: int) -> None:
        top = int(e.ids.max())
        if top >= len(self.count):
            self.count = _grown(self.count, top)
            self.total = _grown(self.total, top)
            self.lo = _grown(self.lo, top, math.inf)
            self.hi = _grown(self.hi, top, -math.inf)
            self.touched = _grown(self.touched, top, False)
        self.chunks.append((e.keys, e.counts))
        if len(self.chunks) >= _MAX_CHUNKS:
            self.chunks = [_compact(self.chunks)]
        np.add.at(self.count, e.ids, e.count)
        np.add.at(self.total, e.ids, e.total)
        np.minimum.at(self.lo, e.ids, e.lo)
        np.maximum.at(self.hi, e.ids, e.hi)
        self.touched[e.ids] = True

    def snapshot(self) -> _HistSlot | None:
        ids = np.flatnonzero(self.touched)
        if ids.size == 0:
            return None
        keys, counts = _compact(self.chunks)
        self.chunks = [(keys, counts)] if keys.size else []
        return _HistSlot(
            self.index,
            keys,
            counts,
            ids,
            self.count[ids].copy(),
            self.total[ids].copy(),
            self.lo[ids].copy(),
            self.hi[ids].copy(),
        )

    def close(self) -> _HistSlot | None:
        out = self.snapshot()
        if out is not None:
            ids = out.ids
            self.count[ids] = 0
            self.total[ids] = 0
            self.lo[ids] = math.inf
            self.hi[ids] = -math.inf
            self.touched[ids] = False
        self.chunks = []
        return out


def _compact(
    chunks: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]],
    unique: bool = True,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Merge sparse chunks into one with unique, sorted keys (``unique``: each chunk's own keys
    are already unique and sorted, so a single chunk is returned as it is)."""
    if not chunks:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    if len(chunks) == 1 and unique:
        return chunks[0]
    keys = np.concatenate([c[0] for c in chunks])
    counts = np.concatenate([c[1] for c in chunks])
    uniq, inverse = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(uniq), dtype=np.uint64)
    np.add.at(summed, inverse.reshape(-1), counts)
    return uniq, summed


_INT_SAFE: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class HistEntries:
    """What one batch adds to a histogram log: sparse bucket counts and per-series stats
    (``total``: exact sums, Python ints of 2**-80, see :func:`metricsd.hist.exact_sums`)."""

    keys: npt.NDArray[np.uint64]
    counts: npt.NDArray[np.uint64]
    ids: npt.NDArray[np.intp]
    count: IntArray
    total: npt.NDArray[Any]
    lo: FloatArray
    hi: FloatArray
    clamped: int = 0


class HistLog:
    """Windowed HDR histograms of every series of a tracker; see the module docstring."""

    __slots__ = ("_group", "_long", "_short", "_slot", "clamped", "geometry", "layout")

    def __init__(self, geometry: Geometry, layout: Layout) -> None:
        self.geometry = geometry
        self.layout = layout
        self._short: deque[_HistSlot] = deque()
        self._long: deque[_HistSlot] = deque()
        self._slot = _OpenHist()
        self._group = _OpenHist()
        self.clamped = 0

    def record(self, now: float, entries: HistEntries | None) -> None:
        if entries is None or entries.ids.size == 0:
            return
        self._advance(now)
        length = self.layout.counts_len
        self._slot.add(entries, length)
        self._group.add(entries, length)
        self.clamped += entries.clamped

    def _advance(self, now: float) -> None:
        _roll(self.geometry, now, (self._slot, self._short), (self._group, self._long), _sealed)

    def freeze(self, now: float) -> HistWindows:
        self._advance(now)
        short = [*self._short]
        long = [*self._long]
        for open_, ring in ((self._slot, short), (self._group, long)):
            snap = open_.snapshot()
            if snap is not None:
                ring.append(snap)
        return HistWindows(self.geometry, self.layout, tuple(short), tuple(long))

    def state(self, now: float, keep: npt.NDArray[np.intp]) -> dict[str, Any]:
        frozen = self.freeze(now)
        return {
            "short": [_save_hist(s, keep) for s in frozen.short],
            "long": [_save_hist(s, keep) for s in frozen.long],
            "clamped": self.clamped,
        }

    def restore(self, state: Any, remap: npt.NDArray[np.intp], r: Any, path: str) -> None:
        m = r.map(state, path)
        length = self.layout.counts_len
        self._short = deque(
            _load_hist(s, remap, length, r, f"{path}.short")
            for s in r.list(m.get("short"), f"{path}.short", 10_000)
        )
        self._long = deque(
            _load_hist(s, remap, length, r, f"{path}.long")
            for s in r.list(m.get("long"), f"{path}.long", 10_000)
        )
        self.clamped = r.int(m.get("clamped"), f"{path}.clamped", 0)

    def absorb(
        self, state: Any, remap: npt.NDArray[np.intp], r: Any, path: str, now: float
    ) -> None:
        """Add another log's :meth:`state` (``--workers``: a worker's delta) to this one;
        ``remap`` gives this log's id of each saved row (rows may share one: a fold)."""
        m = r.map(state, path)
        length = self.layout.counts_len
        self.clamped += r.int(m.get("clamped"), f"{path}.clamped", 0)

        def add_open(open_: _OpenHist, s: _HistSlot) -> None:
            keys, counts = _compact([s.entries()], unique=False)  # folded rows: one key each
            open_.add(HistEntries(keys, counts, s.ids, s.count, s.total, s.lo, s.hi), length)

        _absorb_rings(
            self,
            m,
            r,
            path,
            now,
            lambda raw, where: _load_hist(raw, remap, length, r, where, seal=False),
            add_open,
            _hist_sum,
        )


def _save_hist(s: _HistSlot, keep: npt.NDArray[np.intp]) -> dict[str, Any]:
    """A slot with ids renumbered to saved rows; buckets as (row, index, count) columns."""
    keys, counts = s.entries()
    old = (keys >> _SHIFT).astype(np.intp)
    rows = np.full(len(old), -1, dtype=np.intp)
    inside = old < len(keep)
    rows[inside] = keep[old[inside]]
    ok = rows >= 0
    srows = np.full(len(s.ids), -1, dtype=np.intp)
    sin = s.ids < len(keep)
    srows[sin] = keep[s.ids[sin]]
    fine = srows >= 0
    return {
        "index": s.index,
        "rows": rows[ok].astype(np.int64),
        "buckets": (keys[ok] & _LOW32).astype(np.int64),
        "counts": counts[ok],
        "ids": srows[fine].astype(np.int64),
        "count": s.count[fine],
        "total": s.total[fine],
        "lo": s.lo[fine],
        "hi": s.hi[fine],
    }


def _load_hist(
    s: Any, remap: npt.NDArray[np.intp], length: int, r: Any, path: str, seal: bool = True
) -> _HistSlot:
    m = r.map(s, path)
    rows = _remapped(r.array(m.get("rows"), f"{path}.rows", np.int64), remap, r, path)
    buckets = r.array(m.get("buckets"), f"{path}.buckets", np.int64)
    counts = r.array(m.get("counts"), f"{path}.counts", np.uint64)
    if not len(rows) == len(buckets) == len(counts):
        raise r.fail("bucket columns differ in length", path)
    if counts.size and int(counts.sum(dtype=object)) > MAX_SLOT_COUNT:
        raise r.fail("more observations than a slot can hold", path)
    if buckets.size and (int(buckets.min()) < 0 or int(buckets.max()) >= length):
        raise r.fail("a bucket index out of range", path)
    ok = rows >= 0
    keys = (rows[ok].astype(np.uint64) << _SHIFT) | buckets[ok].astype(np.uint64)
    order = np.argsort(keys, kind="stable")
    ids = _remapped(r.array(m.get("ids"), f"{path}.ids", np.int64), remap, r, path)
    count = r.array(m.get("count"), f"{path}.count", np.int64)
    total = r.array(m.get("total"), f"{path}.total", np.int64, exact=True).astype(object)
    lo = r.array(m.get("lo"), f"{path}.lo", np.float64)
    hi = r.array(m.get("hi"), f"{path}.hi", np.float64)
    if not len(ids) == len(count) == len(total) == len(lo) == len(hi):
        raise r.fail("stat columns differ in length", path)
    if count.size and (int(count.min()) < 0 or int(count.max()) > MAX_SLOT_COUNT):
        raise r.fail("a count out of range", path)
    if np.isnan(lo).any() or np.isnan(hi).any():
        raise r.fail("a NaN minimum or maximum", path)
    fine = ids >= 0
    slot = _HistSlot(
        r.int(m.get("index"), f"{path}.index", hi=INT64_MAX),
        keys[order],
        counts[ok][order],
        ids[fine],
        count[fine],
        total[fine],
        lo[fine],
        hi[fine],
    )
    return slot.sealed() if seal else slot


def _absorb_rings(
    log: Any,
    m: dict[str, Any],
    r: Any,
    path: str,
    now: float,
    load: Callable[[Any, str], Any],
    add_open: Callable[[Any, Any], None],
    combine: Callable[[list[Any]], Any],
) -> None:
    """Merge another log's saved rings into ``log``'s (a :class:`CounterLog` or
    :class:`HistLog`): every slot is read and checked first, then a slot of the open one is
    added to it and a closed one goes into the ring (:func:`_absorb_closed`)."""
    loaded = [
        [load(raw, f"{path}.{name}") for raw in r.list(m.get(name), f"{path}.{name}", 10_000)]
        for name in ("short", "long")
    ]
    log._advance(now)
    for slots, open_, ring in zip(
        loaded, (log._slot, log._group), (log._short, log._long), strict=True
    ):
        for s in slots:
            if s.index < open_.index:
                _absorb_closed(ring, s, combine)
            elif s.ids.size:
                add_open(open_, s)


def _absorb_closed(ring: deque[Any], s: Any, combine: Callable[[list[Any]], Any]) -> None:
    """Put a closed slot of another log into ``ring`` (sorted by index): combined with the
    ring's slot of the same index, or inserted in its place (one older than the ring keeps
    goes at the next move of the open slot, as the ring's own would have)."""
    pos = len(ring)
    while pos and ring[pos - 1].index > s.index:
        pos -= 1
    if pos and ring[pos - 1].index == s.index:
        ring[pos - 1] = combine([ring[pos - 1], s])
    else:
        ring.insert(pos, combine([s]))


def _sparse_sum(parts: list[_Sparse]) -> _Sparse:
    """Counter slots of one index as one (ids unique and sorted, values summed)."""
    ids = np.concatenate([p.ids for p in parts])
    uniq, inverse = np.unique(ids, return_inverse=True)
    values = np.zeros((len(uniq), parts[0].values.shape[1]), dtype=np.float64)
    np.add.at(values, inverse.reshape(-1), np.concatenate([p.values for p in parts]))
    return _Sparse(parts[0].index, uniq, values)


def _hist_sum(parts: list[_HistSlot]) -> _HistSlot:
    """Histogram slots of one index as one, sealed (bucket counts and stats combined)."""
    keys, counts = _compact([p.entries() for p in parts], unique=False)
    ids = np.concatenate([p.ids for p in parts])
    uniq, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.reshape(-1)
    count = np.zeros(len(uniq), dtype=np.int64)
    np.add.at(count, inverse, np.concatenate([p.count for p in parts]))
    total = np.zeros(len(uniq), dtype=object)
    np.add.at(total, inverse, np.concatenate([p.total for p in parts]))
    lo = np.full(len(uniq), math.inf)
    np.minimum.at(lo, inverse, np.concatenate([p.lo for p in parts]))
    hi = np.full(len(uniq), -math.inf)
    np.maximum.at(hi, inverse, np.concatenate([p.hi for p in parts]))
    return _HistSlot(parts[0].index, keys, counts, uniq, count, total, lo, hi).sealed()


@dataclass(frozen=True, slots=True)
class HistWindows:
    """A frozen HistLog: every slot and group it held at the freeze."""

    geometry: Geometry
    layout: Layout
    short: tuple[_HistSlot, ...]
    long: tuple[_HistSlot, ...]

    def slots(self, now: float, seconds: float) -> tuple[list[_HistSlot], float]:
        use_long, first, span = self.geometry.plan(now, seconds)
        return [s for s in (self.long if use_long else self.short) if s.index >= first], span

    def reduce(
        self, now: float, seconds: float, groups: npt.NDArray[np.intp], size: int
    ) -> GroupHist:
        """The window, per group of series: ``groups[id]`` is the group of series ``id`` (−1:
        left out; ids beyond ``len(groups)`` are left out too)."""
        slots, span = self.slots(now, seconds)
        return GroupHist.of(self.layout, slots, groups, size, span)

    def merged(self, others: list[HistWindows]) -> HistWindows:
        return HistWindows(
            self.geometry,
            self.layout,
            tuple(s for w in (self, *others) for s in w.short),
            tuple(s for w in (self, *others) for s in w.long),
        )


def _regroup(ids: npt.NDArray[np.intp], groups: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    out = np.full(len(ids), -1, dtype=np.intp)
    inside = ids < len(groups)
    out[inside] = groups[ids[inside]]
    return out


@dataclass(frozen=True, slots=True)
class GroupHist:
    """One window of a histogram log, reduced to groups of series.

    Per group: ``count``, exact ``total`` (see :func:`metricsd.hist.exact_sums`), ``lo``/``hi``;
    buckets as sorted sparse (group << 32 | bucket) keys with counts.
    """

    layout: Layout
    size: int
    count: IntArray
    total: npt.NDArray[Any]
    lo: FloatArray
    hi: FloatArray
    keys: npt.NDArray[np.uint64]
    counts: npt.NDArray[np.uint64]
    span: float

    @classmethod
    def of(
        cls,
        layout: Layout,
        slots: list[_HistSlot],
        groups: npt.NDArray[np.intp],
        size: int,
        span: float,
    ) -> GroupHist:
        count = np.zeros(size, dtype=np.int64)
        total: npt.NDArray[Any] = np.zeros(size, dtype=object)
        lo = np.full(size, math.inf)
        hi = np.full(size, -math.inf)
        key_parts: list[npt.NDArray[np.uint64]] = []
        count_parts: list[npt.NDArray[np.uint64]] = []
        for s in slots:
            g = _regroup(s.ids, groups)
            ok = g >= 0
            if not ok.any():
                continue
            gi = g[ok]
            np.add.at(count, gi, s.count[ok])
            np.add.at(total, gi, s.total[ok])
            np.minimum.at(lo, gi, s.lo[ok])
            np.maximum.at(hi, gi, s.hi[ok])
            skeys, scounts = s.entries()
            bg = _regroup((skeys >> _SHIFT).astype(np.intp), groups)
            keep = bg >= 0
            key_parts.append((bg[keep].astype(np.uint64) << _SHIFT) | (skeys[keep] & _LOW32))
            count_parts.append(scounts[keep])
        if key_parts:
            # Regrouped keys repeat (several series, one group): always merge.
            keys, counts = _compact(list(zip(key_parts, count_parts, strict=True)), unique=False)
        else:
            keys = counts = np.zeros(0, dtype=np.uint64)
        return cls(layout, size, count, total, lo, hi, keys, counts, span)

    def quantiles(self, qs: tuple[float, ...]) -> FloatArray:
        """(size, len(qs)) quantiles per group (0 where a group is empty)."""
        return group_quantiles(self.layout, self.keys, self.counts, self.size, qs, self.lo, self.hi)

    def sum(self, g: int) -> float:
        return exact_value(self.total[g])

    def mean(self) -> FloatArray:
        totals = exact_values(self.total)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 0, totals / np.maximum(self.count, 1), 0.0)

    def columns(self, qs: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)) -> dict[str, FloatArray]:
        """``avg, min, max, p50, …`` as one array per statistic over the groups (zeros where a
        group has no data): what a reader of thousands of groups formats in one pass."""
        has = self.count > 0
        cols: dict[str, FloatArray] = {
            "avg": self.mean(),
            "min": np.where(has, self.lo, 0.0),
            "max": np.where(has, self.hi, 0.0),
        }
        quant = self.quantiles(qs)
        for j, q in enumerate(qs):
            cols[_qname(q)] = np.where(has, quant[:, j], 0.0)
        return cols

    def blocks(self, qs: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)) -> list[dict[str, Any]]:
        """``{avg, min, max, p50, …, count}`` per group (zeros with no data)."""
        cols = self.columns(qs)
        names = list(cols)
        rows = zip(*(cols[n].tolist() for n in names), self.count.tolist(), strict=True)
        return [dict(zip([*names, "count"], row, strict=True)) for row in rows]

    def view(self, g: int) -> HistView:
        """One group as a dense :class:`HistView` (for encodings and single reads)."""
        length = self.layout.counts_len
        dense = np.zeros(length, dtype=np.uint64)
        lo_key = np.uint64(g) << _SHIFT
        start = int(np.searchsorted(self.keys, lo_key, side="left"))
        end = int(np.searchsorted(self.keys, lo_key + _LOW32, side="right"))
        idx = (self.keys[start:end] & _LOW32).astype(np.intp)
        dense[idx] = self.counts[start:end]
        c = int(self.count[g])
        return HistView(
            self.layout,
            dense,
            c,
            exact_value(self.total[g]),
            float(self.lo[g]) if c else 0.0,
            float(self.hi[g]) if c else 0.0,
            self.span,
        )


def _qname(q: float) -> str:
    return "p" + f"{q * 100:g}".replace(".", "_")


@dataclass(frozen=True, slots=True)
class HistView:
    """A window of one histogram: counts and the exact count, sum, min and max beside them."""

    layout: Layout
    counts: npt.NDArray[Any]
    count: int
    sum: float
    min: float
    max: float
    span: float

    def quantiles(self, qs: tuple[float, ...]) -> list[float]:
        from metricsd.hist import quantiles_from_counts

        return quantiles_from_counts(self.layout, self.counts, qs, self.min, self.max)


def hist_entries(
    layout: Layout,
    values: FloatArray,
    codes: npt.NDArray[np.intp] | None,
    ids: npt.NDArray[np.intp],
) -> HistEntries | None:
    """What a batch adds to a histogram log: ``values`` (natural units, NaN = no sample) of rows
    in groups ``codes`` (None: one group), group g being series ``ids[g]``."""
    size = len(ids)
    finite = ~np.isnan(values)
    if not finite.all():
        values = values[finite]
        if codes is not None:
            codes = codes[finite]
    if values.size == 0:
        return None
    raw, clamped = layout.to_raw(values)
    idx = layout.indexes(raw)
    length = layout.counts_len
    if codes is None or size == 1:
        gcount = np.array([values.size], dtype=np.int64)
        gtotal = exact_sums(values, None, 1)
        glo, ghi = np.array([values.min()]), np.array([values.max()])
        dense = np.bincount(idx, minlength=length)
        nz = np.flatnonzero(dense)
        keys = (np.uint64(int(ids[0])) << _SHIFT) | nz.astype(np.uint64)
        counts = dense[nz].astype(np.uint64)
    else:
        gcount = np.bincount(codes, minlength=size).astype(np.int64)
        gtotal = exact_sums(values, codes, size)
        glo = np.full(size, math.inf)
        ghi = np.full(size, -math.inf)
        np.minimum.at(glo, codes, values)
        np.maximum.at(ghi, codes, values)
        if size * length <= _DENSE_LIMIT:
            dense = np.bincount(codes * length + idx, minlength=size * length)
            nz = np.flatnonzero(dense)
            g, b = np.divmod(nz, length)
            counts = dense[nz].astype(np.uint64)
        else:
            combined = codes.astype(np.int64) * length + idx
            nz, cnt = np.unique(combined, return_counts=True)
            g, b = np.divmod(nz, length)
            counts = cnt.astype(np.uint64)
        keys = (ids[g].astype(np.uint64) << _SHIFT) | b.astype(np.uint64)
        present = gcount > 0
        if not present.all():
            gcount, gtotal, glo, ghi = gcount[present], gtotal[present], glo[present], ghi[present]
            ids = ids[present]
        if len(np.unique(ids)) != len(ids):  # two groups folded into one series (overflow)
            keys, counts = _compact([(keys, counts)])
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
    return HistEntries(keys, counts, ids, gcount, gtotal, glo, ghi, clamped)
