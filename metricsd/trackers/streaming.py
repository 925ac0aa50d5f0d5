"""The streaming tracker: TTFT, inter-token latency, token rates, stalls, lifecycle (SPEC §4.2).

Fed by ``stream.start`` / ``stream.token`` / ``stream.end`` / ``stream.backpressure``, and by
``request`` events with ``streaming: true`` and ``ttft_ms`` (the compact path, for emitters that
measured the stream themselves). Active streams live in a :class:`StreamTable` (columns, O(1)
per stream); what they produce is recorded per model in a :class:`StreamSeries`: windowed HDR
histograms for the JSON views and compat summaries, exact Prometheus buckets and lifetime
counters for the exposition.

Intervals (TTFT, ITL, duration) come only from the events' ``ts`` (one emitter's clock); windows
and idleness use the daemon's ``now``. A finished stream is one request outcome (SPEC §4.1): its
end returns a derived ``request`` batch that the engine hands to the request tracker (and any
other tracker of ``request`` events), with the status mapping of
:data:`~metricsd.trackers.streaming_series.STATUS_CODES`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from metricsd.config import Config
from metricsd.export.prometheus import Family
from metricsd.hist import Buckets
from metricsd.persist import capture, restore_into
from metricsd.protocol import Batch
from metricsd.series import SeriesRegistry
from metricsd.trackers.base import UNKNOWN, group_rows, label_values
from metricsd.trackers.streaming_series import (
    DEFAULT_ERROR,
    STATUS_CODES,
    StreamSeries,
    by_code,
    layouts,
    pick,
)
from metricsd.trackers.streaming_state import F64, I64, Labels, StreamTable
from metricsd.window import Geometry

__all__ = ["StreamingTracker"]


class StreamingTracker:
    """See the module docstring."""

    name = "streaming"
    live_category = "streaming"
    model_codes_floor = 4096  # model codes kept before re-coding the active streams' models
    event_types = frozenset(
        {"stream.start", "stream.token", "stream.end", "stream.backpressure", "request"}
    )

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.geometry = geometry
        self.start = start
        self.idle_timeout = config.streaming.idle_timeout
        layout = layouts(config.engine.significant_figures)
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        self.series: SeriesRegistry[StreamSeries] = SeriesRegistry(
            "streaming", lambda _k: StreamSeries(geometry, config, layout), cap, ttl
        )
        ttft_bounds = config.prometheus.ttft_buckets
        self.ttft_buckets: SeriesRegistry[Buckets] = SeriesRegistry(
            "ttft", lambda _k: Buckets(ttft_bounds), cap, ttl
        )
        #: model → [streaming requests, their duration sum ms, other requests, their sum ms]
        self.mix: SeriesRegistry[list[float]] = SeriesRegistry(
            "mix", lambda _k: [0.0, 0.0, 0.0, 0.0], cap, ttl
        )
        self.table = StreamTable(config.limits.max_active_streams, config.streaming.stall_ms)
        self.totals: Counter[str] = Counter()  # lifetime, never dropped with a series
        self.orphaned: Counter[str] = Counter()
        self.evicted = 0
        self._live_now = -1.0
        self._live: dict[frozenset[str], dict[str, Any]] = {}

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, now: float, wall: float) -> list[Batch] | None:
        kind = batch.type
        if kind == "stream.token":
            self._tokens(batch, now)
        elif kind == "stream.start":
            return self._start(batch, now)
        elif kind == "stream.end":
            return self._end(batch, now)
        elif kind == "stream.backpressure":
            self._backpressure(batch, now)
        elif kind == "request":
            self._requests(batch, now)
        return None

    def _model_series(self, code: int, now: float, count: int = 1) -> StreamSeries:
        return self.series.get((self.table.models.values[code],), now, count)

    def _start(self, batch: Batch, now: float) -> list[Batch] | None:
        table = self.table
        ids = batch.values("stream_id")
        fresh: list[int] = []
        in_batch: set[str] = set()
        for i, sid in enumerate(ids):
            if sid in table.ids or sid in in_batch:
                self.orphaned["stream.start"] += 1  # a duplicate start: the first one stands
            else:
                in_batch.add(sid)
                fresh.append(i)
        if not fresh:
            return None
        if len(table.models) >= max(self.model_codes_floor, 2 * len(table)):
            table.compact_models()  # amortised: at least len(table) new codes between two
        models = _labels(batch, "model", UNKNOWN)
        endpoints = _labels(batch, "endpoint", UNKNOWN)
        extra = [batch.values(f) for f in ("provider", "key_id", "user_id", "request_id")]
        ts = batch.column("ts")
        prompt = batch.column("prompt_tokens", np.int64)
        derived: list[Batch] = []
        pos = 0
        while pos < len(fresh):
            free = table.room(len(fresh) - pos)
            if free == 0:
                victims = table.oldest(len(fresh) - pos)
                self.evicted += len(victims)
                derived.append(self._abandon(victims, now))
                free = len(table.free)
            rows = fresh[pos : pos + free]
            slots = np.empty(len(rows), dtype=np.int64)
            codes = np.empty(len(rows), dtype=np.int64)
            for j, i in enumerate(rows):
                labels: Labels = (
                    models[i],
                    endpoints[i],
                    extra[0][i],
                    extra[1][i],
                    extra[2][i],
                    extra[3][i],
                )
                slots[j] = table.open(ids[i], labels)
                codes[j] = table.models.code(models[i])
            index = np.asarray(rows, dtype=np.int64)
            table.init(slots, ts[index], prompt[index], codes, now)
            for code, idx in by_code(codes):
                count = len(codes) if idx is None else len(idx)
                self._model_series(code, now, count).started += count
            self.totals["started"] += len(rows)
            pos += len(rows)
        return derived or None

    def _tokens(self, batch: Batch, now: float) -> None:
        table = self.table
        slots = table.lookup(batch.get("stream_id"), batch.n)
        update = table.tokens_batch(
            slots,
            batch.column("ts"),
            batch.column("n", np.int64),
            batch.column("bytes", np.int64),
            now,
        )
        self.orphaned["stream.token"] += update.orphans
        for code, idx in by_code(update.itl_model):
            itl = pick(update.itl_ms, idx)
            series = self._model_series(code, now, itl.size)
            series.record("itl", now, itl)
            stalls = int(np.count_nonzero(pick(update.stall, idx)))
            series.stalls += stalls
            self.totals["stalls"] += stalls
        # Per-model sums without grouping: one bincount per column over the model codes.
        size = len(table.models)
        codes = update.group_model
        tokens = np.bincount(codes, weights=update.group_tokens, minlength=size)
        nbytes = np.bincount(codes, weights=update.group_bytes, minlength=size)
        streams = np.bincount(codes, minlength=size)
        for code in np.flatnonzero(streams).tolist():
            series = self._model_series(code, now, int(streams[code]))
            series.tokens += int(tokens[code])
            series.nbytes += int(nbytes[code])
        self.totals["tokens"] += int(update.group_tokens.sum())
        self.totals["bytes"] += int(update.group_bytes.sum())
        if update.ttft_slot.size:
            self._ttft(update.ttft_slot, update.ttft_ms, now)

    def _ttft(self, slots: I64, ttft_ms: F64, now: float) -> None:
        """One TTFT sample per stream whose first token just arrived (window and buckets)."""
        table = self.table
        for code, idx in by_code(table.model[slots]):
            values = pick(ttft_ms, idx)
            self._model_series(code, now, values.size).record("ttft", now, values)
        groups: dict[tuple[str, str], list[float]] = {}
        for slot, value in zip(slots.tolist(), ttft_ms.tolist(), strict=True):
            labels = table.labels[slot]
            assert labels is not None
            groups.setdefault((labels[1], labels[0]), []).append(value / 1000.0)
        for key, seconds in groups.items():
            buckets = self.ttft_buckets.get(key, now, len(seconds))
            buckets.record_array(np.asarray(seconds, dtype=np.float64))

    def _backpressure(self, batch: Batch, now: float) -> None:
        table = self.table
        slots = table.lookup(batch.get("stream_id"), batch.n)
        known = slots[slots >= 0]
        self.orphaned["stream.backpressure"] += batch.n - known.size
        if known.size == 0:
            return
        np.add.at(table.backpressure, known, 1)
        table.touch(known, now)
        for code, idx in by_code(table.model[known]):
            count = known.size if idx is None else idx.size
            self._model_series(code, now, count).backpressure += count
        self.totals["backpressure"] += int(known.size)

    def _end(self, batch: Batch, now: float) -> list[Batch] | None:
        table = self.table
        rows: list[int] = []
        slots: list[int] = []
        for i, sid in enumerate(batch.values("stream_id")):
            slot = table.ids.pop(sid, None)
            if slot is None:
                self.orphaned["stream.end"] += 1
            else:
                rows.append(i)
                slots.append(slot)
        if not rows:
            return None
        index = np.asarray(rows, dtype=np.int64)
        status_col = batch.values("status")
        statuses = [status_col[i] or "completed" for i in rows]
        extra = {}
        for name in ("error_type", "error_message", "finish_reason"):
            column = batch.values(name)
            extra[name] = [column[i] for i in rows]
        finish = extra.pop("finish_reason")
        end_ts = batch.column("ts")[index]
        slot_array = np.asarray(slots, dtype=np.int64)
        return [self._finish(slot_array, statuses, end_ts, extra, finish, now)]

    def _abandon(self, slots: I64, now: float) -> Batch:
        """End streams nobody ended: at their last event's time (emitter clock)."""
        table = self.table
        end_ts = np.fmax(table.last[slots], table.start[slots])
        k = len(slots)
        extra: dict[str, list[Any]] = {"error_type": [None] * k, "error_message": [None] * k}
        return self._finish(slots, ["abandoned"] * k, end_ts, extra, [None] * k, now)

    def _finish(
        self,
        slots: I64,
        statuses: list[str],
        end_ts: F64,
        extra: dict[str, list[Any]],
        finish: list[Any],
        now: float,
    ) -> Batch:
        """Record finished streams, free their slots, and return their request outcomes."""
        table = self.table
        stats = table.finished(slots, end_ts)
        abandoned = np.array([s == "abandoned" for s in statuses], dtype=bool)
        codes = table.model[slots]
        for code, idx in by_code(codes):
            rows = np.arange(len(slots)) if idx is None else idx
            series = self._model_series(code, now, rows.size)
            for status in (statuses[i] for i in rows.tolist()):
                series.statuses[status] += 1
            done = rows[~abandoned[rows]]  # an abandoned stream's end is unknown: counts only
            if done.size:
                for name in ("duration", "tps", "e2e_tps", "tpot", "jitter", "smoothness"):
                    series.record(name, now, stats[name][done])
        self.totals.update(statuses)
        labels = [table.labels[s] for s in slots.tolist()]
        assert all(lab is not None for lab in labels)
        cols: list[tuple[Any, ...]] = list(zip(*labels, strict=True)) if labels else [()] * 6
        for model, duration in zip(cols[0], stats["duration"].tolist(), strict=True):
            mix = self.mix.get((model,), now)
            mix[0] += 1
            mix[1] += duration
        error_types = [
            e if e is not None else DEFAULT_ERROR.get(s)
            for e, s in zip(extra["error_type"], statuses, strict=True)
        ]
        n = len(slots)
        derived = Batch.derived(
            "request",
            n,
            ts=end_ts.astype(np.float64),
            status=np.array([STATUS_CODES[s] for s in statuses], dtype=np.int64),
            duration_ms=stats["duration"],
            input_tokens=table.prompt[slots].copy(),
            output_tokens=table.tokens[slots].copy(),
            streaming=True,
            ttft_ms=stats["ttft"],
            model=list(cols[0]),
            endpoint=list(cols[1]),
            provider=list(cols[2]),
            key_id=list(cols[3]),
            user_id=list(cols[4]),
            request_id=list(cols[5]),
            finish_reason=list(finish),
            error_type=error_types,
            error_message=list(extra["error_message"]),
        )
        table.close(slots)
        return derived

    def _requests(self, batch: Batch, now: float) -> None:
        """Request mix for every request; the compact path for streamed ones with ``ttft_ms``."""
        streaming = batch.column("streaming", bool)
        duration = batch.column("duration_ms")
        models = label_values(batch, "model")
        for (model,), rows in group_rows(batch, [models]):
            s, d = pick(streaming, rows), pick(duration, rows)
            mix = self.mix.get((model,), now, s.size)
            mix[0] += int(np.count_nonzero(s))
            mix[1] += float(d[s].sum())
            mix[2] += int(s.size - np.count_nonzero(s))
            mix[3] += float(d[~s].sum())
        ttft = batch.column("ttft_ms")
        compact = streaming & ~np.isnan(ttft)
        if not compact.any():
            return
        status = batch.column("status", np.int64)
        output = batch.column("output_tokens", np.int64)
        endpoints = label_values(batch, "endpoint")
        for (endpoint, model), rows in group_rows(batch, [endpoints, models]):
            idx = np.arange(batch.n) if rows is None else rows
            idx = idx[compact[idx]]
            if idx.size == 0:
                continue
            series = self.series.get((model,), now, idx.size)
            t = np.round(ttft[idx], 3)
            d = np.round(duration[idx], 3)
            out = output[idx]
            series.record("ttft", now, t)
            self.ttft_buckets.get((endpoint, model), now, idx.size).record_array(t / 1000.0)
            series.record("duration", now, d)
            ok = (out >= 1) & (d > 0)
            series.record("e2e_tps", now, np.where(ok, out / np.where(ok, d, 1.0) * 1000.0, np.nan))
            completed = int(np.count_nonzero(status[idx] < 400))
            series.statuses["completed"] += completed
            series.statuses["failed"] += idx.size - completed
            series.started += idx.size
            series.tokens += int(out.sum())
            self.totals.update(
                {
                    "started": idx.size,
                    "completed": completed,
                    "failed": idx.size - completed,
                    "tokens": int(out.sum()),
                }
            )

    def expire(self, now: float) -> list[Batch] | None:
        """End idle streams as ``abandoned``; drop idle series."""
        idle = self.table.idle(now - self.idle_timeout)
        derived = [self._abandon(idle, now)] if idle.size else None
        self.flush()
        for registry in (self.series, self.ttft_buckets, self.mix):
            registry.expire(now)
        return derived

    # --- reads ----------------------------------------------------------------------------

    def active_by_model(self) -> Counter[str]:
        """Active streams per model label (folded like the series when over the cap)."""
        table = self.table
        codes = table.model[table.active]
        out: Counter[str] = Counter()
        if codes.size:
            counts = np.bincount(codes, minlength=len(table.models))
            full = len(self.series) >= self.series.max_series
            for code in np.flatnonzero(counts).tolist():
                count = int(counts[code])
                model = table.models.values[code]
                if full and (model,) not in self.series:
                    model = "__overflow__"
                out[model] += count
        return out

    def flush(self) -> None:
        """Bring every window up to date (readers call this first; so does each tick)."""
        for _key, series in self.series.items():
            if series.pending_n:
                series.flush()

    def live(self, now: float, models: frozenset[str]) -> dict[str, Any]:
        """The live stream's ``streaming`` category (computed once per tick and model set)."""
        from metricsd.trackers.streaming_export import live_view

        if self._live_now != now:
            self._live_now = now
            self._live.clear()
        found = self._live.get(models)
        if found is None:
            found = self._live[models] = live_view(self, now, models)
        return found

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        return self.series.overflowed + self.ttft_buckets.overflowed + self.mix.overflowed

    #: Data attributes saved by ``state()`` (SPEC §7); active streams continue after a restart.
    PERSIST = ("start", "series", "ttft_buckets", "mix", "table", "totals", "orphaned", "evicted")

    def state(self) -> dict[str, Any]:
        return capture(self, self.PERSIST)

    def restore(self, state: dict[str, Any]) -> None:
        restore_into(self, state)
        self._live = {}

    def families(self, now: float) -> list[Family]:
        from metricsd.trackers.streaming_export import streaming_families

        return streaming_families(self, now)


def _labels(batch: Batch, name: str, default: str) -> list[str]:
    value = label_values(batch, name, default)
    return value if isinstance(value, list) else [value] * batch.n
