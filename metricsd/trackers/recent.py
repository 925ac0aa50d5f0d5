"""The ring of recent request outcomes (``GET /metrics/recent``), kept as column chunks.

Appending a batch keeps slices of its columns (no per-row Python work on the ingest path); rows
are only built when someone reads the ring. Whole chunks are dropped from the old end once the
newer ones hold ``size`` rows, so memory stays bounded by about ``size`` rows plus one batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RecentRing"]


@dataclass(frozen=True, slots=True)
class _Chunk:
    ts: npt.NDArray[np.float64]
    model: str | list[str]
    endpoint: str | list[str]
    latency_ms: npt.NDArray[np.float64] | None
    tokens: npt.NDArray[np.int64]
    status: npt.NDArray[np.int64]
    errors: dict[int, str]  # row → error text, only for rows that failed

    def __len__(self) -> int:
        return len(self.ts)


def _tail(value: Any, start: int) -> Any:
    if isinstance(value, np.ndarray):
        return value[start:].copy()  # a copy: do not keep the whole batch's array alive
    if isinstance(value, list):
        return value[start:]
    return value


class RecentRing:
    """The newest ``size`` outcomes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._chunks: deque[_Chunk] = deque()
        self._rows = 0

    def add(
        self,
        ts: npt.NDArray[np.float64],
        model: str | list[str],
        endpoint: str | list[str],
        latency_ms: npt.NDArray[np.float64] | None,
        tokens: npt.NDArray[np.int64],
        status: npt.NDArray[np.int64],
        is_error: npt.NDArray[np.bool_],
        messages: Any,
        types: Any,
    ) -> None:
        n = len(ts)
        start = max(0, n - self.size)
        errors: dict[int, str] = {}
        for i in np.flatnonzero(is_error[start:]).tolist():
            row = start + i
            message = messages[row] if isinstance(messages, list) else messages
            kind = types[row] if isinstance(types, list) else types
            errors[i] = message or kind or f"HTTP {int(status[row])}"
        chunk = _Chunk(
            _tail(ts, start),
            _tail(model, start),
            _tail(endpoint, start),
            _tail(latency_ms, start),
            _tail(tokens, start),
            _tail(status, start),
            errors,
        )
        self._chunks.append(chunk)
        self._rows += len(chunk)
        while self._chunks and self._rows - len(self._chunks[0]) >= self.size:
            self._rows -= len(self._chunks.popleft())

    def newest(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` (≤ size) outcomes, newest first."""
        out: list[dict[str, Any]] = []
        limit = min(limit, self.size)
        for chunk in reversed(self._chunks):
            for i in range(len(chunk) - 1, -1, -1):
                if len(out) >= limit:
                    return out
                out.append(
                    {
                        "timestamp": float(chunk.ts[i]),
                        "model": chunk.model[i] if isinstance(chunk.model, list) else chunk.model,
                        "endpoint": (
                            chunk.endpoint[i]
                            if isinstance(chunk.endpoint, list)
                            else chunk.endpoint
                        ),
                        "latency_ms": None
                        if chunk.latency_ms is None
                        else float(chunk.latency_ms[i]),
                        "tokens": int(chunk.tokens[i]),
                        "status": int(chunk.status[i]),
                        "error": chunk.errors.get(i),
                    }
                )
        return out

    def __len__(self) -> int:
        return min(self._rows, self.size)
