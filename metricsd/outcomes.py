"""What a request outcome is (SPEC §4.1, §4.4, §8): its status, whether it failed, its labels.

The request, error and SLO trackers all read these, so "is this an error?" is decided in one
place, once per batch (the result is kept on the batch), and every label value they export is
bounded the same way.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.batch import Batch, Cat

__all__ = [
    "DEFAULT_ERROR_TYPE",
    "is_error",
    "status_column",
    "status_label",
    "status_labels",
]

#: The error type of an error that has a failing status but no ``error_type``.
DEFAULT_ERROR_TYPE: Final = "http_error"

#: Status codes exported as themselves; any other code in 100-599 is folded into its class
#: (``5xx``), anything else is ``other`` (SPEC §8: every label value is bounded). The set is
#: fixed, not learnt from traffic, so every process of a daemon labels alike.
_SPECIAL: Final = (100, 101, 102, 103, 226, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 499)
_EXACT: Final = frozenset(
    (*_SPECIAL, *range(200, 209), *range(300, 309), *range(400, 419), *range(500, 512))
)


def status_label(status: int) -> str:
    if status in _EXACT:
        return str(status)
    if 100 <= status <= 599:
        return f"{status // 100}xx"
    return "other"


def status_column(batch: Batch) -> npt.NDArray[np.int64]:
    """HTTP statuses as int64; a missing status reads as the event type's default."""
    cache = batch.cache
    found = cache.get("status")
    if found is None:
        default = 500 if batch.type == "error" else 200
        value = batch.get("status")
        if value is None:
            found = np.full(batch.n, default, dtype=np.int64)
        elif isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                value = np.where(np.isnan(value), default, value)
            found = value.astype(np.int64, copy=False)
        else:
            found = np.full(batch.n, int(value), dtype=np.int64)
        cache["status"] = found
    return found


def status_labels(batch: Batch) -> Cat:
    """The status of each row as its exported label (codes per row)."""
    cache = batch.cache
    found = cache.get("status_label")
    if found is None:
        status = status_column(batch)
        lo, hi = (int(status.min()), int(status.max())) if status.size else (0, 0)
        if status.size and lo >= 0 and hi < 1024:
            # The usual case: a dense table over the codes present, no sort.
            present = np.flatnonzero(np.bincount(status, minlength=hi + 1))
            lookup = np.zeros(hi + 1, dtype=np.intp)
            lookup[present] = np.arange(len(present))
            inverse = lookup[status]
            uniq = present
        else:
            uniq, inverse = np.unique(status, return_inverse=True)
        labels = [status_label(int(s)) for s in uniq.tolist()]
        found = Cat(inverse.reshape(-1).astype(np.intp), labels)
        if len(set(labels)) != len(labels):
            found = found.mapped(lambda v: v)
        cache["status_label"] = found
    return found


def _set(value: Any, n: int) -> npt.NDArray[np.bool_]:
    """Which rows have a non-empty string field."""
    if isinstance(value, Cat):
        flags = np.array([v is not None and v != "" for v in value.values], dtype=bool)
        return flags[value.codes] if len(flags) else np.zeros(n, dtype=bool)
    if isinstance(value, (list, np.ndarray)):
        return np.array([v is not None and v != "" for v in value], dtype=bool)
    return np.full(n, value is not None and value != "", dtype=bool)


def is_error(batch: Batch) -> npt.NDArray[np.bool_]:
    """SPEC §4.4: an outcome is an error when ``status ≥ 400`` or ``error_type`` is set."""
    cache = batch.cache
    found = cache.get("is_error")
    if found is None:
        found = (status_column(batch) >= 400) | _set(batch.get("error_type"), batch.n)
        cache["is_error"] = found
    return found
