"""The streaming tracker: TTFT, inter-token latency, token rates, stalls, lifecycle (SPEC §4.2).

Fed by ``stream.start`` / ``stream.token`` / ``stream.end`` / ``stream.backpressure``, and by
``request`` events with ``streaming: true`` and ``ttft_ms`` (the compact path, for emitters that
measured the stream themselves). Active streams live in a :class:`StreamTable` (columns, O(1)
per stream); what they produce is recorded per model, series-major: windowed HDR histograms for
the JSON views and compat summaries, exact Prometheus buckets and lifetime counters for the
exposition. Every record is one call per histogram per batch, for all models at once.

Intervals (TTFT, ITL, duration) come only from the events' ``ts`` (one emitter's clock); windows
and idleness use the daemon's ``now``. A finished stream is one request outcome (SPEC §4.1): its
end returns a derived ``request`` batch that the engine hands to the request tracker (and any
other tracker of ``request`` events), with the status mapping of :data:`STATUS_CODES`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.batch import UNKNOWN, Batch
from metricsd.config import Config
from metricsd.hist import Layout, bucket_counts, exact_sums
from metricsd.series import SeriesTable
from metricsd.trackers.base import Ctx, add_rows
from metricsd.trackers.streaming_state import F64, I64, Labels, StreamTable
from metricsd.window import Geometry, HistLog, hist_entries

__all__ = [
    "DEFAULT_ERROR",
    "ORPHAN_TYPES",
    "RINGS",
    "STATUSES",
    "STATUS_CODES",
    "StreamingTracker",
    "layouts",
]

STATUSES: Final = ("completed", "failed", "cancelled", "abandoned")
#: HTTP status of the request outcome a finished stream becomes (499: client closed request).
STATUS_CODES: Final = {"completed": 200, "cancelled": 499, "failed": 500, "abandoned": 500}
#: ``error_type`` of that outcome when the end event gives none.
DEFAULT_ERROR: Final = {
    "failed": "stream_failed",
    "cancelled": "stream_cancelled",
    "abandoned": "stream_abandoned",
}
RINGS: Final = ("ttft", "itl", "tpot", "tps", "e2e_tps", "duration", "jitter", "smoothness")
ORPHAN_TYPES: Final = ("stream.start", "stream.token", "stream.end", "stream.backpressure")
_COUNTERS: Final = ("started", "stalls", "backpressure", "tokens", "nbytes")


def layouts(significant_figures: int) -> dict[str, Layout]:
    """Histogram layouts: ms latencies kept in µs up to 1 h; rates in milli-tokens/s."""
    latency = Layout(highest=3_600_000_000, significant_figures=significant_figures, scale=1000.0)
    rate = Layout(highest=10_000_000_000, significant_figures=significant_figures, scale=1000.0)
    score = Layout(highest=100_000, significant_figures=significant_figures, scale=1000.0)
    out = dict.fromkeys(("ttft", "itl", "tpot", "duration", "jitter"), latency)
    out.update({"tps": rate, "e2e_tps": rate, "smoothness": score})
    return out


class StreamingTracker:
    """See the module docstring."""

    name = "streaming"
    model_codes_floor = 4096  # model codes kept before re-coding the active streams' models
    event_types = frozenset(
        {"stream.start", "stream.token", "stream.end", "stream.backpressure", "request"}
    )

    def __init__(self, config: Config, geometry: Geometry, start: float) -> None:
        self.config = config
        self.geometry = geometry
        self.start = start
        self.idle_timeout = config.streaming.idle_timeout
        self.layouts = layouts(config.engine.significant_figures)
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        prom = config.prometheus
        self.series = s = SeriesTable("streaming", 1, cap, ttl, hold=geometry.long_seconds)
        for name in _COUNTERS:
            s.add_array(name)
        s.add_array("statuses", (len(STATUSES),))
        s.add_array("itl_b", (len(prom.itl_buckets) + 1,))
        s.add_array("itl_s", (), object)  # exact sums in ms (metricsd.hist.exact_sums)
        s.add_array("tpot_b", (len(prom.itl_buckets) + 1,))
        s.add_array("tpot_s", (), object)
        s.add_array("tps_b", (len(prom.tps_buckets) + 1,))
        s.add_array("tps_s", (), object)  # in tokens/s
        self.rings = {name: HistLog(geometry, self.layouts[name]) for name in RINGS}
        self.ttft_buckets = SeriesTable("ttft", 2, cap, ttl)
        self.ttft_buckets.add_array("b", (len(prom.ttft_buckets) + 1,))
        self.ttft_buckets.add_array("s", (), object)
        #: model → [streaming requests, their duration sum, other requests, their sum] (sums
        #: exact, in ms: metricsd.hist.exact_sums)
        self.mix = SeriesTable("mix", 1, cap, ttl)
        self.mix.add_array("mix", (4,), object)
        self.table = StreamTable(config.limits.max_active_streams, config.streaming.stall_ms)
        self.totals: Counter[str] = Counter()  # lifetime, never dropped with a series
        self.orphaned: Counter[str] = Counter()
        self.evicted = 0
        self._bounds = {
            "itl": np.asarray(prom.itl_buckets, dtype=np.float64),
            "ttft": np.asarray(prom.ttft_buckets, dtype=np.float64),
            "tps": np.asarray(prom.tps_buckets, dtype=np.float64),
        }
        self.dirty = True

    def tables(self) -> tuple[SeriesTable, ...]:
        return (self.series, self.ttft_buckets, self.mix)

    # --- writes ---------------------------------------------------------------------------

    def apply_additive(self, batch: Batch, ctx: Ctx) -> None:
        """What ``request`` events add (``--workers``: a worker adds it up); the stream
        events are applied by the serving process alone (a stream's events stay together)."""
        if batch.n and batch.type == "request":
            self.dirty = True
            self._requests(batch, ctx)

    def apply_ordered(self, batch: Batch, ctx: Ctx) -> None:
        """Nothing of a ``request`` batch depends on its order here."""

    def absorb(self, state: Any, ctx: Ctx) -> None:
        """Add a worker's :meth:`state` of :meth:`apply_additive` (``--workers``): series,
        windows, buckets and totals. Its stream table (empty) is not used."""
        from metricsd.persist import Reader

        r = Reader("streaming delta")
        m = r.map(state)
        now, version = ctx.now, ctx.version
        remap = self.series.absorb(m.get("series"), r, now, version, "started")
        rings = r.map(m.get("rings"), "rings")
        for name, ring in self.rings.items():
            ring.absorb(rings.get(name), remap, r, f"rings.{name}", now)
        self.ttft_buckets.absorb(m.get("ttft"), r, now, version, "b")
        self.mix.absorb(m.get("mix"), r, now, version)
        self.totals.update(r.counts(m.get("totals"), "totals", 64))
        self.dirty = True

    def apply(self, batch: Batch, ctx: Ctx) -> list[Batch] | None:
        if batch.n == 0:
            return None
        self.dirty = True
        kind = batch.type
        if kind == "stream.token":
            self._tokens(batch, ctx)
        elif kind == "stream.start":
            return self._start(batch, ctx)
        elif kind == "stream.end":
            return self._end(batch, ctx)
        elif kind == "stream.backpressure":
            self._backpressure(batch, ctx)
        elif kind == "request":
            self._requests(batch, ctx)
        return None

    def _model_ids(
        self, codes: I64, ctx: Ctx
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.int64]]:
        """Series of the models of ``codes`` (table model codes): (local group per row, series
        id per group, rows per group) — one lookup per distinct model."""
        uniq, local, counts = np.unique(codes, return_inverse=True, return_counts=True)
        values = self.table.models.values
        keys = [(values[c],) for c in uniq.tolist()]
        ids = self.series.ids(keys, counts, ctx.now, ctx.version)
        return local.reshape(-1).astype(np.intp), ids, counts.astype(np.int64)

    def _count(self, name: str, ids: npt.NDArray[np.intp], values: npt.NDArray[Any]) -> None:
        arrays = self.series.arrays
        arrays[name] = add_rows(arrays[name], ids, np.asarray(values, dtype=np.int64))

    def _record(
        self,
        ring: str,
        now: float,
        values: F64,
        local: npt.NDArray[np.intp],
        ids: npt.NDArray[np.intp],
    ) -> None:
        """Record values (NaN: not defined) in a window ring, and in its exact buckets."""
        self.rings[ring].record(now, hist_entries(self.layouts[ring], values, local, ids))
        bounds_name, scale = {
            "itl": ("itl", 1000.0),
            "tpot": ("itl", 1000.0),
            "tps": ("tps", 1.0),
        }.get(ring, (None, 0.0))
        if bounds_name is None:
            return
        finite = ~np.isnan(values)
        v, g = values[finite], local[finite]
        if v.size == 0:
            return
        arrays = self.series.arrays
        size = len(ids)
        arrays[f"{ring}_b"] = add_rows(
            arrays[f"{ring}_b"], ids, bucket_counts(self._bounds[bounds_name], v / scale, g, size)
        )
        np.add.at(arrays[f"{ring}_s"], ids, exact_sums(v, g, size))

    def _start(self, batch: Batch, ctx: Ctx) -> list[Batch] | None:
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
        models = batch.label("model").tolist()
        endpoints = batch.label("endpoint").tolist()
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
                derived.append(self._abandon(victims, ctx))
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
            table.init(slots, ts[index], prompt[index], codes, ctx.now)
            _local, sids, counts = self._model_ids(codes, ctx)
            self._count("started", sids, counts)
            self.totals["started"] += len(rows)
            pos += len(rows)
        return derived or None

    def _tokens(self, batch: Batch, ctx: Ctx) -> None:
        table = self.table
        now = ctx.now
        slots = table.lookup(batch.get("stream_id"), batch.n)
        update = table.tokens_batch(
            slots,
            batch.column("ts"),
            batch.column("n", np.int64),
            batch.column("bytes", np.int64),
            now,
        )
        self.orphaned["stream.token"] += update.orphans
        if update.itl_ms.size:
            local, sids, _counts = self._model_ids(update.itl_model, ctx)
            self._record("itl", now, update.itl_ms, local, sids)
            stalls = np.bincount(local, weights=update.stall, minlength=len(sids))
            self._count("stalls", sids, stalls)
            self.totals["stalls"] += int(np.count_nonzero(update.stall))
        if update.group_model.size:
            local, sids, _counts = self._model_ids(update.group_model, ctx)
            size = len(sids)
            self._count(
                "tokens", sids, np.bincount(local, weights=update.group_tokens, minlength=size)
            )
            self._count(
                "nbytes", sids, np.bincount(local, weights=update.group_bytes, minlength=size)
            )
            self.totals["tokens"] += int(update.group_tokens.sum())
            self.totals["bytes"] += int(update.group_bytes.sum())
        if update.ttft_slot.size:
            self._ttft(update.ttft_slot, update.ttft_ms, ctx)

    def _ttft(self, slots: I64, ttft_ms: F64, ctx: Ctx) -> None:
        """One TTFT sample per stream whose first token just arrived (window and buckets)."""
        table = self.table
        local, sids, _counts = self._model_ids(table.model[slots], ctx)
        self._record("ttft", ctx.now, ttft_ms, local, sids)
        labels = [table.labels[s] for s in slots.tolist()]
        pairs = [(lab[1], lab[0]) if lab is not None else (UNKNOWN, UNKNOWN) for lab in labels]
        self._ttft_buckets(pairs, ttft_ms, ctx)

    def _ttft_buckets(self, pairs: list[tuple[str, str]], ttft_ms: F64, ctx: Ctx) -> None:
        distinct = list(dict.fromkeys(pairs))
        index = {k: i for i, k in enumerate(distinct)}
        codes = np.fromiter(map(index.__getitem__, pairs), dtype=np.intp, count=len(pairs))
        counts = np.bincount(codes, minlength=len(distinct))
        table = self.ttft_buckets
        ids = table.ids(distinct, counts, ctx.now, ctx.version)
        arrays = table.arrays
        arrays["b"] = add_rows(
            arrays["b"],
            ids,
            bucket_counts(self._bounds["ttft"], ttft_ms / 1000.0, codes, len(distinct)),
        )
        np.add.at(arrays["s"], ids, exact_sums(ttft_ms, codes, len(distinct)))

    def _backpressure(self, batch: Batch, ctx: Ctx) -> None:
        table = self.table
        slots = table.lookup(batch.get("stream_id"), batch.n)
        known = slots[slots >= 0]
        self.orphaned["stream.backpressure"] += batch.n - known.size
        if known.size == 0:
            return
        np.add.at(table.backpressure, known, 1)
        table.touch(known, ctx.now)
        _local, sids, counts = self._model_ids(table.model[known], ctx)
        self._count("backpressure", sids, counts)
        self.totals["backpressure"] += int(known.size)

    def _end(self, batch: Batch, ctx: Ctx) -> list[Batch] | None:
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
        return [self._finish(slot_array, statuses, end_ts, extra, finish, ctx)]

    def _abandon(self, slots: I64, ctx: Ctx) -> Batch:
        """End streams nobody ended: at their last event's time (emitter clock)."""
        table = self.table
        end_ts = np.fmax(table.last[slots], table.start[slots])
        k = len(slots)
        extra: dict[str, list[Any]] = {"error_type": [None] * k, "error_message": [None] * k}
        return self._finish(slots, ["abandoned"] * k, end_ts, extra, [None] * k, ctx)

    def _finish(
        self,
        slots: I64,
        statuses: list[str],
        end_ts: F64,
        extra: dict[str, list[Any]],
        finish: list[Any],
        ctx: Ctx,
    ) -> Batch:
        """Record finished streams, free their slots, and return their request outcomes."""
        table = self.table
        now = ctx.now
        stats = table.finished(slots, end_ts)
        abandoned = np.array([s == "abandoned" for s in statuses], dtype=bool)
        local, sids, _counts = self._model_ids(table.model[slots], ctx)
        status_codes = np.array([STATUSES.index(s) for s in statuses], dtype=np.intp)
        by_status = np.zeros((len(sids), len(STATUSES)), dtype=np.int64)
        np.add.at(by_status, (local, status_codes), 1)
        self._count("statuses", sids, by_status)
        done = ~abandoned  # an abandoned stream's end is unknown: counts only
        if done.any():
            for name in ("duration", "tps", "e2e_tps", "tpot", "jitter", "smoothness"):
                self._record(name, now, stats[name][done], local[done], sids)
        self.totals.update(statuses)
        labels = [table.labels[s] for s in slots.tolist()]
        assert all(lab is not None for lab in labels)
        cols: list[tuple[Any, ...]] = list(zip(*labels, strict=True)) if labels else [()] * 6
        models = list(cols[0])
        distinct = list(dict.fromkeys(models))
        index = {m: i for i, m in enumerate(distinct)}
        codes = np.fromiter(map(index.__getitem__, models), dtype=np.intp, count=len(models))
        self._mix(distinct, codes, np.ones(len(slots), dtype=bool), stats["duration"], ctx)
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

    def _mix(
        self,
        models: list[str],
        codes: npt.NDArray[np.intp] | None,
        streamed: npt.NDArray[np.bool_],
        duration: F64,
        ctx: Ctx,
    ) -> None:
        """The request mix per model: [streamed count, their duration sum, others, sum].
        ``codes`` (None: all rows) index ``models``."""
        size = len(models)
        rows = np.zeros(len(duration), dtype=np.intp) if codes is None else codes
        # One pass for both halves: group g·2 + streamed.
        halves = rows * 2 + streamed
        counts = np.bincount(halves, minlength=2 * size)
        sums = exact_sums(duration, halves, 2 * size)
        mix = np.zeros((size, 4), dtype=object)
        mix[:, 0] = counts[1::2].tolist()
        mix[:, 1] = sums[1::2]
        mix[:, 2] = counts[0::2].tolist()
        mix[:, 3] = sums[0::2]
        ids = self.mix.ids(
            [(m,) for m in models], counts[0::2] + counts[1::2], ctx.now, ctx.version
        )
        self.mix.arrays["mix"] = add_rows(self.mix.arrays["mix"], ids, mix)

    def _requests(self, batch: Batch, ctx: Ctx) -> None:
        """Request mix for every request; the compact path for streamed ones with ``ttft_ms``."""
        now = ctx.now
        streaming = batch.column("streaming", bool)
        duration = batch.column("duration_ms")
        models = batch.groups(("model",))
        self._mix([k[0] for k in models.keys], models.codes, streaming, duration, ctx)
        if not streaming.any() or batch.get("ttft_ms") is None:
            return
        ttft = batch.column("ttft_ms")
        compact = streaming & ~np.isnan(ttft)
        if not compact.any():
            return
        rows = batch.take(compact) if not compact.all() else batch
        status = rows.column("status", np.int64)
        output = rows.column("output_tokens", np.int64)
        t = np.round(rows.column("ttft_ms"), 3)
        d = np.round(rows.column("duration_ms"), 3)
        groups = rows.groups(("model",))
        sids = self.series.ids(groups.keys, groups.counts, now, ctx.version)
        local = groups.rows(rows.n)
        self._record("ttft", now, t, local, sids)
        self._record("duration", now, d, local, sids)
        ok = (output >= 1) & (d > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            e2e = np.where(ok, output / np.where(ok, d, 1.0) * 1000.0, np.nan)
        self._record("e2e_tps", now, e2e, local, sids)
        pairs = list(
            zip(rows.label("endpoint").tolist(), rows.label("model").tolist(), strict=True)
        )
        self._ttft_buckets(pairs, t, ctx)
        completed_rows = status < 400
        by_status = np.zeros((len(sids), len(STATUSES)), dtype=np.int64)
        by_status[:, 0] = np.bincount(local, weights=completed_rows, minlength=len(sids))
        by_status[:, 1] = groups.counts - by_status[:, 0]
        self._count("statuses", sids, by_status)
        self._count("started", sids, groups.counts)
        self._count("tokens", sids, np.bincount(local, weights=output, minlength=len(sids)))
        completed = int(np.count_nonzero(completed_rows))
        self.totals.update(
            {
                "started": rows.n,
                "completed": completed,
                "failed": rows.n - completed,
                "tokens": int(output.sum()),
            }
        )

    # --- housekeeping ---------------------------------------------------------------------

    def expire(self, ctx: Ctx) -> list[Batch] | None:
        """End idle streams as ``abandoned``; drop idle series."""
        now = ctx.now
        idle = self.table.idle(now - self.idle_timeout)
        derived = None
        if idle.size:
            self.dirty = True
            derived = [self._abandon(idle, ctx)]
        for table in self.tables():
            if table.expire(now):
                self.dirty = True
        return derived

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

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        return sum(t.overflowed for t in self.tables())

    def freeze(self, now: float) -> Any:
        from metricsd.trackers.streaming_view import StreamingView

        return StreamingView.of(self, now)

    # --- persistence (SPEC §7): active streams continue after a restart -------------------

    def state(self, now: float) -> dict[str, Any]:
        series, rows = self.series.state()
        return {
            "start": self.start,
            "series": series,
            "rings": {name: ring.state(now, rows) for name, ring in self.rings.items()},
            "ttft": self.ttft_buckets.state()[0],
            "mix": self.mix.state()[0],
            "table": self.table.state(),
            "totals": dict(self.totals),
            "orphaned": dict(self.orphaned),
            "evicted": self.evicted,
        }

    def restore(self, state: Any, now: float) -> None:
        from metricsd.persist import Reader

        r = Reader("streaming")
        m = r.map(state)
        self.start = r.float(m.get("start"), "start")
        remap = self.series.restore(m.get("series"), r, now)
        rings = r.map(m.get("rings"), "rings")
        for name, ring in self.rings.items():
            ring.restore(rings.get(name), remap, r, f"rings.{name}")
        self.ttft_buckets.restore(m.get("ttft"), r, now)
        self.mix.restore(m.get("mix"), r, now)
        self.table.restore(m.get("table"), r)
        self.totals = Counter(r.counts(m.get("totals"), "totals", 64))
        self.orphaned = Counter(r.counts(m.get("orphaned"), "orphaned", len(ORPHAN_TYPES)))
        self.evicted = r.int(m.get("evicted"), "evicted", 0)
        self.dirty = True
