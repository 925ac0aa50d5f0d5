"""The trackers of a metricsd engine, wired once: for ``metricsd serve`` and for the client's
embedded mode (:mod:`metricsd.embedded`), so both compute the same numbers the same way."""

from __future__ import annotations

from typing import Any

from metricsd.config import Config
from metricsd.engine import Engine
from metricsd.pricing import PriceTable
from metricsd.trackers.cost import CostTracker
from metricsd.trackers.custom import CustomTracker
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.window import Geometry

__all__ = ["build_engine"]


def build_trackers(
    config: Config,
    start: float,
    wall: float,
    only: frozenset[str] | None = None,
    pricing: PriceTable | None = None,
) -> list[Any]:
    """Fresh trackers (all, or the ones named in ``only``); ``pricing``: a price table
    already loaded from ``config`` (a worker makes trackers afresh after every delta)."""
    geometry = Geometry(slot_seconds=config.engine.slot_seconds)
    trackers: list[Any] = [
        RequestTracker(config, geometry, start),
        StreamingTracker(config, geometry, start),
        ErrorTracker(config, geometry, start),
        SloTracker(config, geometry, start, wall_offset=wall - start),
        CostTracker(config, start, wall, pricing),
        CustomTracker(config),
    ]
    return trackers if only is None else [t for t in trackers if t.name in only]


def build_engine(
    config: Config, start: float, wall: float, only: frozenset[str] | None = None
) -> Engine:
    """An engine with every tracker (or the ones named in ``only``); ``start`` is the daemon's
    clock now, ``wall`` Unix time."""
    trackers = build_trackers(config, start, wall, only)
    engine = Engine(config, trackers)
    # A custom metric may not take the name of a built-in family.
    names = {
        f.name for part in engine.snapshot(start, wall).parts.values() for f in part.families(start)
    }
    for custom in (t for t in trackers if isinstance(t, CustomTracker)):
        custom.reserved = frozenset(names - {"metricsd_custom_refused"}) | _SELF_NAMES
    engine.ticks = 0
    return engine


#: metricsd's own family names are reserved too (their prefixes already are: metricsd_, process_).
_SELF_NAMES = frozenset({"process_cpu_seconds", "process_resident_memory_bytes"})
