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
   ``const``; the rest go to ``cols``. ``ts`` always stays a column, so ``N`` is always known;
4. each batch is packed on its own, so a batch that cannot be packed (an object msgpack does not
   know) or that is too large is split in halves until the bad or oversized row is isolated and
   dropped (counted), and frames are assembled from packed parts under the size and count caps.

Row ``i`` of a batch, ``{"type": T, **const, **{f: cols[f][i]}}``, equals the event the caller
recorded minus its ``None`` fields, plus ``source`` and ``v``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

import msgpack

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_FRAME_BYTES",
    "MAX_FRAME_EVENTS",
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
    the fields grouped on; ``key`` computes a row's hashable group key from them.
    """

    code: int
    type: str
    fields: tuple[str, ...]
    labels: tuple[str, ...]
    key: Callable[[Row], Hashable]
    #: Row indices of the label fields (for ``const``).
    label_idx: tuple[int, ...]
    #: Row indices of the non-label fields (for ``cols`` or folded ``const``), ``ts`` first.
    value_idx: tuple[int, ...]


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
    key: Callable[[Row], Hashable]
    if type_ == "metric":
        li = fields.index("labels") + 1
        getter = itemgetter(*(i for i in label_idx if i != li))

        def key(row: Row) -> Hashable:
            return (getter(row), _freeze(row[li]))

    else:
        key = itemgetter(*label_idx)
    return EventSpec(code, type_, fields, all_labels, key, label_idx, value_idx)


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


def _group(spec: EventSpec, rows: list[Row]) -> Iterable[list[Row]]:
    """Split rows of one type by label values (order within a group is kept)."""
    key = spec.key
    groups: dict[Hashable, list[Row]] = {}
    try:
        for r in rows:
            k = key(r)
            g = groups.get(k)
            if g is None:
                groups[k] = [r]
            else:
                g.append(r)
    except TypeError:
        # An unhashable label (a list as a model name…): key row by row; a row whose key cannot
        # be hashed becomes a group of its own, and the packer decides whether it can be sent.
        groups = {}
        for j, r in enumerate(rows):
            try:
                k = key(r)
                hash(k)
            except TypeError:
                k = ("\0unhashable", j)
            g = groups.get(k)
            if g is None:
                groups[k] = [r]
            else:
                g.append(r)
    return groups.values()


def _split_on_none(spec: EventSpec, rows: list[Row]) -> Iterable[tuple[list[Row], list[Row]]]:
    """Yield ``(rows, columns)`` pieces in which every field is None in all rows or in none."""
    cols: list[Row] = list(zip(*rows, strict=True))
    n = len(rows)
    mixed = [i for i in spec.value_idx if 0 < cols[i].count(None) < n]
    if not mixed:
        yield rows, cols
        return
    parts: dict[tuple[bool, ...], list[Row]] = {}
    for r in rows:
        mask = tuple([r[i] is None for i in mixed])
        p = parts.get(mask)
        if p is None:
            parts[mask] = [r]
        else:
            p.append(r)
    for part in parts.values():
        yield part, list(zip(*part, strict=True))


def _batch(spec: EventSpec, rows: Sequence[Row], cols: Sequence[Row], source: str) -> dict[str, Any]:
    """One columnar batch (SPEC §1.2 shape 3) from rows that agree on labels and None-ness."""
    fields = spec.fields
    first = rows[0]
    n = len(rows)
    const: dict[str, Any] = {"source": source}
    for i in spec.label_idx:
        v = first[i]
        if v is not None:
            const[fields[i - 1]] = v
    out_cols: dict[str, Any] = {}
    for i in spec.value_idx:
        v = first[i]
        col = cols[i]
        if v is None:
            continue  # None in every row (the group was split on None-ness): omitted
        if i != 1 and col.count(v) == n and (n == 1 or len(set(map(type, col))) == 1):
            const[fields[i - 1]] = v
        else:
            out_cols[fields[i - 1]] = col
    return {"v": PROTOCOL_VERSION, "type": spec.type, "cols": out_cols, "const": const}


def _pack(
    spec: EventSpec,
    rows: Sequence[Row],
    cols: Sequence[Row] | None,
    source: str,
    packer: msgpack.Packer,
    out: list[tuple[int, bytes]],
) -> int:
    """Pack rows as one batch, halving on failure or excess size; return the rows dropped."""
    n = len(rows)
    try:
        if cols is None:
            cols = list(zip(*rows, strict=True))
        data: bytes | None = packer.pack(_batch(spec, rows, cols, source))
    except Exception:
        packer.reset()
        data = None
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
    rows: Iterable[Row], source: str, packer: msgpack.Packer
) -> tuple[list[tuple[int, bytes]], int]:
    """Encode rows into packed batches ``(n_events, bytes)``; also return the rows dropped.

    Each packed batch holds at most :data:`MAX_BATCH_ROWS` events and
    :data:`MAX_PAYLOAD_BYTES` bytes, so any one of them fits in a frame with a drop report.
    """
    by_type: dict[Any, list[Row]] = {}
    for r in rows:
        t = r[0]
        b = by_type.get(t)
        if b is None:
            by_type[t] = [r]
        else:
            b.append(r)
    out: list[tuple[int, bytes]] = []
    dropped = 0
    for code, typed in by_type.items():
        try:
            spec = SPECS[code]
        except (IndexError, TypeError):
            dropped += len(typed)
            continue
        for group in _group(spec, typed):
            try:
                pieces = list(_split_on_none(spec, group))
            except Exception:
                dropped += len(group)
                continue
            for part, cols in pieces:
                if len(part) <= MAX_BATCH_ROWS:
                    dropped += _pack(spec, part, cols, source, packer, out)
                else:
                    for s in range(0, len(part), MAX_BATCH_ROWS):
                        chunk = part[s : s + MAX_BATCH_ROWS]
                        dropped += _pack(spec, chunk, None, source, packer, out)
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
