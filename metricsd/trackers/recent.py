"""The ring of recent request outcomes (``GET /metrics/recent``), kept as column chunks.

Appending a batch keeps slices of its columns (no per-row Python work on the ingest path); rows
are only built when someone reads the ring. Whole chunks are dropped from the old end once the
newer ones hold ``size`` rows, so memory stays bounded by about ``size`` rows plus one batch.
Chunks never change once made, so a snapshot holds the ring as a tuple of them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from metricsd.batch import Cat

__all__ = ["RecentRing", "newest"]


@dataclass(frozen=True, slots=True)
class Chunk:
    ts: npt.NDArray[np.float64]
    model: Any  # str, or (codes, values)
    endpoint: Any
    latency_ms: npt.NDArray[np.float64] | None
    tokens: npt.NDArray[np.int64]
    status: npt.NDArray[np.int64]
    errors: dict[int, str]  # row → error text, only for rows that failed

    def __len__(self) -> int:
        return len(self.ts)


def _tail(value: Any, start: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[start:].copy()  # a copy: do not keep the whole batch's array alive
    if isinstance(value, Cat):
        codes = value.codes[start:]
        used = np.unique(codes)
        remap = np.zeros(len(value.values), dtype=np.intp)
        remap[used] = np.arange(len(used))
        return (remap[codes], [value.values[i] for i in used.tolist()])
    if isinstance(value, list):
        return value[start:]
    return value


def _at(value: Any, i: int) -> Any:
    if isinstance(value, tuple):
        return value[1][value[0][i]]
    if isinstance(value, list):
        return value[i]
    return value


class RecentRing:
    """The newest ``size`` outcomes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.chunks: deque[Chunk] = deque()
        self._rows = 0

    def add(
        self,
        ts: npt.NDArray[np.float64],
        model: Any,
        endpoint: Any,
        latency_ms: npt.NDArray[np.float64] | None,
        tokens: npt.NDArray[np.int64],
        status: npt.NDArray[np.int64],
        is_error: npt.NDArray[np.bool_],
        messages: Any,
        types: Any,
    ) -> None:
        n = len(ts)
        if n == 0 or self.size == 0:
            return
        start = max(0, n - self.size)
        errors: dict[int, str] = {}
        for i in np.flatnonzero(is_error[start:]).tolist():
            row = start + i
            message = _row(messages, row)
            kind = _row(types, row)
            errors[i] = message or kind or f"HTTP {int(status[row])}"
        chunk = Chunk(
            _tail(ts, start),
            _tail(model, start),
            _tail(endpoint, start),
            _tail(latency_ms, start),
            _tail(tokens, start),
            _tail(status, start),
            errors,
        )
        self.chunks.append(chunk)
        self._rows += len(chunk)
        while self.chunks and self._rows - len(self.chunks[0]) >= self.size:
            self._rows -= len(self.chunks.popleft())

    def freeze(self) -> tuple[Chunk, ...]:
        return tuple(self.chunks)

    def restore_rows(self, rows: list[Any], r: Any) -> None:
        """Rows saved oldest first (as :func:`newest` gives them, reversed), checked."""
        self.chunks.clear()
        self._rows = 0
        if not rows:
            return
        ts, models, endpoints, latency, tokens, status = [], [], [], [], [], []
        errors: dict[int, str] = {}
        for i, raw in enumerate(rows):
            row = r.map(raw, "recent")
            ts.append(r.float(row.get("timestamp"), "recent.timestamp"))
            models.append(r.str(row.get("model"), "recent.model"))
            endpoints.append(r.str(row.get("endpoint"), "recent.endpoint"))
            value = r.opt_float(row.get("latency_ms"), "recent.latency_ms")
            latency.append(np.nan if value is None else value)
            tokens.append(r.int(row.get("tokens"), "recent.tokens"))
            status.append(r.int(row.get("status"), "recent.status"))
            error = r.opt_str(row.get("error"), "recent.error")
            if error is not None:
                errors[i] = error
        self.chunks.append(
            Chunk(
                np.array(ts, dtype=np.float64),
                models,
                endpoints,
                np.array(latency, dtype=np.float64),
                np.array(tokens, dtype=np.int64),
                np.array(status, dtype=np.int64),
                errors,
            )
        )
        self._rows = len(rows)

    def __len__(self) -> int:
        return min(self._rows, self.size)


def _row(value: Any, i: int) -> Any:
    if isinstance(value, Cat):
        return value.values[value.codes[i]]
    if isinstance(value, (list, np.ndarray)):
        return value[i]
    return value


def _latency(values: npt.NDArray[np.float64] | None, i: int) -> float | None:
    if values is None:
        return None
    value = float(values[i])
    return None if value != value else value  # NaN: an outcome without a latency


def newest(chunks: tuple[Chunk, ...], size: int, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` (≤ size) outcomes, newest first."""
    out: list[dict[str, Any]] = []
    limit = min(limit, size)
    for chunk in reversed(chunks):
        for i in range(len(chunk) - 1, -1, -1):
            if len(out) >= limit:
                return out
            out.append(
                {
                    "timestamp": float(chunk.ts[i]),
                    "model": _at(chunk.model, i),
                    "endpoint": _at(chunk.endpoint, i),
                    "latency_ms": _latency(chunk.latency_ms, i),
                    "tokens": int(chunk.tokens[i]),
                    "status": int(chunk.status[i]),
                    "error": chunk.errors.get(i),
                }
            )
    return out
