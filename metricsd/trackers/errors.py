"""The error tracker: error counts and rates, distributions, patterns, bursts (SPEC §4.4).

It sees every outcome once: ``request`` and ``error`` events, and the ``request`` batches the
engine derives from finished streams. An outcome is an error when ``status ≥ 400`` or
``error_type`` is set (:func:`metricsd.outcomes.is_error`), so the error rate is errors ÷
outcomes and never exceeds 1 (FakeAI's tracker counted an error as no request and reported
rates over 100 %).

Successes cost a few numpy operations per batch. Only the error rows, a minority, are looked at
further: grouped by (error type, endpoint, message) with the batch's codes, each distinct triple
is normalised once and updates the pattern table once; the distributions and the burst detector
are updated once per batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from metricsd.batch import Batch
from metricsd.config import Config
from metricsd.export.prometheus import Family
from metricsd.fingerprint import fingerprint, normalise
from metricsd.outcomes import DEFAULT_ERROR_TYPE, is_error, status_column, status_labels
from metricsd.persist import Reader
from metricsd.series import SeriesTable, TableView
from metricsd.trackers.base import UNKNOWN, Ctx, add_rows
from metricsd.trackers.patterns import MAX_REQUEST_IDS, MAX_SAMPLE, BurstDetector, PatternTable
from metricsd.window import CounterLog, CounterWindows, Geometry

__all__ = ["DEFAULT_ERROR_TYPE", "ErrorTracker", "ErrorsView", "RecentError"]

RECENT_ERRORS = 100
WINDOW_SECONDS = 300.0
TOP_PATTERNS = 10
DEFAULT_MIN_COUNT = 3
_ONE = np.zeros(1, dtype=np.intp)


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


class ErrorTracker:
    """See the module docstring."""

    name = "errors"
    event_types = frozenset({"request", "error"})

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.start = start
        self.total_requests = 0
        self.total_errors = 0
        self.window = CounterLog(geometry, 2)  # one series (id 0): requests, errors
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        self.distributions = {
            name: SeriesTable(f"errors_{name}", 1, cap, ttl)
            for name in ("status", "type", "endpoint", "model")
        }
        for table in self.distributions.values():
            table.add_array("count")
        self.patterns = PatternTable(config.limits.max_patterns)
        self.bursts = BurstDetector()
        #: Plain tuples in :class:`RecentError` field order; views wrap them.
        self.recent: deque[tuple[Any, ...]] = deque(maxlen=RECENT_ERRORS)
        self.dirty = True
        self._pattern_cache: dict[str, tuple[int, tuple[int, float, dict[str, Any]]]] = {}

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, ctx: Ctx) -> None:
        """Count a batch of outcomes; the error rows also feed patterns and bursts."""
        self.apply_additive(batch, ctx)
        self.apply_ordered(batch, ctx)

    def apply_additive(self, batch: Batch, ctx: Ctx) -> None:
        """The counts of outcomes and errors (``--workers``: what a worker adds up)."""
        if batch.n == 0:
            return
        self.dirty = True
        n_errors = int(np.count_nonzero(is_error(batch)))
        self.total_requests += batch.n
        self.total_errors += n_errors
        self.window.add(ctx.now, _ONE, (batch.n, n_errors))

    def apply_ordered(self, batch: Batch, ctx: Ctx) -> None:
        """The error rows, in arrival order: patterns, distributions, recent errors, bursts."""
        if batch.n == 0:
            return
        errors = is_error(batch)
        n_errors = int(np.count_nonzero(errors))
        if n_errors:
            self.dirty = True
            self._errors(batch.take(errors) if n_errors < batch.n else batch, ctx)
            self.bursts.add(ctx.now, ctx.wall, n_errors)

    @staticmethod
    def ordered_rows(batch: Batch) -> Any:
        """The rows :meth:`apply_ordered` reads: the failed ones."""
        return is_error(batch)

    def absorb(self, state: Any, ctx: Ctx) -> None:
        """Add a worker's :meth:`state` of :meth:`apply_additive` (``--workers``)."""
        r = Reader("errors delta")
        m = r.map(state)
        self.total_requests += r.int(m.get("total_requests"), "total_requests", 0)
        self.total_errors += r.int(m.get("total_errors"), "total_errors", 0)
        self.window.absorb(m.get("window"), np.zeros(1, dtype=np.intp), r, "window", ctx.now)
        self.dirty = True

    def _errors(self, failed: Batch, ctx: Ctx) -> None:
        now, wall = ctx.now, ctx.wall
        groups = failed.groups(
            ("error_type", "endpoint", "error_message"), (DEFAULT_ERROR_TYPE, UNKNOWN, "")
        )
        rows = groups.rows(failed.n)
        order = np.argsort(rows, kind="stable")
        bounds = np.cumsum(groups.counts).tolist()
        statuses = status_column(failed)
        models = failed.label("model")
        users = failed.cat("user_id")
        request_ids = failed.get("request_id")
        fingerprints: list[str] = []
        start = 0
        for (etype, endpoint, message), end in zip(groups.keys, bounds, strict=True):
            picked = order[start:end]
            start = end
            normalised = normalise(message)
            fp = fingerprint(etype, endpoint, normalised)
            fingerprints.append(fp)
            model_names = {models.values[c] for c in np.unique(models.codes[picked]).tolist()}
            user_names = {users.values[c] for c in np.unique(users.codes[picked]).tolist()}
            self.patterns.record(
                fp,
                error_type=etype,
                endpoint=endpoint,
                status=int(statuses[picked[0]]),
                normalised=normalised,
                message=message,
                count=len(picked),
                models=model_names - {UNKNOWN},
                users=user_names - {None, ""},
                request_ids=[r for r in _pick(request_ids, picked[-MAX_REQUEST_IDS:]) if r],
                now=now,
                wall=wall,
            )
        self._distributions(failed, ctx)
        self._recent(failed, rows, fingerprints, wall)

    def _distributions(self, failed: Batch, ctx: Ctx) -> None:
        tallies = (
            ("status", status_labels(failed)),
            ("type", failed.cat("error_type", DEFAULT_ERROR_TYPE)),
            ("endpoint", failed.label("endpoint")),
            ("model", failed.label("model")),
        )
        for name, cat in tallies:
            counts = np.bincount(cat.codes, minlength=len(cat.values))
            used = np.flatnonzero(counts)
            table = self.distributions[name]
            ids = table.ids(
                [(cat.values[i],) for i in used.tolist()], counts[used], ctx.now, ctx.version
            )
            table.arrays["count"] = add_rows(table.arrays["count"], ids, counts[used])

    def _recent(self, failed: Batch, rows: Any, fingerprints: list[str], wall: float) -> None:
        n = failed.n
        keep = range(max(0, n - RECENT_ERRORS), n)
        types = failed.cat("error_type", DEFAULT_ERROR_TYPE)
        endpoints = failed.label("endpoint")
        models = failed.label("model")
        messages = failed.get("error_message")
        ts = failed.get("ts")  # the emitter's time, as in /metrics/recent
        request_ids = failed.get("request_id")
        key_ids = failed.get("key_id")
        statuses = status_column(failed)
        for i in keep:
            message = _at(messages, i) or ""
            when = _at(ts, i)
            self.recent.append(
                (
                    wall if when is None else float(when),  # derived batches have no ts
                    endpoints.values[endpoints.codes[i]],
                    models.values[models.codes[i]],
                    int(statuses[i]),
                    types.values[types.codes[i]],
                    message[:MAX_SAMPLE],
                    fingerprints[int(rows[i])],
                    _at(request_ids, i),
                    _at(key_ids, i),
                )
            )

    # --- housekeeping and reads -----------------------------------------------------------

    def expire(self, ctx: Ctx) -> None:
        for table in self.distributions.values():
            if table.expire(ctx.now):
                self.dirty = True

    def series_count(self) -> int:
        return sum(len(t) for t in self.distributions.values())

    def series_overflow(self) -> int:
        return sum(t.overflowed for t in self.distributions.values())

    def state(self, now: float) -> dict[str, Any]:
        return {
            "start": self.start,
            "total_requests": self.total_requests,
            "total_errors": self.total_errors,
            "window": self.window.state(now, np.zeros(1, dtype=np.intp)),
            "distributions": {n: t.state()[0] for n, t in self.distributions.items()},
            "patterns": self.patterns.state(),
            "bursts": self.bursts.state(),
            "recent": [list(e) for e in self.recent],
        }

    def restore(self, state: Any, now: float) -> None:
        r = Reader("errors")
        m = r.map(state)
        self.start = r.float(m.get("start"), "start")
        self.total_requests = r.int(m.get("total_requests"), "total_requests", 0)
        self.total_errors = r.int(m.get("total_errors"), "total_errors", 0)
        self.window.restore(m.get("window"), np.zeros(1, dtype=np.intp), r, "window")
        saved = r.map(m.get("distributions"), "distributions")
        for name, table in self.distributions.items():
            table.restore(saved.get(name), r, now)
        self.patterns.restore(m.get("patterns"), r)
        self.bursts.restore(m.get("bursts"), r)
        self.recent.clear()
        for raw in r.list(m.get("recent"), "recent", RECENT_ERRORS):
            e = r.list(raw, "recent[]", 9)
            if len(e) != 9:
                raise r.fail("a recent error of the wrong size", "recent")
            self.recent.append(
                (
                    r.float(e[0], "timestamp"),
                    r.str(e[1], "endpoint"),
                    r.str(e[2], "model"),
                    r.int(e[3], "status"),
                    r.str(e[4], "error_type"),
                    r.str(e[5], "message"),
                    r.str(e[6], "fingerprint"),
                    r.opt_str(e[7], "request_id"),
                    r.opt_str(e[8], "key_id"),
                )
            )
        self.dirty = True

    def freeze(self, now: float) -> ErrorsView:
        cache = self._pattern_cache
        patterns: list[tuple[int, float, dict[str, Any]]] = []
        live: dict[str, tuple[int, tuple[int, float, dict[str, Any]]]] = {}
        for p in self.patterns:
            hit = cache.get(p.fingerprint)
            if hit is None or hit[0] != p.version:
                hit = (p.version, (p.count, p.last_seen_at, p.to_dict()))
            live[p.fingerprint] = hit
            patterns.append(hit[1])
        self._pattern_cache = live
        return ErrorsView(
            config=self.config,
            total_requests=self.total_requests,
            total_errors=self.total_errors,
            window=self.window.freeze(now),
            distributions={
                name: (t.view(), t.arrays["count"].copy()) for name, t in self.distributions.items()
            },
            patterns=tuple(patterns),
            patterns_evicted=self.patterns.evicted,
            bursts_total=self.bursts.total,
            bursts=tuple(self.bursts.recent()),
            recent=tuple(self.recent),
        )


def _pick(value: Any, rows: Any) -> list[Any]:
    """The values of a column (list/array/Cat) or a constant at ``rows``, as a list."""
    if isinstance(value, np.ndarray):
        picked: list[Any] = value[rows].tolist()
        return picked
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    if hasattr(value, "codes"):
        return [value.values[c] for c in value.codes[rows].tolist()]
    return [value] * len(rows)


def _at(value: Any, i: int) -> Any:
    if isinstance(value, (list, np.ndarray)):
        return value[i]
    if hasattr(value, "codes"):
        return value.values[value.codes[i]]
    return value


@dataclass(frozen=True, slots=True)
class ErrorsView:
    """The error tracker frozen for a snapshot, and the views read from it."""

    config: Config
    total_requests: int
    total_errors: int
    window: CounterWindows
    distributions: dict[str, tuple[TableView, np.ndarray[Any, Any]]]
    patterns: tuple[tuple[int, float, dict[str, Any]], ...]  # (count, last seen at, pattern)
    patterns_evicted: int
    bursts_total: int
    bursts: tuple[dict[str, Any], ...]
    recent: tuple[tuple[Any, ...], ...]

    def windowed(self, now: float, seconds: float = WINDOW_SECONDS) -> tuple[int, int]:
        """(outcomes, errors) over the last ``seconds``."""
        sums, _span = self.window.window(now, seconds, 1)
        return int(sums[0, 0]), int(sums[0, 1])

    def _distribution(self, name: str) -> dict[str, int]:
        """label → count, most frequent first."""
        view, counts = self.distributions[name]
        items = sorted(
            ((k[0], int(counts[i])) for k, i in view.items()), key=lambda kv: (-kv[1], kv[0])
        )
        return dict(items)

    def select(
        self, min_count: int = 1, seen_since: float | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Patterns with ``count ≥ min_count`` (seen at or after ``seen_since`` if given), most
        frequent first (ties: most recently seen first, then by fingerprint, so the order does
        not depend on the order errors of one wake-up were recorded in)."""
        chosen = [
            p
            for p in self.patterns
            if p[0] >= min_count and (seen_since is None or p[1] >= seen_since)
        ]
        chosen.sort(key=lambda p: (-p[0], -p[1], p[2]["fingerprint"]))
        picked = chosen if limit is None else chosen[:limit]
        return [dict(p[2]) for p in picked]

    def errors(self, now: float) -> dict[str, Any]:
        """``GET /metrics/errors``."""
        total, errors = self.total_requests, self.total_errors
        w_requests, w_errors = self.windowed(now)
        return {
            "total_requests": total,
            "total_errors": errors,
            "total_successes": total - errors,
            "error_rate": _ratio(errors, total, 0.0),
            "success_rate": _ratio(total - errors, total, 1.0),
            "windowed": {
                "requests": w_requests,
                "errors": w_errors,
                "error_rate": _ratio(w_errors, w_requests, 0.0),
                "window_seconds": WINDOW_SECONDS,
            },
            "by_status_code": self._distribution("status"),
            "by_error_type": self._distribution("type"),
            "by_endpoint": self._distribution("endpoint"),
            "by_model": self._distribution("model"),
            "top_patterns": self.select(limit=TOP_PATTERNS),
            "bursts": [dict(b) for b in self.bursts],
            "pattern_count": len(self.patterns),
            "patterns_evicted": self.patterns_evicted,
            "recent_errors": [e._asdict() for e in map(RecentError._make, reversed(self.recent))],
        }

    def error_patterns(
        self,
        now: float,
        min_count: int = DEFAULT_MIN_COUNT,
        recent_only: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /metrics/error-patterns``: most frequent first; ``recent_only`` keeps patterns
        seen within the last 5 minutes."""
        since = now - WINDOW_SECONDS if recent_only else None
        return self.select(min_count, since, limit)

    def families(self, now: float) -> list[Family]:
        """``llm_error_patterns`` and friends. ``llm_errors_total`` is the request tracker's."""
        patterns = Family("llm_error_patterns", "gauge", "Distinct error patterns held.")
        patterns.add(len(self.patterns))
        bursts = Family(
            "llm_error_bursts", "counter", "Error bursts: seconds with at least 10 errors."
        )
        bursts.counter(self.bursts_total)
        evicted = Family(
            "metricsd_error_patterns_evicted",
            "counter",
            "Error patterns dropped (least recently seen) because the table was full.",
        )
        evicted.counter(self.patterns_evicted)
        out = [patterns, bursts, evicted]
        if self.config.prometheus.compat:
            errors = Family("error_total_errors", "counter", "Failed outcomes (seed name).")
            errors.counter(self.total_errors)
            requests = Family("error_total_requests", "counter", "Outcomes (seed name).")
            requests.counter(self.total_requests)
            out += [errors, requests]
        return out


def _ratio(part: int, whole: int, empty: float) -> float:
    return part / whole if whole else empty
