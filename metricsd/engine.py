"""The engine: the single owner of tracker state.

Ingest hands it decoded wake-ups (``apply``); once per tick it freezes every tracker into a
:class:`~metricsd.snapshot.Snapshot` (``snapshot``), which is what every reader uses: the HTTP
routes, the exposition, the live stream and the exporters never touch a tracker. Changes that
come from readers (budgets set over HTTP, a reload) are commands the engine applies
(:meth:`Engine.command`), so there is exactly one writer.

The engine never reads a clock: ``now`` (the daemon's monotonic clock) and ``wall`` (Unix
seconds) are passed in, so tests drive it with a synthetic clock. It never blocks either: the
daemon runs it on its own thread (:mod:`metricsd.runner`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from metricsd import __version__
from metricsd.batch import Batch
from metricsd.config import Config
from metricsd.decode import DecodeResult
from metricsd.export.prometheus import Family
from metricsd.schema import EVENT_TYPES
from metricsd.series import OVERFLOW
from metricsd.snapshot import EngineCounters, Snapshot
from metricsd.trackers.base import Ctx, Providers
from metricsd.validate import Limits

__all__ = ["Engine", "Tracker"]


class Tracker(Protocol):
    """What the engine needs of a tracker."""

    name: str
    event_types: frozenset[str]

    def apply(self, batch: Batch, ctx: Ctx) -> list[Batch] | None:
        """Record a batch. May return derived batches (e.g. the ``request`` outcomes of
        finished streams), which the engine hands to every *other* tracker of their type."""
        ...

    def expire(self, ctx: Ctx) -> list[Batch] | None:
        """Drop idle state. May return derived batches like ``apply`` (e.g. the request
        outcomes of streams that ended as abandoned), routed the same way."""
        ...

    def freeze(self, now: float) -> Any:
        """The tracker's data as of now, immutable: what its readers get."""
        ...

    def series_count(self) -> int: ...

    def series_overflow(self) -> int: ...


#: Order of application inside one wake-up: a stream's start before its tokens before its end.
_TYPE_ORDER = {"stream.start": 1, "stream.token": 2, "stream.backpressure": 3, "stream.end": 4}
#: Types whose ``provider`` the engine resolves (from the model when not given).
PRIMED = frozenset({"request", "error", "usage"})
#: Distinct ``source`` labels of client drop reports kept (SPEC §8: every label is bounded).
MAX_SOURCES = 1000


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
            max_clock_skew=config.limits.max_clock_skew,
        )
        self.trackers: list[Tracker] = list(trackers or [])
        self._routes: dict[str, list[Tracker]] = {t: [] for t in EVENT_TYPES}
        for tracker in self.trackers:
            for event_type in tracker.event_types:
                self._routes[event_type].append(tracker)
        self.providers = Providers(config.providers.prefixes)
        self.frames_received = 0
        self.events_received: Counter[str] = Counter()
        self.events_invalid: Counter[str] = Counter()
        self.strings_truncated = 0
        self.client_dropped: Counter[str] = Counter()
        self.events_derived: Counter[str] = Counter()
        self.started_wall = time.time()
        self.ticks = 0
        self.version = 0  # write sequence number: bumped for every batch applied
        self.tick_seconds = 0.0
        self.snapshot_: Snapshot | None = None
        self._frozen: dict[str, tuple[int, Any]] = {}
        #: tracker name → the event types whose additive part other processes apply
        #: (``--workers``): for those, this engine applies only the ordered part and adds
        #: up the workers' deltas (:meth:`absorb`).
        self.remote: dict[str, frozenset[str]] = {}

    # --- writes ---------------------------------------------------------------------------

    def apply(self, result: DecodeResult, now: float, wall: float, frames: int = 1) -> None:
        """Apply what ``frames`` frames decoded to (one frame, or one ingest wake-up's worth);
        stream lifecycle types go start → token → backpressure → end."""
        self.frames_received += frames
        if result.rejected:
            self.events_invalid.update(result.rejected)
        self.strings_truncated += result.truncated
        if result.elided:
            self.events_received.update(result.elided)
        batches = sorted(result.batches, key=lambda b: _TYPE_ORDER.get(b.type, 0))
        for batch in batches:
            self.apply_batch(batch, now, wall)

    def apply_batch(self, batch: Batch, now: float, wall: float) -> None:
        self.version += 1
        ctx = Ctx(now, wall, self.version)
        self.events_received[batch.type] += batch.n
        if batch.type in PRIMED:
            self.providers.resolve(batch)
        if batch.type == "client":
            self._client(batch)
        remote = self.remote
        for tracker in self._routes[batch.type]:
            if remote and batch.type in remote.get(tracker.name, ()):
                tracker.apply_ordered(batch, ctx)  # type: ignore[attr-defined]
                continue
            derived = tracker.apply(batch, ctx)
            if derived:
                self._route_derived(tracker, derived, ctx)

    def absorb(self, name: str, state: Any, now: float, wall: float) -> None:
        """Add a worker's delta of tracker ``name`` (what its ``apply_additive`` recorded,
        as its ``state``) to this engine's tracker of that name."""
        tracker = next((t for t in self.trackers if t.name == name), None)
        if tracker is None or name not in self.remote:
            raise ValueError(f"no tracker {name!r} takes deltas")
        self.version += 1
        tracker.absorb(state, Ctx(now, wall, self.version))  # type: ignore[attr-defined]

    def _route_derived(self, origin: Tracker, derived: list[Batch], ctx: Ctx) -> None:
        """Hand batches a tracker derived to every *other* tracker of their type."""
        for extra in derived:
            self.events_derived[extra.type] += extra.n
            if extra.type in PRIMED:
                self.providers.resolve(extra)
            for other in self._routes[extra.type]:
                if other is not origin:
                    other.apply(extra, ctx)

    def reject_frame(self, reason: str, count: int = 1) -> None:
        """A frame refused before decoding (e.g. a multipart message)."""
        self.frames_received += 1
        self.events_invalid[reason] += count

    def _client(self, batch: Batch) -> None:
        sources = batch.values("source")
        dropped = self.client_dropped
        for source, count in zip(sources, batch.values("dropped"), strict=True):
            name = source or "default"
            if name not in dropped and len(dropped) >= MAX_SOURCES:
                name = OVERFLOW
            dropped[name] += int(count)

    def command(self, fn: Callable[[], Any]) -> Any:
        """Run a change that comes from a reader (e.g. a budget PUT) as the single writer."""
        self.version += 1
        return fn()

    # --- reads ----------------------------------------------------------------------------

    def snapshot(self, now: float, wall: float, extra: dict[str, Any] | None = None) -> Snapshot:
        """Expire idle state, freeze every tracker, and return the new snapshot.

        A tracker that has not changed since its last freeze is not frozen again (its frozen
        data reads the same at any later time); so an idle daemon does almost nothing here.
        """
        started = time.perf_counter()
        self.version += 1
        ctx = Ctx(now, wall, self.version)
        for tracker in self.trackers:
            expired = tracker.expire(ctx)
            if expired:
                self._route_derived(tracker, expired, ctx)
        parts: dict[str, Any] = {}
        alerts: list[dict[str, Any]] = []
        for tracker in self.trackers:
            parts[tracker.name] = self._freeze(tracker, now)
            outbox = getattr(tracker, "alerts", None)
            while outbox:
                alerts.append(outbox.popleft())
        self.ticks += 1
        counters = EngineCounters(
            frames_received=self.frames_received,
            events_received=dict(self.events_received),
            events_invalid=dict(self.events_invalid),
            strings_truncated=self.strings_truncated,
            client_dropped=dict(self.client_dropped),
            events_derived=dict(self.events_derived),
            series={t.name: (t.series_count(), t.series_overflow()) for t in self.trackers},
            tick_seconds=self.tick_seconds,
            started_wall=self.started_wall,
            version=__version__,
        )
        snap = Snapshot(
            tick=self.ticks,
            now=now,
            wall=wall,
            config=self.config,
            parts=parts,
            counters=counters,
            alerts=tuple(alerts),
            extra=extra or {},
        )
        self.snapshot_ = snap
        self.tick_seconds = time.perf_counter() - started
        return snap

    def _freeze(self, tracker: Tracker, now: float) -> Any:
        """The tracker's frozen data, reused while the tracker reports nothing changed."""
        found = self._frozen.get(tracker.name)
        if found is not None and not getattr(tracker, "dirty", True):
            return found[1]
        frozen = tracker.freeze(now)
        if hasattr(tracker, "dirty"):
            tracker.dirty = False
        self._frozen[tracker.name] = (self.version, frozen)
        return frozen

    def families(self, now: float, wall: float, *, canonical: bool = False) -> list[Family]:
        """The exposition of a fresh snapshot (for tests and tools)."""
        return self.snapshot(now, wall).families(canonical=canonical)

    # --- state ----------------------------------------------------------------------------

    #: The delivery-accounting counters survive a restart like every other lifetime counter.
    PERSIST = (
        "frames_received",
        "events_received",
        "events_invalid",
        "strings_truncated",
        "client_dropped",
        "events_derived",
    )

    def state(self, now: float = 0.0) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.PERSIST:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, Counter) else value
        return out

    def restore(self, state: Any, now: float = 0.0) -> None:
        from metricsd.persist import Reader

        r = Reader("engine")
        m = r.map(state)
        for name in self.PERSIST:
            if name not in m:
                continue
            current = getattr(self, name)
            if isinstance(current, Counter):
                limit = MAX_SOURCES + 1 if name == "client_dropped" else 64
                setattr(self, name, Counter(r.counts(m[name], name, limit)))
            else:
                setattr(self, name, r.int(m[name], name, 0))
