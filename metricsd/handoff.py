"""Decoded batches between processes: what a worker hands the engine (``--workers``).

A worker decodes and validates frames (:class:`metricsd.decode.Decoder`) and sends the
:class:`~metricsd.decode.DecodeResult` to the serving process, which applies what is left of it
(the rows the worker did not apply in full, plus the count of those it did: ``elided``). The
encoding is
msgpack with two extension types, so numeric columns travel as their raw bytes (no per-value
work on either side) and label columns as codes plus their distinct values:

- ext 1, an array: ``[dtype, bytes]`` (dtype from a fixed list of plain numeric kinds);
- ext 2, a :class:`~metricsd.batch.Cat`: ``[codes array, values]``.

Nothing here is trusted more than a frame from an emitter: the reader checks every type and
length and refuses anything else with :class:`HandoffError` (the socket it comes from lives in a
private directory of the daemon, but a bug in a worker must not become one in the engine), and
nothing is ever unpickled.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import msgpack
import numpy as np

from metricsd.batch import Batch, Cat
from metricsd.decode import DecodeResult
from metricsd.schema import EVENT_TYPES

__all__ = ["HandoffError", "pack_result", "unpack_result"]

_ARRAY: Final = 1
_CAT: Final = 2
#: The dtypes a decoded column can have (numbers, booleans, label codes).
_DTYPES: Final = frozenset(
    np.dtype(t).str for t in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                              "uint32", "uint64", "float32", "float64", "intp")
)  # fmt: skip


class HandoffError(ValueError):
    """A handed-off result that is not what a worker writes."""


def _default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.str not in _DTYPES:
            raise TypeError(f"cannot hand off an array of {value.dtype} x{value.ndim}")
        return msgpack.ExtType(_ARRAY, _packb([value.dtype.str, value.tobytes()]))
    if isinstance(value, Cat):
        # Codes in the narrowest type that holds them: a label column is then a byte per row.
        k = len(value.values)
        narrow = np.uint8 if k <= 1 << 8 else np.uint16 if k <= 1 << 16 else np.int64
        return msgpack.ExtType(_CAT, _packb([value.codes.astype(narrow), value.values]))
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot hand off {type(value).__name__}")


def _packb(value: Any) -> bytes:
    out: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return out


def _array(data: bytes) -> np.ndarray[Any, Any]:
    parts = msgpack.unpackb(data, raw=False)
    if not (
        isinstance(parts, list)
        and len(parts) == 2
        and parts[0] in _DTYPES
        and isinstance(parts[1], bytes)
    ):
        raise HandoffError("bad array")
    dtype = np.dtype(parts[0])
    if len(parts[1]) % dtype.itemsize:
        raise HandoffError("bad array length")
    # A copy: trackers may keep or index the column after the message buffer is gone.
    return np.frombuffer(parts[1], dtype=dtype).copy()


def _ext(code: int, data: bytes) -> Any:
    if code == _ARRAY:
        return _array(data)
    if code == _CAT:
        parts = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext)
        if not (
            isinstance(parts, list)
            and len(parts) == 2
            and isinstance(parts[0], np.ndarray)
            and parts[0].dtype.kind in "iu"
            and isinstance(parts[1], list)
        ):
            raise HandoffError("bad label column")
        codes = parts[0].astype(np.intp, copy=False)
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= len(parts[1])):
            raise HandoffError("label codes out of range")
        return Cat(codes, parts[1])
    raise HandoffError(f"unknown extension {code}")


def pack_result(result: DecodeResult, frames: int) -> bytes:
    """One message: the frames it came from, rejections by reason, truncations, batches,
    and the accepted events a worker left out of them (applied there in full)."""
    return _packb(
        [
            frames,
            dict(result.rejected),
            result.truncated,
            [[b.type, b.n, b.const, b.cols] for b in result.batches],
            dict(result.elided),
        ]
    )


def unpack_result(data: bytes) -> tuple[DecodeResult, int]:
    """The result and its frame count; raises :class:`HandoffError` on anything malformed."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True, ext_hook=_ext)
    except HandoffError:
        raise
    except Exception as exc:  # msgpack's own errors, whatever their class
        raise HandoffError(f"not a handoff message ({type(exc).__name__})") from None
    if not (isinstance(body, list) and len(body) == 5):
        raise HandoffError("bad message")
    frames, rejected, truncated, batches, elided = body
    if not (
        isinstance(frames, int)
        and frames >= 0
        and isinstance(rejected, dict)
        and all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in rejected.items())
        and isinstance(truncated, int)
        and truncated >= 0
        and isinstance(batches, list)
        and isinstance(elided, dict)
        and all(k in EVENT_TYPES and isinstance(v, int) and v > 0 for k, v in elided.items())
    ):
        raise HandoffError("bad message header")
    out = DecodeResult(rejected=Counter(rejected), truncated=truncated, elided=Counter(elided))
    for item in batches:
        out.batches.append(_batch(item))
    return out, frames


def _batch(item: Any) -> Batch:
    if not (isinstance(item, list) and len(item) == 4):
        raise HandoffError("bad batch")
    type_name, n, const, cols = item
    if type_name not in EVENT_TYPES or not isinstance(n, int) or n <= 0:
        raise HandoffError("bad batch header")
    if not (isinstance(const, dict) and isinstance(cols, dict)):
        raise HandoffError("bad batch fields")
    for name, col in cols.items():
        if not isinstance(name, str) or not isinstance(col, (np.ndarray, Cat, list)):
            raise HandoffError("bad column")
        if len(col) != n:
            raise HandoffError(f"column {name!r} has {len(col)} rows, not {n}")
    return Batch(type_name, n, const, cols)
