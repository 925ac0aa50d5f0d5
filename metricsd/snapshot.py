"""The frozen Snapshot: the only thing readers of metricsd's numbers ever see.

The engine builds one per tick (:meth:`metricsd.engine.Engine.snapshot`): every tracker's data
frozen (immutable copies and views, see each tracker's ``freeze``), the engine's own counters,
and the alerts raised since the previous tick. The HTTP routes, the Prometheus and OpenMetrics
exposition, the WebSocket hub and the OTLP exporter all read a snapshot and nothing else, so
they can run on any thread, at any time, while the engine keeps applying batches.

Views (the JSON of each route) are computed on first use and kept with the snapshot, so every
reader of one tick shares one computation; :data:`metricsd.views.VIEWS` names them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from metricsd.config import Config
from metricsd.export.prometheus import Family

__all__ = ["EngineCounters", "Snapshot"]


@dataclass(frozen=True, slots=True)
class EngineCounters:
    """The engine's self-metrics at the snapshot."""

    frames_received: int
    events_received: dict[str, int]
    events_invalid: dict[str, int]
    strings_truncated: int
    client_dropped: dict[str, int]
    events_derived: dict[str, int]
    series: dict[str, tuple[int, int]]  # tracker → (series held, overflowed)
    tick_seconds: float
    started_wall: float
    version: str


@dataclass(slots=True)
class Snapshot:
    """What readers see between two ticks; see the module docstring."""

    tick: int
    now: float
    wall: float
    config: Config
    parts: dict[str, Any]
    counters: EngineCounters
    alerts: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    _views: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _locks: dict[tuple[Any, ...], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _exposition: dict[str, Any] = field(default_factory=dict)

    def part(self, name: str) -> Any:
        """A tracker's frozen data (None when that tracker is not running)."""
        return self.parts.get(name)

    def view(self, name: str, *args: Any) -> Any:
        """The view ``name`` with ``args`` (see :data:`metricsd.views.VIEWS`), computed once
        per snapshot; thread-safe."""
        key = (name, *args)
        try:
            return self._views[key]
        except KeyError:
            pass
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._views:
                from metricsd.views import VIEWS

                self._views[key] = VIEWS[name](self, *args)
            return self._views[key]

    def compute(self, name: str, *args: Any) -> Any:
        """A view that depends on more than the snapshot (e.g. on the reader's wall clock):
        computed each time, not kept."""
        from metricsd.views import VIEWS

        return VIEWS[name](self, *args)

    def cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """Any value derived from the snapshot, computed once (thread-safe)."""
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._views:
                self._views[key] = build()
            return self._views[key]

    # --- Prometheus -----------------------------------------------------------------------

    def families(self, *, canonical: bool = False, extra: Iterable[Family] = ()) -> list[Family]:
        """Every family, as /metrics serves it: with ``prometheus.naming = "otel"`` under the
        Prometheus translation of the OpenTelemetry names unless ``canonical`` (what the OTLP
        exporter maps itself). ``extra``: families of the serving side (WebSocket, webhook)."""
        from metricsd.export.selfmetrics import self_families

        out: list[Family] = []
        for part in self.parts.values():
            out.extend(part.families(self.now))
        out.extend(extra)
        out.extend(self_families(self.counters))
        if not canonical and self.config.prometheus.naming == "otel":
            from metricsd.export.naming import translate_families

            out = translate_families(out)
        return out
