"""The request tracker frozen for a snapshot, and everything read from it: the Prometheus
families and the JSON shapes of SPEC §2 (``/metrics/json``, ``/metrics/summary``,
``/metrics/recent``, ``/metrics/histograms``) and the live stream's per-endpoint pieces."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.config import Config
from metricsd.export.prometheus import Family, histogram_samples, render_labels, with_label
from metricsd.hist import Hist, exact_value
from metricsd.series import TableView
from metricsd.trackers.recent import Chunk, newest
from metricsd.window import CounterWindows, GroupHist, HistWindows, rates

if TYPE_CHECKING:
    from metricsd.trackers.requests import RequestTracker

__all__ = ["QS", "RequestsView"]

QS: Final = (0.5, 0.9, 0.95, 0.99)
DEFAULT_WINDOW: Final = 300.0
_STATS: Final = ("avg", "min", "max", "p50", "p90", "p95", "p99")
_NAMES: Final = ("provider", "endpoint", "model")


@dataclass(frozen=True, slots=True)
class _Table:
    """A frozen table: keys/versions and copies of its arrays."""

    view: TableView
    arrays: dict[str, npt.NDArray[Any]]

    @classmethod
    def of(cls, table: Any) -> _Table:
        return cls(table.view(), {k: v.copy() for k, v in table.arrays.items()})

    def items(self) -> list[tuple[tuple[Any, ...], int]]:
        return self.view.items()


@dataclass(frozen=True, slots=True)
class RequestsView:
    """Everything the request tracker's readers need, frozen at one tick."""

    config: Config
    series: _Table
    statuses: _Table
    errors: _Table
    finish: _Table
    token_hist: _Table
    cache: _Table
    queues: _Table
    window: CounterWindows
    latency: HistWindows
    queue_wait: HistWindows
    recent: tuple[Chunk, ...]
    recent_size: int

    @classmethod
    def of(cls, t: RequestTracker, now: float) -> RequestsView:
        return cls(
            t.config,
            _Table.of(t.series),
            _Table.of(t.statuses),
            _Table.of(t.errors),
            _Table.of(t.finish),
            _Table.of(t.token_hist),
            _Table.of(t.cache),
            _Table.of(t.queues),
            t.window.freeze(now),
            t.latency.freeze(now),
            t.queue_wait.freeze(now),
            t.recent.freeze(),
            t.recent.size,
        )

    # --- Prometheus -----------------------------------------------------------------------

    def families(self, now: float) -> list[Family]:
        prom = self.config.prometheus
        series = self.series
        view, arrays = series.view, series.arrays
        order = view.order
        keys = view.ordered
        versions = view.ordered_versions()
        labels = [render_labels(tuple(zip(_NAMES, k, strict=True))) for k in keys]

        st = self.statuses
        st_order = st.view.order
        st_keys = st.view.ordered
        st_counts = st.arrays["count"]

        def status_samples(i: int) -> list[tuple[str, str, float]]:
            key = st_keys[i]
            assert key is not None
            rendered = render_labels(tuple(zip((*_NAMES, "status"), key, strict=True)))
            return [("_total", rendered, int(st_counts[st_order[i]]))]

        requests = Family("llm_requests", "counter", "Requests completed, by status.")
        requests.per_series(st_keys, st.view.ordered_versions(), status_samples)

        bounds = prom.duration_buckets
        dur_b, dur_s = arrays["dur_b"], arrays["dur_s"]

        def duration_samples(i: int) -> list[tuple[str, str, float]]:
            sid = order[i]
            cumulative = np.cumsum(dur_b[sid]).tolist()
            if not cumulative[-1]:
                return []
            return histogram_samples(
                labels[i], bounds, cumulative, exact_value(dur_s[sid]) / 1000.0
            )

        duration = Family("llm_request_duration_seconds", "histogram", "Request duration.")
        duration.per_series(keys, versions, duration_samples)

        tokens_arr = arrays["tokens"]

        def token_samples(i: int) -> list[tuple[str, str, float]]:
            row = tokens_arr[order[i]]
            return [
                ("_total", with_label(labels[i], "type", t), int(row[j]))
                for j, t in enumerate(_TOKEN_TYPES)
            ]

        tokens = Family("llm_tokens", "counter", "Tokens processed, by type.")
        tokens.per_series(keys, versions, token_samples)

        th = self.token_hist
        th_order = th.view.order
        th_keys = th.view.ordered
        th_b, th_s = th.arrays["b"], th.arrays["s"]
        token_bounds = prom.token_buckets

        def request_token_samples(i: int) -> list[tuple[str, str, float]]:
            key = th_keys[i]
            assert key is not None
            sid = th_order[i]
            rendered = render_labels((("model", key[0]), ("type", key[1])))
            return histogram_samples(
                rendered, token_bounds, np.cumsum(th_b[sid]).tolist(), int(th_s[sid])
            )

        request_tokens = Family("llm_request_tokens", "histogram", "Tokens per request, by type.")
        request_tokens.per_series(th_keys, th.view.ordered_versions(), request_token_samples)

        finish = Family("llm_finish_reason", "counter", "Requests by finish reason.")
        _counter_table(finish, self.finish, ("model", "finish_reason"))
        errors = Family("llm_errors", "counter", "Failed requests, by error type and status.")
        _counter_table(errors, self.errors, ("endpoint", "model", "error_type", "status"))
        depth = Family("llm_queue_depth", "gauge", "Latest reported queue depth.")
        q = self.queues
        for (name,), sid in q.items():
            depth.add(float(q.arrays["depth"][sid]), (("queue", name),))
        wait = Family("llm_queue_wait_seconds", "histogram", "Time requests waited in a queue.")
        self._queue_wait(wait)
        lookups = Family("llm_cache_lookups", "counter", "Prompt-cache lookups, by result.")
        cache_tokens = Family(
            "llm_cache_tokens", "counter", "Prompt-cache tokens looked up and matched."
        )
        c = self.cache
        stats = c.arrays["stats"]
        c_order = c.view.order
        c_keys = c.view.ordered
        c_versions = c.view.ordered_versions()

        def lookup_samples(i: int) -> list[tuple[str, str, float]]:
            key = c_keys[i]
            assert key is not None
            row = stats[c_order[i]]
            where = render_labels((("endpoint", key[0]), ("model", key[1])))
            return [
                ("_total", with_label(where, "result", "hit"), int(row[0])),
                ("_total", with_label(where, "result", "miss"), int(row[1])),
            ]

        def cache_token_samples(i: int) -> list[tuple[str, str, float]]:
            key = c_keys[i]
            assert key is not None
            row = stats[c_order[i]]
            where = render_labels((("endpoint", key[0]), ("model", key[1])))
            return [
                ("_total", with_label(where, "type", "total"), int(row[2])),
                ("_total", with_label(where, "type", "matched"), int(row[3])),
            ]

        lookups.per_series(c_keys, c_versions, lookup_samples)
        cache_tokens.per_series(c_keys, c_versions, cache_token_samples)
        return [
            requests,
            duration,
            tokens,
            request_tokens,
            finish,
            errors,
            depth,
            wait,
            lookups,
            cache_tokens,
        ]

    def _queue_wait(self, family: Family) -> None:
        """Queue waits per (endpoint, model), summed over providers."""
        arrays = self.series.arrays
        has = arrays["queue_b"].sum(axis=1) > 0
        acc: dict[tuple[str, str], list[Any]] = {}
        for (_provider, endpoint, model), sid in self.series.items():
            if not has[sid]:
                continue
            entry = acc.setdefault((endpoint, model), [0, 0])
            entry[0] = entry[0] + arrays["queue_b"][sid]
            entry[1] += arrays["queue_s"][sid]
        bounds = self.config.prometheus.duration_buckets
        for (endpoint, model), (b, total) in sorted(acc.items()):
            family.samples.extend(
                histogram_samples(
                    render_labels((("endpoint", endpoint), ("model", model))),
                    bounds,
                    np.cumsum(b).tolist(),
                    exact_value(total) / 1000.0,
                )
            )

    # --- JSON -----------------------------------------------------------------------------

    def by_label(self, now: float, window: float, key_index: int) -> _Grouped:
        """Windowed counters and merged latency per endpoint (``key_index`` 1) or model (2)."""
        size = len(self.series.view.keys)
        names, groups = self.series.view.derived(f"label{key_index}", _LABEL_GROUPS[key_index])
        sums, span = self.window.window(now, window, size)
        g = len(names)
        counts = np.zeros((g, sums.shape[1]))
        live = groups >= 0
        np.add.at(counts, groups[live], sums[live])
        first = np.full(g, math.inf)
        np.minimum.at(first, groups[live], self.series.arrays["first_seen"][live])
        latency = self.latency.reduce(now, window, groups, g)
        return _Grouped(list(names), counts, span, now - first, latency)

    def json(self, now: float, streaming_stats: dict[str, Any] | None) -> dict[str, Any]:
        """``GET /metrics/json``: FakeAI's ``GET /metrics`` shape, latencies in seconds."""
        out: dict[str, Any] = {}
        e = self.by_label(now, DEFAULT_WINDOW, 1)
        order = sorted(range(len(e.names)), key=lambda j: e.names[j])
        names = [e.names[j] for j in order]
        c, age = e.counts[order], e.age[order]
        cols = {k: v[order] for k, v in e.latency.columns(QS).items()}
        latency = _stats_rows(c[:, 0], e.span, age, cols, 1000.0)
        out["requests"] = dict(
            zip(names, _stats_rows(c[:, 0], e.span, age, None, 1.0), strict=True)
        )
        out["responses"] = dict(zip(names, latency, strict=True))
        out["tokens"] = dict(
            zip(names, _stats_rows(c[:, 2] + c[:, 3], e.span, age, None, 1.0), strict=True)
        )
        out["errors"] = dict(zip(names, _stats_rows(c[:, 1], e.span, age, None, 1.0), strict=True))
        out["latency"] = dict(zip(names, (dict(row) for row in latency), strict=True))
        out["streaming_stats"] = streaming_stats or {
            "active_streams": 0,
            "completed_streams": 0,
            "failed_streams": 0,
            "ttft": {},
            "tokens_per_second": {},
        }
        m = self.by_label(now, DEFAULT_WINDOW, 2)
        order = sorted(range(len(m.names)), key=lambda j: m.names[j])
        c, age = m.counts[order], m.age[order]
        cols = {k: v[order] for k, v in m.latency.columns(QS).items()}
        rows = _stats_rows(c[:, 0], m.span, age, cols, 1000.0)
        extra = zip(
            rates(c[:, 2] + c[:, 3], m.span, age).tolist(),
            rates(c[:, 1], m.span, age).tolist(),
            np.divide(c[:, 1], c[:, 0], out=np.zeros(len(order)), where=c[:, 0] != 0).tolist(),
            c[:, 0].astype(np.int64).tolist(),
            strict=True,
        )
        by_model: dict[str, Any] = {}
        for j, stats, (tokens_rate, errors_rate, error_rate, requests) in zip(
            order, rows, extra, strict=True
        ):
            stats["tokens_rate"] = tokens_rate
            stats["errors_rate"] = errors_rate
            stats["error_rate"] = error_rate
            stats["requests"] = requests
            by_model[m.names[j]] = stats
        out["by_model"] = by_model
        return out

    def summary(self, now: float, window_seconds: float) -> dict[str, Any]:
        """``GET /metrics/summary``: steer_llm_sdk's summary over a window."""
        size = len(self.series.view.keys)
        sums, _span = self.window.window(now, window_seconds, size)
        providers: dict[str, int] = defaultdict(int)
        models: dict[str, int] = defaultdict(int)
        totals = np.zeros(sums.shape[1])
        for (provider, _endpoint, model), sid in self.series.items():
            c = sums[sid]
            if c[0] == 0:
                continue
            totals += c
            providers[provider] += int(c[0])
            models[model] += int(c[0])
        groups = np.zeros(size, dtype=np.intp)
        view = self.latency.reduce(now, window_seconds, groups, 1)
        count = int(view.count[0])
        requests = int(totals[0])
        return {
            "requests": requests,
            "avg_latency_ms": float(view.mean()[0]) if count else 0.0,
            "p95_latency_ms": float(view.quantiles((0.95,))[0, 0]) if count else 0.0,
            "error_rate": float(totals[1] / totals[0]) if requests else 0.0,
            "total_tokens": int(totals[2] + totals[3]),
            "providers": dict(sorted(providers.items())),
            "models": dict(sorted(models.items())),
            "window_seconds": window_seconds,
        }

    def recent_rows(self, limit: int) -> list[dict[str, Any]]:
        """``GET /metrics/recent``: the newest outcomes first."""
        return newest(self.recent, self.recent_size, limit)

    def histograms(self, now: float, name: str, window: float) -> dict[str, Any]:
        """``GET /metrics/histograms``: HDR-encoded windows per series, for exact merging."""
        size = len(self.series.view.keys)
        ids = np.arange(size, dtype=np.intp)
        out: list[dict[str, Any]] = []
        rings = {
            "llm_request_duration_seconds": self.latency,
            "llm_queue_wait_seconds": self.queue_wait,
        }
        reduced = {
            family: ring.reduce(now, window, ids, size)
            for family, ring in rings.items()
            if not name or name == family
        }
        for (provider, endpoint, model), sid in self.series.items():
            for family, gh in reduced.items():
                if gh.count[sid] == 0:
                    continue
                view = gh.view(sid)
                hist = Hist(view.layout)
                hist.counts[:] = view.counts
                layout = view.layout
                out.append(
                    {
                        "name": family,
                        "labels": {"provider": provider, "endpoint": endpoint, "model": model},
                        "window_seconds": window,
                        "count": view.count,
                        "sum": view.sum / 1000.0,
                        "unit": "microseconds",
                        "lowest": layout.lowest,
                        "highest": layout.highest,
                        "significant_figures": layout.significant_figures,
                        "encoding": "hdr",
                        "histogram": hist.encode(),
                    }
                )
        return {"histograms": out}

    # --- the live stream ------------------------------------------------------------------

    def live_pieces(
        self, now: float, rate_window: float, latency_window: float
    ) -> dict[tuple[str, str], tuple[npt.NDArray[np.float64], float, float, int]]:
        """(endpoint, model) → (counts over ``rate_window``, span, age, latency group), with
        the latency groups in :meth:`live_latency`."""
        size = len(self.series.view.keys)
        keys, groups = self.series.view.derived("endpoint_model", _endpoint_model_groups)
        sums, span = self.window.window(now, rate_window, size)
        g = len(keys)
        counts = np.zeros((g, sums.shape[1]))
        live = groups >= 0
        np.add.at(counts, groups[live], sums[live])
        first = np.full(g, math.inf)
        np.minimum.at(first, groups[live], self.series.arrays["first_seen"][live])
        return {k: (counts[j], span, now - float(first[j]), j) for k, j in keys.items()}

    def live_latency(self, now: float, window: float) -> tuple[GroupHist, list[tuple[str, str]]]:
        keys, groups = self.series.view.derived("endpoint_model", _endpoint_model_groups)
        return self.latency.reduce(now, window, groups, len(keys)), list(keys)

    def cache_stats(self) -> dict[tuple[str, str], tuple[int, ...]]:
        stats = self.cache.arrays["stats"]
        return {
            (key[0], key[1]): tuple(int(v) for v in stats[sid]) for key, sid in self.cache.items()
        }

    def queue_depths(self) -> dict[str, float]:
        depth = self.queues.arrays["depth"]
        return {key[0]: float(depth[sid]) for key, sid in self.queues.items()}


def _label_groups(index: int) -> Callable[[TableView], tuple[list[str], npt.NDArray[np.intp]]]:
    def build(view: TableView) -> tuple[list[str], npt.NDArray[np.intp]]:
        names: dict[str, int] = {}
        groups = np.full(len(view.keys), -1, dtype=np.intp)
        for key, sid in view.items():
            groups[sid] = names.setdefault(key[index], len(names))
        return list(names), groups

    return build


#: Series grouped by endpoint (1) or model (2), shared while the series set is unchanged.
_LABEL_GROUPS: Final = {1: _label_groups(1), 2: _label_groups(2)}


def _endpoint_model_groups(
    view: TableView,
) -> tuple[dict[tuple[str, str], int], npt.NDArray[np.intp]]:
    """(endpoint, model) → group, and each series id's group (-1 for a free id)."""
    keys: dict[tuple[str, str], int] = {}
    groups = np.full(len(view.keys), -1, dtype=np.intp)
    for (_p, endpoint, model), sid in view.items():
        groups[sid] = keys.setdefault((endpoint, model), len(keys))
    return keys, groups


_TOKEN_TYPES: Final = ("input", "output", "cached", "cache_write", "reasoning")


@dataclass(frozen=True, slots=True)
class _Grouped:
    names: list[str]
    counts: npt.NDArray[np.float64]
    span: float
    age: npt.NDArray[np.float64]
    latency: GroupHist


def _counter_table(family: Family, table: _Table, names: tuple[str, ...]) -> None:
    view = table.view
    order = view.order
    keys = view.ordered
    counts = table.arrays["count"]

    def make(i: int) -> list[tuple[str, str, float]]:
        key = keys[i]
        assert key is not None
        return [
            ("_total", render_labels(tuple(zip(names, key, strict=True))), int(counts[order[i]]))
        ]

    family.per_series(keys, view.ordered_versions(), make)


def _stats_rows(
    counts: npt.NDArray[np.float64],
    span: float,
    ages: npt.NDArray[np.float64],
    cols: dict[str, npt.NDArray[np.float64]] | None,
    unit: float,
) -> list[dict[str, float]]:
    """FakeAI's ``{rate, avg, min, max, p50, p90, p99}`` (+ p95) per group, latencies divided
    by ``unit`` (zeros for a group without latency data)."""
    rate_col = rates(counts, span, ages).tolist()
    if cols is None:
        zeros = dict.fromkeys(_STATS, 0.0)
        return [{"rate": r, **zeros} for r in rate_col]
    stat_cols = [(cols[name] / unit).tolist() for name in _STATS]
    names = ("rate", *_STATS)
    return [dict(zip(names, row, strict=True)) for row in zip(rate_col, *stat_cols, strict=True)]
