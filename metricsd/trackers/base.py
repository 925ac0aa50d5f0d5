"""What every tracker shares: the apply context, exact sums, rates, providers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.batch import UNKNOWN, Batch, Cat, Groups
from metricsd.series import add_rows
from metricsd.window import rate

__all__ = [
    "UNKNOWN",
    "Ctx",
    "Providers",
    "add_rows",
    "group_sums",
    "rate",
]

_SAFE: Final = 1 << 62


@dataclass(frozen=True, slots=True)
class Ctx:
    """When a batch is applied: the daemon's clock (``now``), the wall clock, and the engine's
    write sequence number (every series a batch touches is marked with it)."""

    now: float
    wall: float
    version: int


def group_sums(values: npt.NDArray[Any], groups: Groups) -> npt.NDArray[Any]:
    """Exact per-group sums of an integer column: int64 while that cannot overflow (float
    bincount below 2**53), Python ints (object) beyond."""
    size = len(groups)
    if values.size == 0:
        return np.zeros(size, dtype=np.int64)
    peak = int(np.abs(values).max()) * values.size
    if groups.codes is None:
        total = int(values.sum()) if peak < _SAFE else sum(int(v) for v in values.tolist())
        return np.array([total], dtype=np.int64 if abs(total) < _SAFE else object)
    if peak < (1 << 53):
        return np.bincount(groups.codes, weights=values, minlength=size).astype(np.int64)
    out = np.zeros(size, dtype=object)
    np.add.at(out, groups.codes, values.astype(object))
    return out


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

    def resolve(self, batch: Batch) -> None:
        """Set the batch's ``provider`` to each row's resolved provider (given, or from the
        model): a constant, or codes over the distinct (given, model) pairs."""
        model = batch.label("model")
        given = batch.cat("provider", None) if batch.type in ("request", "error") else None
        if given is None or (len(given.values) == 1 and not given.values[0]):
            if len(model.values) == 1:
                batch.const["provider"] = self.of_model(model.values[0])
                batch.cols.pop("provider", None)
            else:
                batch.cols["provider"] = model.mapped(self.of_model)
                batch.const.pop("provider", None)
            return
        pairs = Cat(
            given.codes * len(model.values) + model.codes,
            [(g, m) for g in given.values for m in model.values],
        )
        resolved = pairs.mapped(lambda gm: str(gm[0]) if gm[0] else self.of_model(gm[1]))
        if len(resolved.values) == 1:
            batch.const["provider"] = resolved.values[0]
            batch.cols.pop("provider", None)
        else:
            batch.cols["provider"] = resolved
            batch.const.pop("provider", None)
