"""Fuzz targets: bytes in, and an exception out only when a promise is broken.

- :func:`decode_target`: one frame through ``metricsd.protocol.decode``. ``decode`` promises to
  never raise and to return only well-formed batches (SPEC §1.4); :func:`check_result` checks
  the second promise on every input, so a malformed batch is a crash like an exception.
- :func:`session_target`: the bytes split into a sequence of WebSocket messages (text, or binary
  when a part starts with ``0x01``) fed to one :class:`metricsd.web.stream.Session`, with a
  clock that advances by an amount the input chooses. ``PolicyViolation`` is the one exception
  the session may raise (the rate limit, which closes the connection with 1008); every reply
  must be strict JSON of a known type, and the session's filters must stay within their limits.

Both are pure and deterministic, so any input the fuzzer reports reproduces with
``python fuzz/run.py TARGET CRASH_FILE``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final

import numpy as np

from metricsd.protocol import REASONS, Batch, Cat, DecodeResult, Limits, decode
from metricsd.schema import EVENT_TYPES
from metricsd.web.stream import METRIC_TYPES, PolicyViolation, Session

__all__ = ["TARGETS", "check_result", "decode_target", "session_target"]

NOW: Final = 1_700_000_000.0
#: The daemon's defaults (SPEC §1.4).
LIMITS: Final = Limits()
#: What the daemon may send back to a client (SPEC §5.1).
REPLY_TYPES: Final = frozenset({"subscribed", "unsubscribed", "pong", "error"})
#: An error message echoes at most a short, cut piece of the input.
MAX_ERROR_MESSAGE: Final = 512
#: Separates messages inside one fuzz input.
SEPARATOR: Final = b"\x00\xff"
MAX_MESSAGES: Final = 128


class BrokenPromise(AssertionError):
    """A target's output broke a documented promise (not a plain exception)."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise BrokenPromise(what)


# --- protocol.decode ------------------------------------------------------------------------


def check_result(result: DecodeResult) -> None:
    """Every batch is well formed: known type, n ≥ 1, every column of length n, required fields
    present, no raw ``api_key``, numeric columns finite where the kind says so."""
    _require(isinstance(result, DecodeResult), "decode returned something else")
    _require(set(result.rejected) <= set(REASONS), f"unknown reasons {set(result.rejected)}")
    _require(all(v > 0 for v in result.rejected.values()), "a reject count is not positive")
    _require(result.truncated >= 0, "negative truncation count")
    for batch in result.batches:
        _check_batch(batch)


def _check_batch(batch: Batch) -> None:
    _require(batch.type in EVENT_TYPES, f"unknown type {batch.type!r}")
    _require(batch.n >= 1, "empty batch")
    schema = EVENT_TYPES[batch.type]
    _require("api_key" not in batch.const and "api_key" not in batch.cols, "raw api_key kept")
    names = (set(batch.const) | set(batch.cols)) - {"key_id"}
    _require(names <= set(schema), f"fields outside the schema: {names - set(schema)}")
    _require(not (set(batch.const) & set(batch.cols)), "a field is both constant and column")
    for name, col in batch.cols.items():
        _require(len(col) == batch.n, f"column {name} has {len(col)} rows, not {batch.n}")
        kind = schema[name].kind if name in schema else "str"
        if isinstance(col, np.ndarray):
            _require(col.ndim == 1, f"column {name} is not one-dimensional")
            if kind in ("nnfloat", "count") and col.dtype.kind in "fi":
                with np.errstate(invalid="ignore"):
                    _require(not np.any(col < 0), f"negative value kept in {name}")
            if schema[name].required and col.dtype.kind == "f":
                _require(bool(np.all(np.isfinite(col))), f"non-finite value kept in {name}")
        elif kind in ("str", "longstr", "text"):
            limit = _string_limit(kind)
            values = col.tolist() if isinstance(col, Cat) else col
            _require(
                all(v is None or (isinstance(v, str) and len(v) <= limit) for v in values),
                f"string column {name} holds a non-string or an uncut string",
            )
    for name, value in batch.const.items():
        fdef = schema.get(name)
        if isinstance(value, float) and fdef is not None and fdef.required:
            _require(math.isfinite(value), f"non-finite constant {name}")
        if fdef is not None and fdef.kind in ("nnfloat", "count") and value is not None:
            _require(not (isinstance(value, (int, float)) and value < 0), f"negative {name}")
        if fdef is not None and fdef.kind in ("str", "longstr", "text") and value is not None:
            _require(
                isinstance(value, str) and len(value) <= _string_limit(fdef.kind),
                f"constant {name} is a non-string or an uncut string",
            )
    for fdef in schema.values():
        if fdef.required:
            _require(fdef.name in batch.const or fdef.name in batch.cols, f"{fdef.name} missing")
            if fdef.name in batch.const:
                _require(batch.const[fdef.name] is not None, f"required {fdef.name} is None")


def _string_limit(kind: str) -> int:
    if kind == "longstr":
        return LIMITS.max_error_message
    if kind == "text":
        return LIMITS.max_text
    return LIMITS.max_string


def decode_target(data: bytes) -> None:
    """One frame: ``decode`` must return (never raise) a well-formed result."""
    check_result(decode(data, NOW, LIMITS))


# --- web.stream.Session ---------------------------------------------------------------------


def split_messages(data: bytes) -> list[tuple[float, bool, str]]:
    """Fuzz bytes → [(seconds since the previous message, binary?, text)].

    Each part's first byte picks the gap before it (0 to 2.55 s, so the rate limit is both
    refilled and exhausted) and whether it is a binary message (odd byte); the rest is the
    message, decoded as UTF-8 with replacement (aiohttp hands the session valid text).
    """
    out: list[tuple[float, bool, str]] = []
    for part in data.split(SEPARATOR)[:MAX_MESSAGES]:
        if not part:
            out.append((0.0, False, ""))
            continue
        control, body = part[0], part[1:]
        out.append(((control >> 1) / 100.0, bool(control & 1), body.decode("utf-8", "replace")))
    return out


def _check_reply(reply: Any, now: float) -> None:
    _require(isinstance(reply, dict), "a reply is not an object")
    _require(reply.get("type") in REPLY_TYPES, f"unexpected reply type {reply.get('type')!r}")
    _require(reply.get("timestamp") == now, "reply timestamp is not the wall clock passed in")
    try:
        json.dumps(reply, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BrokenPromise(f"reply is not strict JSON: {exc}") from None
    if reply["type"] == "error":
        message = reply.get("message")
        _require(isinstance(message, str), "error without a message")
        _require(len(message) <= MAX_ERROR_MESSAGE, f"error message of {len(message)} chars")
        _require("Traceback" not in message, "traceback text in an error message")
    if reply["type"] == "subscribed":
        filters = reply["filters"]
        _require(set(filters) == {"endpoints", "models", "metric_types", "interval"}, "filters")
        _require(filters["endpoints"] == sorted(filters["endpoints"]), "endpoints not sorted")


def _check_session(session: Session) -> None:
    limits = session.limits
    _require(limits.min_interval <= session.interval <= limits.max_interval, "interval range")
    _require(len(session.endpoints) <= limits.max_endpoints, "too many endpoints")
    _require(len(session.models) <= limits.max_models, "too many models")
    _require(bool(session.metric_types), "no metric type")
    _require(session.metric_types <= METRIC_TYPES, "unknown metric type kept")
    _require("all" not in session.metric_types or session.metric_types == {"all"}, "all + more")
    _require(all(isinstance(e, str) and e for e in session.endpoints), "bad endpoint kept")
    _require(all(isinstance(m, str) and m for m in session.models), "bad model kept")


def session_target(data: bytes) -> None:
    """A sequence of messages on one connection (see :func:`split_messages`)."""
    clock = 1000.0
    session = Session(connected_at=clock)
    for gap, binary, text in split_messages(data):
        clock += gap
        wall = NOW + clock
        try:
            if binary:
                replies = session.receive_binary(clock, wall)
            else:
                replies = session.receive(text, clock, wall)
        except PolicyViolation:
            return  # the connection is closed with 1008: nothing more is read
        _require(len(replies) == 1, f"{len(replies)} replies to one message")
        for reply in replies:
            _check_reply(reply, wall)
        _check_session(session)


#: Target name → function, for the runners.
TARGETS: Final = {"decode": decode_target, "session": session_target}
