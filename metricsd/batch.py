"""The unit of work between the decoder, the engine and the trackers: a columnar :class:`Batch`.

A batch holds N validated events of one type. Every field of the type's schema is in exactly one
of two places:

- ``const``: one value for every row (a number, a string, ``None`` for "absent", an object);
- ``cols``: one value per row, as a numpy array (numbers, booleans), a :class:`Cat` (strings that
  label a series: endpoint, model, status of a stream end…, stored once each with an integer
  code per row), or a plain list (free text and objects: ``error_message``, ``labels``…).

Label strings as codes are what makes a merged batch cheap whatever its mix of label sets: the
decoder interns each distinct value once per wake-up, and :meth:`Batch.groups` combines the codes
of several label fields arithmetically, so "which rows belong to which series" is a handful of
numpy operations per batch, shared by every tracker (SPEC §1.2: the daemon resolves each series
once per batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.schema import EVENT_TYPES

__all__ = ["UNKNOWN", "Batch", "Cat", "Groups", "factorise", "group_cats", "regroup"]

#: The value of a label that an event left empty.
UNKNOWN: Final = "unknown"

Codes = npt.NDArray[np.intp]
#: Above this many combined codes, grouping sorts instead of indexing a dense table.
_DENSE_LIMIT: Final = 1 << 22


class Cat:
    """A string (or object) column as codes into a list of distinct values.

    ``values`` may hold values no row uses any more (rows dropped after validation); readers
    that care use :meth:`used`.
    """

    __slots__ = ("codes", "values")

    def __init__(self, codes: Codes, values: list[Any]) -> None:
        self.codes = codes
        self.values = values

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[Any]:
        values = self.values
        return [values[c] for c in self.codes.tolist()]

    def take(self, rows: npt.NDArray[Any]) -> Cat:
        return Cat(self.codes[rows], self.values)

    def used(self) -> Codes:
        """The codes some row uses, ascending."""
        if len(self.values) <= 1:
            return np.arange(len(self.values), dtype=np.intp)[: 1 if len(self.codes) else 0]
        return np.flatnonzero(np.bincount(self.codes, minlength=len(self.values)))

    def mapped(self, fn: Any) -> Cat:
        """The column with ``fn`` applied to each distinct value (equal results share a code)."""
        out: dict[Any, int] = {}
        remap = np.array(
            [out.setdefault(fn(v), len(out)) for v in self.values], dtype=np.intp
        ).reshape(-1)
        return Cat(remap[self.codes] if len(remap) else self.codes, list(out))

    def __repr__(self) -> str:
        return f"Cat({self.tolist()!r})"


@dataclass(frozen=True, slots=True)
class Groups:
    """The distinct label tuples of a batch and each row's group.

    ``codes[i]`` is the index in ``keys`` of row i's tuple; ``counts[g]`` how many rows group g
    has. With one group, ``codes`` is None (every row is in group 0).
    """

    keys: list[tuple[Any, ...]]
    codes: Codes | None
    counts: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.keys)

    def rows(self, n: int) -> Codes:
        """``codes`` as an array even with one group."""
        return np.zeros(n, dtype=np.intp) if self.codes is None else self.codes

    def sums(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Per-group float sums (exact for integers below 2**53)."""
        if self.codes is None:
            return np.array([float(values.sum())])
        out: npt.NDArray[np.float64] = np.bincount(
            self.codes, weights=values, minlength=len(self.keys)
        ).astype(np.float64, copy=False)
        return out


class Batch:
    """N validated events of one type; see the module docstring."""

    __slots__ = ("_groups", "cache", "cols", "const", "n", "type")

    def __init__(self, type_name: str, n: int, const: dict[str, Any], cols: dict[str, Any]) -> None:
        self.type = type_name
        self.n = n
        self.const = const
        self.cols = cols
        self._groups: dict[tuple[str, ...], Groups] = {}
        #: Values derived from the batch once and shared by every tracker (see outcomes).
        self.cache: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Batch({self.type!r}, n={self.n}, const={self.const!r}, cols={self.cols!r})"

    @classmethod
    def derived(cls, type_name: str, n: int, **fields: Any) -> Batch:
        """A batch made inside the daemon (e.g. the request outcome of a finished stream).

        Arrays, Cats and lists of length n become columns, anything else a constant; every
        schema field not given gets its default, so trackers read it like a decoded batch.
        """
        const: dict[str, Any] = {}
        cols: dict[str, Any] = {}
        for name, value in fields.items():
            if isinstance(value, (np.ndarray, list, Cat)) and len(value) == n:
                cols[name] = value
            else:
                const[name] = value
        for name, fdef in EVENT_TYPES[type_name].items():
            if name not in const and name not in cols and name != "api_key":
                const[name] = fdef.default
        return cls(type_name, n, const, cols)

    # --- reading fields -------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return name in self.cols or self.const.get(name) is not None

    def get(self, name: str) -> Any:
        """The field as stored: a column (array, Cat, list) or the constant."""
        if name in self.cols:
            return self.cols[name]
        return self.const.get(name)

    def column(self, name: str, dtype: Any = np.float64) -> npt.NDArray[Any]:
        """The field as a numpy array of length n (constants broadcast; None → NaN)."""
        col = self.cols.get(name)
        if col is not None:
            if isinstance(col, Cat):
                return np.asarray(col.tolist(), dtype=dtype)
            return np.asarray(col, dtype=dtype)
        value = self.const.get(name)
        if value is None:
            value = math.nan if np.dtype(dtype).kind == "f" else 0
        return np.full(self.n, value, dtype=dtype)

    def values(self, name: str) -> list[Any]:
        """The field as a Python list of length n (slow; for low-rate paths and tests)."""
        col = self.cols.get(name)
        if col is not None:
            if isinstance(col, (Cat, np.ndarray)):
                return col.tolist()
            return list(col)
        return [self.const.get(name)] * self.n

    def cat(self, name: str, default: Any = None) -> Cat:
        """A label field as codes; ``None`` and ``""`` read as ``default``."""
        col = self.cols.get(name)
        if col is None:
            value = self.const.get(name)
            value = default if value is None or value == "" else value
            return Cat(np.zeros(self.n, dtype=np.intp), [value])
        if not isinstance(col, Cat):
            col = _factorise(col.tolist() if isinstance(col, np.ndarray) else col)
        if default is not None and any(v is None or v == "" for v in col.values):
            col = col.mapped(lambda v: default if v is None or v == "" else v)
        return col

    def label(self, name: str, default: str = UNKNOWN) -> Cat:
        """:meth:`cat` with the usual default of a label (``unknown``)."""
        return self.cat(name, default)

    # --- grouping -------------------------------------------------------------------------

    def groups(self, fields: Sequence[str], defaults: Sequence[Any] | None = None) -> Groups:
        """Rows grouped by the values of ``fields`` (each read with :meth:`cat`; ``defaults``
        per field, default ``unknown``). Computed once per batch and field list."""
        key = tuple(fields)
        found = self._groups.get(key)
        if found is None:
            dflt = list(defaults) if defaults is not None else [UNKNOWN] * len(key)
            found = self._groups[key] = group_cats(
                [self.cat(f, d) for f, d in zip(key, dflt, strict=True)], self.n
            )
        return found

    def set_groups(self, fields: Sequence[str], groups: Groups) -> None:
        self._groups[tuple(fields)] = groups

    # --- slicing --------------------------------------------------------------------------

    def take(self, rows: npt.NDArray[Any]) -> Batch:
        """The rows selected by an index array or a boolean mask."""
        index = np.flatnonzero(rows) if rows.dtype == bool else rows
        cols: dict[str, Any] = {}
        for name, col in self.cols.items():
            if isinstance(col, (np.ndarray, Cat)):
                cols[name] = col[index] if isinstance(col, np.ndarray) else col.take(index)
            else:
                cols[name] = [col[i] for i in index.tolist()]
        return Batch(self.type, len(index), dict(self.const), cols)

    def rows(self) -> list[dict[str, Any]]:
        """Expand to one dict per event (slow; for tests and low-rate paths)."""
        columns = {k: self.values(k) for k in self.cols}
        return [{**self.const, **{k: v[i] for k, v in columns.items()}} for i in range(self.n)]


def _factorise(values: list[Any]) -> Cat:
    """A list → codes (one dict lookup per row, in C) and the distinct values."""
    distinct = list(dict.fromkeys(values))
    index = {v: i for i, v in enumerate(distinct)}
    codes = np.fromiter(map(index.__getitem__, values), dtype=np.intp, count=len(values))
    return Cat(codes, distinct)


def factorise(values: Iterable[Any]) -> Cat:
    return _factorise(list(values))


def group_cats(cats: list[Cat], n: int) -> Groups:
    """Group rows by the tuple of several Cat columns.

    The codes are combined in mixed radix (one multiply-add per column) and compacted through a
    dense lookup table, or a sort when the product of the cardinalities is large; either way a
    few numpy calls per batch, however many distinct tuples it holds.
    """
    if n == 0:
        return Groups([], None, np.zeros(0, dtype=np.int64))
    varying = [c for c in cats if len(c.values) > 1]
    if not varying:
        return Groups([tuple(c.values[0] for c in cats)], None, np.array([n], dtype=np.int64))
    combined = np.zeros(n, dtype=np.int64)
    size = 1
    for c in varying:
        combined *= len(c.values)
        combined += c.codes
        size *= len(c.values)
    if size <= _DENSE_LIMIT:
        counts_all = np.bincount(combined, minlength=size)
        present = np.flatnonzero(counts_all)
        lookup = np.empty(size, dtype=np.intp)
        lookup[present] = np.arange(len(present), dtype=np.intp)
        codes = lookup[combined]
        counts = counts_all[present].astype(np.int64)
    else:
        present, codes, counts = np.unique(combined, return_inverse=True, return_counts=True)
        codes = codes.astype(np.intp, copy=False).reshape(-1)
        counts = counts.astype(np.int64)
    # Decode each present combination back into its per-column codes (mixed radix, reversed).
    parts: list[npt.NDArray[np.int64]] = []
    rest = present.astype(np.int64)
    for c in reversed(varying):
        k = len(c.values)
        parts.append(rest % k)
        rest = rest // k
    parts.reverse()
    decoded = iter(p.tolist() for p in parts)
    per_column: list[list[Any]] = []
    for c in cats:
        if len(c.values) > 1:
            values = c.values
            per_column.append([values[i] for i in next(decoded)])
        else:
            per_column.append([c.values[0] if c.values else None] * len(present))
    keys = list(zip(*per_column, strict=True))
    if len(keys) == 1:
        return Groups(keys, None, counts)
    return Groups(keys, codes, counts)


def regroup(groups: Groups, cat: Cat, n: int) -> Groups:
    """Rows grouped by their group in ``groups`` and their value of ``cat``: keys are the
    group's key with the value appended."""
    keyed = Cat(groups.rows(n), groups.keys)
    inner = group_cats([keyed, cat], n)
    keys = [(*k, v) for k, v in inner.keys]
    return Groups(keys, inner.codes, inner.counts)
