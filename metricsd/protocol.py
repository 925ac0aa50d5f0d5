"""The wire protocol: one msgpack frame in, validated columnar batches out (SPEC §1).

Pure: no sockets, no asyncio, no clock (the arrival time is passed in). ``decode`` never raises;
everything an emitter can get wrong comes back as counts by reject reason, and the valid rest of
the frame is returned. Every frame shape of SPEC §1.2 normalises to the same output, a
:class:`Batch` per event type and input batch, so the trackers have a single path:

- numeric fields become numpy arrays (``float64``, ``int64`` or ``bool``) when they vary by row,
  or Python scalars in ``const`` when one value holds for the whole batch;
- string fields become lists (``str | None``) or a scalar in ``const``;
- every field of the type's schema is present in exactly one of ``const`` and ``cols``, with its
  default filled in; optional numeric fields without a default read as NaN (absent);
- ``api_key`` is replaced by ``key_id`` (SPEC §1.6) and never appears in the output.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
import numpy as np

from metricsd.schema import EVENT_TYPES, Field

__all__ = [
    "REASONS",
    "Batch",
    "DecodeResult",
    "Decoder",
    "Limits",
    "decode",
    "hash_key",
    "merge_batches",
]

PROTOCOL_VERSION: Final = 1
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
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_INT64_MAX: Final = 2**63 - 1
#: Largest magnitude of a float field: far beyond any real duration, price or gauge, and far
#: enough below the float maximum that sums over any number of events stay finite.
_MAX_FLOAT: Final = 1e100
_MAX_LABELS: Final = 8


@dataclass(frozen=True, slots=True)
class Limits:
    """Ingest limits of SPEC §1.4 (all configurable)."""

    max_frame_bytes: int = 1 << 20
    max_events: int = 10_000
    max_string: int = 256
    max_error_message: int = 2048
    max_text: int = 256


@dataclass(slots=True)
class Batch:
    """N validated events of one type. Row i is ``{**const, **{f: cols[f][i]}}``."""

    type: str
    n: int
    const: dict[str, Any]
    cols: dict[str, Any]

    @classmethod
    def derived(cls, type_name: str, n: int, **fields: Any) -> Batch:
        """A batch made inside the daemon (e.g. the request outcome of a finished stream).

        Arrays and lists of length n become columns, anything else a constant; every schema
        field not given gets its default, so trackers read it like a decoded batch.
        """
        const: dict[str, Any] = {}
        cols: dict[str, Any] = {}
        for name, value in fields.items():
            if isinstance(value, (np.ndarray, list)) and len(value) == n:
                cols[name] = value
            else:
                const[name] = value
        for name, fdef in EVENT_TYPES[type_name].items():
            if name not in const and name not in cols and name != "api_key":
                const[name] = fdef.default
        return cls(type_name, n, const, cols)

    def get(self, name: str) -> Any:
        """The field as a column (array or list) if it varies, else the constant scalar."""
        if name in self.cols:
            return self.cols[name]
        return self.const.get(name)

    def column(self, name: str, dtype: Any = np.float64) -> np.ndarray[Any, Any]:
        """The field as a numpy array of length n (constants broadcast; None → NaN)."""
        if name in self.cols:
            return np.asarray(self.cols[name], dtype=dtype)
        value = self.const.get(name)
        if value is None:
            value = math.nan
        return np.full(self.n, value, dtype=dtype)

    def values(self, name: str) -> list[Any]:
        """The field as a Python list of length n (for strings and other objects)."""
        if name in self.cols:
            col = self.cols[name]
            return col.tolist() if isinstance(col, np.ndarray) else list(col)
        return [self.const.get(name)] * self.n

    def rows(self) -> list[dict[str, Any]]:
        """Expand to one dict per event (slow; for tests and low-rate paths)."""
        columns = {k: self.values(k) for k in self.cols}
        return [{**self.const, **{k: v[i] for k, v in columns.items()}} for i in range(self.n)]


@dataclass(slots=True)
class DecodeResult:
    """What one frame gave: valid batches, and rejected events counted by reason."""

    batches: list[Batch] = field(default_factory=list)
    rejected: Counter[str] = field(default_factory=Counter)
    truncated: int = 0

    @property
    def accepted(self) -> int:
        return sum(b.n for b in self.batches)


@functools.lru_cache(maxsize=65536)
def hash_key(api_key: str) -> str:
    """``key_id`` for a raw API key: ``k_`` + the first 12 hex chars of its SHA-256."""
    return "k_" + hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class _Reject(Exception):
    """A whole batch or frame is rejected: ``reason`` for ``count`` events."""

    def __init__(self, reason: str, count: int = 1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.count = max(1, count)


def decode(frame: bytes, now: float, limits: Limits = Limits()) -> DecodeResult:
    """Decode and validate one frame. Never raises; see the module docstring."""
    decoder = Decoder(now, limits)
    decoder.add(frame)
    return decoder.finish()


class Decoder:
    """Decodes many frames into one result (what ingest drains in one wake-up).

    Events sent as maps are pooled by type across all the frames and validated as one column per
    field, so a stream of one-event frames costs about what one array of events costs; columnar
    batches are validated as they come. Frame-level rejects (decode, too_large, too_many, a
    frame's version or shape) only ever concern their own frame.
    """

    __slots__ = ("_plain", "frames", "limits", "now", "result")

    def __init__(self, now: float, limits: Limits = Limits()) -> None:
        self.now = now
        self.limits = limits
        self.result = DecodeResult()
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
            _decode_frame(obj, self.now, self.limits, result, self._plain)
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

    def finish(self) -> DecodeResult:
        """Validate the pooled events; the result holds every frame's batches and rejects."""
        for type_name, events in self._plain.items():
            _plain(type_name, events, self.now, self.limits, self.result)
        self._plain = {}
        return self.result


#: Typed columns (msgpack ext types): a column may be sent as the raw little-endian bytes of a
#: numeric array instead of a msgpack array, which decodes without one Python object per value.
TYPED_COLUMNS: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
}


def _typed_column(code: int, data: bytes) -> Any:
    dtype = TYPED_COLUMNS.get(code)
    if dtype is None or len(data) % dtype.itemsize:
        return msgpack.ExtType(code, data)  # not a column this version knows: a bad value
    return np.frombuffer(data, dtype=dtype)


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


def _batch_len(obj: dict[Any, Any]) -> int:
    cols = obj.get("cols")
    if isinstance(cols, dict):
        lengths = [len(v) for v in cols.values() if isinstance(v, (list, np.ndarray))]
        if lengths:
            return max(lengths)
    return 1


def _decode_frame(
    obj: Any,
    now: float,
    limits: Limits,
    result: DecodeResult,
    plain: dict[str, list[dict[Any, Any]]],
) -> None:
    if type(obj) is dict:
        if not _is_version(obj.get("v", PROTOCOL_VERSION)):
            raise _Reject("version", _count_events(obj))
        elements: list[Any] = [obj]
    elif type(obj) is list:
        elements = obj
    else:
        raise _Reject("shape")
    # One pass sorts the elements and counts the events; nothing is kept before the count is
    # known, so a frame over the limit is rejected whole.
    staged: list[tuple[str, dict[Any, Any]]] = []
    columnar: list[dict[Any, Any]] = []
    shape = version = unknown = total = 0
    for element in elements:
        if type(element) is not dict:
            shape += 1
            total += 1
        elif "cols" in element or "const" in element:
            columnar.append(element)
            total += _batch_len(element) if "cols" in element else 1
        else:
            total += 1
            type_name = element.get("type")
            if not _is_version(element.get("v", PROTOCOL_VERSION)):
                version += 1
            elif type(type_name) is str and type_name in EVENT_TYPES:
                staged.append((type_name, element))
            elif type_name is None:
                shape += 1
            else:
                unknown += 1
    if total > limits.max_events:
        raise _Reject("too_many", total)
    rejected = result.rejected
    if shape:
        rejected["shape"] += shape
    if version:
        rejected["version"] += version
    if unknown:
        rejected["unknown_type"] += unknown
    for type_name, element in staged:
        bucket = plain.get(type_name)
        if bucket is None:
            plain[type_name] = [element]
        else:
            bucket.append(element)
    for element in columnar:
        if not _is_version(element.get("v", PROTOCOL_VERSION)):
            rejected["version"] += _count_events(element)
            continue
        try:
            _columnar(element, now, limits, result)
        except _Reject as exc:
            rejected[exc.reason] += exc.count


def _columnar(obj: dict[Any, Any], now: float, limits: Limits, result: DecodeResult) -> None:
    n = _batch_len(obj)
    type_name = obj.get("type")
    if not isinstance(type_name, str) or type_name not in EVENT_TYPES:
        raise _Reject("unknown_type" if type_name is not None else "shape", n)
    cols = obj.get("cols", {})
    const = obj.get("const", {})
    if not isinstance(cols, dict) or not isinstance(const, dict):
        raise _Reject("shape", n)
    if not cols:
        n = 1  # a batch of constants only is one event
    elif n == 0:
        return  # empty columns: no events, nothing to count
    for name, col in cols.items():
        if not isinstance(col, (list, np.ndarray)) or len(col) != n:
            raise _Reject("shape", n)
        if name in ("type", "v"):
            raise _Reject("shape", n)
    if "v" in const and not _is_version(const["v"]):
        raise _Reject("version", n)
    merged_const = {k: v for k, v in obj.items() if k not in ("type", "cols", "const", "v")}
    merged_const.update(const)
    _build(type_name, n, merged_const, cols, now, limits, result)


def _plain(
    type_name: str, events: list[dict[Any, Any]], now: float, limits: Limits, result: DecodeResult
) -> None:
    """Events given as maps: turn them into one columnar batch per type."""
    schema = EVENT_TYPES[type_name]
    names = set().union(*events).intersection(schema)
    n = len(events)
    if n == 1:
        _build(type_name, 1, {k: events[0][k] for k in names}, {}, now, limits, result)
        return
    cols: dict[str, list[Any]] = {}
    present: dict[str, list[bool]] = {}
    for name in names:
        try:
            cols[name] = [e[name] for e in events]  # the usual case: every event has it
        except KeyError:
            fdef = schema[name]
            missing = _MISSING
            col = [e.get(name, missing) for e in events]
            present[name] = [v is not missing for v in col]
            cols[name] = [fdef.default if v is missing else v for v in col]
    _build(type_name, n, {}, cols, now, limits, result, present, strict=True)


_MISSING: Final = object()


def _build(
    type_name: str,
    n: int,
    const: dict[Any, Any],
    cols: dict[Any, list[Any]],
    now: float,
    limits: Limits,
    result: DecodeResult,
    present: dict[str, list[bool]] | None = None,
    strict: bool = False,
) -> None:
    """Validate every field of one batch; drop bad rows; emit the batch.

    ``strict`` (events sent as maps) checks every numeric value's type; columnar batches go
    through numpy's conversion, where a boolean in a numeric column reads as 0 or 1.
    """
    schema = EVENT_TYPES[type_name]
    bad = np.zeros(n, dtype=np.int8)  # 0 = ok, else 1 + index into REASONS
    out_const: dict[str, Any] = {}
    out_cols: dict[str, Any] = {}
    truncated = [0]

    def reject_rows(mask: np.ndarray[Any, Any] | None, reason: str) -> None:
        code = REASONS.index(reason) + 1
        if mask is None:
            bad[bad == 0] = code
        else:
            bad[(bad == 0) & mask] = code

    for name, fdef in schema.items():
        if name in cols:
            col = cols[name]
            if fdef.required and present is not None and name in present:
                missing_rows = ~np.asarray(present[name], dtype=bool)
                reject_rows(missing_rows, "missing_field")
            arr, bad_rows = _check_column(fdef, col, limits, truncated, strict)
            if bad_rows is not None:
                reject_rows(bad_rows, "bad_value")
            out_cols[name] = arr
        elif name in const:
            value, ok = _check_scalar(fdef, const[name], limits, truncated)
            if not ok:
                reject_rows(None, "bad_value")
            out_const[name] = value
        elif fdef.required:
            reject_rows(None, "missing_field")
        else:
            out_const[name] = fdef.default
    if out_const.get("ts") is None and "ts" not in out_cols:
        out_const["ts"] = now
    elif "ts" in out_cols:
        ts = out_cols["ts"]
        out_cols["ts"] = np.where(np.isnan(ts), now, ts)
    _hash_keys(out_const, out_cols)
    result.truncated += truncated[0]
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        for code, count in zip(*np.unique(bad[bad != 0], return_counts=True), strict=True):
            result.rejected[REASONS[int(code) - 1]] += int(count)
        if n_bad == n:
            return
        keep = bad == 0
        out_cols = {
            k: (
                v[keep]
                if isinstance(v, np.ndarray)
                else [x for x, m in zip(v, keep, strict=True) if m]
            )
            for k, v in out_cols.items()
        }
        n -= n_bad
    _hoist_constants(out_const, out_cols, n)
    result.batches.append(Batch(type_name, n, out_const, out_cols))


def _hoist_constants(const: dict[str, Any], cols: dict[str, Any], n: int) -> None:
    """A string column with one value is a constant: trackers then resolve one series per batch."""
    for name in [k for k, v in cols.items() if isinstance(v, list)]:
        col = cols[name]
        first = col[0] if n else None
        if n == 1 or all(v == first for v in col):
            const[name] = first
            del cols[name]


def _hash_keys(const: dict[str, Any], cols: dict[str, Any]) -> None:
    """Replace ``api_key`` by ``key_id`` (SPEC §1.6); a raw key never goes further."""
    if "api_key" in cols:
        raw = cols.pop("api_key")
        ids = cols.get("key_id", [const.get("key_id")] * len(raw))
        cols["key_id"] = [
            hash_key(k) if k is not None else i for k, i in zip(raw, ids, strict=True)
        ]
        const.pop("key_id", None)
    else:
        raw_key = const.pop("api_key", None)
        if raw_key is not None:
            cols.pop("key_id", None)
            const["key_id"] = hash_key(raw_key)


def _string_limit(kind: str, limits: Limits) -> int:
    if kind == "longstr":
        return limits.max_error_message
    if kind == "text":
        return limits.max_text
    return limits.max_string


def _check_scalar(
    fdef: Field, value: Any, limits: Limits, truncated: list[int]
) -> tuple[Any, bool]:
    """Validate one value. Returns (normalised value, ok)."""
    kind = fdef.kind
    if value is None:
        return (fdef.default, not fdef.required)
    if kind in ("float", "nnfloat", "count", "int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (None, False)
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > _MAX_FLOAT:
                return (None, False)
            if kind in ("count", "int"):
                if value != int(value) or abs(value) > _INT64_MAX:
                    return (None, False)
                value = int(value)
        elif not -_INT64_MAX - 1 <= value <= _INT64_MAX and kind in ("count", "int"):
            return (None, False)  # int64 range, as in columns; a float field takes any integer
        if kind in ("nnfloat", "count") and value < 0:
            return (None, False)
        return (float(value) if kind in ("float", "nnfloat") else int(value), True)
    if kind == "bool":
        return (value, isinstance(value, bool))
    if kind in ("str", "longstr", "text", "enum", "name"):
        if not isinstance(value, str):
            return (None, False)
        if kind == "enum":
            return (value, value in fdef.choices)
        if kind == "name":
            return (value, len(value) <= limits.max_string and bool(_METRIC_NAME.match(value)))
        limit = _string_limit(kind, limits)
        if len(value) > limit:
            truncated[0] += 1
            value = value[:limit]
        return (value, True)
    if kind == "labels":
        return _check_labels(value, limits, truncated)
    if kind == "images":
        return _check_images(value, limits, truncated)
    return (None, False)  # pragma: no cover - every kind is handled above


def _check_labels(value: Any, limits: Limits, truncated: list[int]) -> tuple[Any, bool]:
    if not isinstance(value, dict) or len(value) > _MAX_LABELS:
        return (None, False)
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not _METRIC_NAME.match(k):
            return (None, False)
        if k.startswith("__"):
            return (None, False)
        if len(v) > limits.max_string:
            truncated[0] += 1
            v = v[: limits.max_string]
        out[k] = v
    return (out, True)


def _check_images(value: Any, limits: Limits, truncated: list[int]) -> tuple[Any, bool]:
    if not isinstance(value, dict):
        return (None, False)
    size, quality, n = (
        value.get("size", "1024x1024"),
        value.get("quality", "standard"),
        value.get("n", 1),
    )
    if not isinstance(size, str) or not isinstance(quality, str):
        return (None, False)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > _INT64_MAX:
        return (None, False)
    if len(size) > limits.max_string or len(quality) > limits.max_string:
        truncated[0] += 1
    return (
        {"size": size[: limits.max_string], "quality": quality[: limits.max_string], "n": n},
        True,
    )


_NUMPY_DTYPE: Final = {
    "float": np.float64,
    "nnfloat": np.float64,
    "count": np.int64,
    "int": np.int64,
}


def _check_column(
    fdef: Field, col: list[Any], limits: Limits, truncated: list[int], strict: bool = False
) -> tuple[Any, np.ndarray[Any, Any] | None]:
    """Validate a column. Returns (normalised column, mask of bad rows or None)."""
    kind = fdef.kind
    if kind in _NUMPY_DTYPE:
        fast = None if strict and bool in set(map(type, col)) else _numeric_fast(fdef, col)
        if fast is not None:
            return fast
    elif kind == "bool":
        if isinstance(col, np.ndarray):
            if col.dtype == np.uint8:
                return col.astype(bool), (col > 1) if (col > 1).any() else None
            return col, np.ones(len(col), dtype=bool)  # numbers are not booleans
        if set(map(type, col)) == {bool}:
            return np.array(col, dtype=bool), None
    elif isinstance(col, np.ndarray):
        return [None] * len(col), np.ones(len(col), dtype=bool)  # a typed column is not text
    elif (
        # Type and length checks in C (map), not a Python loop per value.
        kind in ("str", "longstr", "text")
        and set(map(type, col)) == {str}
        and max(map(len, col)) <= _string_limit(kind, limits)
    ):
        return col, None
    # Slow path: value by value, so each bad row is found and the good ones kept.
    values: list[Any] = []
    bad_rows = np.zeros(len(col), dtype=bool)
    for i, v in enumerate(col):
        if v is None and not fdef.required and fdef.default is None:
            values.append(None)
            continue
        value, ok = _check_scalar(fdef, v, limits, truncated)
        if not ok:
            bad_rows[i] = True
        values.append(value if ok else fdef.default)
    if kind in _NUMPY_DTYPE:
        dtype = _NUMPY_DTYPE[kind]
        filler = math.nan if dtype is np.float64 else 0
        arr = np.array([filler if v is None else v for v in values], dtype=dtype)
        return arr, (bad_rows if bad_rows.any() else None)
    if kind == "bool":
        return np.array([bool(v) for v in values], dtype=bool), (
            bad_rows if bad_rows.any() else None
        )
    return values, (bad_rows if bad_rows.any() else None)


def _numeric_fast(fdef: Field, col: list[Any]) -> tuple[Any, np.ndarray[Any, Any] | None] | None:
    """Numeric column without a per-value Python loop; None when the slow path must decide."""
    try:
        arr = col if isinstance(col, np.ndarray) else np.array(col)
    except (ValueError, OverflowError, TypeError):
        return None
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        return None  # strings, None, bools, nested lists, big ints: check value by value
    kind = fdef.kind
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(arr) <= _MAX_FLOAT)  # NaN, infinities and absurd magnitudes
        if kind in ("count", "int"):
            with np.errstate(invalid="ignore"):
                if np.any(np.abs(arr) >= 2.0**53):
                    return None  # integers beyond float precision: exact, value by value
                bad |= arr != np.floor(arr)
            arr = np.where(bad, 0, arr).astype(np.int64)
    elif arr.dtype.kind == "u":
        if arr.max(initial=0) > _INT64_MAX:
            return None
        bad = np.zeros(len(arr), dtype=bool)
    else:
        bad = np.zeros(len(arr), dtype=bool)
    if kind in ("nnfloat", "count"):
        with np.errstate(invalid="ignore"):
            bad |= arr < 0
    arr = arr.astype(_NUMPY_DTYPE[kind], copy=False)
    return arr, (bad if bad.any() else None)


def merge_batches(batches: list[Batch]) -> list[Batch]:
    """Join batches of the same type and labels into one each (first-seen order kept).

    Trackers pay a fixed cost per batch (tens of numpy calls); ingest merges what one wake-up
    decoded so that cost is paid once per series, not once per frame. A field constant across
    every batch stays constant; otherwise it becomes a column (numbers as arrays, strings and
    objects as lists), so rows keep their values and their order.
    """
    groups: dict[tuple[Any, ...], list[Batch]] = {}
    for batch in batches:
        groups.setdefault(_merge_key(batch), []).append(batch)
    return [group[0] if len(group) == 1 else _merge(group) for group in groups.values()]


#: Fields trackers group rows by: batches merge only when these agree (as constants), so the
#: merged batch keeps them constant and the trackers keep their one-series-per-batch path.
LABEL_FIELDS: Final = ("endpoint", "model", "provider", "key_id", "source", "queue", "name")


def _merge_key(batch: Batch) -> tuple[Any, ...]:
    const = batch.const
    key: list[Any] = [batch.type]
    for name in LABEL_FIELDS:
        if name in batch.cols:
            key.append(_COLUMN)
        else:
            value = const.get(name)
            key.append(value if isinstance(value, (str, int, float, type(None))) else _COLUMN)
    return tuple(key)


_COLUMN: Final = ("column",)


def _merge(group: list[Batch]) -> Batch:
    type_name = group[0].type
    schema = EVENT_TYPES[type_name]
    n = sum(b.n for b in group)
    names: dict[str, None] = {}
    for b in group:
        names.update(dict.fromkeys(b.const))
        names.update(dict.fromkeys(b.cols))
    const: dict[str, Any] = {}
    cols: dict[str, Any] = {}
    for name in names:
        values = [b.const[name] for b in group if name not in b.cols and name in b.const]
        if len(values) == len(group) and all(_same(v, values[0]) for v in values):
            const[name] = values[0]
            continue
        fdef = schema.get(name)
        kind = fdef.kind if fdef is not None else "str"
        pieces: list[Any] = []
        for b in group:
            if name in b.cols:
                pieces.append(b.cols[name])
            else:
                pieces.append(_broadcast(kind, b.const.get(name), b.n))
        if all(isinstance(p, np.ndarray) for p in pieces):
            cols[name] = np.concatenate(pieces)
        else:
            joined: list[Any] = []
            for p in pieces:
                joined.extend(p.tolist() if isinstance(p, np.ndarray) else p)
            cols[name] = joined
    return Batch(type_name, n, const, cols)


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and bool(a == b)


def _broadcast(kind: str, value: Any, n: int) -> Any:
    """A constant as a column of the same form a decoded column of that kind has."""
    if kind in _NUMPY_DTYPE:
        dtype = _NUMPY_DTYPE[kind]
        if value is None:
            return np.full(n, math.nan if dtype is np.float64 else 0, dtype=dtype)
        return np.full(n, value, dtype=dtype)
    if kind == "bool":
        return np.full(n, bool(value), dtype=bool)
    return [value] * n
