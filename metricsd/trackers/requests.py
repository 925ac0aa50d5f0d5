"""The request tracker: throughput, latency, tokens, finish reasons, cache and queue (SPEC §4.1).

One series per (provider, endpoint, model), kept series-major (:mod:`metricsd.series`): lifetime
counters for Prometheus (never decreasing), exact Prometheus bucket counters, and windowed
counters and HDR histograms for rates and percentiles (:mod:`metricsd.window`). A batch is
recorded with a fixed number of numpy calls whatever its mix of label sets: its rows are grouped
once (shared with the other trackers), each group is looked up once, and every quantity is
summed per group and added to its series in one call.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from metricsd.batch import Batch, Groups, regroup
from metricsd.config import Config
from metricsd.hist import Layout, bucket_counts
from metricsd.outcomes import DEFAULT_ERROR_TYPE, is_error, status_column, status_labels
from metricsd.persist import Reader
from metricsd.series import SeriesTable
from metricsd.trackers.base import Ctx, add_rows, group_sums
from metricsd.trackers.recent import RecentRing, newest
from metricsd.window import CounterLog, Geometry, HistLog, hist_entries

__all__ = ["FIELDS", "LATENCY_LAYOUT", "TOKEN_TYPES", "RequestTracker"]

#: Windowed counter fields of a request series, in CounterLog order.
FIELDS: Final = ("requests", "errors", "input", "output", "cached", "reasoning", "cache_write")
#: Lifetime token counters, in ``tokens`` column order.
TOKEN_TYPES: Final = ("input", "output", "cached", "cache_write", "reasoning")
_TOKEN_FIELDS: Final = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cached": "cached_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
#: Window field index of each token type.
_WINDOW_OF: Final = {"input": 2, "output": 3, "cached": 4, "reasoning": 5, "cache_write": 6}
LATENCY_LAYOUT: Final = Layout(highest=3_600_000_000, significant_figures=2, scale=1000.0)
CACHE_FIELDS: Final = ("hits", "misses", "total", "matched", "matched_on_hits")


class RequestTracker:
    """See the module docstring."""

    name = "requests"
    event_types = frozenset({"request", "error", "cache", "queue"})

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.geometry = geometry
        self.start = start
        limits = config.limits
        cap, ttl = limits.max_series, limits.series_ttl
        prom = config.prometheus
        buckets = len(prom.duration_buckets) + 1
        self.series = s = SeriesTable("requests", 3, cap, ttl, hold=geometry.long_seconds)
        s.add_array("first_seen", (), np.float64, -1.0, merge="first")
        s.add_array("errors")
        s.add_array("tokens", (len(TOKEN_TYPES),))
        s.add_array("dur_b", (buckets,))
        s.add_array("dur_s", (), object)  # exact sum in ms (metricsd.hist.exact_sums)
        s.add_array("queue_b", (buckets,))
        s.add_array("queue_s", (), object)
        self.window = CounterLog(geometry, len(FIELDS))
        self.latency = HistLog(geometry, LATENCY_LAYOUT)
        self.queue_wait = HistLog(geometry, LATENCY_LAYOUT)
        #: (provider, endpoint, model, status) of a series (its labels as folded at the cap):
        #: a series has a few statuses, each label bounded (outcomes.status_label).
        self.statuses = SeriesTable("requests_status", 4, 8 * cap, ttl)
        self.statuses.add_array("count")
        self.errors = SeriesTable("errors", 4, cap, ttl)
        self.errors.add_array("count")
        self.finish = SeriesTable("finish", 2, cap, ttl)
        self.finish.add_array("count")
        self.token_hist = SeriesTable("tokens", 2, cap, ttl)
        self.token_hist.add_array("b", (len(prom.token_buckets) + 1,))
        self.token_hist.add_array("s")
        self.cache = SeriesTable("cache", 2, cap, ttl)
        self.cache.add_array("stats", (len(CACHE_FIELDS),))
        self.queues = SeriesTable("queues", 1, cap, ttl)
        self.queues.add_array("depth", (), np.float64, 0.0, merge="last")
        self.queues.add_array("capacity", (), np.float64, 0.0, merge="last")
        self.recent = RecentRing(config.engine.recent_size)
        self._duration_bounds = np.asarray(prom.duration_buckets, dtype=np.float64)
        self._token_bounds = np.asarray(prom.token_buckets, dtype=np.float64)
        self.dirty = True

    def tables(self) -> tuple[SeriesTable, ...]:
        return (
            self.series,
            self.statuses,
            self.errors,
            self.finish,
            self.token_hist,
            self.cache,
            self.queues,
        )

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, ctx: Ctx) -> None:
        """Record a batch (nothing derived)."""
        self.apply_additive(batch, ctx)
        self.apply_ordered(batch, ctx)

    def apply_additive(self, batch: Batch, ctx: Ctx) -> None:
        """The part of :meth:`apply` whose result does not depend on the order of batches:
        what a worker process records (``--workers``) for :meth:`absorb` to add up."""
        if batch.n == 0:
            return
        self.dirty = True
        if batch.type in ("request", "error"):
            self._outcomes(batch, ctx)
        elif batch.type == "cache":
            self._cache(batch, ctx)
        elif batch.type == "queue":
            self._queue(batch, ctx)

    def apply_ordered(self, batch: Batch, ctx: Ctx) -> None:
        """The rest: the ring of recent outcomes, kept in arrival order by the serving
        process whichever process adds up the rest."""
        if batch.n and batch.type in ("request", "error"):
            self.dirty = True
            self._recent(batch, is_error(batch))

    def ordered_rows(self, batch: Batch) -> Any:
        """The rows :meth:`apply_ordered` reads: the newest the ring keeps."""
        keep = np.zeros(batch.n, dtype=bool)
        if batch.type in ("request", "error") and self.recent.size:
            keep[-self.recent.size :] = True
        return keep

    def _outcomes(self, batch: Batch, ctx: Ctx) -> None:
        now, version = ctx.now, ctx.version
        table = self.series
        groups = batch.groups(("provider", "endpoint", "model"))
        sids = table.ids(groups.keys, groups.counts, now, version)
        arrays = table.arrays
        first = arrays["first_seen"]
        first[sids[first[sids] < 0]] = now
        size = len(groups)
        errors = is_error(batch)
        n_errors = groups.sums(errors).astype(np.int64)
        is_request = batch.type == "request"
        window = np.zeros((size, len(FIELDS)), dtype=np.float64)
        window[:, 0] = groups.counts
        window[:, 1] = n_errors
        arrays["errors"] = add_rows(arrays["errors"], sids, n_errors)
        if is_request:
            tokens = np.zeros((size, len(TOKEN_TYPES)), dtype=np.int64)
            for i, token_type in enumerate(TOKEN_TYPES):
                field = _TOKEN_FIELDS[token_type]
                if batch.const.get(field) == 0:
                    continue  # zero for the whole batch (the usual cached/reasoning)
                sums = group_sums(batch.column(field, np.int64), groups)
                if sums.dtype == object:
                    tokens = tokens.astype(object)
                tokens[:, i] = sums
                window[:, _WINDOW_OF[token_type]] = sums.astype(np.float64)
            arrays["tokens"] = add_rows(arrays["tokens"], sids, tokens)
            self._durations(batch, groups.codes, sids, size, now)
            self._token_hist(batch, ctx)
            self._finish(batch, ctx)
        self.window.add(now, sids, window)
        # Statuses per series as folded: an overflowed label set keeps its real status.
        folded = Groups([table.keys[sid] for sid in sids.tolist()], groups.codes, groups.counts)
        labels = regroup(folded, status_labels(batch), batch.n)
        status_ids = self.statuses.ids(labels.keys, labels.counts, now, version)
        counts = self.statuses.arrays
        counts["count"] = add_rows(counts["count"], status_ids, labels.counts)
        if n_errors.any():
            self._errors(batch.take(errors), ctx)

    def _durations(
        self, batch: Batch, codes: Any, sids: np.ndarray[Any, Any], size: int, now: float
    ) -> None:
        arrays = self.series.arrays
        duration = batch.column("duration_ms")
        entries = hist_entries(LATENCY_LAYOUT, duration, codes, sids)
        self.latency.record(now, entries)
        arrays["dur_b"] = add_rows(
            arrays["dur_b"],
            sids,
            bucket_counts(self._duration_bounds, duration / 1000.0, codes, size),
        )
        if entries is not None:  # the exact sums beside the histogram are the _sum too
            np.add.at(arrays["dur_s"], entries.ids, entries.total)
        queue = batch.get("queue_ms")
        if queue is None:
            return
        waits = batch.column("queue_ms")
        present = ~np.isnan(waits)
        if not present.any():
            return
        qcodes = None if codes is None else codes[present]
        waits = waits[present]
        entries = hist_entries(LATENCY_LAYOUT, waits, qcodes, sids)
        self.queue_wait.record(now, entries)
        arrays["queue_b"] = add_rows(
            arrays["queue_b"],
            sids,
            bucket_counts(self._duration_bounds, waits / 1000.0, qcodes, size),
        )
        if entries is not None:
            np.add.at(arrays["queue_s"], entries.ids, entries.total)

    def _token_hist(self, batch: Batch, ctx: Ctx) -> None:
        models = batch.groups(("model",))
        table = self.token_hist
        size = len(models)
        for token_type in ("input", "output"):
            keys = [(m, token_type) for (m,) in models.keys]
            ids = table.ids(keys, models.counts, ctx.now, ctx.version)
            values = batch.column(_TOKEN_FIELDS[token_type], np.int64)
            arrays = table.arrays
            arrays["b"] = add_rows(
                arrays["b"],
                ids,
                bucket_counts(self._token_bounds, values.astype(np.float64), models.codes, size),
            )
            arrays["s"] = add_rows(arrays["s"], ids, group_sums(values, models))

    def _finish(self, batch: Batch, ctx: Ctx) -> None:
        if not batch.has("finish_reason"):
            return
        reasons = batch.groups(("model", "finish_reason"), ("unknown", None))
        keep = [i for i, key in enumerate(reasons.keys) if key[1] is not None]
        if not keep:
            return
        index = np.asarray(keep, dtype=np.intp)
        ids = self.finish.ids(
            [reasons.keys[i] for i in keep], reasons.counts[index], ctx.now, ctx.version
        )
        arrays = self.finish.arrays
        arrays["count"] = add_rows(arrays["count"], ids, reasons.counts[index])

    def _errors(self, failed: Batch, ctx: Ctx) -> None:
        """``llm_errors_total{endpoint, model, error_type, status}`` from the failed rows."""
        groups = failed.groups(
            ("endpoint", "model", "error_type"), ("unknown", "unknown", DEFAULT_ERROR_TYPE)
        )
        labels = regroup(groups, status_labels(failed), failed.n)
        ids = self.errors.ids(labels.keys, labels.counts, ctx.now, ctx.version)
        arrays = self.errors.arrays
        arrays["count"] = add_rows(arrays["count"], ids, labels.counts)

    def _recent(self, batch: Batch, errors: np.ndarray[Any, Any]) -> None:
        status = status_column(batch)
        if batch.type == "request":
            tokens = batch.column("input_tokens", np.int64) + batch.column(
                "output_tokens", np.int64
            )
            duration = batch.column("duration_ms")
        else:
            tokens = np.zeros(batch.n, dtype=np.int64)
            duration = None
        self.recent.add(
            batch.column("ts"),
            _label_column(batch, "model"),
            _label_column(batch, "endpoint"),
            duration,
            tokens,
            status,
            errors,
            batch.get("error_message"),
            batch.get("error_type"),
        )

    def _cache(self, batch: Batch, ctx: Ctx) -> None:
        groups = batch.groups(("endpoint", "model"))
        ids = self.cache.ids(groups.keys, groups.counts, ctx.now, ctx.version)
        hit = batch.column("hit", bool)
        total = batch.column("total_tokens", np.int64)
        matched = batch.column("matched_tokens", np.int64)
        hits = groups.sums(hit).astype(np.int64)
        stats = np.column_stack(
            [
                hits,
                groups.counts - hits,
                group_sums(total, groups),
                group_sums(matched, groups),
                group_sums(np.where(hit, matched, 0), groups),
            ]
        )
        arrays = self.cache.arrays
        arrays["stats"] = add_rows(arrays["stats"], ids, stats)

    def _queue(self, batch: Batch, ctx: Ctx) -> None:
        """Gauges: the latest depth of each queue (rare events: row by row)."""
        names = batch.values("queue")
        depths = batch.values("depth")
        capacities = batch.values("capacity")
        table = self.queues
        for name, depth, capacity in zip(names, depths, capacities, strict=True):
            sid = table.id((name or "default",), ctx.now, ctx.version)
            table.arrays["depth"][sid] = float(depth)
            table.arrays["capacity"][sid] = float(capacity or 0)

    # --- housekeeping ---------------------------------------------------------------------

    def expire(self, ctx: Ctx) -> None:
        for table in self.tables():
            if table.expire(ctx.now):
                self.dirty = True

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        """Events folded into an overflow series: once per event (the status, token and cache
        tables fold the same events as the series itself, so they are not added again)."""
        return self.series.overflowed + self.finish.overflowed + self.errors.overflowed

    # --- reads ----------------------------------------------------------------------------

    def freeze(self, now: float) -> Any:
        from metricsd.trackers.requests_view import RequestsView

        return RequestsView.of(self, now)

    # --- persistence (SPEC §7, §8): plain values, every one checked on the way back ----------

    def state(self, now: float) -> dict[str, Any]:
        series, rows = self.series.state()
        out: dict[str, Any] = {
            "start": self.start,
            "series": series,
            "window": self.window.state(now, rows),
            "latency": self.latency.state(now, rows),
            "queue_wait": self.queue_wait.state(now, rows),
            "recent": newest(self.recent.freeze(), self.recent.size, self.recent.size)[::-1],
        }
        for name in _TABLES:
            out[name] = getattr(self, name).state()[0]
        return out

    def restore(self, state: Any, now: float) -> None:
        r = Reader("requests")
        m = r.map(state)
        self.start = r.float(m.get("start"), "start")
        remap = self.series.restore(m.get("series"), r, now)
        self.window.restore(m.get("window"), remap, r, "window")
        self.latency.restore(m.get("latency"), remap, r, "latency")
        self.queue_wait.restore(m.get("queue_wait"), remap, r, "queue_wait")
        for name in _TABLES:
            getattr(self, name).restore(m.get(name), r, now)
        self.recent.restore_rows(r.list(m.get("recent"), "recent", self.recent.size), r)
        self.dirty = True

    def absorb(self, state: Any, ctx: Ctx) -> None:
        """Add a worker's :meth:`state` of :meth:`apply_additive` (``--workers``) to this
        tracker: series by their labels, counters and histograms slot by slot. Its recent
        ring (empty: that part is applied here) and start time are not used."""
        r = Reader("requests delta")
        m = r.map(state)
        now, version = ctx.now, ctx.version
        window = m.get("window")
        # Events behind a series: its requests field (every outcome).
        events = self.window.saved_counts(window, r, "window")
        remap = self.series.absorb(m.get("series"), r, now, version, events)
        self.window.absorb(window, remap, r, "window", now)
        self.latency.absorb(m.get("latency"), remap, r, "latency", now)
        self.queue_wait.absorb(m.get("queue_wait"), remap, r, "queue_wait", now)
        for name in _TABLES:
            getattr(self, name).absorb(m.get(name), r, now, version)
        self.dirty = True


_TABLES: Final = ("statuses", "errors", "finish", "token_hist", "cache", "queues")


def _label_column(batch: Batch, name: str) -> Any:
    """A label as the recent ring keeps it: one string, or the batch's codes."""
    cat = batch.label(name)
    return cat.values[0] if len(cat.values) == 1 else cat
