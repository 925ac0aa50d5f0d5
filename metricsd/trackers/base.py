"""Helpers every tracker shares: grouping a batch's rows by label values, and rates."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from metricsd.protocol import Batch

__all__ = ["UNKNOWN", "Providers", "group_rows", "label_values", "rate"]

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
    keys = list(zip(*columns, strict=True))
    distinct = dict.fromkeys(keys)
    if len(distinct) == 1:  # merged frames of one series: the fast path again
        yield keys[0], None
        return
    # Factorise in C (dict lookups through map), then split a stable argsort by group.
    index = {key: i for i, key in enumerate(distinct)}
    codes = np.fromiter(map(index.__getitem__, keys), dtype=np.intp, count=n)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(index)))
    start = 0
    for key, end in zip(distinct, bounds.tolist(), strict=True):
        yield key, order[start:end]
        start = end


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


class Providers:
    """Provider of a request: the ``provider`` field, else the longest configured model-name
    prefix (``providers.prefixes``), else ``unknown``. Resolved once per distinct model."""

    __slots__ = ("_cache", "prefixes")

    def __init__(self, prefixes: Mapping[str, str]) -> None:
        self.prefixes = prefixes
        self._cache: dict[str, str] = {}

    def of_model(self, model: str) -> str:
        found = self._cache.get(model)
        if found is None:
            matches = [p for p in self.prefixes if model.startswith(p)]
            found = self.prefixes[max(matches, key=len)] if matches else UNKNOWN
            if len(self._cache) < 10_000:
                self._cache[model] = found
        return found

    def column(self, given: Any, models: str | list[str], n: int) -> str | list[str]:
        """Providers for a batch: one string, or one per row."""
        if not isinstance(given, list) and not isinstance(models, list):
            return str(given) if given else self.of_model(models)
        model_list = models if isinstance(models, list) else [models] * n
        by_model = {m: self.of_model(m) for m in dict.fromkeys(model_list)}
        if not isinstance(given, list):
            if given:
                return str(given)
            return [by_model[m] for m in model_list]
        return [p if p else by_model[m] for p, m in zip(given, model_list, strict=True)]
