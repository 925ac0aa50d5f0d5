"""metricsd's own families (SPEC §1.5, §3.1 "Self"): delivery accounting, series, the process.

Pure functions of a snapshot's :class:`~metricsd.snapshot.EngineCounters`, plus the process
collector (read at render time: CPU seconds, resident memory, open descriptors).
"""

from __future__ import annotations

import os
import resource
from typing import Any

from metricsd.decode import REASONS
from metricsd.export.prometheus import Family
from metricsd.schema import EVENT_TYPES

__all__ = ["process_families", "self_families", "ws_families"]


def self_families(c: Any) -> list[Family]:
    frames = Family("metricsd_frames_received", "counter", "ZeroMQ messages received.")
    frames.counter(c.frames_received)
    events = Family("metricsd_events_received", "counter", "Events accepted and applied, by type.")
    for event_type in sorted(EVENT_TYPES):
        events.counter(c.events_received.get(event_type, 0), (("type", event_type),))
    invalid = Family(
        "metricsd_events_invalid",
        "counter",
        "Events (or undecodable frames) rejected, by reason.",
    )
    for reason in REASONS:
        invalid.counter(c.events_invalid.get(reason, 0), (("reason", reason),))
    truncated = Family(
        "metricsd_strings_truncated", "counter", "String fields cut to their length limit."
    )
    truncated.counter(c.strings_truncated)
    dropped = Family(
        "metricsd_client_dropped_events",
        "counter",
        "Events that emitters report they dropped before sending, by source.",
    )
    for source in sorted(c.client_dropped):
        dropped.counter(c.client_dropped[source], (("source", source),))
    series = Family("metricsd_series", "gauge", "Label sets held, by tracker.")
    overflow = Family(
        "metricsd_series_overflow",
        "counter",
        "Events folded into the __overflow__ series because a tracker was at its cap.",
    )
    for name, (held, folded) in c.series.items():
        series.add(held, (("tracker", name),))
        overflow.counter(folded, (("tracker", name),))
    tick = Family("metricsd_tick_duration_seconds", "gauge", "Time the last tick took to build.")
    tick.add(c.tick_seconds)
    build = Family("metricsd_build_info", "gauge", "Build information.")
    build.add(1, (("version", c.version),))
    start = Family(
        "process_start_time_seconds", "gauge", "Start time of the process since unix epoch."
    )
    start.add(c.started_wall)
    return [
        frames,
        events,
        invalid,
        truncated,
        dropped,
        series,
        overflow,
        tick,
        build,
        start,
        *process_families(),
    ]


def ws_families(clients: int, dropped: int, broadcast: float, render: float) -> list[Family]:
    """The live stream's families (the hub lives on the serving side, not in the engine)."""
    ws = Family("metricsd_ws_clients", "gauge", "Connected WebSocket clients.")
    ws.add(clients)
    ws_dropped = Family(
        "metricsd_ws_dropped_updates",
        "counter",
        "Stream updates replaced before a slow client took them.",
    )
    ws_dropped.counter(dropped)
    ws_cycle = Family(
        "metricsd_ws_broadcast_seconds", "gauge", "Time the last stream broadcast took."
    )
    ws_cycle.add(broadcast)
    ws_render = Family(
        "metricsd_ws_render_seconds",
        "gauge",
        "Time the last rendering of one filter set's data took.",
    )
    ws_render.add(render)
    return [ws, ws_dropped, ws_cycle, ws_render]


def process_families() -> list[Family]:
    """The process collector: CPU seconds, resident memory, open file descriptors."""
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
