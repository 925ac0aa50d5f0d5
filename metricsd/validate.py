"""Value checks of SPEC §1.4: one value, or a whole column of one field at once.

Pure functions over Python values and numpy arrays, shared by the decoder's column path and its
per-value fallback, so a value gets the same verdict alone and inside a column (the fallback is
the definition; the column path is a vectorised shortcut that must agree with it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.schema import Field

__all__ = [
    "INT64_MAX",
    "MAX_FLOAT",
    "NUMPY_DTYPE",
    "Limits",
    "check_scalar",
    "numeric_fast",
    "string_limit",
]

_METRIC_NAME: Final = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
INT64_MAX: Final = 2**63 - 1
#: Largest magnitude of a float field: far beyond any real duration, price or gauge, and far
#: enough below the float maximum that sums over any number of events stay finite.
MAX_FLOAT: Final = 1e100
_MAX_LABELS: Final = 8

NUMPY_DTYPE: Final[dict[str, Any]] = {
    "float": np.float64,
    "nnfloat": np.float64,
    "count": np.int64,
    "int": np.int64,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Ingest limits of SPEC §1.4 and §8 (all configurable)."""

    max_frame_bytes: int = 1 << 20
    max_events: int = 10_000
    max_string: int = 256
    max_error_message: int = 2048
    max_text: int = 256
    #: An event's ``ts`` further than this from its arrival time is a ``bad_value`` (SPEC §8).
    max_clock_skew: float = 86_400.0


def string_limit(kind: str, limits: Limits) -> int:
    if kind == "longstr":
        return limits.max_error_message
    if kind == "text":
        return limits.max_text
    return limits.max_string


def check_scalar(fdef: Field, value: Any, limits: Limits, truncated: list[int]) -> tuple[Any, bool]:
    """Validate one value. Returns (normalised value, ok); truncations add to ``truncated[0]``."""
    kind = fdef.kind
    if value is None:
        return (fdef.default, not fdef.required)
    if kind in NUMPY_DTYPE:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return (None, False)
        if isinstance(value, float):
            if not math.isfinite(value) or abs(value) > MAX_FLOAT:
                return (None, False)
            if kind in ("count", "int"):
                if value != int(value) or abs(value) > INT64_MAX:
                    return (None, False)
                value = int(value)
        elif not -INT64_MAX - 1 <= value <= INT64_MAX and kind in ("count", "int"):
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
        limit = string_limit(kind, limits)
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
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n > INT64_MAX:
        return (None, False)
    if len(size) > limits.max_string or len(quality) > limits.max_string:
        truncated[0] += 1
    return (
        {"size": size[: limits.max_string], "quality": quality[: limits.max_string], "n": n},
        True,
    )


def numeric_fast(
    fdef: Field, col: list[Any] | npt.NDArray[Any]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None] | None:
    """A numeric column without a per-value Python loop: (values, bad rows or None), or None
    when the per-value path must decide (strings, None, nested lists, integers beyond float
    precision)."""
    try:
        arr = col if isinstance(col, np.ndarray) else np.array(col)
    except (ValueError, OverflowError, TypeError):
        return None
    if arr.dtype.kind not in "iuf" or arr.ndim != 1:
        return None  # (booleans mixed with numbers read as 0 and 1: the documented leniency)
    kind = fdef.kind
    bad: npt.NDArray[np.bool_]
    if arr.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~(np.abs(arr) <= MAX_FLOAT)  # NaN, infinities and absurd magnitudes
        if kind in ("count", "int"):
            with np.errstate(invalid="ignore"):
                if np.any(np.abs(arr) >= 2.0**53):
                    return None  # integers beyond float precision: exact, value by value
                bad |= arr != np.floor(arr)
            arr = np.where(bad, 0, arr).astype(np.int64)
    elif arr.dtype.kind == "u":
        if arr.max(initial=0) > INT64_MAX:
            return None
        bad = np.zeros(len(arr), dtype=bool)
    else:
        bad = np.zeros(len(arr), dtype=bool)
    if kind in ("nnfloat", "count"):
        with np.errstate(invalid="ignore"):
            bad |= arr < 0
    arr = arr.astype(NUMPY_DTYPE[kind], copy=False)
    return arr, (bad if bad.any() else None)


def numeric_slow(
    fdef: Field, col: list[Any], limits: Limits, truncated: list[int]
) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_] | None]:
    """Value by value: each bad row found and the good ones kept."""
    dtype = NUMPY_DTYPE[fdef.kind]
    filler: Any = math.nan if dtype is np.float64 else 0
    values: list[Any] = []
    bad_rows = np.zeros(len(col), dtype=bool)
    for i, v in enumerate(col):
        value, ok = check_scalar(fdef, v, limits, truncated)
        if not ok:
            bad_rows[i] = True
        values.append(filler if not ok or value is None else value)
    arr = np.array(values, dtype=dtype) if values else np.zeros(0, dtype=dtype)
    return arr, (bad_rows if bad_rows.any() else None)


def objects_slow(
    fdef: Field, col: list[Any], limits: Limits, truncated: list[int]
) -> tuple[list[Any], npt.NDArray[np.bool_] | None]:
    """Strings and objects value by value (None is "absent" for an optional field)."""
    values: list[Any] = []
    bad_rows = np.zeros(len(col), dtype=bool)
    for i, v in enumerate(col):
        value, ok = check_scalar(fdef, v, limits, truncated)
        if not ok:
            bad_rows[i] = True
        values.append(value if ok else fdef.default)
    return values, (bad_rows if bad_rows.any() else None)
