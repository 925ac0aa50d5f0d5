"""Helpers every tracker shares: grouping a batch's rows by label values, and rates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from metricsd.protocol import Batch

__all__ = ["UNKNOWN", "group_rows", "label_values", "rate"]

UNKNOWN = "unknown"
IndexArray = npt.NDArray[np.intp]


def label_values(batch: Batch, name: str, default: str = UNKNOWN) -> str | list[str]:
    """A label field: one string for the whole batch, or a list with one per row."""
    value = batch.get(name)
    if isinstance(value, list):
        return [default if v is None or v == "" else v for v in value]
    return default if value is None or value == "" else str(value)


def group_rows(
    batch: Batch, labels: list[str | list[str]]
) -> Iterator[tuple[tuple[str, ...], IndexArray | None]]:
    """Yield (label tuple, row indexes) for each distinct label tuple in the batch.

    Row indexes are ``None`` when every row shares the labels (the columnar fast path: the
    caller then uses whole columns without copying).
    """
    if all(isinstance(v, str) for v in labels):
        yield tuple(v for v in labels if isinstance(v, str)), None
        return
    n = batch.n
    columns = [v if isinstance(v, list) else [v] * n for v in labels]
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, key in enumerate(zip(*columns, strict=True)):
        groups.setdefault(key, []).append(i)
    for key, rows in groups.items():
        yield key, np.asarray(rows, dtype=np.intp)


def take(column: Any, rows: IndexArray | None) -> Any:
    """Rows of a column (array or list), or the scalar itself for a constant."""
    if rows is None:
        return column
    if isinstance(column, np.ndarray):
        return column[rows]
    if isinstance(column, list):
        return [column[i] for i in rows]
    return column


def rate(count: float, span: float, age: float) -> float:
    """Events per second over a window: count ÷ min(window span, series age), floored at 1 s.

    The series age stops the start-up spike of dividing by the time since the oldest sample
    (one event 0.2 ms ago would read 5 000/s); the 1 s floor keeps a brand-new series honest.
    """
    return count / max(1.0, min(span, age))
