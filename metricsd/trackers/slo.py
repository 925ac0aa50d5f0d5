"""SLOs, error budgets and multi-window burn rates (SPEC §4.5).

Each configured SLO (``[[slo]]``; one default ``availability`` SLO at 99.9 % over 30 days)
selects outcomes by endpoint and model and classifies each as good or bad (bad by default:
``status ≥ 500`` or ``status == 429``; an ``error`` event without a status reads as 500, so it
is bad). Counts of (outcomes, bad) are kept in two rings of fixed size:

- a fine ring of 10-second slots over the last hour, for the 5 m, 30 m and 1 h windows;
- a coarse ring of 1-minute slots over the budget window (at least 3 days), for 6 h, 1 d, 3 d
  and the budget itself: 43 200 slots × 2 × 8 bytes ≈ 690 KB for 30 days.

A window of W seconds is the current slot plus the ``ceil(W / slot) − 1`` before it, so a 5 m
window covers the last 4 m 50 s – 5 m and a 6 h window the last 5 h 59 m – 6 h. Closed slots never
change (writes only go to the current slot), so their sums are cached until the slot turns.

``burn_rate(w)`` = (bad ÷ total over w) ÷ (1 − objective), 0 with no traffic. Decimal
arithmetic from the objective as written (0.999 → exactly 0.001 allowed) keeps budgets and burn
rates free of float residue: 99 good + 1 bad at 99.9 % burns at exactly 10.0, and 1 001 outcomes
allow exactly 1.001 bad ones (FakeAI floored a float product and reported 100 % remaining while
the SLO was violated). Alerts follow the Google SRE workbook's multi-window, multi-burn-rate
rule; an alert *starting* appends one ``slo_alert`` record to :attr:`SloTracker.alerts`.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.batch import Batch
from metricsd.config import Config, SloConfig
from metricsd.outcomes import status_column
from metricsd.persist import INT64_MAX, Reader
from metricsd.series import SeriesTable
from metricsd.trackers.base import Ctx
from metricsd.window import CounterLog, Geometry

__all__ = ["WINDOWS", "CountRing", "SloFrozen", "SloState", "SloStatus", "SloTracker"]

log = logging.getLogger("metricsd.slo")

#: Burn-rate windows: name → seconds.
WINDOWS: Final = {
    "5m": 300.0,
    "30m": 1800.0,
    "1h": 3600.0,
    "6h": 21600.0,
    "1d": 86400.0,
    "3d": 259200.0,
}
FINE_SLOT: Final = 10.0
FINE_SLOTS: Final = 360  # 1 hour
COARSE_SLOT: Final = 60.0
ENDPOINT_WINDOW: Final = 3600.0
MAX_ENDPOINTS: Final = 1000  # per SLO, for endpoint_error_rates
MAX_ALERTS: Final = 100


class CountRing:
    """(outcomes, bad) per time slot over a fixed number of slots; see the module docstring."""

    __slots__ = ("_closed", "_closed_head", "counts", "head", "slot_seconds")

    def __init__(self, slot_seconds: float, slots: int) -> None:
        self.slot_seconds = slot_seconds
        self.counts = np.zeros((slots, 2), dtype=np.int64)
        self.head: int | None = None  # index of the newest slot
        self._closed: dict[int, npt.NDArray[np.int64]] = {}
        self._closed_head: int | None = None

    def _advance(self, now: float) -> int:
        """Move the head to ``now``'s slot, clearing the slots skipped; return the head.

        A time before the head (never, with a monotonic clock) counts in the head slot.
        """
        slot = int(now // self.slot_seconds)
        head = self.head
        if head is None:
            self.head = slot
            return slot
        if slot <= head:
            return head
        size = len(self.counts)
        if slot - head >= size:
            self.counts[:] = 0
        else:
            self.counts[np.arange(head + 1, slot + 1) % size] = 0
        self.head = slot
        return slot

    def add(self, now: float, total: int, bad: int) -> None:
        row = self.counts[self._advance(now) % len(self.counts)]
        row[0] += total
        row[1] += bad

    def merge(self, counts: npt.NDArray[np.int64], head: int | None) -> None:
        """Add another ring's slots (``--workers``: a worker's delta); those older than this
        ring keeps are gone here already."""
        if head is None:
            return
        size = len(self.counts)
        mine = self._advance(head * self.slot_seconds)
        first = max(head, mine) - size + 1
        index = np.arange(max(head - size + 1, first), head + 1) % size
        self.counts[index] += counts[index]
        self._closed = {}
        self._closed_head = None

    def sums(self, now: float, seconds: float) -> tuple[int, int]:
        """(outcomes, bad) over the current slot and the ``ceil(seconds/slot) − 1`` before."""
        head = self._advance(now)
        size = len(self.counts)
        k = max(1, min(size, math.ceil(seconds / self.slot_seconds - 1e-9)))
        if self._closed_head != head:
            self._closed = {}
            self._closed_head = head
        closed = self._closed.get(k)
        if closed is None:
            if k > 1:
                closed = self.counts[np.arange(head - k + 1, head) % size].sum(axis=0)
            else:
                closed = np.zeros(2, dtype=np.int64)
            self._closed[k] = closed
        current = self.counts[head % size]
        return int(closed[0] + current[0]), int(closed[1] + current[1])


def _duration_name(seconds: float) -> str:
    """Prometheus-style duration: 2592000 → ``30d``, 7200 → ``2h``, 90 → ``90s``."""
    whole = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


@dataclass(frozen=True, slots=True)
class SloFrozen:
    """One SLO evaluated at a snapshot's time: everything its views show."""

    config: SloConfig
    name: str
    allowed: float
    status: SloStatus
    ratios: dict[str, tuple[int, int]]  # window name → (outcomes, bad), the period included
    period: str
    period_burn: float
    endpoint_rates: dict[str, float]


@dataclass(frozen=True, slots=True)
class SloStatus:
    """One SLO evaluated at one instant; every number a plain Python value."""

    total: int
    bad: int
    budget_total: float
    budget_remaining: float
    budget_percentage: float
    violated: bool
    burn_rates: dict[str, float]
    page: bool
    ticket: bool


class SloState:
    """One SLO: its selector, bad-outcome rule, rings and alert state."""

    def __init__(self, config: SloConfig, geometry: Geometry, ttl: float) -> None:
        self.config = config
        self.geometry = geometry
        self.name = config.name
        #: The allowed bad fraction, exact for the objective as written.
        self.allowed = Decimal(1) - Decimal(repr(config.objective))
        self.objective = Decimal(repr(config.objective))
        self.fine = CountRing(FINE_SLOT, FINE_SLOTS)
        span = max(config.budget_window, WINDOWS["3d"])
        self.coarse = CountRing(COARSE_SLOT, math.ceil(span / COARSE_SLOT - 1e-9))
        #: Per endpoint: (outcomes, bad) in windows, for ``endpoint_error_rates``.
        self.endpoints = SeriesTable(
            f"slo:{config.name}", 1, MAX_ENDPOINTS, ttl, hold=geometry.long_seconds
        )
        self.endpoint_window = CounterLog(geometry, 2)
        self._selected: dict[tuple[str, str], bool] = {}
        self._endpoint_set = frozenset(config.endpoints)
        self._model_set = frozenset(config.models)
        self._bad_statuses = np.array(sorted(set(config.bad_statuses)), dtype=np.int64)
        self.page = False
        self.ticket = False
        self._status: tuple[float, SloStatus] | None = None

    def selects(self, endpoint: str, model: str) -> bool:
        key = (endpoint, model)
        found = self._selected.get(key)
        if found is None:
            found = (not self._endpoint_set or endpoint in self._endpoint_set) and (
                not self._model_set or model in self._model_set
            )
            if len(self._selected) < 100_000:
                self._selected[key] = found
        return found

    def bad_mask(self, status: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        bad = status >= self.config.bad_min_status
        if self._bad_statuses.size:
            bad |= np.isin(status, self._bad_statuses)
        return bad

    def add(self, now: float, total: int, bad: int) -> None:
        self.fine.add(now, total, bad)
        self.coarse.add(now, total, bad)
        self._status = None

    def window(self, now: float, seconds: float) -> tuple[int, int]:
        """(outcomes, bad) over a window; up to 1 h from the fine ring."""
        ring = self.fine if seconds <= FINE_SLOT * FINE_SLOTS else self.coarse
        return ring.sums(now, seconds)

    def burn(self, total: int, bad: int) -> float:
        if total == 0 or bad == 0:
            return 0.0
        return float(Decimal(bad) / (Decimal(total) * self.allowed))

    def evaluate(self, now: float) -> SloStatus:
        """The SLO at ``now`` (cached until the next write or another ``now``)."""
        if self._status is not None and self._status[0] == now:
            return self._status[1]
        rates = {name: self.burn(*self.window(now, sec)) for name, sec in WINDOWS.items()}
        total, bad = self.window(now, self.config.budget_window)
        budget = Decimal(total) * self.allowed
        remaining = max(Decimal(0), budget - bad)
        # A zero budget means no traffic yet: nothing allowed and nothing spent reads as 100 %.
        percentage = float(remaining / budget * 100) if budget > 0 else (0.0 if bad else 100.0)
        status = SloStatus(
            total=total,
            bad=bad,
            budget_total=float(budget),
            budget_remaining=float(remaining),
            budget_percentage=percentage,
            violated=total > 0 and Decimal(total - bad) < Decimal(total) * self.objective,
            burn_rates=rates,
            page=(rates["1h"] > 14.4 and rates["5m"] > 14.4)
            or (rates["6h"] > 6 and rates["30m"] > 6),
            ticket=rates["3d"] > 1 and rates["6h"] > 1,
        )
        self._status = (now, status)
        return status

    def endpoint_error_rates(self, now: float) -> dict[str, float]:
        """endpoint → bad ÷ outcomes over the last hour, for endpoints with traffic."""
        out: dict[str, float] = {}
        sums, _span = self.endpoint_window.window(now, ENDPOINT_WINDOW, self.endpoints.capacity)
        for (endpoint,), sid in self.endpoints.items():
            if sums[sid, 0] > 0:
                out[endpoint] = float(sums[sid, 1] / sums[sid, 0])
        return out

    def frozen(self, now: float) -> SloFrozen:
        """What the views read, evaluated at ``now``."""
        windows = dict(WINDOWS)
        period = _duration_name(self.config.budget_window)
        windows.setdefault(period, self.config.budget_window)
        return SloFrozen(
            config=self.config,
            name=self.name,
            allowed=float(self.allowed),
            status=self.evaluate(now),
            ratios={w: self.window(now, sec) for w, sec in windows.items()},
            period=period,
            period_burn=self.burn(*self.window(now, self.config.budget_window)),
            endpoint_rates=self.endpoint_error_rates(now),
        )


class SloTracker:
    """Every configured SLO; see the module docstring."""

    name = "slo"
    event_types = frozenset({"request", "error"})
    live_category = "slo"

    def __init__(
        self, config: Config, geometry: Geometry, start: float, wall_offset: float | None = None
    ) -> None:
        self.config = config
        self.start = start
        ttl = config.limits.series_ttl
        self.slos = [SloState(s, geometry, ttl) for s in (config.slo or (SloConfig(),))]
        #: ``slo_alert`` records, appended when an alert starts; the WebSocket hub drains them.
        self.alerts: deque[dict[str, Any]] = deque(maxlen=MAX_ALERTS)
        self._wall_offset = wall_offset  # wall − now, learnt from the last batch
        self.dirty = True

    def apply(self, batch: Batch, ctx: Ctx) -> None:
        self.apply_additive(batch, ctx)

    def apply_ordered(self, batch: Batch, ctx: Ctx) -> None:
        """Nothing of a batch depends on its order here (``--workers``)."""

    def apply_additive(self, batch: Batch, ctx: Ctx) -> None:
        if batch.n == 0:
            return
        now = ctx.now
        self._wall_offset = ctx.wall - now
        self.dirty = True
        status = status_column(batch)
        groups = batch.groups(("endpoint", "model"))
        for slo in self.slos:
            chosen = [i for i, (e, m) in enumerate(groups.keys) if slo.selects(e, m)]
            if not chosen:
                continue
            bad = groups.sums(slo.bad_mask(status))
            index = np.asarray(chosen, dtype=np.intp)
            totals, bads = groups.counts[index], bad[index]
            slo.add(now, int(totals.sum()), int(bads.sum()))
            keys = [(groups.keys[i][0],) for i in chosen]
            ids = slo.endpoints.ids(keys, totals, now, ctx.version)
            slo.endpoint_window.add(now, ids, np.column_stack([totals, bads]))

    def absorb(self, state: Any, ctx: Ctx) -> None:
        """Add a worker's :meth:`state` of :meth:`apply_additive` (``--workers``): each SLO's
        counts by name (alerts are evaluated here, on the tick, from the sums)."""
        r = Reader("slo delta")
        m = r.map(state)
        now = ctx.now
        self._wall_offset = ctx.wall - now
        saved = r.map(m.get("slos"), "slos")
        for slo in self.slos:
            data = saved.get(slo.name)
            if data is None:
                continue
            d = r.map(data, slo.name)
            for name, ring in (("fine", slo.fine), ("coarse", slo.coarse)):
                counts, head = _ring_parse(ring, d.get(name), r, f"{slo.name}.{name}")
                ring.merge(counts, head)
            window = d.get("endpoint_window")
            path = f"{slo.name}.endpoints"
            events = slo.endpoint_window.saved_counts(window, r, path)  # outcomes per endpoint
            remap = slo.endpoints.absorb(d.get("endpoints"), r, now, ctx.version, events)
            slo.endpoint_window.absorb(window, remap, r, path, now)
            slo._status = None
        self.dirty = True

    def expire(self, ctx: Ctx) -> None:
        """Evaluate alerts (edge-triggered) and drop idle per-endpoint series."""
        now = ctx.now
        self.dirty = True  # burn rates move with time: frozen again every tick (it is cheap)
        for slo in self.slos:
            slo.endpoints.expire(now)
            status = slo.evaluate(now)
            for level, active in (("page", status.page), ("ticket", status.ticket)):
                was = getattr(slo, level)
                if active and not was:
                    self._alert(slo, level, status, now)
                setattr(slo, level, active)

    def _alert(self, slo: SloState, level: str, status: SloStatus, now: float) -> None:
        record = {
            "type": "slo_alert",
            "timestamp": now + (self._wall_offset or 0.0),
            "slo": slo.name,
            "level": level,
            "burn_rates": dict(status.burn_rates),
        }
        self.alerts.append(record)
        log.warning(
            "SLO %s: %s alert started (burn rates %s)",
            slo.name,
            level,
            ", ".join(f"{w}={r:.2f}" for w, r in status.burn_rates.items()),
        )

    def series_count(self) -> int:
        return sum(len(s.endpoints) for s in self.slos)

    def series_overflow(self) -> int:
        return sum(s.endpoints.overflowed for s in self.slos)

    # --- state and reload -----------------------------------------------------------------

    def state(self, now: float) -> dict[str, Any]:
        """SPEC §7: each SLO's counts and alert state, keyed by name (plain values)."""
        return {
            "start": self.start,
            "wall_offset": self._wall_offset,
            "slos": {s.name: _slo_state(s, now) for s in self.slos},
        }

    def restore(self, state: Any, now: float) -> None:
        r = Reader("slo")
        m = r.map(state)
        self.start = r.float(m.get("start"), "start")
        self._wall_offset = r.opt_float(m.get("wall_offset"), "wall_offset")
        saved = r.map(m.get("slos"), "slos")
        for slo in self.slos:
            data = saved.get(slo.name)
            if data is not None:
                _load(slo, data, r, now)
        self.dirty = True

    def reload(self, config: Config) -> None:
        """SIGHUP: the SLOs of the new config; one with the same name, objective and budget
        window keeps its counts, a changed one starts empty."""
        ttl = config.limits.series_ttl
        old = {s.name: _slo_data(s) for s in self.slos}
        geometry = self.slos[0].geometry if self.slos else None
        assert geometry is not None
        self.config = config
        self.slos = [SloState(s, geometry, ttl) for s in (config.slo or (SloConfig(),))]
        for slo in self.slos:
            data = old.get(slo.name)
            if data is not None:
                _adopt(slo, data)

    def freeze(self, now: float) -> Any:
        from metricsd.trackers.slo_view import SloView

        return SloView(self.config, tuple(slo.frozen(now) for slo in self.slos))


def _ring_state(ring: CountRing) -> dict[str, Any]:
    return {"counts": ring.counts.copy(), "head": ring.head}


def _ring_parse(
    ring: CountRing, value: Any, r: Any, path: str
) -> tuple[npt.NDArray[np.int64], int | None]:
    """A saved ring's counts and head, checked against ``ring``'s size."""
    m = r.map(value, path)
    counts = r.array(m.get("counts"), f"{path}.counts", np.int64, (2,))
    head = m.get("head")
    if len(counts) != len(ring.counts):
        raise r.fail(f"{len(counts)} slots, not {len(ring.counts)}", path)
    return counts, None if head is None else r.int(head, f"{path}.head", 0, INT64_MAX)


def _ring_load(ring: CountRing, value: Any, r: Any, path: str) -> None:
    counts, ring.head = _ring_parse(ring, value, r, path)
    ring.counts[:] = counts
    ring._closed = {}
    ring._closed_head = None


def _slo_state(slo: SloState, now: float) -> dict[str, Any]:
    table, rows = slo.endpoints.state()
    return {
        "objective": str(slo.objective),
        "budget_window": slo.config.budget_window,
        "fine": _ring_state(slo.fine),
        "coarse": _ring_state(slo.coarse),
        "endpoints": table,
        "endpoint_window": slo.endpoint_window.state(now, rows),
        "page": slo.page,
        "ticket": slo.ticket,
    }


def _load(slo: SloState, data: Any, r: Any, now: float) -> None:
    """Carry saved counts into an SLO if its definition is the same; else it starts empty."""
    m = r.map(data, slo.name)
    if (
        m.get("objective") != str(slo.objective)
        or r.float(m.get("budget_window"), "budget_window") != slo.config.budget_window
    ):
        log.info("SLO %s changed its objective or budget window: its counts start empty", slo.name)
        return
    _ring_load(slo.fine, m.get("fine"), r, f"{slo.name}.fine")
    _ring_load(slo.coarse, m.get("coarse"), r, f"{slo.name}.coarse")
    remap = slo.endpoints.restore(m.get("endpoints"), r, now)
    slo.endpoint_window.restore(m.get("endpoint_window"), remap, r, f"{slo.name}.endpoints")
    slo.page = r.bool(m.get("page"), "page")
    slo.ticket = r.bool(m.get("ticket"), "ticket")
    slo._status = None


def _slo_data(slo: SloState) -> dict[str, Any]:
    return {
        "objective": str(slo.objective),
        "budget_window": slo.config.budget_window,
        "fine": slo.fine,
        "coarse": slo.coarse,
        "endpoints": slo.endpoints,
        "endpoint_window": slo.endpoint_window,
        "page": slo.page,
        "ticket": slo.ticket,
    }


def _adopt(slo: SloState, data: dict[str, Any]) -> None:
    """Carry saved counts into an SLO if its definition is the same; else it starts empty."""
    if data["objective"] != str(slo.objective) or data["budget_window"] != slo.config.budget_window:
        log.info("SLO %s changed its objective or budget window: its counts start empty", slo.name)
        return
    slo.fine = data["fine"]
    slo.coarse = data["coarse"]
    slo.endpoints = data["endpoints"]
    slo.endpoint_window = data["endpoint_window"]
    slo.page = data["page"]
    slo.ticket = data["ticket"]
    slo._status = None
