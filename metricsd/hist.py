"""HDR histograms in bulk: the layout of ``hdrhistogram``, recorded with numpy.

``hdrhistogram`` (the ``hdrh`` package) records one value per Python call and walks its whole
counts array for each percentile. metricsd records columns of thousands of values at a time, so
this module computes HDR counts indexes for a whole array with numpy (the same arithmetic as
``HdrHistogram._counts_index_for``, proven bit-identical in the tests) and adds them with
``bincount``. Quantiles come from one cumulative sum. Encoding goes through ``hdrh`` itself, so an
encoded histogram is the standard HdrHistogram V2 base64 format that any HDR implementation reads.

Values are floats in natural units (milliseconds, tokens/s); a :class:`Layout` scales them to the
integers HDR records (``scale=1000`` keeps microseconds for millisecond inputs). Values above the
highest trackable value are clamped to it and counted; negative values are clamped to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from hdrh.histogram import HdrHistogram

__all__ = [
    "EXACT_SHIFT",
    "Hist",
    "Layout",
    "bucket_counts",
    "exact_sums",
    "exact_value",
    "exact_values",
    "group_quantiles",
    "quantiles_from_counts",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Layout:
    """The shape of a family of histograms: value range, precision and unit scale.

    Two histograms merge exactly iff their layouts are equal.
    """

    highest: int = 3_600_000_000
    significant_figures: int = 2
    scale: float = 1000.0
    lowest: int = 1
    _template: HdrHistogram = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_template", HdrHistogram(self.lowest, self.highest, self.significant_figures)
        )

    @property
    def counts_len(self) -> int:
        return int(self._template.counts_len)

    @property
    def unit_magnitude(self) -> int:
        return int(self._template.unit_magnitude)

    @property
    def sub_half_magnitude(self) -> int:
        return int(self._template.sub_bucket_half_count_magnitude)

    @cached_property
    def _ranges(self) -> tuple[IntArray, IntArray]:
        """Per counts index: the lowest equivalent value and the width of its value range."""
        h = self._template
        lowest = np.array([h.get_value_from_index(i) for i in range(self.counts_len)], np.int64)
        width = np.array([h._hdr_size_of_equiv_value_range(int(v)) for v in lowest], dtype=np.int64)
        return lowest, width

    @cached_property
    def medians(self) -> FloatArray:
        """Per counts index, the middle of its value range in natural units."""
        lowest, width = self._ranges
        return (lowest + width // 2).astype(np.float64) / self.scale

    @cached_property
    def max_raw(self) -> int:
        """The highest raw value that still has a counts index."""
        lowest, width = self._ranges
        return int(min(lowest[-1] + width[-1] - 1, self.highest * 2))

    def to_raw(self, values: npt.ArrayLike) -> tuple[IntArray, int]:
        """Natural-unit values → clamped raw integers, and how many were clamped."""
        scaled = np.rint(np.asarray(values, dtype=np.float64) * self.scale)
        too_high = scaled > self.highest
        too_low = scaled < 0
        clamped = int(np.count_nonzero(too_high) + np.count_nonzero(too_low))
        if clamped:
            scaled = np.clip(scaled, 0, self.highest)
        return scaled.astype(np.int64), clamped

    def indexes(self, raw: IntArray) -> IntArray:
        """HDR counts indexes of raw values (vectorised ``_counts_index_for``)."""
        unit = self.unit_magnitude
        half_mag = self.sub_half_magnitude
        mask = ((1 << (half_mag + 1)) - 1) << unit
        # bit_length(v | mask): exact through frexp because every raw value is < 2**53.
        _, exponent = np.frexp((raw | mask).astype(np.float64))
        bucket = exponent.astype(np.int64) - unit - (half_mag + 1)
        sub_bucket = raw >> (bucket + unit)
        return ((bucket + 1) << half_mag) + sub_bucket - (1 << half_mag)


def quantiles_from_counts(
    layout: Layout, counts: npt.NDArray[Any], qs: tuple[float, ...], lo: float, hi: float
) -> list[float]:
    """Quantiles (fractions in [0, 1]) from a counts array, clamped to the exact [lo, hi].

    The rank follows HdrHistogram (``round(q × total)``, at least 1); the value is the middle of
    the rank's HDR range, so the relative error is at most half a bucket (≈ 0.4 % at 2 figures).
    """
    cumulative = np.cumsum(counts, dtype=np.int64)
    total = int(cumulative[-1]) if len(cumulative) else 0
    if total == 0:
        return [0.0 for _ in qs]
    ranks = np.maximum(1, np.floor(np.asarray(qs) * total + 0.5)).astype(np.int64)
    idx = np.searchsorted(cumulative, ranks, side="left")
    values = layout.medians[np.minimum(idx, len(layout.medians) - 1)]
    return [min(max(float(v), lo), hi) for v in values]


# --- exact sums -------------------------------------------------------------------------------
#
# The mean beside a histogram is exact (SPEC §4): sums of float64 values are kept as integers of
# 2**-EXACT_SHIFT, which represents every double in [2**-28, 2**37) exactly (a double's lowest
# bit is at least 2**-80 there). Integer sums do not depend on the order of addition, so a
# window merged from several processes, or a batch applied row by row, gives the same mean to
# the last bit. Values below 2**-28 are counted at that precision; values at or above 2**37
# (4 years in ms) at 2**37; negative values at 0.

EXACT_SHIFT: Final = 80
_LIMB: Final = 39
_EXACT_MAX: Final = float(2**37)


def exact_limbs(values: FloatArray) -> tuple[IntArray, IntArray, IntArray]:
    """Each value as three 39-bit limbs of its fixed-point integer (value × 2**80):
    ``l2 · 2**78 + l1 · 2**39 + l0``. Exact: every split is a floor by a power of two."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, _EXACT_MAX)
    hi = np.floor(v * 4.0)  # 2**(80 - 78)
    rest = v - hi * 0.25
    mid = np.floor(rest * 2.0**41)  # 2**(80 - 39)
    low = np.floor((rest - mid * 2.0**-41) * 2.0**80)
    return hi.astype(np.int64), mid.astype(np.int64), low.astype(np.int64)


def exact_sums(
    values: FloatArray, codes: npt.NDArray[np.intp] | None, size: int
) -> npt.NDArray[Any]:
    """Per-group exact sums (Python ints of 2**-80 units; an object array of ``size``)."""
    out = np.zeros(size, dtype=object)
    if values.size == 0:
        return out
    limbs = exact_limbs(values)
    if codes is None:
        parts = [int(limb.sum()) for limb in limbs]
        out[0] = (parts[0] << (2 * _LIMB)) + (parts[1] << _LIMB) + parts[2]
        return out
    sums = []
    for limb in limbs:
        acc = np.zeros(size, dtype=np.int64)
        np.add.at(acc, codes, limb)  # < 2**39 each: exact for 2**24 rows
        sums.append(acc.tolist())
    for g in range(size):
        out[g] = (sums[0][g] << (2 * _LIMB)) + (sums[1][g] << _LIMB) + sums[2][g]
    return out


def exact_value(total: Any) -> float:
    """An exact sum back as the nearest float."""
    return math.ldexp(float(int(total)), -EXACT_SHIFT)


def exact_values(totals: npt.NDArray[Any]) -> FloatArray:
    """:func:`exact_value` of each of an object array of exact sums (the same floats)."""
    return np.ldexp(totals.astype(np.float64), -EXACT_SHIFT)


def group_quantiles(
    layout: Layout,
    keys: npt.NDArray[np.uint64],
    counts: npt.NDArray[np.uint64],
    size: int,
    qs: tuple[float, ...],
    lo: FloatArray,
    hi: FloatArray,
) -> FloatArray:
    """Quantiles of many histograms at once, as :func:`quantiles_from_counts` computes each.

    ``keys`` are sorted ``group << 32 | counts index`` with their ``counts``; returns an array
    (size, len(qs)), zero for an empty group.
    """
    out = np.zeros((size, len(qs)), dtype=np.float64)
    if keys.size == 0:
        return out
    group = (keys >> np.uint64(32)).astype(np.intp)
    index = (keys & np.uint64(0xFFFFFFFF)).astype(np.intp)
    cumulative = np.cumsum(counts.astype(np.int64))
    totals = np.bincount(group, weights=counts.astype(np.float64), minlength=size)
    first = np.searchsorted(group, np.arange(size), side="left")
    before = np.where(first > 0, cumulative[np.maximum(first - 1, 0)], 0)
    medians = layout.medians
    present = totals > 0
    for j, q in enumerate(qs):
        ranks = np.maximum(1, np.floor(q * totals + 0.5)).astype(np.int64)
        pos = np.searchsorted(cumulative, before + ranks, side="left")
        pos = np.minimum(pos, len(index) - 1)
        values = medians[np.minimum(index[pos], len(medians) - 1)]
        values = np.minimum(np.maximum(values, lo), hi)
        out[:, j] = np.where(present, values, 0.0)
    return out


def bucket_counts(
    bounds: FloatArray, values: FloatArray, codes: npt.NDArray[np.intp] | None, size: int
) -> IntArray:
    """Exact Prometheus bucket counts per group: (size, len(bounds) + 1), non-cumulative; a
    value equal to a bound is in that bound's bucket (``le`` is ≤). NaN values are skipped."""
    width = len(bounds) + 1
    finite = ~np.isnan(values)
    if not finite.all():
        values = values[finite]
        codes = None if codes is None else codes[finite]
    slots = np.searchsorted(bounds, values, side="left")
    if codes is None:
        out = np.zeros((size, width), dtype=np.int64)
        out[0] = np.bincount(slots, minlength=width)
        return out
    flat = np.bincount(codes * width + slots, minlength=size * width)
    return flat.reshape(size, width).astype(np.int64)


class Hist:
    """One HDR histogram with exact count, sum, min and max kept beside it."""

    __slots__ = ("clamped", "count", "counts", "layout", "max", "min", "sum")

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.counts: npt.NDArray[np.uint64] = np.zeros(layout.counts_len, dtype=np.uint64)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.clamped = 0

    def record_array(self, values: npt.ArrayLike) -> None:
        """Record every value of an array in one pass."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.size == 0:
            return
        raw, clamped = self.layout.to_raw(arr)
        self.clamped += clamped
        self.counts += np.bincount(
            self.layout.indexes(raw), minlength=self.layout.counts_len
        ).astype(np.uint64)
        self.count += int(arr.size)
        self.sum += math.fsum(arr.tolist()) if arr.size < 64 else float(np.sum(arr))
        self.min = min(self.min, float(arr.min()))
        self.max = max(self.max, float(arr.max()))

    def record(self, value: float) -> None:
        self.record_array(np.array([value], dtype=np.float64))

    def merge(self, other: Hist) -> None:
        if other.layout != self.layout:
            raise ValueError("histograms with different layouts cannot be merged exactly")
        self.counts += other.counts
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.clamped += other.clamped

    def quantiles(self, qs: tuple[float, ...]) -> list[float]:
        return quantiles_from_counts(self.layout, self.counts, qs, self.min, self.max)

    def to_hdr(self) -> HdrHistogram:
        """An ``hdrh.HdrHistogram`` holding the same counts (for encoding and interop)."""
        layout = self.layout
        h = HdrHistogram(layout.lowest, layout.highest, layout.significant_figures)
        view = np.ctypeslib.as_array(h.counts)
        view[:] = self.counts
        nonzero = np.flatnonzero(self.counts)
        if nonzero.size:
            h.set_internal_tacking_values(int(nonzero[0]), int(nonzero[-1]), int(self.counts.sum()))
        return h

    def encode(self) -> str:
        """HdrHistogram V2 compressed, base64 (the format every HDR library decodes)."""
        encoded = self.to_hdr().encode()
        return encoded.decode("ascii") if isinstance(encoded, bytes) else str(encoded)

    @classmethod
    def decode(cls, layout: Layout, encoded: str) -> Hist:
        """Counts from an encoded histogram; exact min/max/sum are not in the format, so they
        are estimated from the bucket ranges."""
        h = HdrHistogram.decode(encoded.encode("ascii"))
        hist = cls(layout)
        source = np.ctypeslib.as_array(h.counts)
        if len(source) != layout.counts_len:
            raise ValueError("encoded histogram has a different layout")
        hist.counts[:] = source
        hist.count = int(hist.counts.sum())
        nonzero = np.flatnonzero(hist.counts)
        if nonzero.size:
            hist.min = float(layout.medians[nonzero[0]])
            hist.max = float(layout.medians[nonzero[-1]])
            hist.sum = float(np.dot(hist.counts.astype(np.float64), layout.medians))
        return hist


class Buckets:
    """Exact cumulative-histogram counters at fixed upper bounds (Prometheus ``le``).

    Kept beside the HDR data rather than derived from it: an HDR range straddles a bound like
    0.01 s, so only counting at record time gives bucket counts that are exact.
    """

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts: npt.NDArray[np.int64] = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.count = 0
        self.sum = 0.0

    def record_array(self, values: FloatArray) -> None:
        if values.size == 0:
            return
        # side="left": a value equal to a bound belongs to that bound's bucket (le = ≤).
        slots = np.searchsorted(self.bounds, values, side="left")
        self.counts += np.bincount(slots, minlength=len(self.counts))
        self.count += int(values.size)
        self.sum += float(np.sum(values))

    def cumulative(self) -> list[int]:
        """Counts ≤ each bound, then +Inf (= count)."""
        return [int(c) for c in np.cumsum(self.counts)]
