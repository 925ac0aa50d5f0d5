"""Rows → msgpack frames: the flusher thread's half of the emitter (SPEC §1.2, §1.4).

A *row* is the tuple an emitter method appended: ``(type_code, ts, field, field, …)`` in the fixed
per-type order of :data:`SPECS`. This module turns a list of rows into frames of SPEC §1.2 shape 4
(an array of columnar batches), never calling back into the application and never sending
``None``:

1. rows are split by type, then grouped by their *label* fields (endpoint, model, status, …:
   low-cardinality values that the daemon resolves to a series once per batch);
2. inside a group, a field that is ``None`` in every row is omitted, and a field that is ``None``
   in some rows only splits the group (so no ``nil`` reaches the wire);
3. labels, and any other field that holds the same value (and type) in every row, go to
   ``const``; the rest go to ``cols``. ``ts`` always stays a column, so ``N`` is always known.
   In a batch of at least :data:`MIN_TYPED_ROWS` rows, a column of plain floats or ints is sent
   as a *typed column* (a msgpack ext object holding the values' little-endian bytes, which the
   daemon reads without one object per value); any other column is a msgpack array;
4. each batch is packed on its own, so a batch that cannot be packed (an object msgpack does not
   know) or that is too large is split in halves until the bad or oversized row is isolated and
   dropped (counted), and frames are assembled from packed parts under the size and count caps.

Row ``i`` of a batch, ``{"type": T, **const, **{f: cols[f][i]}}``, equals the event the caller
recorded minus its ``None`` fields, plus ``source`` and ``v`` (a typed column read as its values).
"""

from __future__ import annotations

import operator
import sys
from array import array
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import compress
from operator import itemgetter
from typing import Any, Final

import msgpack

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_EVENTS",
    "MIN_TYPED_ROWS",
    "SPECS",
    "EventSpec",
    "Row",
    "assemble",
    "encode",
    "new_packer",
]

Row = tuple[Any, ...]

PROTOCOL_VERSION: Final = 1
#: SPEC §1.4 default limits. A frame is at most this many bytes and events.
MAX_FRAME_BYTES: Final = 1 << 20
MAX_FRAME_EVENTS: Final = 10_000
#: One slot and some bytes of every frame are kept free for the ``client`` drop report.
MAX_BATCH_ROWS: Final = MAX_FRAME_EVENTS - 1
_RESERVED_BYTES: Final = 128
MAX_PAYLOAD_BYTES: Final = MAX_FRAME_BYTES - _RESERVED_BYTES

#: Typed columns (the daemon's ``TYPED_COLUMNS``, docs/protocol.md): msgpack ext type codes.
EXT_FLOAT64: Final = 1
EXT_INT64: Final = 2
#: Columns of batches with fewer rows stay msgpack arrays. Below this the daemon decodes both
#: forms in about the same time, an int64 column is larger than an array of small ints, and the
#: conformance vectors' emitter frames (shared with the Node emitter, which sends arrays only)
#: keep their bytes.
MIN_TYPED_ROWS: Final = 16
_BIG_ENDIAN: Final = sys.byteorder == "big"
#: Integers up to this magnitude are exact as float64.
_EXACT_FLOAT_INT: Final = 1 << 53

# Type codes: the first element of every row. The emitter's methods hard-code these numbers.
REQUEST: Final = 0
ERROR: Final = 1
STREAM_START: Final = 2
STREAM_TOKEN: Final = 3
STREAM_END: Final = 4
STREAM_BACKPRESSURE: Final = 5
CACHE: Final = 6
QUEUE: Final = 7
USAGE: Final = 8
METRIC: Final = 9

#: Fields every event may carry (SPEC §1.3), last in every row, in this order. ``ts`` is always
#: the row's second element, right after the type code.
COMMON: Final = ("endpoint", "model", "api_key", "key_id", "user_id", "request_id")
#: The common fields that are labels (request_id and user_id are per-request: columns).
_COMMON_LABELS: Final = ("endpoint", "model", "api_key", "key_id")


@dataclass(frozen=True)
class EventSpec:
    """The row layout of one event type.

    ``fields[i]`` is the wire name of ``row[i + 1]`` (``row[0]`` is the type code). ``labels`` are
    the fields grouped on.
    """

    code: int
    type: str
    fields: tuple[str, ...]
    labels: tuple[str, ...]
    #: Row indices of the label fields (for ``const``).
    label_idx: tuple[int, ...]
    #: Row indices of the non-label fields (for ``cols`` or folded ``const``), ``ts`` (1) first.
    value_idx: tuple[int, ...]
    #: Row indices of label fields whose values are mappings (hashed as frozensets).
    freeze_idx: frozenset[int]


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a label value (``metric`` labels are a dict)."""
    if isinstance(value, Mapping):
        return frozenset(value.items())
    return value  # type: ignore[no-any-return]


def _spec(code: int, type_: str, own: Sequence[str], labels: Sequence[str]) -> EventSpec:
    fields = ("ts", *own, *COMMON)
    all_labels = (*labels, *_COMMON_LABELS)
    label_idx = tuple(fields.index(name) + 1 for name in all_labels)
    value_idx = tuple(i + 1 for i, name in enumerate(fields) if name not in all_labels)
    freeze_idx = frozenset(fields.index(name) + 1 for name in all_labels if name == "labels")
    return EventSpec(code, type_, fields, all_labels, label_idx, value_idx, freeze_idx)


#: Row layouts by type code. The emitter methods build their tuples in exactly this order.
SPECS: Final[tuple[EventSpec, ...]] = (
    _spec(
        REQUEST,
        "request",
        (
            "duration_ms",
            "status",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "streaming",
            "ttft_ms",
            "queue_ms",
            "finish_reason",
            "provider",
            "error_type",
            "error_message",
            "batch",
            "cost_usd",
        ),
        ("status", "streaming", "finish_reason", "provider", "error_type", "batch"),
    ),
    _spec(
        ERROR,
        "error",
        ("error_type", "status", "error_message", "provider"),
        ("error_type", "status", "provider"),
    ),
    _spec(
        STREAM_START,
        "stream.start",
        ("stream_id", "prompt_tokens", "temperature", "max_tokens", "client_id", "provider"),
        ("client_id", "provider"),
    ),
    # Token, backpressure: many events per stream, so the stream id is a label (one batch per
    # stream, stream_id in const). Start and end: one event per stream, so it is a column.
    _spec(STREAM_TOKEN, "stream.token", ("stream_id", "n", "bytes", "text"), ("stream_id",)),
    _spec(
        STREAM_END,
        "stream.end",
        ("stream_id", "status", "finish_reason", "error_type", "error_message"),
        ("status", "finish_reason", "error_type"),
    ),
    _spec(
        STREAM_BACKPRESSURE,
        "stream.backpressure",
        ("stream_id", "buffer_size"),
        ("stream_id",),
    ),
    _spec(CACHE, "cache", ("hit", "total_tokens", "matched_tokens"), ("hit",)),
    _spec(QUEUE, "queue", ("depth", "queue", "capacity"), ("queue",)),
    _spec(
        USAGE,
        "usage",
        (
            "prompt_tokens",
            "completion_tokens",
            "cached_tokens",
            "images",
            "characters",
            "batch",
            "cost_usd",
        ),
        ("batch",),
    ),
    _spec(METRIC, "metric", ("name", "kind", "value", "labels"), ("name", "kind", "labels")),
)


def _default(obj: Any) -> Any:
    """msgpack fallback: numpy scalars and other ``.item()`` types, mappings, sets."""
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def new_packer() -> msgpack.Packer:
    """The packer the flusher reuses (not thread-safe: one per flusher thread)."""
    return msgpack.Packer(use_bin_type=True, default=_default)


_first = itemgetter(0)
_is_none = partial(operator.is_, None)
#: Above this many distinct keys, partition with one dict pass instead of one C pass per key.
_FEW_KEYS: Final = 8


def _partition(rows: list[Row], keys: list[Any]) -> list[list[Row]]:
    """Split rows by key, groups in order of first appearance, rows in order within a group.

    Mostly C loops: the common flush has one or a few distinct keys, and then each group is one
    ``compress`` pass. Raises TypeError when a key is unhashable.
    """
    distinct = dict.fromkeys(keys)
    if len(distinct) == 1:
        return [rows]
    if len(distinct) <= _FEW_KEYS:
        # Keys are tuples or ints, compared with their own kind: __eq__ is a plain bool.
        return [list(compress(rows, map(k.__eq__, keys))) for k in distinct]
    groups: defaultdict[Any, list[Row]] = defaultdict(list)
    for k, r in zip(keys, rows, strict=True):
        groups[k].append(r)
    return list(groups.values())


def _transpose(rows: list[Row]) -> list[Row]:
    """Columns of rows of one type (``cols[i]`` holds every row's ``row[i]``)."""
    return list(zip(*rows, strict=True))


def _group(spec: EventSpec, rows: list[Row]) -> list[tuple[list[Row], list[Row]]]:
    """Split rows of one type by their label values: ``(rows, columns)`` per group.

    The common case, every label the same in every row, costs one ``count`` per label column;
    otherwise the key is made of the labels that vary only.
    """
    cols = _transpose(rows)
    n = len(rows)
    varying = [i for i in spec.label_idx if cols[i].count(cols[i][0]) != n]
    if not varying:
        return [(rows, cols)]
    key_cols = [map(_freeze, cols[i]) if i in spec.freeze_idx else cols[i] for i in varying]
    try:
        parts = _partition(rows, list(zip(*key_cols, strict=True)))
    except TypeError:
        # An unhashable label (a list as a model name…): a row whose key cannot be hashed
        # becomes a group of its own, and the packer decides whether it can be sent.
        keys: list[Any] = []
        for j, r in enumerate(rows):
            try:
                k: Any = tuple(_freeze(r[i]) for i in varying)
                hash(k)
            except TypeError:
                k = ("\0unhashable", j)
            keys.append(k)
        parts = _partition(rows, keys)
    return [(part, _transpose(part)) for part in parts]


def _ext(code: int, values: array[Any]) -> msgpack.ExtType:
    if _BIG_ENDIAN:
        values.byteswap()
    return msgpack.ExtType(code, values.tobytes())


def _typed(col: Row) -> Any:
    """A column as a typed column when its values allow it exactly, else the column itself.

    Only exact ``float`` and ``int`` values qualify (not ``bool``, not subclasses such as numpy
    scalars or enums): all floats → float64; all ints within int64 → int64; ints and floats
    mixed → float64 when every int is exact as a float64 (|v| ≤ 2**53). Anything else stays
    a msgpack array, booleans included: boolean fields are labels (in ``const``), so a boolean
    column is one in a numeric or string field, which the daemon rejects from an array but
    would read from a uint8 typed column as 0 and 1.
    """
    kinds = set(map(type, col))
    if kinds == {float}:
        return _ext(EXT_FLOAT64, array("d", col))
    if kinds == {int}:
        try:
            return _ext(EXT_INT64, array("q", col))
        except OverflowError:  # beyond int64: an array (msgpack's uint64, or unpackable)
            return col
    if kinds == {int, float}:
        ints = [v for v in col if type(v) is int]
        if max(map(abs, ints)) <= _EXACT_FLOAT_INT:
            return _ext(EXT_FLOAT64, array("d", col))
    return col


def _build(
    spec: EventSpec, rows: list[Row], cols: list[Row], source: str
) -> list[tuple[list[Row], dict[str, Any]]]:
    """Columnar batches for rows that agree on their labels: one, or more if split on None.

    ``cols`` is the transposition of ``rows``. Each value field is, over the rows: ``None``
    everywhere (omitted), one value of one type (``const``; never ``ts``, so a batch always
    has a column), varying without ``None`` (a column, typed if it can be: :func:`_typed`), or
    ``None`` in some rows only: then the rows are split by which of those fields are ``None``
    and each part is built alone.
    """
    n = len(rows)
    fields = spec.fields
    first = rows[0]
    const: dict[str, Any] = {"source": source}
    for i in spec.label_idx:
        v = first[i]
        if v is not None:
            const[fields[i - 1]] = v
    out_cols: dict[str, Any] = {}
    mixed: list[int] = []
    for i in spec.value_idx:
        col = cols[i]
        v = col[0]
        if col.count(v) == n:
            if v is None:
                continue
            if i != 1 and (n == 1 or len(set(map(type, col))) == 1):
                const[fields[i - 1]] = v
                continue
        elif v is None or None in col:
            mixed.append(i)
            continue
        out_cols[fields[i - 1]] = col
    if mixed:
        masks = list(zip(*(map(_is_none, cols[i]) for i in mixed), strict=True))
        out: list[tuple[list[Row], dict[str, Any]]] = []
        for part in _partition(rows, masks):
            out.extend(_build(spec, part, _transpose(part), source))
        return out
    if n >= MIN_TYPED_ROWS:
        for name, col in out_cols.items():
            out_cols[name] = _typed(col)
    return [(rows, {"v": PROTOCOL_VERSION, "type": spec.type, "cols": out_cols, "const": const})]


def _pack(
    spec: EventSpec,
    rows: list[Row],
    batch: dict[str, Any] | None,
    source: str,
    packer: msgpack.Packer,
    out: list[tuple[int, bytes]],
) -> int:
    """Pack one batch, halving it on failure or excess size; return the rows dropped."""
    n = len(rows)
    data: bytes | None = None
    try:
        if batch is None:
            built = _build(spec, rows, _transpose(rows), source)
            if len(built) != 1:  # cannot happen: halves of a built batch agree on None-ness
                return sum(_pack(spec, r, b, source, packer, out) for r, b in built)
            batch = built[0][1]
        data = packer.pack(batch)
    except Exception:
        packer.reset()
    if data is not None and len(data) <= MAX_PAYLOAD_BYTES:
        out.append((n, data))
        return 0
    if n == 1:
        return 1  # unpackable, or one event larger than a frame: the daemon would reject it
    half = n // 2
    return _pack(spec, rows[:half], None, source, packer, out) + _pack(
        spec, rows[half:], None, source, packer, out
    )


def encode(
    rows: list[Row], source: str, packer: msgpack.Packer
) -> tuple[list[tuple[int, bytes]], int]:
    """Encode rows into packed batches ``(n_events, bytes)``; also return the rows dropped.

    Each packed batch holds at most :data:`MAX_BATCH_ROWS` events and
    :data:`MAX_PAYLOAD_BYTES` bytes, so any one of them fits in a frame with a drop report.
    """
    out: list[tuple[int, bytes]] = []
    dropped = 0
    if not rows:
        return out, dropped
    for typed in _partition(rows, list(map(_first, rows))):
        try:
            spec = SPECS[typed[0][0]]
        except (IndexError, TypeError):
            dropped += len(typed)
            continue
        for start in range(0, len(typed), MAX_BATCH_ROWS):
            chunk = typed[start : start + MAX_BATCH_ROWS] if len(typed) > MAX_BATCH_ROWS else typed
            try:
                built = [b for g, c in _group(spec, chunk) for b in _build(spec, g, c, source)]
            except Exception:
                dropped += len(chunk)
                continue
            for part, batch in built:
                dropped += _pack(spec, part, batch, source, packer, out)
    return out, dropped


def assemble(packed: Sequence[tuple[int, bytes]]) -> list[tuple[int, list[bytes]]]:
    """Group packed batches into frames: ``(n_events, parts)``, in order, first fit.

    A frame's parts hold at most :data:`MAX_BATCH_ROWS` events and :data:`MAX_PAYLOAD_BYTES`
    bytes, leaving room for the array header and one ``client`` event.
    """
    frames: list[tuple[int, list[bytes]]] = []
    parts: list[bytes] = []
    events = 0
    size = 0
    for n, data in packed:
        if parts and (events + n > MAX_BATCH_ROWS or size + len(data) > MAX_PAYLOAD_BYTES):
            frames.append((events, parts))
            parts, events, size = [], 0, 0
        parts.append(data)
        events += n
        size += len(data)
    if parts:
        frames.append((events, parts))
    return frames


def frame(parts: Sequence[bytes], client: bytes | None, packer: msgpack.Packer) -> bytes:
    """One frame: a msgpack array of the packed batches, plus the drop report if any."""
    k = len(parts) + (client is not None)
    header: bytes = packer.pack_array_header(k)
    if client is None:
        return header + b"".join(parts)
    return header + b"".join(parts) + client


def client_event(dropped: int, source: str, packer: msgpack.Packer) -> bytes:
    """The SPEC §1.5 drop report, packed."""
    data: bytes = packer.pack(
        {"v": PROTOCOL_VERSION, "type": "client", "dropped": dropped, "source": source}
    )
    return data
