"""The engine: the single owner of tracker state.

Ingest hands it decoded frames (``apply``); once per tick the app asks it for a :class:`Snapshot`
(``snapshot``), which holds the rendered Prometheus exposition and is what every reader uses. The
engine never reads a clock: ``now`` (monotonic seconds) and ``wall`` (Unix seconds) are passed
in, so tests drive it with a synthetic clock.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from metricsd import __version__
from metricsd.config import Config
from metricsd.export.naming import translate_families
from metricsd.export.prometheus import Family, render_both
from metricsd.protocol import REASONS, Batch, DecodeResult, Limits, merge_batches
from metricsd.schema import EVENT_TYPES

__all__ = ["Engine", "Snapshot", "Tracker"]


class Tracker(Protocol):
    """What the engine needs of a tracker."""

    name: str
    event_types: frozenset[str]

    def apply(self, batch: Batch, now: float, wall: float) -> list[Batch] | None:
        """Record a batch. May return derived batches (e.g. the ``request`` outcomes of
        finished streams), which the engine hands to every *other* tracker of their type."""
        ...

    def families(self, now: float) -> list[Family]: ...

    def series_count(self) -> int: ...

    def series_overflow(self) -> int: ...

    def expire(self, now: float) -> list[Batch] | None:
        """Drop idle state. May return derived batches like ``apply`` (e.g. the request
        outcomes of streams that ended as abandoned), routed the same way."""
        ...


@dataclass(slots=True)
class Snapshot:
    """What readers see between two ticks. Views are computed at most once per snapshot.

    The exposition is rendered at the tick while someone scrapes; with no scraper for a minute
    it is rendered on the first scrape instead (once, then served from this snapshot), so an
    unscraped daemon does not spend a core rendering text nobody reads.
    """

    tick: int
    now: float
    wall: float
    _render: Callable[[], tuple[bytes, bytes]] | None = None
    _exposition: tuple[bytes, bytes] | None = None
    _views: dict[tuple[Any, ...], Any] = field(default_factory=dict)

    def exposition(self) -> tuple[bytes, bytes]:
        """(text 0.0.4, OpenMetrics) bytes."""
        if self._exposition is None:
            assert self._render is not None
            self._exposition = self._render()
            self._render = None
        return self._exposition

    @property
    def text(self) -> bytes:
        return self.exposition()[0]

    @property
    def openmetrics(self) -> bytes:
        return self.exposition()[1]

    def view(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        if key not in self._views:
            self._views[key] = build()
        return self._views[key]


#: Order of application inside one wake-up: a stream's start before its tokens before its end.
_TYPE_ORDER = {"stream.start": 1, "stream.token": 2, "stream.backpressure": 3, "stream.end": 4}

#: With no scrape for this long, the exposition is rendered on demand instead of every tick.
SCRAPER_GONE_SECONDS = 60.0


class Engine:
    """Owns the trackers and the self-metrics; see the module docstring."""

    def __init__(self, config: Config, trackers: list[Tracker] | None = None) -> None:
        self.config = config
        ingest = config.ingest
        self.limits = Limits(
            max_frame_bytes=ingest.max_frame_bytes,
            max_events=ingest.max_events_per_frame,
            max_string=ingest.max_string_length,
            max_error_message=ingest.max_error_message_length,
        )
        self.trackers: list[Tracker] = list(trackers or [])
        self._routes: dict[str, list[Tracker]] = {t: [] for t in EVENT_TYPES}
        for tracker in self.trackers:
            for event_type in tracker.event_types:
                self._routes[event_type].append(tracker)
        self.frames_received = 0
        self.events_received: Counter[str] = Counter()
        self.events_invalid: Counter[str] = Counter()
        self.strings_truncated = 0
        self.client_dropped: Counter[str] = Counter()
        self.events_derived: Counter[str] = Counter()
        self.ws_clients = 0
        self.ws_dropped_updates = 0
        self.ws_broadcast_seconds = 0.0
        self.ws_render_seconds = 0.0
        self.tick_seconds = 0.0
        self.ready = False
        self.started_wall = time.time()
        self.ticks = 0
        self.last_scrape = -math.inf  # daemon-clock time of the last /metrics request
        #: The daemon's clock (monotonic, continued across restarts); readers use it for ``now``.
        self.clock: Callable[[], float] = time.monotonic
        self.snapshot_: Snapshot | None = None
        self.extra_families: list[Callable[[float], list[Family]]] = []

    # --- writes ---------------------------------------------------------------------------

    def apply(self, result: DecodeResult, now: float, wall: float, frames: int = 1) -> None:
        """Apply what ``frames`` frames decoded to (one frame, or one ingest wake-up's worth).

        Batches of the same type are merged first, so the trackers' fixed cost per batch is
        paid once per type per wake-up; stream lifecycle types are applied start → token →
        backpressure → end.
        """
        self.frames_received += frames
        self.events_invalid.update(result.rejected)
        self.strings_truncated += result.truncated
        merged = merge_batches(result.batches)
        merged.sort(key=lambda b: _TYPE_ORDER.get(b.type, 0))
        for batch in merged:
            self.apply_batch(batch, now, wall)

    def apply_batch(self, batch: Batch, now: float, wall: float) -> None:
        self.events_received[batch.type] += batch.n
        if batch.type == "client":
            self._client(batch)
        for tracker in self._routes[batch.type]:
            derived = tracker.apply(batch, now, wall)
            if derived:
                self._route_derived(tracker, derived, now, wall)

    def _route_derived(
        self, origin: Tracker, derived: list[Batch], now: float, wall: float
    ) -> None:
        """Hand batches a tracker derived to every *other* tracker of their type."""
        for extra in derived:
            self.events_derived[extra.type] += extra.n
            for other in self._routes[extra.type]:
                if other is not origin:
                    other.apply(extra, now, wall)

    def reject_frame(self, reason: str, count: int = 1) -> None:
        """A frame refused before decoding (e.g. a multipart message)."""
        self.frames_received += 1
        self.events_invalid[reason] += count

    def _client(self, batch: Batch) -> None:
        sources = batch.values("source")
        for source, dropped in zip(sources, batch.values("dropped"), strict=True):
            self.client_dropped[source or "default"] += int(dropped)

    # --- state ----------------------------------------------------------------------------

    #: The delivery-accounting counters survive a restart like every other lifetime counter.
    PERSIST = (
        "frames_received",
        "events_received",
        "events_invalid",
        "strings_truncated",
        "client_dropped",
        "events_derived",
        "ws_dropped_updates",
    )

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.PERSIST}

    def restore(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    # --- reads ----------------------------------------------------------------------------

    def snapshot(self, now: float, wall: float) -> Snapshot:
        """Build and cache the snapshot for this tick (renders the exposition once)."""
        started = time.perf_counter()
        for tracker in self.trackers:
            expired = tracker.expire(now)
            if expired:
                self._route_derived(tracker, expired, now, wall)
        self.ticks += 1
        snap = Snapshot(self.ticks, now, wall, _render=lambda: render_both(self.families(now)))
        if now - self.last_scrape <= SCRAPER_GONE_SECONDS:
            snap.exposition()
        self.snapshot_ = snap
        self.tick_seconds = time.perf_counter() - started
        return snap

    def families(self, now: float, *, canonical: bool = False) -> list[Family]:
        """Every family, as /metrics serves it: with ``prometheus.naming = "otel"`` under the
        Prometheus translation of the OpenTelemetry names unless ``canonical`` (what the OTLP
        exporter maps itself)."""
        out: list[Family] = []
        for tracker in self.trackers:
            out.extend(tracker.families(now))
        for extra in self.extra_families:
            out.extend(extra(now))
        out.extend(self._self_families())
        if not canonical and self.config.prometheus.naming == "otel":
            out = translate_families(out)
        return out

    def _self_families(self) -> list[Family]:
        frames = Family("metricsd_frames_received", "counter", "ZeroMQ messages received.")
        frames.counter(self.frames_received)
        events = Family(
            "metricsd_events_received", "counter", "Events accepted and applied, by type."
        )
        for event_type in sorted(EVENT_TYPES):
            events.counter(self.events_received[event_type], (("type", event_type),))
        invalid = Family(
            "metricsd_events_invalid",
            "counter",
            "Events (or undecodable frames) rejected, by reason.",
        )
        for reason in REASONS:
            invalid.counter(self.events_invalid[reason], (("reason", reason),))
        truncated = Family(
            "metricsd_strings_truncated", "counter", "String fields cut to their length limit."
        )
        truncated.counter(self.strings_truncated)
        dropped = Family(
            "metricsd_client_dropped_events",
            "counter",
            "Events that emitters report they dropped before sending, by source.",
        )
        for source in sorted(self.client_dropped):
            dropped.counter(self.client_dropped[source], (("source", source),))
        series = Family("metricsd_series", "gauge", "Label sets held, by tracker.")
        overflow = Family(
            "metricsd_series_overflow",
            "counter",
            "Events folded into the __overflow__ series because a tracker was at its cap.",
        )
        for tracker in self.trackers:
            series.add(tracker.series_count(), (("tracker", tracker.name),))
            overflow.counter(tracker.series_overflow(), (("tracker", tracker.name),))
        ws = Family("metricsd_ws_clients", "gauge", "Connected WebSocket clients.")
        ws.add(self.ws_clients)
        ws_dropped = Family(
            "metricsd_ws_dropped_updates",
            "counter",
            "Stream updates replaced before a slow client took them.",
        )
        ws_dropped.counter(self.ws_dropped_updates)
        ws_cycle = Family(
            "metricsd_ws_broadcast_seconds", "gauge", "Time the last stream broadcast took."
        )
        ws_cycle.add(self.ws_broadcast_seconds)
        ws_render = Family(
            "metricsd_ws_render_seconds",
            "gauge",
            "Time the last rendering of one filter set's data took.",
        )
        ws_render.add(self.ws_render_seconds)
        tick = Family(
            "metricsd_tick_duration_seconds", "gauge", "Time the last tick took to build."
        )
        tick.add(self.tick_seconds)
        build = Family("metricsd_build_info", "gauge", "Build information.")
        build.add(1, (("version", __version__),))
        start = Family(
            "process_start_time_seconds", "gauge", "Start time of the process since unix epoch."
        )
        start.add(self.started_wall)
        return [
            frames,
            events,
            invalid,
            truncated,
            dropped,
            series,
            overflow,
            ws,
            ws_dropped,
            ws_cycle,
            ws_render,
            tick,
            build,
            start,
            *_process_families(),
        ]


def _process_families() -> list[Family]:
    """The process collector: CPU seconds, resident memory, open file descriptors."""
    import os
    import resource

    out: list[Family] = []
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = Family("process_cpu_seconds", "counter", "Total user and system CPU time in seconds.")
    cpu.counter(usage.ru_utime + usage.ru_stime)
    out.append(cpu)
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            pages = int(fh.read().split()[1])
        rss = Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.")
        rss.add(pages * os.sysconf("SC_PAGE_SIZE"))
        out.append(rss)
        fds = Family("process_open_fds", "gauge", "Number of open file descriptors.")
        fds.add(len(os.listdir("/proc/self/fd")))
        out.append(fds)
    except (OSError, ValueError, IndexError):
        pass  # not Linux: CPU time only
    return out
