"""Event types and their fields (SPEC §1.3), as data.

The protocol decoder validates against these tables; the trackers read the same names. Keeping the
schema in one place means a new field is one line here, not a change in three modules.

Field kinds:
- ``float``: a finite number (int or float on the wire), stored as float64.
- ``nnfloat``: a finite number ≥ 0 (durations).
- ``count``: an integer ≥ 0 (token counts); an integral float is accepted.
- ``int``: an integer (HTTP status).
- ``bool``: a msgpack boolean.
- ``str`` / ``longstr`` / ``text``: strings, truncated at the string, error-message and text limits.
- ``enum``: a string from a fixed set.
- ``name``: a metric name (``[a-zA-Z_:][a-zA-Z0-9_:]*``).
- ``labels``: a map str → str with at most 8 pairs.
- ``images``: a map ``{size, quality, n}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

NUMERIC_KINDS: Final = frozenset({"float", "nnfloat", "count", "int"})
STRING_KINDS: Final = frozenset({"str", "longstr", "text", "enum", "name"})


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an event type: its wire name, kind, whether it is required, and its default.

    ``default`` is what an event that omits the field gets; ``None`` means "absent" (optional
    numeric fields without a default read as NaN in a column).
    """

    name: str
    kind: str
    required: bool = False
    default: Any = None
    choices: frozenset[str] = frozenset()


COMMON: Final[tuple[Field, ...]] = (
    Field("ts", "float"),
    Field("endpoint", "str"),
    Field("model", "str"),
    Field("api_key", "str"),
    Field("key_id", "str"),
    Field("user_id", "str"),
    Field("request_id", "str"),
    Field("source", "str", default="default"),
)

STREAM_STATUSES: Final = frozenset({"completed", "failed", "cancelled"})
METRIC_KINDS: Final = frozenset({"counter", "gauge", "histogram"})

_TYPES: dict[str, tuple[Field, ...]] = {
    "request": (
        Field("status", "int", default=200),
        Field("duration_ms", "nnfloat", required=True),
        Field("input_tokens", "count", default=0),
        Field("output_tokens", "count", default=0),
        Field("cached_tokens", "count", default=0),
        Field("cache_write_tokens", "count", default=0),
        Field("reasoning_tokens", "count", default=0),
        Field("streaming", "bool", default=False),
        Field("ttft_ms", "nnfloat"),
        Field("queue_ms", "nnfloat"),
        Field("finish_reason", "str"),
        Field("provider", "str"),
        Field("error_type", "str"),
        Field("error_message", "longstr"),
        Field("batch", "bool", default=False),
        Field("cost_usd", "nnfloat"),
    ),
    "error": (
        Field("error_type", "str", required=True),
        Field("status", "int", default=500),
        Field("error_message", "longstr"),
        Field("provider", "str"),
    ),
    "stream.start": (
        Field("stream_id", "str", required=True),
        Field("prompt_tokens", "count", default=0),
        Field("temperature", "float"),
        Field("max_tokens", "count", default=0),
        Field("client_id", "str"),
        Field("provider", "str"),
    ),
    "stream.token": (
        Field("stream_id", "str", required=True),
        Field("n", "count", default=1),
        Field("bytes", "count", default=0),
        Field("text", "text"),
    ),
    "stream.end": (
        Field("stream_id", "str", required=True),
        Field("status", "enum", default="completed", choices=STREAM_STATUSES),
        Field("finish_reason", "str"),
        Field("error_type", "str"),
        Field("error_message", "longstr"),
    ),
    "stream.backpressure": (
        Field("stream_id", "str", required=True),
        Field("buffer_size", "count", default=0),
    ),
    "cache": (
        Field("hit", "bool", required=True),
        Field("total_tokens", "count", default=0),
        Field("matched_tokens", "count", default=0),
    ),
    "queue": (
        Field("depth", "count", required=True),
        Field("queue", "str", default="default"),
        Field("capacity", "count", default=0),
    ),
    "usage": (
        Field("prompt_tokens", "count", default=0),
        Field("completion_tokens", "count", default=0),
        Field("cached_tokens", "count", default=0),
        Field("images", "images"),
        Field("characters", "count", default=0),
        Field("batch", "bool", default=False),
        Field("cost_usd", "nnfloat"),
    ),
    "client": (Field("dropped", "count", required=True),),
    "metric": (
        Field("name", "name", required=True),
        Field("kind", "enum", required=True, choices=METRIC_KINDS),
        Field("value", "float", required=True),
        Field("labels", "labels"),
    ),
}


def _with_common(fields: tuple[Field, ...]) -> dict[str, Field]:
    out = {f.name: f for f in COMMON}
    out.update({f.name: f for f in fields})
    return out


#: type name → {field name → Field}, common fields included.
EVENT_TYPES: Final[dict[str, dict[str, Field]]] = {t: _with_common(fs) for t, fs in _TYPES.items()}
