"""The streaming tracker frozen for a snapshot: Prometheus families and the JSON of SPEC §4.2.

Counts are lifetime; distributions (blocks ``{avg, min, max, p50, p90, p95, p99, count}``) are
over the 5-minute window, merged across models from each model's HDR histograms.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.config import Config
from metricsd.export.prometheus import Family, format_float, histogram_samples, render_labels
from metricsd.hist import exact_value
from metricsd.series import TableView
from metricsd.trackers.streaming import ORPHAN_TYPES, RINGS, STATUSES
from metricsd.window import GroupHist, HistWindows

if TYPE_CHECKING:
    from metricsd.trackers.streaming import StreamingTracker

__all__ = ["StreamingView"]

WINDOW: Final = 300.0
QS: Final = (0.5, 0.9, 0.95, 0.99)
#: JSON block name → window ring name.
BLOCKS: Final = {
    "ttft": "ttft",
    "itl": "itl",
    "time_per_output_token": "tpot",
    "duration": "duration",
    "tokens_per_second": "tps",
    "e2e_tokens_per_second": "e2e_tps",
    "jitter_ms": "jitter",
    "smoothness": "smoothness",
}
_EMPTY_BLOCK: Final = {
    "avg": 0.0,
    "min": 0.0,
    "max": 0.0,
    "p50": 0.0,
    "p90": 0.0,
    "p95": 0.0,
    "p99": 0.0,
    "count": 0,
}


@dataclass(frozen=True, slots=True)
class StreamingView:
    config: Config
    series: TableView
    arrays: dict[str, npt.NDArray[Any]]
    rings: dict[str, HistWindows]
    ttft: TableView
    ttft_arrays: dict[str, npt.NDArray[Any]]
    mix: TableView
    mix_arrays: dict[str, npt.NDArray[Any]]
    totals: dict[str, int]
    orphaned: dict[str, int]
    evicted: int
    active: int
    active_by_model: dict[str, int]

    @classmethod
    def of(cls, t: StreamingTracker, now: float) -> StreamingView:
        return cls(
            t.config,
            t.series.view(),
            {k: v.copy() for k, v in t.series.arrays.items()},
            {name: ring.freeze(now) for name, ring in t.rings.items()},
            t.ttft_buckets.view(),
            {k: v.copy() for k, v in t.ttft_buckets.arrays.items()},
            t.mix.view(),
            {k: v.copy() for k, v in t.mix.arrays.items()},
            dict(t.totals),
            dict(t.orphaned),
            t.evicted,
            len(t.table),
            dict(t.active_by_model()),
        )

    # --- windows --------------------------------------------------------------------------

    def _reduce(
        self, now: float, models: frozenset[str] | None, per_model: bool
    ) -> tuple[dict[str, GroupHist], list[str]]:
        """Every ring over the window, for all (or the given) models together, or per model."""
        size = len(self.series.keys)
        groups = np.full(size, -1, dtype=np.intp)
        names: list[str] = []
        for (model,), sid in self.series.items():
            if models is None or model in models:
                if per_model:
                    groups[sid] = len(names)
                    names.append(model)
                else:
                    groups[sid] = 0
        count = len(names) if per_model else 1
        return {ring: self.rings[ring].reduce(now, WINDOW, groups, count) for ring in RINGS}, names

    # --- Prometheus -----------------------------------------------------------------------

    def families(self, now: float) -> list[Family]:
        prom = self.config.prometheus
        ttft = Family(
            "llm_time_to_first_token_seconds", "histogram", "Time from stream start to first token."
        )
        tv, ta = self.ttft, self.ttft_arrays
        t_order = tv.order
        t_keys = tv.ordered

        def ttft_samples(i: int) -> list[tuple[str, str, float]]:
            sid = t_order[i]
            key = t_keys[i]
            assert key is not None
            cumulative = np.cumsum(ta["b"][sid]).tolist()
            if not cumulative[-1]:
                return []
            rendered = render_labels((("endpoint", key[0]), ("model", key[1])))
            return histogram_samples(
                rendered, prom.ttft_buckets, cumulative, exact_value(ta["s"][sid]) / 1000.0
            )

        ttft.per_series(t_keys, tv.ordered_versions(), ttft_samples)
        itl = Family(
            "llm_inter_token_latency_seconds",
            "histogram",
            "Time between successive token events per token (one sample per gap).",
        )
        tpot = Family(
            "llm_time_per_output_token_seconds",
            "histogram",
            "Mean inter-token latency of each finished stream (one sample per stream).",
        )
        tps = Family(
            "llm_stream_output_tokens_per_second",
            "histogram",
            "Decode rate of each finished stream: (tokens - 1) / (last token - first token).",
        )
        streams = Family("llm_streams", "counter", "Streams finished, by status.")
        active = Family("llm_streams_active", "gauge", "Streams started and not yet finished.")
        stalls = Family(
            "llm_stream_stalls", "counter", "Inter-token gaps above the stall threshold."
        )
        backpressure = Family(
            "llm_stream_backpressure", "counter", "Backpressure events reported by producers."
        )
        tokens = Family("llm_stream_tokens", "counter", "Tokens streamed.")
        nbytes = Family("llm_stream_bytes", "counter", "Bytes streamed, as reported by producers.")
        view, a = self.series, self.arrays
        order = view.order
        keys = view.ordered
        versions = view.ordered_versions()
        labels = [render_labels((("model", k[0]),)) for k in keys]

        def hist(name: str, bounds: tuple[float, ...], scale: float) -> Any:
            def make(i: int) -> list[tuple[str, str, float]]:
                sid = order[i]
                cumulative = np.cumsum(a[f"{name}_b"][sid]).tolist()
                if not cumulative[-1]:
                    return []
                return histogram_samples(
                    labels[i], bounds, cumulative, exact_value(a[f"{name}_s"][sid]) / scale
                )

            return make

        itl.per_series(keys, versions, hist("itl", prom.itl_buckets, 1000.0))
        tpot.per_series(keys, versions, hist("tpot", prom.itl_buckets, 1000.0))
        tps.per_series(keys, versions, hist("tps", prom.tps_buckets, 1.0))

        def status_samples(i: int) -> list[tuple[str, str, float]]:
            row = a["statuses"][order[i]]
            return [
                ("_total", labels[i][:-1] + f',status="{status}"}}', int(row[j]))
                for j, status in enumerate(STATUSES)
            ]

        streams.per_series(keys, versions, status_samples)

        def counter(name: str) -> Any:
            column = a[name]
            return lambda i: [("_total", labels[i], int(column[order[i]]))]

        stalls.per_series(keys, versions, counter("stalls"))
        backpressure.per_series(keys, versions, counter("backpressure"))
        tokens.per_series(keys, versions, counter("tokens"))
        nbytes.per_series(keys, versions, counter("nbytes"))
        active_now = Counter(self.active_by_model)
        for key in keys:
            assert key is not None
            active.add(active_now.pop(key[0], 0), (("model", key[0]),))
        for model, count in sorted(active_now.items()):  # series dropped while streams run
            active.add(count, (("model", model),))
        evicted = Family(
            "metricsd_streams_evicted",
            "counter",
            "Active streams ended as abandoned to make room at limits.max_active_streams.",
        )
        evicted.counter(self.evicted)
        orphaned = Family(
            "metricsd_stream_events_orphaned",
            "counter",
            "Stream events for unknown stream ids, and duplicate starts, by type.",
        )
        for event_type in ORPHAN_TYPES:
            orphaned.counter(self.orphaned.get(event_type, 0), (("type", event_type),))
        out = [ttft, itl, tpot, tps, streams, active, stalls, backpressure, tokens, nbytes]
        out += [evicted, orphaned]
        if prom.compat:
            out += self._compat(now)
        return out

    def _compat(self, now: float) -> list[Family]:
        """The seed documents' names (SPEC §3.2)."""
        totals = self.totals
        started = Family("streaming_total_streams", "counter", "Streams started (lifetime).")
        started.counter(totals.get("started", 0))
        failed = Family("streaming_failed_streams", "counter", "Streams that ended failed.")
        failed.counter(totals.get("failed", 0))
        active = Family("streaming_active_streams", "gauge", "Streams in progress.")
        active.add(self.active)
        rings, _names = self._reduce(now, None, per_model=False)
        return [
            _summary(
                "streaming_ttft_milliseconds",
                "Time to first token in ms over the last 5 minutes.",
                rings["ttft"],
            ),
            _summary(
                "streaming_tokens_per_second",
                "Decode rate of finished streams over the last 5 minutes.",
                rings["tps"],
            ),
            started,
            failed,
            active,
        ]

    # --- JSON -----------------------------------------------------------------------------

    def view(self, now: float, model: str | None = None) -> dict[str, Any]:
        """``GET /metrics/streaming`` (SPEC §4.2); with ``model``, that model's numbers only."""
        wanted = None if model is None else frozenset({model})
        per, names = self._reduce(now, wanted, per_model=True)
        blocks = {ring: per[ring].blocks(QS) for ring in RINGS}
        a = self.arrays
        by_model: dict[str, Any] = {}
        for j, name in enumerate(names):
            sid = self.series.ids[(name,)]
            statuses = dict(zip(STATUSES, a["statuses"][sid].tolist(), strict=True))
            entry = _counts(statuses, int(a["started"][sid]), self.active_by_model.get(name, 0))
            entry.update(
                _lifetime(
                    a["tokens"][sid], a["nbytes"][sid], a["backpressure"][sid], a["stalls"][sid]
                )
            )
            entry.update({b: _block(blocks[r][j]) for b, r in BLOCKS.items()})
            by_model[name] = entry
        if model is None:
            totals = self.totals
            out = _counts(totals, totals.get("started", 0), self.active)
            out["evicted_streams"] = self.evicted
            out.update(
                _lifetime(
                    totals.get("tokens", 0),
                    totals.get("bytes", 0),
                    totals.get("backpressure", 0),
                    totals.get("stalls", 0),
                )
            )
        elif model in by_model:
            out = {k: v for k, v in by_model[model].items() if not isinstance(v, dict)}
        else:
            out = _counts(dict.fromkeys(STATUSES, 0), 0, 0)
            out.update(_lifetime(0, 0, 0, 0))
        merged, _ = self._reduce(now, wanted, per_model=False)
        out.update({b: _block(merged[r].blocks(QS)[0]) for b, r in BLOCKS.items()})
        out["ttft_percentiles"] = out["ttft"] if out["ttft"]["count"] else None
        out["streams_by_model"] = {m: e["total_streams"] for m, e in by_model.items()}
        out["tokens_by_model"] = {m: e["total_tokens_generated"] for m, e in by_model.items()}
        out["by_model"] = by_model
        out["window_seconds"] = WINDOW
        out.update(self._mix(model))
        return out

    def _mix(self, model: str | None) -> dict[str, Any]:
        """The request mix the React dashboard reads: lifetime counts, mean durations in ms."""
        acc = [0, 0, 0, 0]
        mix = self.mix_arrays["mix"]
        for (name,), sid in self.mix.items():
            if model is None or name == model:
                acc = [a + int(b) for a, b in zip(acc, mix[sid], strict=True)]
        streaming, plain = acc[0], acc[2]
        total = streaming + plain
        return {
            "streaming_requests": streaming,
            "non_streaming_requests": plain,
            "streaming_percentage": streaming / total * 100.0 if total else 0.0,
            "avg_streaming_latency": exact_value(acc[1]) / streaming if streaming else 0.0,
            "avg_non_streaming_latency": exact_value(acc[3]) / plain if plain else 0.0,
        }

    def json_stats(self, now: float) -> dict[str, Any]:
        """The ``streaming_stats`` part of ``GET /metrics/json`` (TTFT in seconds)."""
        rings, _ = self._reduce(now, None, per_model=False)
        return {
            "active_streams": self.active,
            "completed_streams": int(self.totals.get("completed", 0)),
            "failed_streams": int(self.totals.get("failed", 0)),
            "ttft": _seconds_block(rings["ttft"], 1000.0),
            "tokens_per_second": _seconds_block(rings["tps"], 1.0),
        }

    def live(self, now: float, models: frozenset[str]) -> dict[str, Any]:
        """The ``streaming`` category of the live stream (SPEC §5.2): ms blocks, absent when
        empty. ``models`` (empty: all) narrows every number, the active count included."""
        a = self.arrays
        if models:
            active = sum(c for m, c in self.active_by_model.items() if m in models)
            completed = failed = 0
            for (model,), sid in self.series.items():
                if model in models:
                    completed += int(a["statuses"][sid][0])
                    failed += int(a["statuses"][sid][1])
        else:
            active = self.active
            completed = self.totals.get("completed", 0)
            failed = self.totals.get("failed", 0)
        out: dict[str, Any] = {
            "active_streams": int(active),
            "completed_streams": int(completed),
            "failed_streams": int(failed),
        }
        rings, _ = self._reduce(now, models or None, per_model=False)
        for name, ring in (("ttft", "ttft"), ("tokens_per_second", "tps")):
            block = _seconds_block(rings[ring], 1.0)
            if block:
                out[name] = block
        return out


def _summary(name: str, help_text: str, view: GroupHist) -> Family:
    """A summary over the window: quantiles (only with data) and the real ``_sum``/``_count``."""
    family = Family(name, "summary", help_text)
    count = int(view.count[0])
    if count:
        for q, value in zip(QS, view.quantiles(QS)[0].tolist(), strict=True):
            family.add(value, (("quantile", format_float(q)),))
    family.add(view.sum(0) if count else 0.0, (), "_sum")
    family.add(count, (), "_count")
    return family


def _block(block: dict[str, Any]) -> dict[str, float | int]:
    if not block["count"]:
        return dict(_EMPTY_BLOCK)
    return {k: (int(v) if k == "count" else float(v)) for k, v in block.items()}


def _counts(statuses: Any, started: int, active: int) -> dict[str, Any]:
    completed = int(statuses.get("completed", 0))
    finished = sum(int(statuses.get(s, 0)) for s in STATUSES)
    return {
        "total_streams": int(started),
        "active_streams": int(active),
        "completed_streams": completed,
        "failed_streams": int(statuses.get("failed", 0)),
        "cancelled_streams": int(statuses.get("cancelled", 0)),
        "abandoned_streams": int(statuses.get("abandoned", 0)),
        "successful_streams": completed,
        "success_rate": completed / finished if finished else 0.0,
    }


def _lifetime(tokens: Any, nbytes: Any, backpressure: Any, stalls: Any) -> dict[str, int]:
    return {
        "total_tokens_generated": int(tokens),
        "total_bytes_sent": int(nbytes),
        "total_backpressure_events": int(backpressure),
        "stalls": int(stalls),
    }


def _seconds_block(view: GroupHist, unit: float) -> dict[str, float]:
    """FakeAI's ``{avg, min, max, p50, p90, p99}``, or ``{}`` with no data."""
    if not int(view.count[0]):
        return {}
    block = view.blocks(QS)[0]
    return {k: float(block[k]) / unit for k in ("avg", "min", "max", "p50", "p90", "p99")}
