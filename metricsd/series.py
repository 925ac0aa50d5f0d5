"""Label sets → dense integer ids, bounded (SPEC §3.3), with the per-series arrays beside them.

A :class:`SeriesTable` gives every label tuple a small integer id, so a tracker keeps its state
*series-major*: one numpy array per quantity, indexed by id, updated for a whole batch with one
``bincount`` or ``add.at`` instead of one Python object per series. The table:

- caps the number of label sets (``max_series``); a new one beyond the cap is folded into
  ``__overflow__`` for every label (so its numbers still count, in one place) and counted;
- drops series idle for longer than ``ttl`` and zeroes their rows; an id is reused only after
  ``hold`` seconds more, so windows that still hold old samples of it never mix two series;
- records, per series, the engine's write sequence number of its last change (``versions``), so
  readers re-render only what changed since they last looked.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["OVERFLOW", "SeriesTable", "TableView", "add_rows"]

OVERFLOW: Final = "__overflow__"
_MERGES: Final = frozenset({"add", "first", "last"})
_START: Final = 16
_SAFE: Final = 1 << 62


def add_rows(acc: npt.NDArray[Any], ids: npt.NDArray[np.intp], values: npt.NDArray[Any]) -> Any:
    """``acc[ids] += values`` exactly (ids may repeat): int64 while that cannot overflow,
    Python ints beyond; returns the array, which is a new one after such a promotion."""
    if acc.dtype != object and values.dtype != object and values.size:
        peak = int(np.abs(values).max())
        if peak < _SAFE and int(np.abs(acc).max(initial=0)) < _SAFE - peak * len(values):
            np.add.at(acc, ids, values)
            return acc
    if not values.size:
        return acc
    acc = acc.astype(object)
    np.add.at(acc, ids, values.astype(object))
    return acc


class TableView:
    """A frozen copy of a table's keys and versions (what a snapshot holds).

    ``order``, ``ordered`` and ``ids`` are shared by the views of one table until a series is
    added or dropped: a renderer recognises an unchanged set of series by identity."""

    __slots__ = ("ids", "keys", "memo", "order", "order_ids", "ordered", "versions")

    def __init__(self, keys: list[tuple[Any, ...] | None], versions: npt.NDArray[np.int64]) -> None:
        self.keys = keys
        self.versions = versions
        #: Live ids in label order (what exposition and JSON walk).
        live = [(k, i) for i, k in enumerate(keys) if k is not None]
        live.sort(key=_sort_key)
        self.order = [i for _k, i in live]
        self.order_ids = np.array(self.order, dtype=np.intp)
        #: The live keys in that order.
        self.ordered: list[tuple[Any, ...]] = [k for k, _i in live]
        self.ids = {k: i for k, i in live}
        #: Groupings derived from the keys alone (shared like ``order``), see :meth:`derived`.
        self.memo: dict[str, Any] = {}

    def derived(self, name: str, build: Callable[[TableView], Any]) -> Any:
        """``build(self)``, computed once per set of series: views share the result until a
        series is added or dropped, so per-tick readers skip the walk over every key. (Two
        threads may both build it the first time; either result is the same.)"""
        found = self.memo.get(name)
        if found is None:
            found = self.memo[name] = build(self)
        return found

    def ordered_versions(self) -> npt.NDArray[np.int64]:
        """The versions of the live series, in ``order``."""
        return self.versions[self.order_ids]

    def items(self) -> list[tuple[tuple[Any, ...], int]]:
        keys = self.keys
        return [(keys[i], i) for i in self.order]  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self.order)


def _sort_key(item: tuple[tuple[Any, ...] | None, int]) -> tuple[Any, ...]:
    key = item[0]
    assert key is not None
    return tuple("" if v is None else str(v) for v in key)


class SeriesTable:
    """label tuple → id, bounded; see the module docstring."""

    __slots__ = (
        "_fills",
        "_free",
        "_held",
        "_merge",
        "_view",
        "_view_shape",
        "arity",
        "arrays",
        "capacity",
        "hold",
        "index",
        "keys",
        "last_seen",
        "max_series",
        "name",
        "overflowed",
        "shape",
        "ttl",
        "versions",
    )

    def __init__(
        self, name: str, arity: int, max_series: int, ttl: float, hold: float = 0.0
    ) -> None:
        self.name = name
        self.arity = arity
        self.max_series = max_series
        self.ttl = ttl
        self.hold = hold
        self.index: dict[tuple[Any, ...], int] = {}
        self.keys: list[tuple[Any, ...] | None] = []
        self.capacity = 0
        self.last_seen = np.zeros(0, dtype=np.float64)
        self.versions = np.zeros(0, dtype=np.int64)
        self.arrays: dict[str, npt.NDArray[Any]] = {}
        self._fills: dict[str, Any] = {}
        self._merge: dict[str, str] = {}
        self._free: list[int] = []
        self._held: deque[tuple[float, int]] = deque()
        self.overflowed = 0  # events folded into the overflow series (lifetime)
        self.shape = 0  # bumped whenever a series is added or dropped
        self._view: TableView | None = None
        self._view_shape = -1

    # --- per-series arrays ----------------------------------------------------------------

    def add_array(
        self,
        name: str,
        tail: tuple[int, ...] = (),
        dtype: Any = np.int64,
        fill: Any = 0,
        merge: str = "add",
    ) -> None:
        """Register an array of shape (capacity, *tail) that grows with the table. ``merge``
        says how :meth:`absorb` combines another table's value with this one's: ``add``
        (counters and sums), ``first`` (a first-seen time: the earliest set one; unset is
        the fill) or ``last`` (a gauge: the other table's value where it has one)."""
        if merge not in _MERGES:
            raise ValueError(f"unknown merge rule {merge!r}")
        self.arrays[name] = np.full((self.capacity, *tail), fill, dtype=dtype)
        self._fills[name] = fill
        self._merge[name] = merge

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        for name, arr in self.arrays.items():
            grown = np.full((capacity, *arr.shape[1:]), self._fills[name], dtype=arr.dtype)
            grown[:old] = arr
            self.arrays[name] = grown
        for attr, fill in (("last_seen", 0.0), ("versions", 0)):
            arr = getattr(self, attr)
            grown = np.full(capacity, fill, dtype=arr.dtype)
            grown[:old] = arr
            setattr(self, attr, grown)
        self.keys.extend([None] * (capacity - old))
        self._free.extend(range(capacity - 1, old - 1, -1))
        self.capacity = capacity

    # --- lookups --------------------------------------------------------------------------

    def ids(
        self,
        keys: Sequence[tuple[Any, ...]],
        counts: npt.NDArray[Any] | Sequence[int],
        now: float,
        version: int,
    ) -> npt.NDArray[np.intp]:
        """The id of each key (created, or folded into the overflow series at the cap), marked
        seen at ``now`` and changed at ``version``. ``counts`` are the events behind each key,
        so the overflow counter counts events, not lookups."""
        index = self.index
        out = np.empty(len(keys), dtype=np.intp)
        for i, key in enumerate(keys):
            sid = index.get(key)
            if sid is None:
                sid = self._new(key, int(counts[i]), now)
            out[i] = sid
        self.last_seen[out] = now
        self.versions[out] = version
        return out

    def id(self, key: tuple[Any, ...], now: float, version: int, count: int = 1) -> int:
        return int(self.ids([key], [count], now, version)[0])

    def _new(self, key: tuple[Any, ...], count: int, now: float) -> int:
        if len(self.index) >= self.max_series:
            self.overflowed += count
            key = (OVERFLOW,) * self.arity
            found = self.index.get(key)
            if found is not None:
                return found
        self._release(now)
        if not self._free:
            self._grow(max(_START, self.capacity * 2))
        sid = self._free.pop()
        self.index[key] = sid
        self.keys[sid] = key
        self.shape += 1
        return sid

    def get(self, key: tuple[Any, ...]) -> int | None:
        return self.index.get(key)

    # --- housekeeping ---------------------------------------------------------------------

    def expire(self, now: float) -> list[int]:
        """Drop series idle for longer than the TTL (their rows zeroed); returns their ids."""
        if not self.index:
            return []
        live = np.fromiter(self.index.values(), dtype=np.intp, count=len(self.index))
        stale = live[self.last_seen[live] < now - self.ttl]
        if stale.size == 0:
            return []
        dropped: list[int] = stale.tolist()
        self.drop(dropped, now)
        return dropped

    def drop(self, ids: list[int], now: float) -> None:
        for sid in ids:
            key = self.keys[sid]
            if key is not None:
                del self.index[key]
                self.keys[sid] = None
                self._held.append((now, sid))
        rows = np.asarray(ids, dtype=np.intp)
        for name, arr in self.arrays.items():
            arr[rows] = self._fills[name]
        self.shape += 1

    def _release(self, now: float) -> None:
        """Ids dropped ``hold`` seconds ago may be reused."""
        held = self._held
        while held and held[0][0] <= now - self.hold:
            self._free.append(held.popleft()[1])

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    # --- reading --------------------------------------------------------------------------

    def view(self) -> TableView:
        """Keys and versions, frozen (the keys part is shared until the next add or drop)."""
        if self._view is None or self._view_shape != self.shape:
            self._view = TableView(list(self.keys), self.versions.copy())
            self._view_shape = self.shape
            return self._view
        cached = self._view
        view = TableView.__new__(TableView)
        view.keys, view.order, view.ids = cached.keys, cached.order, cached.ids
        view.order_ids, view.ordered = cached.order_ids, cached.ordered
        view.memo = cached.memo
        view.versions = self.versions.copy()
        return view

    def items(self) -> list[tuple[tuple[Any, ...], int]]:
        """(key, id) of every live series, in label order."""
        return self.view().items()

    # --- persistence ----------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Any], npt.NDArray[np.intp]]:
        """The live series (keys, last seen, arrays, in id order), and each id's saved row
        (−1 for a free id): the windows renumber their ids with it."""
        live = sorted(self.index.values())
        ids = np.array(live, dtype=np.intp)
        rows = np.full(self.capacity, -1, dtype=np.intp)
        rows[ids] = np.arange(len(ids))
        state = {
            "keys": [list(self.keys[i]) for i in live],  # type: ignore[arg-type]
            "last_seen": self.last_seen[ids],
            "overflowed": self.overflowed,
            "arrays": {name: arr[ids] for name, arr in self.arrays.items()},
        }
        return state, rows

    def _parse(
        self, state: Any, r: Any
    ) -> tuple[list[tuple[Any, ...]], npt.NDArray[np.float64], dict[str, npt.NDArray[Any]], int]:
        """What :meth:`state` saved, every value checked: keys, last seen, arrays, overflowed."""
        m = r.map(state, self.name)
        keys = r.keys(m.get("keys"), f"{self.name}.keys", self.arity)
        seen = r.array(m.get("last_seen"), f"{self.name}.last_seen", np.float64, finite=True)
        if len(seen) != len(keys):
            raise r.fail("keys and last_seen differ in length", self.name)
        if len(set(keys)) != len(keys):
            raise r.fail("a key appears twice", self.name)
        arrays = r.map(m.get("arrays"), f"{self.name}.arrays")
        loaded: dict[str, npt.NDArray[Any]] = {}
        for name, arr in self.arrays.items():
            if name not in arrays:
                raise r.fail(f"missing array {name}", self.name)
            exact = arr.dtype.kind in "iuO"
            want = np.int64 if arr.dtype == object else arr.dtype
            got = r.array(arrays[name], f"{self.name}.{name}", want, arr.shape[1:], exact=exact)
            if arr.dtype == object:
                got = got.astype(object)
            if len(got) != len(keys):
                raise r.fail(f"array {name} has {len(got)} rows, not {len(keys)}", self.name)
            loaded[name] = got
        overflowed = r.int(m.get("overflowed"), f"{self.name}.overflowed", 0)
        return keys, seen, loaded, overflowed

    def restore(
        self, state: Any, reader: Any, now: float, version: int = 0
    ) -> npt.NDArray[np.intp]:
        """Load saved series (beyond a lowered cap, the most recently seen are kept); returns
        the new id of each saved row, −1 for one not kept. Every value is checked."""
        keys, seen, loaded, overflowed = self._parse(state, reader)
        order = np.argsort(seen, kind="stable")[::-1][: self.max_series]
        out = np.full(len(keys), -1, dtype=np.intp)
        for row in sorted(order.tolist()):
            if keys[row] in self.index:  # restored into a table that already has it
                raise reader.fail("a key appears twice", self.name)
            sid = self._new(keys[row], 0, now)
            out[row] = sid
            self.last_seen[sid] = seen[row]
            self.versions[sid] = version
        self.overflowed = overflowed
        keep = out >= 0
        for name, got in loaded.items():
            arr = self.arrays[name]
            if got.dtype == object and arr.dtype != object:
                arr = self.arrays[name] = arr.astype(object)
            arr[out[keep]] = got[keep]
        return out

    def absorb(
        self,
        state: Any,
        reader: Any,
        now: float,
        version: int,
        counts: Callable[[int], npt.NDArray[Any]] | str | None = None,
    ) -> npt.NDArray[np.intp]:
        """Merge another table's :meth:`state` into this one (``--workers``: a worker's
        delta): its series are looked up or created here (folded at the cap like any new
        label set), their arrays combined by each array's merge rule. ``counts`` gives the
        events behind each saved row, for the overflow counter: a function of the number of
        rows, or the name of the array that counts them (default ``count``; one each
        without it).
        Returns this table's id of each saved row."""
        keys, _seen, loaded, overflowed = self._parse(state, reader)
        if callable(counts):
            weights = counts(len(keys))
        elif (counts or "count") in loaded:
            weights = loaded[counts or "count"]
            if weights.ndim > 1:  # e.g. bucket counts: the events are their sum
                weights = weights.sum(axis=tuple(range(1, weights.ndim)))
        else:
            weights = np.ones(len(keys), dtype=np.int64)
        # Events the other table already folded were counted there (``overflowed``).
        fold = (OVERFLOW,) * self.arity
        weights = np.where([key == fold for key in keys], 0, weights) if fold in keys else weights
        ids = self.ids(keys, weights, now, version)
        self.overflowed += overflowed
        for name, got in loaded.items():
            rule = self._merge[name]
            arr = self.arrays[name]
            if rule == "add":
                self.arrays[name] = add_rows(arr, ids, got)
            elif rule == "first":
                fill = self._fills[name]
                have = arr[ids]
                take = (got != fill) & ((have == fill) | (got < have))
                # One at a time: two saved rows may fold into one series here.
                for sid, value in zip(ids[take].tolist(), got[take].tolist(), strict=True):
                    if arr[sid] == fill or value < arr[sid]:
                        arr[sid] = value
            else:  # last
                arr[ids] = got
        return ids
