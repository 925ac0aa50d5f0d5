"""Snapshot data for the live stream (SPEC §5.2), built once per tick, rendered per filter set.

:func:`build_base` reads a snapshot once per tick into plain per-(endpoint, model) pieces;
:func:`render` narrows them to one filter set (endpoints, models, metric types) and recomputes
every per-endpoint map and total over what the filter admits, so a filtered latency block keeps
its numbers and totals agree with the maps shown (both FakeAI bugs). Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from metricsd.snapshot import Snapshot
from metricsd.web.stream import CATEGORIES, FilterKey
from metricsd.window import GroupHist, rate

__all__ = ["Base", "build_base", "render", "totals"]

#: Live rates are over the last minute (a dashboard should move); latency percentiles use the
#: 5-minute window.
RATE_WINDOW = 60.0
LATENCY_WINDOW = 300.0
QS = (0.5, 0.9, 0.95, 0.99)


@dataclass(slots=True)
class _Piece:
    counts: np.ndarray[Any, Any]  # requests, errors, input, output, … over RATE_WINDOW
    span: float
    age: float
    group: int  # its (endpoint, model) group in Base.latency


@dataclass(slots=True)
class Base:
    """Everything a tick's updates are rendered from."""

    timestamp: float
    now: float
    pieces: dict[tuple[str, str], _Piece] = field(default_factory=dict)
    latency: GroupHist | None = None
    cache: dict[tuple[str, str], tuple[int, ...]] = field(default_factory=dict)
    queues: dict[str, float] = field(default_factory=dict)
    sources: dict[str, Callable[[frozenset[str]], dict[str, Any]]] = field(default_factory=dict)


def build_base(snap: Snapshot, full: bool = True) -> Base:
    """The base of one tick; ``full=False`` reads only the rate pieces (enough for the
    throughput history kept while nobody is connected)."""
    now = snap.now
    base = Base(timestamp=snap.wall, now=now)
    requests = snap.part("requests")
    if requests is not None:
        for key, (counts, span, age, group) in requests.live_pieces(
            now, RATE_WINDOW, LATENCY_WINDOW
        ).items():
            base.pieces[key] = _Piece(counts, span, age, group)
        if not full:
            return base
        base.latency, _keys = requests.live_latency(now, LATENCY_WINDOW)
        base.cache = requests.cache_stats()
        base.queues = requests.queue_depths()
    for category in ("streaming", "cost", "slo"):
        part = snap.part(category)
        if part is not None:
            base.sources[category] = _bind(part, category, now)
    return base


def _bind(part: Any, category: str, now: float) -> Callable[[frozenset[str]], dict[str, Any]]:
    cache: dict[frozenset[str], dict[str, Any]] = {}

    def read(models: frozenset[str]) -> dict[str, Any]:
        found = cache.get(models)
        if found is None:
            found = cache[models] = (
                part.live(models) if category == "slo" else part.live(now, models)
            )
        return found

    return read


def _merged(base: Base, pieces: list[_Piece]) -> dict[str, float]:
    """The latency block of several (endpoint, model) pieces, merged exactly."""
    gh = base.latency
    if gh is None or not pieces:
        return _block(None)
    groups = np.full(gh.size, -1, dtype=np.intp)
    for p in pieces:
        groups[p.group] = 0
    return _block(_regroup(gh, groups))


def _regroup(gh: GroupHist, groups: np.ndarray[Any, Any]) -> GroupHist:
    """Fold the groups of a reduced histogram into one (groups[g] = 0 to keep g)."""
    keep_groups = np.flatnonzero(groups >= 0)
    count = np.array([int(gh.count[keep_groups].sum())], dtype=np.int64)
    total = np.array([sum(int(v) for v in gh.total[keep_groups])], dtype=object)
    lo = np.array([gh.lo[keep_groups].min(initial=np.inf)])
    hi = np.array([gh.hi[keep_groups].max(initial=-np.inf)])
    key_groups = (gh.keys >> np.uint64(32)).astype(np.intp)
    mask = groups[key_groups] >= 0 if key_groups.size else np.zeros(0, dtype=bool)
    buckets = gh.keys[mask] & np.uint64(0xFFFFFFFF)
    counts = gh.counts[mask]
    if buckets.size:
        uniq, inverse = np.unique(buckets, return_inverse=True)
        summed = np.zeros(len(uniq), dtype=np.uint64)
        np.add.at(summed, inverse.reshape(-1), counts)
        buckets, counts = uniq, summed
    return GroupHist(gh.layout, 1, count, total, lo, hi, buckets, counts, gh.span)


def _admits(key: tuple[str, str], endpoints: frozenset[str], models: frozenset[str]) -> bool:
    return (not endpoints or key[0] in endpoints) and (not models or key[1] in models)


def _block(view: GroupHist | None) -> dict[str, float]:
    if view is None or not int(view.count[0]):
        return {"avg": 0.0, "min": 0.0, "max": 0.0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0}
    b = view.blocks(QS)[0]
    return {k: float(b[k]) for k in ("avg", "min", "max", "p50", "p90", "p95", "p99")}


def render(base: Base, key: FilterKey) -> dict[str, Any]:
    """The ``data`` of one filter set: every admitted category, recomputed over the filter."""
    endpoints, models, metric_types = key
    everything = "all" in metric_types
    wanted = [c for c in CATEGORIES if everything or c in metric_types]
    per_endpoint: dict[str, list[_Piece]] = defaultdict(list)
    for k, piece in base.pieces.items():
        if _admits(k, endpoints, models):
            per_endpoint[k[0]].append(piece)
    data: dict[str, Any] = {}
    need_rates = any(c in wanted for c in ("throughput", "error"))
    rates: dict[str, tuple[float, float, float]] = {}
    if need_rates:
        for endpoint, pieces in sorted(per_endpoint.items()):
            counts = np.sum([p.counts for p in pieces], axis=0)
            span = max(p.span for p in pieces)
            age = max(p.age for p in pieces)
            rates[endpoint] = (
                rate(float(counts[0]), span, age),
                rate(float(counts[2] + counts[3]), span, age),
                rate(float(counts[1]), span, age),
            )
    if "throughput" in wanted:
        requests_map = {e: r[0] for e, r in rates.items()}
        tokens_map = {e: r[1] for e, r in rates.items()}
        data["throughput"] = {
            "requests_per_sec": requests_map,
            "responses_per_sec": dict(requests_map),
            "tokens_per_sec": tokens_map,
            "total_requests_per_sec": sum(requests_map.values()),
            "total_tokens_per_sec": sum(tokens_map.values()),
        }
    if "latency" in wanted:
        data["latency"] = {
            endpoint: _merged(base, pieces) for endpoint, pieces in sorted(per_endpoint.items())
        }
    if "cache" in wanted:
        data["cache"] = _cache(base, endpoints, models)
    if "queue" in wanted:
        streaming = base.sources.get("streaming")
        active = streaming(models).get("active_streams", 0) if streaming else 0
        data["queue"] = {
            "active_streams": active,
            "queue_depth": sum(base.queues.values()),
            "queues": dict(sorted(base.queues.items())),
        }
    if "streaming" in wanted:
        source = base.sources.get("streaming")
        data["streaming"] = (
            source(models)
            if source
            else {"active_streams": 0, "completed_streams": 0, "failed_streams": 0}
        )
    if "error" in wanted:
        errors_map = {e: r[2] for e, r in rates.items()}
        data["error"] = {
            "errors_per_sec": errors_map,
            "total_errors_per_sec": sum(errors_map.values()),
        }
    if "cost" in wanted:
        source = base.sources.get("cost")
        data["cost"] = (
            source(models) if source else {"total_usd": 0.0, "usd_per_hour": 0.0, "by_model": {}}
        )
    if "slo" in wanted:
        source = base.sources.get("slo")
        data["slo"] = source(models) if source else {}
    return data


def _cache(base: Base, endpoints: frozenset[str], models: frozenset[str]) -> dict[str, Any]:
    hits = misses = total = matched = on_hits = 0
    by_endpoint: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for key, (h, m, t, mt, oh) in base.cache.items():
        if not _admits(key, endpoints, models):
            continue
        hits, misses, total, matched, on_hits = (
            hits + h,
            misses + m,
            total + t,
            matched + mt,
            on_hits + oh,
        )
        e = by_endpoint[key[0]]
        e[0], e[1], e[2], e[3] = e[0] + h, e[1] + m, e[2] + t, e[3] + mt
    lookups = hits + misses
    return {
        "hit_rate": 100.0 * hits / lookups if lookups else 0.0,
        "token_reuse_rate": 100.0 * matched / total if total else 0.0,
        "avg_prefix_length": on_hits / hits if hits else 0.0,
        "total_lookups": lookups,
        "cache_hits": hits,
        "by_endpoint": {
            ep: {
                "hit_rate": 100.0 * v[0] / (v[0] + v[1]) if v[0] + v[1] else 0.0,
                "token_reuse_rate": 100.0 * v[3] / v[2] if v[2] else 0.0,
            }
            for ep, v in sorted(by_endpoint.items())
        },
    }


def totals(data: dict[str, Any], base: Base, key: FilterKey) -> dict[str, float]:
    """The numbers deltas are computed from, whatever categories the client receives."""
    if "throughput" in data:
        t = data["throughput"]
        out = {
            "total_requests_per_sec": t["total_requests_per_sec"],
            "total_tokens_per_sec": t["total_tokens_per_sec"],
        }
    else:
        full = render(base, (key[0], key[1], frozenset({"throughput"})))["throughput"]
        out = {
            "total_requests_per_sec": full["total_requests_per_sec"],
            "total_tokens_per_sec": full["total_tokens_per_sec"],
        }
    streaming = data.get("streaming")
    if streaming is None:
        source = base.sources.get("streaming")
        streaming = source(key[1]) if source else {"active_streams": 0}
    out["active_streams"] = float(streaming.get("active_streams", 0))
    return out
