"""Frames in, one validated columnar batch per event type out (SPEC §1.2–§1.4).

Pure: no sockets, no asyncio, no clock (the arrival time is passed in). A :class:`Decoder` takes
every frame of one ingest wake-up (``add``) and never raises; everything an emitter can get wrong
comes back as counts by reject reason, and the valid rest is returned by ``finish``.

Frames are only *sorted* as they arrive: each columnar batch (a "part": its length, constants and
columns) and each event sent as a map is pooled by type, after the checks that concern a frame as
a whole (msgpack, version, shape, size, event count). ``finish`` then validates each field of each
type once, over the concatenation of every part: a label sent as a constant costs one dictionary
lookup per part, a numeric column one ``numpy.array`` call per wake-up. So the emitter's usual
frame, dozens of small batches (one per label set), costs about what one large batch costs, and
the trackers receive a single merged batch per type with its label strings as codes
(:class:`~metricsd.batch.Cat`), grouped once for all of them.

Every field of the type's schema comes out in exactly one of ``const`` and ``cols`` with its
default filled in; optional numeric fields without a default read as NaN (absent); ``api_key`` is
replaced by ``key_id`` (SPEC §1.6) and never appears in the output. The verdict on a value never
depends on its neighbours: the column path is a vectorised shortcut of :func:`check_scalar`.
"""

from __future__ import annotations

import operator
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from metricsd.batch import Batch, Cat
from metricsd.keys import hash_key
from metricsd.schema import EVENT_TYPES, NUMERIC_KINDS, Field
from metricsd.validate import (
    NUMPY_DTYPE,
    Limits,
    check_scalar,
    numeric_fast,
    numeric_slow,
    objects_slow,
    string_limit,
)

__all__ = [
    "DICT_COLUMN",
    "PROTOCOL_VERSION",
    "REASONS",
    "TYPED_COLUMNS",
    "DecodeResult",
    "Decoder",
    "DictColumn",
    "decode",
]

PROTOCOL_VERSION: Final = 1
#: The limits when the caller gives none (tests, tools): the configuration's defaults.
DEFAULT_LIMITS: Final = Limits()
REASONS: Final = (
    "decode",
    "version",
    "shape",
    "unknown_type",
    "missing_field",
    "bad_value",
    "too_large",
    "too_many",
)
_MISSING_FIELD: Final = REASONS.index("missing_field") + 1
_BAD_VALUE: Final = REASONS.index("bad_value") + 1

#: Typed columns (msgpack ext types): a column may be sent as the raw little-endian bytes of a
#: numeric array instead of a msgpack array, which decodes without one Python object per value.
TYPED_COLUMNS: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
}
#: A dictionary column (msgpack ext type 5): a label column as its distinct values and one small
#: integer per row (see :class:`DictColumn`).
DICT_COLUMN: Final = 5
#: String fields kept as plain lists (free text); every other string field is a label (Cat).
_TEXT_KINDS: Final = frozenset({"longstr", "text"})
_LABEL_KINDS: Final = frozenset({"str", "enum", "name"})


@dataclass(slots=True)
class DecodeResult:
    """What the frames gave: valid batches, and rejected events counted by reason."""

    batches: list[Batch] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    truncated: int = 0
    #: Accepted events left out of ``batches`` because a worker applied them in full
    #: (``--workers``), by type: they still count as received.
    elided: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return sum(b.n for b in self.batches)


class _Reject(Exception):
    """A whole batch or frame is rejected: ``reason`` for ``count`` events."""

    def __init__(self, reason: str, count: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.count = max(1, count)


class _Part:
    """One pooled columnar batch (or the events of a type sent as maps, ``strict``)."""

    __slots__ = ("cols", "const", "n", "present", "strict")

    def __init__(
        self,
        n: int,
        const: dict[Any, Any],
        cols: dict[Any, Any],
        strict: bool = False,
        present: dict[str, npt.NDArray[np.bool_]] | None = None,
    ) -> None:
        self.n = n
        self.const = const
        self.cols = cols
        self.strict = strict
        self.present = present


def decode(frame: bytes, now: float, limits: Limits | None = None) -> DecodeResult:
    """Decode and validate one frame. Never raises; see the module docstring."""
    decoder = Decoder(now, limits)
    decoder.add(frame)
    return decoder.finish()


class Decoder:
    """Decodes many frames into one result (what ingest drains in one wake-up)."""

    __slots__ = ("_parts", "_plain", "frames", "limits", "now", "result")

    def __init__(self, now: float, limits: Limits | None = None) -> None:
        self.now = now
        self.limits = limits or DEFAULT_LIMITS
        self.result = DecodeResult()
        self._parts: dict[str, list[_Part]] = {}
        self._plain: dict[str, list[dict[Any, Any]]] = {}
        self.frames = 0

    def add(self, frame: bytes) -> None:
        """Decode one frame. Never raises."""
        self.frames += 1
        result = self.result
        if len(frame) > self.limits.max_frame_bytes:
            result.rejected["too_large"] += 1
            return
        try:
            obj = msgpack.unpackb(
                frame, raw=False, strict_map_key=False, use_list=True, ext_hook=_typed_column
            )
        except Exception:  # any malformed input: the msgpack library's errors are not one type
            result.rejected["decode"] += 1
            return
        if type(obj) is dict and "cols" not in obj and "const" not in obj:
            self._one_event(obj)  # the commonest small frame, without the general walk
            return
        try:
            self._frame(obj)
        except _Reject as exc:  # raised before anything of this frame was kept
            result.rejected[exc.reason] += exc.count

    def _one_event(self, event: dict[Any, Any]) -> None:
        type_name = event.get("type")
        if not _is_version(event.get("v", PROTOCOL_VERSION)):
            self.result.rejected["version"] += 1
        elif type(type_name) is str and type_name in EVENT_TYPES:
            bucket = self._plain.get(type_name)
            if bucket is None:
                self._plain[type_name] = [event]
            else:
                bucket.append(event)
        else:
            self.result.rejected["shape" if type_name is None else "unknown_type"] += 1

    def _frame(self, obj: Any) -> None:
        limits = self.limits
        if type(obj) is dict:
            if not _is_version(obj.get("v", PROTOCOL_VERSION)):
                raise _Reject("version", _count_events(obj))
            elements: list[Any] = [obj]
        elif type(obj) is list:
            elements = obj
        else:
            raise _Reject("shape")
        # One pass sorts the elements and counts the events; nothing is kept before the count
        # is known, so a frame over the limit is rejected whole.
        # (type, event) for an event as a map, (None, batch) with its count for a columnar one;
        # kept in the frame's order, which is the order rows are applied in.
        staged: list[tuple[str | None, dict[Any, Any], int]] = []
        shape = version = unknown = total = 0
        for element in elements:
            if type(element) is not dict:
                shape += 1
                total += 1
            elif "cols" in element or "const" in element:
                k, ok = _measure(element)
                staged.append((None, element, k if ok else -k))
                total += k
            else:
                total += 1
                type_name = element.get("type")
                if not _is_version(element.get("v", PROTOCOL_VERSION)):
                    version += 1
                elif type(type_name) is str and type_name in EVENT_TYPES:
                    staged.append((type_name, element, 1))
                elif type_name is None:
                    shape += 1
                else:
                    unknown += 1
        if total > limits.max_events:
            raise _Reject("too_many", total)
        rejected = self.result.rejected
        if shape:
            rejected["shape"] += shape
        if version:
            rejected["version"] += version
        if unknown:
            rejected["unknown_type"] += unknown
        plain = self._plain
        for type_name, element, n in staged:
            if type_name is None:
                try:
                    self._columnar(element, n)
                except _Reject as exc:
                    rejected[exc.reason] += exc.count
                continue
            bucket = plain.get(type_name)
            if bucket is None:
                plain[type_name] = [element]
            else:
                bucket.append(element)

    def _columnar(self, obj: dict[Any, Any], n: int) -> None:
        """Check a columnar batch's structure and pool it; its values are checked in finish.

        ``n`` is its event count from :func:`_measure`, negative when its columns are not all
        arrays of one length."""
        shaped = n >= 0
        n = abs(n)
        if "v" in obj and not _is_version(obj["v"]):
            raise _Reject("version", n)
        type_name = obj.get("type")
        if type(type_name) is not str or type_name not in EVENT_TYPES:
            raise _Reject("unknown_type" if type_name is not None else "shape", n)
        cols = obj.get("cols", _EMPTY)
        const = obj.get("const", _EMPTY)
        if type(cols) is not dict or type(const) is not dict or not shaped:
            raise _Reject("shape", n)
        if not cols:
            n = 1  # a batch of constants only is one event
        elif n == 0:
            return  # empty columns: no events, nothing to count
        if "type" in cols or "v" in cols:
            raise _Reject("shape", n)
        if any(type(c) is DictColumn for c in cols.values()):
            cols = _plain_dict_columns(type_name, cols)
        if "v" in const and not _is_version(const["v"]):
            raise _Reject("version", n)
        if len(obj) > 4 or ("v" not in obj and len(obj) > 3):
            merged = {k: v for k, v in obj.items() if k not in ("type", "cols", "const", "v")}
            merged.update(const)
        else:
            merged = const  # only type, v, cols and const: the constants as sent
        bucket = self._parts.get(type_name)
        if bucket is None:
            bucket = self._parts[type_name] = []
        earlier = self._plain.pop(type_name, None)
        if earlier:  # events of this type sent as maps before this batch: they come first
            bucket.append(_plain_part(type_name, earlier))
        bucket.append(_Part(n, merged, cols))

    def finish(self) -> DecodeResult:
        """Validate everything pooled; the result holds one batch per type and every reject."""
        parts = self._parts
        for type_name, events in self._plain.items():
            parts.setdefault(type_name, []).append(_plain_part(type_name, events))
        for type_name, pooled in parts.items():
            batch = _validate(type_name, pooled, self.now, self.limits, self.result)
            if batch is not None:
                self.result.batches.append(batch)
        self._parts = {}
        self._plain = {}
        return self.result


class DictColumn:
    """A column sent as ``[values, codes]``: its distinct values once, then a little-endian
    unsigned code per row (1 byte with at most 256 values, 2 with at most 65 536, else 4).

    Label columns of mixed traffic repeat a handful of values; sent this way they decode without
    a string object per row, and the decoder checks each distinct value once. Row ``i`` is
    ``values[codes[i]]``; a nil value means the field is absent from that row."""

    __slots__ = ("codes", "values")

    def __init__(self, values: list[Any], codes: npt.NDArray[Any]) -> None:
        self.values = values
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def tolist(self) -> list[Any]:
        values = self.values
        return [values[c] for c in self.codes.tolist()]


def _dict_column(data: bytes) -> Any:
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception:  # malformed: whatever the library raises, a bad value
        return msgpack.ExtType(DICT_COLUMN, data)
    if not (
        type(body) is list
        and len(body) == 2
        and type(body[0]) is list
        and type(body[1]) is bytes
        and body[0]
    ):
        return msgpack.ExtType(DICT_COLUMN, data)
    values, raw = body
    width = 1 if len(values) <= 1 << 8 else 2 if len(values) <= 1 << 16 else 4
    if len(raw) % width:
        return msgpack.ExtType(DICT_COLUMN, data)
    codes = np.frombuffer(raw, dtype=_CODE_DTYPES[width])
    if codes.size and int(codes.max()) >= len(values):
        return msgpack.ExtType(DICT_COLUMN, data)
    return DictColumn(values, codes)


_CODE_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
}


def _typed_column(code: int, data: bytes) -> Any:
    if code == DICT_COLUMN:
        return _dict_column(data)
    dtype = TYPED_COLUMNS.get(code)
    if dtype is None or len(data) % dtype.itemsize:
        return msgpack.ExtType(code, data)  # not a column this version knows: a bad value
    return np.frombuffer(data, dtype=dtype)


def _plain_dict_columns(type_name: str, cols: dict[Any, Any]) -> dict[Any, Any]:
    """Dictionary columns of fields that are not labels, as the columns they stand for: an
    array where every value is a number, else a list (checked like any other column)."""
    schema = EVENT_TYPES[type_name]
    out = dict(cols)
    for name, col in cols.items():
        if type(col) is not DictColumn:
            continue
        fdef = schema.get(name) if type(name) is str else None
        if fdef is not None and fdef.kind in _LABEL_KINDS:
            continue
        plain: Any = None
        if fdef is not None and fdef.kind in NUMERIC_KINDS:
            kinds = set(map(type, col.values))
            try:
                if kinds == {int}:
                    plain = np.array(col.values, dtype=np.int64)[col.codes]
                elif kinds <= {int, float}:
                    plain = np.array(col.values, dtype=np.float64)[col.codes]
            except OverflowError:
                plain = None
        out[name] = col.tolist() if plain is None else plain
    return out


def _is_version(v: Any) -> bool:
    """Only the integer 1 (not ``true`` or ``1.0``) is protocol version 1."""
    return type(v) is int and v == PROTOCOL_VERSION


def _count_events(obj: Any) -> int:
    """How many events a frame holds, for counting a whole-frame reject."""
    if isinstance(obj, dict):
        return _batch_len(obj) if "cols" in obj else 1
    if isinstance(obj, list):
        return sum(_count_events(e) if isinstance(e, dict) else 1 for e in obj)
    return 1


_EMPTY: Final[dict[Any, Any]] = {}


def _measure(obj: dict[Any, Any]) -> tuple[int, bool]:
    """A columnar batch's event count (its longest column; 1 without columns) and whether its
    columns are all arrays of that one length: one pass over the columns."""
    cols = obj.get("cols")
    if type(cols) is not dict:
        return 1, cols is None
    n = -1
    ok = True
    for col in cols.values():
        kind = type(col)
        if kind is list or kind is np.ndarray or kind is DictColumn:
            size = len(col)
            if size != n:
                if n >= 0:
                    ok = False  # columns of different lengths
                n = max(n, size)
        else:
            ok = False
    return (1, ok) if n < 0 else (n, ok)


def _batch_len(obj: dict[Any, Any]) -> int:
    cols = obj.get("cols")
    if isinstance(cols, dict):
        lengths = [len(v) for v in cols.values() if isinstance(v, (list, np.ndarray, DictColumn))]
        if lengths:
            return max(lengths)
    return 1


def _plain_part(type_name: str, events: list[dict[Any, Any]]) -> _Part:
    """Events sent as maps, as one strict part: a column per field, a mask where some lack it."""
    schema = EVENT_TYPES[type_name]
    names = set().union(*events).intersection(schema)
    n = len(events)
    if n == 1:
        return _Part(1, {k: events[0][k] for k in names}, {}, strict=True)
    cols: dict[str, list[Any]] = {}
    present: dict[str, npt.NDArray[np.bool_]] = {}
    for name in names:
        try:
            cols[name] = [e[name] for e in events]  # the usual case: every event has it
        except KeyError:
            col = [e.get(name, _ABSENT) for e in events]
            mask = np.fromiter((v is not _ABSENT for v in col), dtype=bool, count=n)
            present[name] = mask
            filler = _FILLER.get(schema[name].kind)
            cols[name] = [filler if v is _ABSENT else v for v in col]
    return _Part(n, {}, cols, strict=True, present=present or None)


_ABSENT: Final = object()
_is_none = partial(operator.is_, None)
_not_none = partial(operator.is_not, None)
_is_absent = partial(operator.is_, _ABSENT)


def _not_none_value(value: Any) -> bool:
    return value is not None


def _both_absent(col: Any, const: Any) -> bool:
    return col is None and const is _ABSENT


#: What stands in for an absent value inside a column until it is replaced by the default (a
#: value of the right type, so the column keeps its vectorised path).
_FILLER: Final[dict[str, Any]] = {
    "float": 0.0,
    "nnfloat": 0.0,
    "count": 0,
    "int": 0,
    "bool": False,
}


# --- validation of a type's pooled parts ------------------------------------------------------


class _Ctx:
    """What validating one type's parts shares: row layout, reject codes, truncations."""

    __slots__ = ("bad", "lengths", "limits", "n", "now", "partial", "parts", "strict", "truncated")

    def __init__(self, parts: list[_Part], now: float, limits: Limits) -> None:
        self.parts = parts
        self.lengths = np.array([p.n for p in parts], dtype=np.int64)
        self.n = int(self.lengths.sum())
        self.bad = np.zeros(self.n, dtype=np.int8)  # 0 = ok, else 1 + index into REASONS
        self.now = now
        self.limits = limits
        self.truncated = [0]
        #: Parts with fields that some of their events lack (events sent as maps).
        self.partial = any(p.present is not None for p in parts)
        #: Indexes of the parts of events sent as maps (at most one per type).
        self.strict = [i for i, p in enumerate(parts) if p.strict]

    def reject(self, mask: npt.NDArray[np.bool_] | None, code: int) -> None:
        """Mark rows bad; the first reason found for a row (in schema order) is the one counted."""
        if mask is None:
            self.bad[self.bad == 0] = code
        else:
            self.bad[(self.bad == 0) & mask] = code

    def per_part(self, flags: list[bool]) -> npt.NDArray[np.bool_] | None:
        """A per-part flag as a row mask (None when no part has it)."""
        if not any(flags):
            return None
        return np.repeat(np.array(flags, dtype=bool), self.lengths)

    def missing_rows(
        self, name: str, colv: list[Any], constv: list[Any]
    ) -> npt.NDArray[np.bool_] | None:
        """Rows whose event did not carry ``name`` at all (None: every row has it)."""
        partial = self.partial and any(
            p.present is not None and name in p.present for p in self.parts
        )
        if not partial:
            if not any(map(_is_none, colv)) or not any(map(_is_absent, constv)):
                return None  # every part has it, as a column or a constant
            return self.per_part(list(map(_both_absent, colv, constv)))
        absent = list(map(_both_absent, colv, constv))
        masks = [
            np.full(p.n, gone) if p.present is None or name not in p.present else ~p.present[name]
            for p, gone in zip(self.parts, absent, strict=True)
        ]
        return np.concatenate(masks)


class _Const:
    """A field with one value for every row."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _validate(
    type_name: str, parts: list[_Part], now: float, limits: Limits, result: DecodeResult
) -> Batch | None:
    schema = EVENT_TYPES[type_name]
    ctx = _Ctx(parts, now, limits)
    names: set[Any] = set()
    cols_list = [p.cols for p in parts]
    const_list = [p.const for p in parts]
    for d in cols_list:
        names.update(d)
    for d in const_list:
        names.update(d)
    absent = repeat(_ABSENT)
    const: dict[str, Any] = {}
    cols: dict[str, Any] = {}
    for name, fdef in schema.items():
        if name not in names:  # no event carries it: the default, whatever the kind
            if fdef.required:
                ctx.reject(None, _MISSING_FIELD)
            const[name] = fdef.default
            continue
        colv = list(map(dict.get, cols_list, repeat(name)))
        constv = list(map(dict.get, const_list, repeat(name), absent))
        missing = ctx.missing_rows(name, colv, constv)
        if fdef.required and missing is not None:
            ctx.reject(missing, _MISSING_FIELD)
        kind = fdef.kind
        if kind in NUMERIC_KINDS:
            value = _numeric(ctx, fdef, colv, constv, missing)
        elif kind in _LABEL_KINDS:
            value = _label(ctx, fdef, colv, constv)
        else:
            value = _objects(ctx, fdef, colv, constv, missing)
        if isinstance(value, _Const):
            const[name] = value.value
        else:
            cols[name] = value
    _fix_ts(ctx, const, cols)
    _hash_keys(const, cols)
    result.truncated += ctx.truncated[0]
    bad = ctx.bad
    n = ctx.n
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        codes, counts = np.unique(bad[bad != 0], return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            result.rejected[REASONS[code - 1]] += count
        if n_bad == n:
            return None
        keep = np.flatnonzero(bad == 0)
        for name, col in list(cols.items()):
            if isinstance(col, np.ndarray):
                cols[name] = col[keep]
            elif isinstance(col, Cat):
                cols[name] = col.take(keep)
            else:
                cols[name] = [col[i] for i in keep.tolist()]
        n -= n_bad
    _hoist(const, cols, n)
    return Batch(type_name, n, const, cols)


#: Types whose equal values are interchangeable as dictionary keys for a field's check (a bool
#: is not: ``True == 1`` would let a boolean share the verdict of the number 1).
_PLAIN_TYPES: Final = frozenset({str, int, float, type(None), object})


def _check_consts(
    ctx: _Ctx, fdef: Field, constv: list[Any], colv: list[Any]
) -> tuple[list[Any], list[bool]]:
    """Each part's constant checked (each distinct value once): (value, ok) per part.

    A part that has a column for the field (``colv[i]`` not None) or no value (``_ABSENT``) gets
    the default, ok; truncations count once per event of the part.
    """
    limits = ctx.limits
    default = fdef.default
    kinds = set(map(type, constv))
    if fdef.kind in NUMPY_DTYPE and kinds <= _NUMBER_TYPES:
        return _check_numbers(ctx, fdef, constv, colv)
    if kinds <= _PLAIN_TYPES:
        verdicts: dict[Any, tuple[Any, bool]] = {_ABSENT: (default, True)}
        cut = [0]
        truncated: set[Any] = set()
        for raw in dict.fromkeys(constv):
            if raw is not _ABSENT:
                before = cut[0]
                value, ok = check_scalar(fdef, raw, limits, cut)
                verdicts[raw] = (value if ok else default, ok)
                if cut[0] != before:
                    truncated.add(raw)
        found = [
            verdicts[raw] if col is None else (default, True)
            for raw, col in zip(constv, colv, strict=True)
        ]
        if truncated:  # a string is counted as it came: once per constant sent
            ctx.truncated[0] += sum(
                1 for raw, col in zip(constv, colv, strict=True) if col is None and raw in truncated
            )
    else:  # booleans, maps, lists: each part on its own
        found = []
        for raw, col in zip(constv, colv, strict=True):
            if raw is _ABSENT or col is not None:
                found.append((default, True))
                continue
            one = [0]
            value, ok = check_scalar(fdef, raw, limits, one)
            ctx.truncated[0] += one[0]
            found.append((value if ok else default, ok))
    return [v for v, _ok in found], [ok for _v, ok in found]


#: Constants that are plain numbers (or absent): checked as one array.
_NUMBER_TYPES: Final = frozenset({int, float, type(None), object})


def _check_numbers(
    ctx: _Ctx, fdef: Field, constv: list[Any], colv: list[Any]
) -> tuple[list[Any], list[bool]]:
    """Numeric constants checked together: each distinct number once, as one array."""
    default = fdef.default
    distinct = [v for v in dict.fromkeys(constv) if v is not _ABSENT and v is not None]
    # An explicit nil is the default for an optional field, and a bad value for a required one.
    verdicts: dict[Any, tuple[Any, bool]] = {
        _ABSENT: (default, True),
        None: (default, not fdef.required),
    }
    if distinct:
        checked = numeric_fast(fdef, distinct)
        if checked is None:  # ints beyond 64 bits and the like: one by one
            for raw in distinct:
                value, ok = check_scalar(fdef, raw, ctx.limits, ctx.truncated)
                verdicts[raw] = (value if ok else default, ok)
        else:
            arr, bad = checked
            values = arr.tolist()
            flags = [False] * len(values) if bad is None else bad.tolist()
            for raw, value, wrong in zip(distinct, values, flags, strict=True):
                verdicts[raw] = (default, False) if wrong else (value, True)
    found = [
        verdicts[raw] if col is None else (default, True)
        for raw, col in zip(constv, colv, strict=True)
    ]
    return [v for v, _ok in found], [ok for _v, ok in found]


def _numeric(
    ctx: _Ctx,
    fdef: Field,
    colv: list[Any],
    constv: list[Any],
    missing: npt.NDArray[np.bool_] | None,
) -> Any:
    parts = ctx.parts
    dtype = NUMPY_DTYPE[fdef.kind]
    default = fdef.default
    values, oks = _check_consts(ctx, fdef, constv, colv)
    bad_parts = [not ok for ok in oks]
    # An explicit nil is absent, like a missing field.
    nil_parts = [c is None and raw is None for c, raw in zip(colv, constv, strict=True)]
    filler0 = _FILLER[fdef.kind]
    if not any(map(_not_none, colv)):
        clean = [filler0 if (v is None or not ok) else v for v, ok in zip(values, oks, strict=True)]
        if any(bad_parts):
            ctx.reject(ctx.per_part(bad_parts), _BAD_VALUE)
        first = clean[0]
        if missing is None and not any(nil_parts) and all(_same(v, first) for v in clean):
            return _Const(values[0] if oks[0] else None)
        arr = np.repeat(np.array(clean, dtype=dtype), ctx.lengths)
        absent = _or_mask(missing, ctx.per_part(nil_parts))
        if absent is not None:
            arr[absent] = np.nan if default is None and dtype is np.float64 else (default or 0)
        return arr
    # Assemble the column from every part: constants repeated, absent values filled (and set
    # to the default afterwards). Whole-list operations only: no Python step per part.
    columns = list(filter(_not_none_value, colv))
    strict_bool = any(
        isinstance(colv[i], list) and bool in set(map(type, colv[i])) for i in ctx.strict
    )  # an event sent as a map: a boolean is not a number
    consts = [filler0 if v is None or not ok else v for v, ok in zip(values, oks, strict=True)]
    checked: tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None] | None = None
    if not strict_bool:
        raw = _assemble(ctx, colv, columns, consts)
        if raw is not None:
            checked = numeric_fast(fdef, raw)
    if checked is None:
        flat: list[Any] = []
        for col, const, p in zip(colv, consts, parts, strict=True):
            if col is None:
                flat.extend([const] * p.n)
            else:
                flat.extend(col.tolist() if isinstance(col, np.ndarray) else col)
        checked = numeric_slow(fdef, flat, ctx.limits, ctx.truncated)
    arr, bad_rows = checked
    bad_rows = _or_mask(bad_rows, ctx.per_part(bad_parts))
    missing = _or_mask(missing, ctx.per_part(nil_parts))
    if missing is not None:
        if bad_rows is not None:
            bad_rows = bad_rows & ~missing
        if not arr.flags.writeable:
            arr = arr.copy()
        arr[missing] = np.nan if default is None and dtype is np.float64 else (default or 0)
    if bad_rows is not None:
        ctx.reject(bad_rows, _BAD_VALUE)
    return arr


def _or_mask(
    a: npt.NDArray[np.bool_] | None, b: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.bool_] | None:
    if a is None:
        return b
    return a if b is None else a | b


def _assemble(
    ctx: _Ctx, colv: list[Any], columns: list[Any], consts: list[Any]
) -> npt.NDArray[Any] | list[Any] | None:
    """One column from every part: the parts' columns (arrays or lists) where they have one,
    each part's constant repeated elsewhere, in a few whole-column operations. None when a
    piece is not numeric (then the caller checks value by value)."""
    kinds = set(map(type, columns))
    if kinds == {list} and len(columns) == len(colv):
        return columns[0] if len(columns) == 1 else list(chain.from_iterable(columns))
    pieces: list[npt.NDArray[Any]] = []
    masks: list[npt.NDArray[np.bool_] | None] = []
    for kind in (np.ndarray, list):
        chosen = [c for c in columns if type(c) is kind]
        if not chosen:
            continue
        if kind is list:
            try:
                joined = np.array(list(chain.from_iterable(chosen)))
            except (ValueError, OverflowError, TypeError):
                return None
        else:
            joined = np.asarray(chosen[0]) if len(chosen) == 1 else np.concatenate(chosen)
        if joined.dtype.kind not in "iuf" or joined.ndim != 1:
            return None  # text, or a typed bool column given for a number: value by value
        pieces.append(joined)
        masks.append(
            None if len(chosen) == len(colv) else ctx.per_part([type(c) is kind for c in colv])
        )
    if len(pieces) == 1 and masks[0] is None:
        return pieces[0]
    try:
        base = np.array(consts)
    except (ValueError, OverflowError, TypeError):
        return None
    if base.dtype.kind not in "iuf":
        return None
    if any(p.dtype.kind == "u" and p.dtype.itemsize == 8 for p in pieces):
        return None  # uint64 beside signed values: value by value
    dtype = np.result_type(base.dtype, *(p.dtype for p in pieces))
    out = np.repeat(base.astype(dtype), ctx.lengths)
    for piece, mask in zip(pieces, masks, strict=True):
        out[mask] = piece
    return out


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return type(a) is type(b) and bool(a == b)


class _Bad:
    """The code of a value that cannot even be looked up (a list or a map as a label)."""

    __slots__ = ()


_BAD_RAW: Final = _Bad()


def _label(ctx: _Ctx, fdef: Field, colv: list[Any], constv: list[Any]) -> Any:
    """A label field: each distinct value interned and checked once per wake-up."""
    parts = ctx.parts
    if not any(map(_not_none, colv)) and set(map(type, constv)) <= _PLAIN_TYPES:
        # Constants only (the emitter's labels): one dictionary pass for every part.
        distinct = list(dict.fromkeys(constv))
        raw_index = {v: i for i, v in enumerate(distinct)}
        raw_codes = np.fromiter(
            map(raw_index.__getitem__, constv), dtype=np.intp, count=len(constv)
        )
        raws = [None if v is _ABSENT else v for v in distinct]
        remap, values, bad_codes, trunc_codes = _check_labels(ctx, fdef, raws)
        if bad_codes.any():
            ctx.reject(ctx.per_part(bad_codes[raw_codes].tolist()), _BAD_VALUE)
        if trunc_codes.any():
            ctx.truncated[0] += int(np.count_nonzero(trunc_codes[raw_codes]))
        final = remap[raw_codes]
        if len(values) == 1 or bool((final == final[0]).all()):
            return _Const(values[int(final[0])])
        return Cat(np.repeat(final, ctx.lengths), values)
    # Columns somewhere (or odd constants): intern row values part by part.
    strings: dict[str, int] = {}
    others: dict[Any, int] = {}
    raws = []

    def intern(value: Any) -> int:
        if type(value) is str:
            code = strings.get(value)
            if code is None:
                code = strings[value] = len(raws)
                raws.append(value)
            return code
        if value is _ABSENT:
            value = None
        try:
            key = (type(value), value)
            code = others.get(key)
        except TypeError:
            key, code = (_Bad, _BAD_RAW), others.get((_Bad, _BAD_RAW))
            value = _BAD_RAW
        if code is None:
            code = others[key] = len(raws)
            raws.append(value)
        return code

    pieces: list[npt.NDArray[np.intp]] = []
    const_codes: list[int] = []
    for p, col, raw in zip(parts, colv, constv, strict=True):
        if col is None:
            code = intern(raw)
            const_codes.append(code)
            pieces.append(np.full(p.n, code, dtype=np.intp))
        elif isinstance(col, np.ndarray):
            pieces.append(np.full(p.n, intern(_BAD_RAW), dtype=np.intp))  # numbers: not text
        elif type(col) is DictColumn:  # each distinct value interned once, rows by index
            local = np.fromiter(map(intern, col.values), dtype=np.intp, count=len(col.values))
            pieces.append(local[col.codes])
        else:
            pieces.append(_codes(col, intern))
    codes = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    remap, values, bad_codes, trunc_codes = _check_labels(ctx, fdef, raws)
    if bad_codes.any():
        ctx.reject(bad_codes[codes], _BAD_VALUE)
    if trunc_codes.any():  # strings counted as they came: per column row, per constant sent
        from_columns = ctx.per_part([c is not None for c in colv])
        rows = codes if from_columns is None else codes[from_columns]
        if from_columns is not None:
            ctx.truncated[0] += int(np.count_nonzero(trunc_codes[rows]))
        ctx.truncated[0] += sum(1 for c in const_codes if trunc_codes[c])
    return Cat(remap[codes], values)


def _check_labels(
    ctx: _Ctx, fdef: Field, raws: list[Any]
) -> tuple[npt.NDArray[np.intp], list[Any], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Check each distinct raw label value once: (raw code → value code, values, bad raw
    codes, truncated raw codes). Values that normalise alike share a code."""
    limits = ctx.limits
    final: dict[Any, int] = {}
    values: list[Any] = []
    remap = np.empty(len(raws), dtype=np.intp)
    bad_codes = np.zeros(len(raws), dtype=bool)
    trunc_codes = np.zeros(len(raws), dtype=bool)
    for i, raw in enumerate(raws):
        if raw is _BAD_RAW:
            value, ok = None, False
        else:
            cut = [0]
            value, ok = check_scalar(fdef, raw, limits, cut)
            trunc_codes[i] = cut[0] > 0
        if not ok:
            bad_codes[i] = True
            value = fdef.default
        code = final.get(value)
        if code is None:
            code = final[value] = len(values)
            values.append(value)
        remap[i] = code
    return remap, values, bad_codes, trunc_codes


def _codes(col: list[Any], intern: Any) -> npt.NDArray[np.intp]:
    """Codes of a list of label values: distinct values interned once, rows mapped in C."""
    try:
        distinct = dict.fromkeys(col)
    except TypeError:  # an unhashable value somewhere: row by row
        return np.fromiter(map(intern, col), dtype=np.intp, count=len(col))
    if not set(map(type, distinct)) <= {str, type(None)}:
        # Not text (1 and True and 1.0 would share a key): intern by type, row by row.
        return np.fromiter(map(intern, col), dtype=np.intp, count=len(col))
    local = {v: intern(v) for v in distinct}
    return np.fromiter(map(local.__getitem__, col), dtype=np.intp, count=len(col))


def _objects(
    ctx: _Ctx,
    fdef: Field,
    colv: list[Any],
    constv: list[Any],
    missing: npt.NDArray[np.bool_] | None,
) -> Any:
    """Booleans, free text and maps."""
    parts = ctx.parts
    kind = fdef.kind
    values, oks = _check_consts(ctx, fdef, constv, colv)
    bad_parts = [not ok for ok in oks]
    if not any(map(_not_none, colv)):
        if any(bad_parts):
            ctx.reject(ctx.per_part(bad_parts), _BAD_VALUE)
        first = values[0]
        if all(_same_obj(v, first) for v in values):
            return _Const(first)
        if kind == "bool":
            return np.repeat(np.array([bool(v) for v in values], dtype=bool), ctx.lengths)
        return [v for v, p in zip(values, parts, strict=True) for _ in range(p.n)]
    pieces: list[Any] = []
    bads: list[npt.NDArray[np.bool_] | None] = []
    for p, col, value, bad in zip(parts, colv, values, bad_parts, strict=True):
        if col is None:
            pieces.append(np.full(p.n, bool(value)) if kind == "bool" else [value] * p.n)
            bads.append(np.ones(p.n, dtype=bool) if bad else None)
            continue
        out, bad_rows = _object_column(fdef, col, ctx.limits, ctx.truncated)
        pieces.append(out)
        bads.append(bad_rows)
    if any(b is not None for b in bads):
        mask = np.concatenate(
            [
                np.zeros(p.n, dtype=bool) if b is None else b
                for p, b in zip(parts, bads, strict=True)
            ]
        )
        if missing is not None:
            mask &= ~missing
        ctx.reject(mask, _BAD_VALUE)
    if kind == "bool":
        arr = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if missing is not None:
            arr = arr.copy()
            arr[missing] = bool(fdef.default)
        return arr
    joined: list[Any] = pieces[0] if len(pieces) == 1 else [v for pc in pieces for v in pc]
    if missing is not None:
        joined = [fdef.default if m else v for v, m in zip(joined, missing.tolist(), strict=True)]
    return joined


def _same_obj(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and bool(a == b))


def _object_column(
    fdef: Field, col: Any, limits: Limits, truncated: list[int]
) -> tuple[Any, npt.NDArray[np.bool_] | None]:
    kind = fdef.kind
    if kind == "bool":
        if isinstance(col, np.ndarray):
            if col.dtype == np.uint8:
                return col.astype(bool), (col > 1) if (col > 1).any() else None
            return np.zeros(len(col), dtype=bool), np.ones(len(col), dtype=bool)
        if set(map(type, col)) == {bool}:
            return np.array(col, dtype=bool), None
        values, bad = objects_slow(fdef, col, limits, truncated)
        return np.array([bool(v) for v in values], dtype=bool), bad
    if isinstance(col, np.ndarray):
        return [fdef.default] * len(col), np.ones(len(col), dtype=bool)  # numbers are not text
    if (
        kind in _TEXT_KINDS
        and set(map(type, col)) == {str}
        and max(map(len, col)) <= string_limit(kind, limits)
    ):
        return col, None
    return objects_slow(fdef, col, limits, truncated)


def _fix_ts(ctx: _Ctx, const: dict[str, Any], cols: dict[str, Any]) -> None:
    """Absent ``ts`` → the arrival time; a ``ts`` beyond the clock-skew limit is a bad value."""
    now, skew = ctx.now, ctx.limits.max_clock_skew
    ts = cols.get("ts")
    if ts is None:
        value = const.get("ts")
        if value is None:
            const["ts"] = now
        elif abs(value - now) > skew:
            ctx.reject(None, _BAD_VALUE)
        return
    ts = np.where(np.isnan(ts), now, ts)
    cols["ts"] = ts
    far = np.abs(ts - now) > skew
    if far.any():
        ctx.reject(far, _BAD_VALUE)


def _hash_keys(const: dict[str, Any], cols: dict[str, Any]) -> None:
    """Replace ``api_key`` by ``key_id`` (SPEC §1.6); a raw key never goes further."""
    raw = cols.pop("api_key", None)
    if raw is None:
        raw_key = const.pop("api_key", None)
        if raw_key is not None:
            cols.pop("key_id", None)
            const["key_id"] = hash_key(raw_key)
        return
    const.pop("api_key", None)
    assert isinstance(raw, Cat)
    ids = cols.pop("key_id", None)
    if ids is None:
        ids = Cat(np.zeros(len(raw), dtype=np.intp), [const.pop("key_id", None)])
    const.pop("key_id", None)
    assert isinstance(ids, Cat)
    width = len(ids.values)
    pairs = raw.codes * width + ids.codes
    uniq, inverse = np.unique(pairs, return_inverse=True)
    out: dict[Any, int] = {}
    remap = np.empty(len(uniq), dtype=np.intp)
    for j, pair in enumerate(uniq.tolist()):
        key = raw.values[pair // width]
        value = hash_key(key) if key is not None else ids.values[pair % width]
        remap[j] = out.setdefault(value, len(out))
    cols["key_id"] = Cat(remap[inverse.reshape(-1)], list(out))


def _hoist(const: dict[str, Any], cols: dict[str, Any], n: int) -> None:
    """A label column with one value is a constant: one series for the whole batch."""
    for name in [k for k, v in cols.items() if isinstance(v, Cat)]:
        cat = cols[name]
        used = cat.used()
        if len(used) <= 1:
            const[name] = cat.values[int(used[0])] if len(used) else None
            del cols[name]
