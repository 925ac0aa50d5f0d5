"""Sliding windows from rings of time slots (SPEC §4 general rules).

Time is the daemon's monotonic clock, cut into slots (default 10 s). Two rings per series:

- the *short* ring holds the last ``short_slots`` slots (default 30 × 10 s = 5 min): windows up to
  5 minutes slide in 10-second steps;
- the *long* ring holds groups of ``group_slots`` slots (default 30, i.e. 5 minutes) for
  ``long_groups`` groups (default 12 = 1 hour): longer windows slide in 5-minute steps.

Every write goes to the current slot of both rings; nothing is re-merged on a tick. A window of
W seconds is the current slot plus the previous ``ceil(W / step) - 1`` ones, and its real span
(``now − start of the oldest slot``) is returned with it, so a rate divides by the time really
covered. Histogram slots are kept sparse (nonzero buckets only) and compressed once closed;
the 5-minute histogram is also kept as one dense running sum (the slot that expires is
subtracted), because that is the window read on every tick.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from metricsd.hist import Layout, quantiles_from_counts

__all__ = ["CounterRing", "Geometry", "HistRing", "HistView"]

FloatArray = npt.NDArray[np.float64]
_EMPTY = np.zeros(0, dtype=np.uint64)
_LOW32 = np.uint64(0xFFFFFFFF)
_MAX_CHUNKS = 16  # open chunks per slot before they are merged


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


class CounterRing:
    """F additive counters over the two rings (requests, errors, tokens, …)."""

    __slots__ = ("_long", "_long_idx", "_short", "_short_idx", "geometry")

    def __init__(self, geometry: Geometry, fields: int) -> None:
        self.geometry = geometry
        self._short = np.zeros((geometry.short_slots, fields), dtype=np.float64)
        self._short_idx = np.full(geometry.short_slots, -(1 << 62), dtype=np.int64)
        self._long = np.zeros((geometry.long_groups + 1, fields), dtype=np.float64)
        self._long_idx = np.full(geometry.long_groups + 1, -(1 << 62), dtype=np.int64)

    def add(self, now: float, values: npt.ArrayLike) -> None:
        g = self.geometry
        slot = g.slot(now)
        pos = slot % g.short_slots
        if self._short_idx[pos] != slot:
            self._short[pos] = 0.0
            self._short_idx[pos] = slot
        self._short[pos] += values
        group = slot // g.group_slots
        lpos = group % len(self._long_idx)
        if self._long_idx[lpos] != group:
            self._long[lpos] = 0.0
            self._long_idx[lpos] = group
        self._long[lpos] += values

    def window(self, now: float, seconds: float) -> tuple[FloatArray, float]:
        """Sums of every field over the window, and the window's real span in seconds."""
        use_long, first, span = self.geometry.plan(now, seconds)
        if use_long:
            mask = self._long_idx >= first
            return self._long[mask].sum(axis=0), span
        mask = self._short_idx >= first
        return self._short[mask].sum(axis=0), span

    def nbytes(self) -> int:
        return int(self._short.nbytes + self._long.nbytes + self._short_idx.nbytes * 2)


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
        return quantiles_from_counts(self.layout, self.counts, qs, self.min, self.max)

    def block(self, qs: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)) -> dict[str, float | int]:
        """``{avg, min, max, p50, p90, p95, p99, count}`` (zeros with no data)."""
        if self.count == 0:
            out: dict[str, float | int] = {"avg": 0.0, "min": 0.0, "max": 0.0}
            out.update({_qname(q): 0.0 for q in qs})
            out["count"] = 0
            return out
        values = self.quantiles(qs)
        out = {"avg": self.sum / self.count, "min": self.min, "max": self.max}
        out.update({_qname(q): v for q, v in zip(qs, values, strict=True)})
        out["count"] = self.count
        return out


def _qname(q: float) -> str:
    return "p" + f"{q * 100:g}".replace(".", "_")


def _pack(indexes: npt.NDArray[Any], counts: npt.NDArray[Any]) -> npt.NDArray[np.uint64]:
    return (indexes.astype(np.uint64) << np.uint64(32)) | counts.astype(np.uint64)


def _unpack(packed: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint64]]:
    return (packed >> np.uint64(32)).astype(np.int64), packed & _LOW32


def _compact(chunks: list[npt.NDArray[np.uint64]], length: int) -> npt.NDArray[np.uint64]:
    """Merge packed sparse chunks into one packed array with unique, sorted indexes."""
    if not chunks:
        return _EMPTY
    if len(chunks) == 1:
        return chunks[0]
    idx, cnt = _unpack(np.concatenate(chunks))
    dense = np.bincount(idx, weights=cnt, minlength=length)
    nz = np.flatnonzero(dense)
    return _pack(nz, dense[nz].astype(np.uint64))


def _seal(packed: npt.NDArray[np.uint64]) -> bytes:
    """Closed slots are stored compressed: index deltas (uint16) and counts, zlib level 1.

    A closed slot is read only when it expires or a non-default window is asked for, so 5-6×
    less memory is worth tens of microseconds once per slot.
    """
    idx, cnt = _unpack(packed)
    wide = bool(cnt.size and int(cnt.max()) > 0xFFFFFFFF)
    deltas = np.diff(idx, prepend=0).astype(np.uint16)
    counts = cnt.astype(np.uint64 if wide else np.uint32)
    header = (b"\x08" if wide else b"\x04") + len(idx).to_bytes(4, "little")
    return zlib.compress(header + deltas.tobytes() + counts.tobytes(), 1)


def _unseal(blob: bytes) -> npt.NDArray[np.uint64]:
    data = zlib.decompress(blob)
    width, n = data[0], int.from_bytes(data[1:5], "little")
    deltas = np.frombuffer(data, dtype=np.uint16, count=n, offset=5)
    counts = np.frombuffer(
        data, dtype=np.uint64 if width == 8 else np.uint32, count=n, offset=5 + 2 * n
    )
    return _pack(np.cumsum(deltas, dtype=np.int64), counts)


class _Slot:
    """One slot of a histogram ring: open chunks or a sealed blob, and exact stats."""

    __slots__ = ("blob", "chunks", "count", "index", "max", "min", "sums")

    def __init__(self, index: int) -> None:
        self.index = index
        self.chunks: list[npt.NDArray[np.uint64]] = []
        self.blob = b""
        self.count = 0
        self.sums: list[float] = []
        self.min = math.inf
        self.max = -math.inf

    def add(
        self,
        packed: npt.NDArray[np.uint64],
        count: int,
        total: float,
        lo: float,
        hi: float,
        length: int,
    ) -> None:
        self.chunks.append(packed)
        self.count += count
        self.sums.append(total)
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        if len(self.chunks) >= _MAX_CHUNKS:
            self.chunks = [_compact(self.chunks, length)]
            self.sums = [math.fsum(self.sums)]

    def seal(self, length: int) -> None:
        """Merge the open chunks (and any earlier blob) into one compressed blob."""
        if self.chunks:
            parts = self.chunks + ([_unseal(self.blob)] if self.blob else [])
            self.blob = _seal(_compact(parts, length))
            self.chunks = []
            self.sums = [math.fsum(self.sums)]

    def arrays(self) -> list[npt.NDArray[np.uint64]]:
        return self.chunks + ([_unseal(self.blob)] if self.blob else [])

    @property
    def total(self) -> float:
        return math.fsum(self.sums)

    def nbytes(self) -> int:
        return len(self.blob) + sum(int(c.nbytes) for c in self.chunks)


class HistRing:
    """A windowed HDR histogram: sparse slots in both rings, a dense 5-minute running sum."""

    __slots__ = ("_dense", "_long", "_short", "clamped", "geometry", "layout")

    def __init__(self, geometry: Geometry, layout: Layout) -> None:
        self.geometry = geometry
        self.layout = layout
        self._short: list[_Slot] = []  # oldest first; the last one may be open
        self._long: list[_Slot] = []
        self._dense: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] | None = None
        self.clamped = 0

    def record(self, now: float, values: FloatArray) -> None:
        if values.size == 0:
            return
        layout = self.layout
        raw, clamped = layout.to_raw(values)
        self.clamped += clamped
        dense_batch = np.bincount(layout.indexes(raw), minlength=layout.counts_len)
        nz = np.flatnonzero(dense_batch)
        packed = _pack(nz, dense_batch[nz])
        self._advance(now)
        g = self.geometry
        slot = g.slot(now)
        if not self._short or self._short[-1].index != slot:
            self._short.append(_Slot(slot))
        group = slot // g.group_slots
        if not self._long or self._long[-1].index != group:
            self._long.append(_Slot(group))
        count = int(values.size)
        total = float(np.sum(values))
        lo, hi = float(values.min()), float(values.max())
        length = layout.counts_len
        self._short[-1].add(packed, count, total, lo, hi, length)
        self._long[-1].add(packed, count, total, lo, hi, length)
        if self._dense is None:
            self._dense = np.zeros(layout.counts_len, dtype=np.uint32)
        self._grow_if_needed(count)
        self._dense[nz] += dense_batch[nz].astype(self._dense.dtype)

    def _grow_if_needed(self, adding: int) -> None:
        """Counts stay in uint32 (half the memory) until a 5-minute window could overflow it."""
        assert self._dense is not None
        if self._dense.dtype == np.uint32:
            held = sum(s.count for s in self._short)
            if held + adding >= 0xFFFFFFFF:
                self._dense = self._dense.astype(np.uint64)

    def _advance(self, now: float) -> None:
        """Close slots that ended, expire what left the rings (subtracting from the dense sum)."""
        g = self.geometry
        slot = g.slot(now)
        length = self.layout.counts_len
        for s in self._short:
            if s.index < slot and s.chunks:
                s.seal(length)
        while self._short and self._short[0].index <= slot - g.short_slots:
            old = self._short.pop(0)
            if self._dense is not None and old.count:
                idx, cnt = _unpack(_compact(old.arrays(), length))
                self._dense[idx] -= cnt.astype(self._dense.dtype)
        group = slot // g.group_slots
        for s in self._long:
            if s.index < group and s.chunks:
                s.seal(length)
        while self._long and self._long[0].index <= group - g.long_groups:
            self._long.pop(0)
        if not self._short and self._dense is not None and not self._long:
            self._dense = None  # idle for an hour: give the memory back

    def window(self, now: float, seconds: float) -> HistView:
        self._advance(now)
        use_long, first, span = self.geometry.plan(now, seconds)
        slots = [s for s in (self._long if use_long else self._short) if s.index >= first]
        count = sum(s.count for s in slots)
        lo = min((s.min for s in slots), default=0.0)
        hi = max((s.max for s in slots), default=0.0)
        total = math.fsum(s.total for s in slots)
        length = self.layout.counts_len
        if count == 0:
            counts: npt.NDArray[Any] = np.zeros(length, dtype=np.uint64)
        elif not use_long and len(slots) == len(self._short) and self._dense is not None:
            counts = self._dense
        else:
            chunks = [c for s in slots for c in s.arrays()]
            idx, cnt = _unpack(np.concatenate(chunks))
            counts = np.bincount(idx, weights=cnt, minlength=length).astype(np.uint64)
        return HistView(self.layout, counts, count, total, lo, hi, span)

    def nbytes(self) -> int:
        """Bytes held by the arrays of this ring (what grows with data)."""
        total = 0 if self._dense is None else int(self._dense.nbytes)
        return total + sum(s.nbytes() for s in (*self._short, *self._long))
