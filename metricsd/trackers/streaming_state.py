"""Active streams as columns: one slot per stream in parallel numpy arrays (SPEC §4.2).

A stream's state is a fixed set of numbers (start, first and last token times, token and byte
counts, exact sums of its inter-token latencies and their squares, stalls, backpressure), so it is
O(1) in the number of tokens. Keeping it as columns rather than one object per stream lets a
batch of token events from a thousand different streams be applied with a handful of numpy
operations: sort the rows by slot, then difference and sum within each group. Nothing here
knows about series, windows or Prometheus; the tracker does that with what ``tokens`` returns.

Times (``start``, ``first``, ``last``) are the emitter's ``ts`` in seconds; ``seen`` is the
daemon's monotonic clock at the stream's last event, used only for idleness and eviction.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Interner", "StreamTable", "TokenUpdate", "ms"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Labels = tuple[str, str, str | None, str | None, str | None, str | None]
"""model, endpoint, provider, key_id, user_id, request_id of a stream (from its start)."""

_MAX_MS = 1e15  # ~31 700 years: any larger interval is a broken clock, kept finite
#: ``itl_sum`` and ``itl_sq``: sums of the stream's inter-token gaps in whole µs and of their
#: squares (integers in float64, exact below 2**53), so a stream's mean and jitter do not
#: depend on how its tokens were split into batches.
_FLOAT_FIELDS = ("start", "first", "last", "itl_sum", "itl_sq", "seen")
_INT_FIELDS = ("tokens", "nbytes", "itl_n", "stalls", "backpressure", "prompt", "order", "model")


def ms(seconds: npt.ArrayLike) -> F64:
    """Seconds → milliseconds rounded to the microsecond.

    A float Unix timestamp only resolves ~0.24 µs, so a difference of two of them carries noise
    below a microsecond (1.1 − 1.0 is 0.10000000000000009); rounding removes it and nothing real.
    """
    scaled = np.asarray(seconds, dtype=np.float64) * 1000.0
    clipped: F64 = np.clip(scaled, -_MAX_MS, _MAX_MS)  # no infinities from wild clocks
    return np.round(clipped, 3)


class Interner:
    """Value → small int code, so per-row labels can be grouped with numpy."""

    __slots__ = ("codes", "values")

    def __init__(self) -> None:
        self.codes: dict[Any, int] = {}
        self.values: list[Any] = []

    def code(self, value: Any) -> int:
        found = self.codes.get(value)
        if found is None:
            found = self.codes[value] = len(self.values)
            self.values.append(value)
        return found

    def __len__(self) -> int:
        return len(self.values)


@dataclass(slots=True)
class TokenUpdate:
    """What one batch of token events did, for the tracker to record per series.

    ``itl_*``: one entry per gap (per token event after a stream's first); ``group_*``: one per
    stream touched; ``ttft_*``: one per stream whose first token arrived in this batch.
    """

    itl_model: I64
    itl_ms: F64
    stall: npt.NDArray[np.bool_]
    group_model: I64
    group_tokens: I64
    group_bytes: I64
    ttft_slot: I64
    ttft_ms: F64
    orphans: int


class StreamTable:
    """Slots of active streams; see the module docstring."""

    def __init__(self, max_streams: int, stall_ms: float) -> None:
        self.max_streams = max_streams
        self.stall_ms = stall_ms
        self.capacity = 0
        self.ids: dict[str, int] = {}
        self.slot_id: list[str | None] = []
        self.labels: list[Labels | None] = []
        self.free: list[int] = []
        self.models = Interner()
        self.order_seq = 0
        self.active = np.zeros(0, dtype=bool)
        for name in _FLOAT_FIELDS:
            setattr(self, name, np.zeros(0, dtype=np.float64))
        for name in _INT_FIELDS:
            setattr(self, name, np.zeros(0, dtype=np.int64))
        self._grow(min(1024, max_streams))

    # Typed views of the columns set in __init__ (mypy cannot see setattr).
    start: F64
    first: F64
    last: F64
    itl_sum: F64
    itl_sq: F64
    seen: F64
    tokens: I64
    nbytes: I64
    itl_n: I64
    stalls: I64
    backpressure: I64
    prompt: I64
    order: I64
    model: I64

    def __len__(self) -> int:
        return len(self.ids)

    def _grow(self, capacity: int) -> None:
        """Double the columns (up to the cap); new slots are free."""
        old = self.capacity
        if capacity <= old:
            return
        for name in (*_FLOAT_FIELDS, *_INT_FIELDS, "active"):
            column = getattr(self, name)
            grown = np.zeros(capacity, dtype=column.dtype)
            grown[:old] = column
            setattr(self, name, grown)
        self.slot_id.extend([None] * (capacity - old))
        self.labels.extend([None] * (capacity - old))
        self.free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    def room(self, wanted: int) -> int:
        """Make room for up to ``wanted`` new streams without evicting; returns the free slots."""
        if len(self.free) < wanted and self.capacity < self.max_streams:
            need = self.capacity + wanted - len(self.free)
            self._grow(min(self.max_streams, max(need, self.capacity * 2)))
        return len(self.free)

    def oldest(self, k: int) -> I64:
        """The ``k`` active slots idle longest (ties: the one touched first), oldest first."""
        slots = np.flatnonzero(self.active)
        k = min(k, slots.size)
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        key = np.lexsort((self.order[slots], self.seen[slots]))
        return slots[key[:k]].astype(np.int64)

    def idle(self, cutoff: float) -> I64:
        """Active slots whose last event came before ``cutoff`` (daemon clock)."""
        return np.flatnonzero(self.active & (self.seen < cutoff)).astype(np.int64)

    def open(self, stream_id: str, labels: Labels) -> int:
        """Take a free slot for a new stream (the caller made room); numbers are set by ``init``."""
        slot = self.free.pop()
        self.ids[stream_id] = slot
        self.slot_id[slot] = stream_id
        self.labels[slot] = labels
        return slot

    def init(self, slots: I64, start: F64, prompt: I64, models: I64, now: float) -> None:
        """Reset the numbers of freshly opened slots."""
        self.active[slots] = True
        self.start[slots] = start
        self.first[slots] = math.nan
        self.last[slots] = math.nan
        for name in ("itl_sum", "itl_sq"):
            getattr(self, name)[slots] = 0.0
        for name in ("tokens", "nbytes", "itl_n", "stalls", "backpressure"):
            getattr(self, name)[slots] = 0
        self.prompt[slots] = prompt
        self.model[slots] = models
        self.touch(slots, now, ordered=True)

    def touch(self, slots: I64, now: float, ordered: bool = False) -> None:
        """Mark slots as seen now; ``ordered`` gives each its own rank (rows in order)."""
        self.seen[slots] = now
        n = len(slots)
        if ordered:
            self.order[slots] = np.arange(self.order_seq, self.order_seq + n)
            self.order_seq += n
        else:
            self.order[slots] = self.order_seq
            self.order_seq += 1

    def close(self, slots: I64) -> None:
        """Free slots (their numbers stay until reused)."""
        self.active[slots] = False
        for slot in slots.tolist():
            stream_id = self.slot_id[slot]
            if stream_id is not None and self.ids.get(stream_id) == slot:
                del self.ids[stream_id]
            self.slot_id[slot] = None
            self.labels[slot] = None
            self.free.append(slot)

    def state(self) -> dict[str, Any]:
        """Active streams as columns (plain values), models by name."""
        slots = np.flatnonzero(self.active)
        out: dict[str, Any] = {
            "ids": [self.slot_id[s] for s in slots.tolist()],
            "labels": [list(self.labels[s] or ()) for s in slots.tolist()],
            "models": [self.models.values[c] for c in self.model[slots].tolist()],
            "order_seq": self.order_seq,
        }
        for name in _FLOAT_FIELDS:
            out[name] = getattr(self, name)[slots]
        for name in _INT_FIELDS:
            if name != "model":
                out[name] = getattr(self, name)[slots]
        return out

    def restore(self, value: Any, r: Any) -> None:
        m = r.map(value, "table")
        ids = [r.str(v, "table.ids") for v in r.list(m.get("ids"), "table.ids")]
        labels = r.list(m.get("labels"), "table.labels")
        models = [r.str(v, "table.models") for v in r.list(m.get("models"), "table.models")]
        k = len(ids)
        if len(labels) != k or len(models) != k or len(set(ids)) != k:
            raise r.fail("columns differ in length, or a stream id repeats", "table")
        columns = {}
        for name in _FLOAT_FIELDS:
            columns[name] = r.array(m.get(name), f"table.{name}", np.float64)
        for name in _INT_FIELDS:
            if name != "model":
                columns[name] = r.array(m.get(name), f"table.{name}", np.int64)
        if any(len(c) != k for c in columns.values()):
            raise r.fail("columns differ in length", "table")
        keep = min(k, self.max_streams)
        self.room(keep)
        for i in range(keep):
            lab = r.list(labels[i], "table.labels", 6)
            if len(lab) != 6:
                raise r.fail("a stream's labels are not six", "table")
            slot = self.open(ids[i], tuple(None if v is None else r.str(v, "labels") for v in lab))  # type: ignore[arg-type]
            self.active[slot] = True
            self.model[slot] = self.models.code(models[i])
            for name, column in columns.items():
                getattr(self, name)[slot] = column[i]
        self.order_seq = r.int(m.get("order_seq"), "table.order_seq", 0)

    def lookup(self, ids: Any, n: int) -> I64:
        """Slot per row, −1 for an unknown stream id (a dict lookup per distinct id)."""
        if hasattr(ids, "codes"):  # a Cat: one lookup per distinct id
            get = self.ids.get
            slots = np.array([get(v, -1) for v in ids.values], dtype=np.int64)
            found: I64 = slots[ids.codes]
            return found
        if not isinstance(ids, list):
            slot = self.ids.get(ids, -1) if isinstance(ids, str) else -1
            return np.full(n, slot, dtype=np.int64)
        return np.fromiter(map(self.ids.get, ids, itertools.repeat(-1, n)), dtype=np.int64, count=n)

    def compact_models(self) -> None:
        """Re-code the models of the active streams only (bounds the interner)."""
        fresh = Interner()
        slots = np.flatnonzero(self.active)
        if slots.size:
            old = self.models.values
            keep = np.unique(self.model[slots])
            remap = np.full(len(old), -1, dtype=np.int64)
            for c in keep.tolist():
                remap[c] = fresh.code(old[c])
            self.model[slots] = remap[self.model[slots]]
        self.models = fresh

    def finished(self, slots: I64, end_ts: F64) -> dict[str, F64]:
        """Per-stream figures of ending streams (SPEC §4.2); NaN where one is not defined.

        ``duration`` end − start; ``ttft`` first token − start; ``tps`` decode rate
        (tokens − 1)/(last − first), needs ≥ 2 tokens and a positive span; ``e2e_tps``
        tokens/duration; ``tpot`` the mean ITL (≥ 1 gap); ``jitter`` the sample stdev of the
        ITLs and ``smoothness`` clamp(100 × (1 − stdev/mean), 0, 100), both needing ≥ 2 gaps.
        """
        start = self.start[slots]
        tokens = self.tokens[slots].astype(np.float64)
        count = self.itl_n[slots]
        total = self.itl_sum[slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count >= 1, total / np.maximum(count, 1) / 1000.0, 0.0)
        duration = np.maximum(ms(end_ts - start), 0.0)
        span = ms(self.last[slots] - self.first[slots])
        with np.errstate(invalid="ignore", divide="ignore"):
            decode = np.where((tokens >= 2) & (span > 0), (tokens - 1) / (span / 1000.0), np.nan)
            e2e = np.where((tokens >= 1) & (duration > 0), tokens / (duration / 1000.0), np.nan)
            jitter = np.where(
                count >= 2,
                np.sqrt(
                    np.maximum(self.itl_sq[slots] - total * total / np.maximum(count, 1), 0.0)
                    / np.maximum(count - 1, 1)
                )
                / 1000.0,
                np.nan,
            )
            score = np.where(mean > 0, np.clip(100.0 * (1.0 - jitter / mean), 0.0, 100.0), 100.0)
        return {
            "duration": duration,
            "ttft": np.maximum(ms(self.first[slots] - start), 0.0),
            "tps": decode,
            "e2e_tps": e2e,
            "tpot": np.where(count >= 1, mean, np.nan),
            "jitter": jitter,
            "smoothness": np.where(count >= 2, score, np.nan),
        }

    def tokens_batch(self, slots: I64, ts: F64, n: I64, nbytes: I64, now: float) -> TokenUpdate:
        """Apply token events in bulk; rows with an unknown stream (slot −1) are orphans."""
        known = slots >= 0
        orphans = int(slots.size - np.count_nonzero(known))
        if orphans:
            slots, ts, n, nbytes = slots[known], ts[known], n[known], nbytes[known]
        # Group rows by stream, in emitter-time order within a stream.
        order = np.lexsort((ts, slots))
        s, t, k, b = slots[order], ts[order], n[order], nbytes[order]
        self.touch(s, now)  # repeated slots get the same values: no need to dedupe
        heads = _heads(s)
        group_slots = s[heads]
        group_tokens = _group_sums(k, heads)
        group_bytes = _group_sums(b, heads)
        self.tokens[group_slots] += group_tokens
        self.nbytes[group_slots] += group_bytes
        update = TokenUpdate(
            itl_model=_NO_INT,
            itl_ms=_NO_FLOAT,
            stall=np.zeros(0, dtype=bool),
            group_model=self.model[group_slots],
            group_tokens=group_tokens,
            group_bytes=group_bytes,
            ttft_slot=_NO_INT,
            ttft_ms=_NO_FLOAT,
            orphans=orphans,
        )
        # Timing uses the chunks that carry tokens (a chunk with n = 0 only adds bytes).
        carry = k > 0
        if not carry.all():
            s, t, k = s[carry], t[carry], k[carry]
            heads = _heads(s)
        if s.size == 0:
            return update
        g = s[heads]
        prev = np.empty_like(t)
        prev[1:] = t[:-1]
        prev[heads] = self.last[g]  # NaN: the stream's first token, no gap before it
        has_gap = ~np.isnan(prev)
        # NaN (no gap) flows through: comparisons with NaN are false, Welford masks it.
        itl = np.round(np.maximum(ms(t - prev), 0.0) / k, 3)
        self._itl_sums(g, heads, itl, has_gap)
        stall = itl > self.stall_ms
        if stall.any():
            self.stalls[g] += _group_sums(stall.astype(np.int64), heads)
        new_first = np.isnan(self.first[g])
        first_slots = g[new_first]
        self.first[first_slots] = t[heads[new_first]]
        tails = np.append(heads[1:], t.size) - 1
        self.last[g] = np.fmax(self.last[g], t[tails])
        update.itl_model = self.model[s[has_gap]]
        update.itl_ms = itl[has_gap]
        update.stall = stall[has_gap]
        update.ttft_slot = first_slots
        update.ttft_ms = np.maximum(ms(self.first[first_slots] - self.start[first_slots]), 0.0)
        return update

    def _itl_sums(self, g: I64, heads: I64, itl: F64, has_gap: npt.NDArray[np.bool_]) -> None:
        """Add this batch's gaps (whole µs) and their squares to each stream's sums."""
        if not has_gap.any():
            return
        us = np.where(has_gap, np.rint(itl * 1000.0), 0.0)
        self.itl_n[g] += _group_sums(has_gap.astype(np.int64), heads)
        self.itl_sum[g] += _group_sums(us, heads)
        self.itl_sq[g] += _group_sums(us * us, heads)


_NO_INT: I64 = np.zeros(0, dtype=np.int64)
_NO_FLOAT: F64 = np.zeros(0, dtype=np.float64)


def _group_sums(values: npt.NDArray[Any], heads: I64) -> npt.NDArray[Any]:
    """Sum of each run starting at ``heads`` (the values themselves when every run is one)."""
    if heads.size == values.size:
        return values
    return np.add.reduceat(values, heads)


def _heads(sorted_slots: I64) -> I64:
    """Index of the first row of each run of equal slots."""
    if sorted_slots.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(sorted_slots[1:] != sorted_slots[:-1]) + 1
    return np.concatenate(([0], change)).astype(np.int64)
