"""The error tracker: error counts and rates, distributions, patterns, bursts (SPEC §4.4).

It sees every outcome once: ``request`` and ``error`` events, and the ``request`` batches the
engine derives from finished streams. An outcome is an error when ``status ≥ 400`` or
``error_type`` is set, so the error rate is errors ÷ outcomes and never exceeds 1 (FakeAI's
tracker counted an error as no request and reported rates over 100 %).

Successes cost a few numpy operations per batch. Only the error rows, which are a minority, go
through Python: each distinct (error type, endpoint, message) of a batch is normalised once, the
rows are gathered per fingerprint, and each fingerprint updates the pattern table once; the
distributions and the burst detector are updated once per batch.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from metricsd.config import Config
from metricsd.export.prometheus import Family
from metricsd.fingerprint import fingerprint, normalise
from metricsd.persist import capture, restore_into
from metricsd.protocol import Batch
from metricsd.series import SeriesRegistry
from metricsd.trackers.base import UNKNOWN, label_values
from metricsd.trackers.patterns import MAX_REQUEST_IDS, MAX_SAMPLE, BurstDetector, PatternTable
from metricsd.window import CounterRing, Geometry

__all__ = ["DEFAULT_ERROR_TYPE", "ErrorTracker", "RecentError", "is_error_mask", "status_column"]

#: The error type of an error that has a failing status but no ``error_type``, as in
#: ``llm_errors_total``.
DEFAULT_ERROR_TYPE = "http_error"
RECENT_ERRORS = 100
WINDOW_SECONDS = 300.0

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class RecentError(NamedTuple):
    """One entry of the recent-errors ring. Keys appear only as ``key_id`` (SPEC §1.6)."""

    timestamp: float
    endpoint: str
    model: str
    status: int
    error_type: str
    message: str
    fingerprint: str
    request_id: str | None
    key_id: str | None


def status_column(batch: Batch) -> IntArray:
    """HTTP statuses as int64; a missing status reads as the event type's default."""
    default = 500 if batch.type == "error" else 200
    value = batch.get("status")
    if value is None:
        return np.full(batch.n, default, dtype=np.int64)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            value = np.where(np.isnan(value), default, value)
        out: IntArray = value.astype(np.int64, copy=False)
        return out
    if isinstance(value, list):
        return np.array([default if v is None else v for v in value], dtype=np.int64)
    return np.full(batch.n, int(value), dtype=np.int64)


def _is_set(value: Any, n: int) -> BoolArray:
    """Which rows have a non-empty string field."""
    if isinstance(value, (list, np.ndarray)):
        return np.array([v is not None and v != "" for v in value], dtype=bool)
    return np.full(n, value is not None and value != "", dtype=bool)


def is_error_mask(batch: Batch, status: IntArray) -> BoolArray:
    """SPEC §4.4: an outcome is an error when ``status ≥ 400`` or ``error_type`` is set."""
    return (status >= 400) | _is_set(batch.get("error_type"), batch.n)


def _distinct(value: Any, rows: list[int]) -> set[Any]:
    """The distinct values of a column (or the constant) at ``rows``."""
    if isinstance(value, (list, np.ndarray)):
        return {value[i] for i in rows}
    return {value}


def _pick(value: Any, rows: list[int]) -> list[Any]:
    """The values of a column (list/array) or a constant at ``rows``, as a list."""
    if isinstance(value, np.ndarray):
        picked: list[Any] = value[rows].tolist()
        return picked
    if isinstance(value, list):
        return [value[i] for i in rows]
    return [value] * len(rows)


class ErrorTracker:
    """See the module docstring."""

    name = "errors"
    event_types = frozenset({"request", "error"})

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.start = start
        self.total_requests = 0
        self.total_errors = 0
        self.window = CounterRing(geometry, 2)  # requests, errors
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        self.by_status: SeriesRegistry[list[int]] = SeriesRegistry(
            "errors_status", lambda _k: [0], cap, ttl
        )
        self.by_type: SeriesRegistry[list[int]] = SeriesRegistry(
            "errors_type", lambda _k: [0], cap, ttl
        )
        self.by_endpoint: SeriesRegistry[list[int]] = SeriesRegistry(
            "errors_endpoint", lambda _k: [0], cap, ttl
        )
        self.by_model: SeriesRegistry[list[int]] = SeriesRegistry(
            "errors_model", lambda _k: [0], cap, ttl
        )
        self.patterns = PatternTable(config.limits.max_patterns)
        self.bursts = BurstDetector()
        #: Plain tuples in :class:`RecentError` field order (a tuple is cheaper to build than
        #: the named tuple, and up to 100 are built per batch); views wrap them.
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=RECENT_ERRORS)

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, now: float, wall: float) -> None:
        """Count a batch of outcomes; the error rows also feed patterns and bursts."""
        if batch.n == 0:
            return
        status = status_column(batch)
        errors = is_error_mask(batch, status)
        n_errors = int(np.count_nonzero(errors))
        self.total_requests += batch.n
        self.total_errors += n_errors
        self.window.add(now, (batch.n, n_errors))
        if n_errors:
            self._errors(batch, status, errors, now, wall)
            self.bursts.add(now, wall, n_errors)

    def _errors(
        self, batch: Batch, status: IntArray, errors: BoolArray, now: float, wall: float
    ) -> None:
        rows: list[int] = np.flatnonzero(errors).tolist()
        types = [t or DEFAULT_ERROR_TYPE for t in _pick(batch.get("error_type"), rows)]
        endpoints = _pick(label_values(batch, "endpoint"), rows)
        models = label_values(batch, "model")
        messages = [m or "" for m in _pick(batch.get("error_message"), rows)]
        statuses: list[int] = status[rows].tolist()

        # Errors with the same (type, endpoint, message) normalise alike: normalise each
        # distinct message once, then gather the rows of each fingerprint.
        by_message: dict[tuple[str, str, str], list[int]] = {}
        for j, key in enumerate(zip(types, endpoints, messages, strict=True)):
            by_message.setdefault(key, []).append(j)
        fingerprints: dict[tuple[str, str, str], str] = {}
        by_fingerprint: dict[str, tuple[tuple[str, str, str], str, list[int]]] = {}
        for key, js in by_message.items():
            normalised = normalise(key[2])
            fp = fingerprints[key] = fingerprint(key[0], key[1], normalised)
            found = by_fingerprint.get(fp)
            if found is None:
                by_fingerprint[fp] = (key, normalised, js)
            else:
                found[2].extend(js)

        users = batch.get("user_id")
        request_ids = batch.get("request_id")
        for fp, ((etype, endpoint, message), normalised, js) in by_fingerprint.items():
            picked = [rows[j] for j in js]
            self.patterns.record(
                fp,
                error_type=etype,
                endpoint=endpoint,
                status=statuses[js[0]],
                normalised=normalised,
                message=message,
                count=len(js),
                models=_distinct(models, picked) - {UNKNOWN},
                users=_distinct(users, picked) - {None, ""},
                request_ids=[r for r in _pick(request_ids, picked[-MAX_REQUEST_IDS:]) if r],
                now=now,
                wall=wall,
            )
        self._distributions(types, endpoints, _pick(models, rows), statuses, now)
        self._recent(batch, rows, types, endpoints, messages, statuses, fingerprints, wall)

    def _distributions(
        self,
        types: list[str],
        endpoints: list[str],
        models: list[str],
        statuses: list[int],
        now: float,
    ) -> None:
        tallies = (
            (self.by_status, _status_tally(statuses)),
            (self.by_type, Counter(types)),
            (self.by_endpoint, Counter(endpoints)),
            (self.by_model, Counter(models)),
        )
        for registry, tally in tallies:
            for label, count in tally.items():
                registry.get((label,), now, count)[0] += count

    def _recent(
        self,
        batch: Batch,
        rows: list[int],
        types: list[str],
        endpoints: list[str],
        messages: list[str],
        statuses: list[int],
        fingerprints: dict[tuple[str, str, str], str],
        wall: float,
    ) -> None:
        keep = slice(max(0, len(rows) - RECENT_ERRORS), len(rows))
        tail = rows[keep]
        models = _pick(label_values(batch, "model"), tail)
        ts = _pick(batch.get("ts"), tail)  # the emitter's time, as in /metrics/recent
        request_ids = _pick(batch.get("request_id"), tail)
        key_ids = _pick(batch.get("key_id"), tail)
        for j, i in enumerate(range(keep.start, keep.stop)):
            etype, endpoint, message = types[i], endpoints[i], messages[i]
            self.recent.append(
                (
                    wall if ts[j] is None else float(ts[j]),  # derived batches have no ts
                    endpoint,
                    models[j],
                    statuses[i],
                    etype,
                    message[:MAX_SAMPLE],
                    fingerprints[(etype, endpoint, message)],
                    request_ids[j],
                    key_ids[j],
                )
            )

    # --- housekeeping and reads -----------------------------------------------------------

    def _registries(self) -> tuple[SeriesRegistry[list[int]], ...]:
        return (self.by_status, self.by_type, self.by_endpoint, self.by_model)

    def expire(self, now: float) -> None:
        for registry in self._registries():
            registry.expire(now)

    def series_count(self) -> int:
        return sum(len(r) for r in self._registries())

    def series_overflow(self) -> int:
        return sum(r.overflowed for r in self._registries())

    def windowed(self, now: float, seconds: float = WINDOW_SECONDS) -> tuple[int, int]:
        """(outcomes, errors) over the last ``seconds``."""
        sums, _span = self.window.window(now, seconds)
        return int(sums[0]), int(sums[1])

    #: Data attributes saved by ``state()`` (SPEC §7).
    PERSIST = (
        "start",
        "total_requests",
        "total_errors",
        "window",
        "by_status",
        "by_type",
        "by_endpoint",
        "by_model",
        "patterns",
        "bursts",
        "recent",
    )

    def state(self) -> dict[str, Any]:
        return capture(self, self.PERSIST)

    def restore(self, state: dict[str, Any]) -> None:
        restore_into(self, state)

    def families(self, now: float) -> list[Family]:
        from metricsd.trackers.errors_export import error_families

        return error_families(self, now)


def _status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


def _status_tally(statuses: list[int]) -> Counter[str]:
    tally: Counter[str] = Counter()
    for status, count in Counter(statuses).items():
        tally[_status_label(status)] += count
    return tally
