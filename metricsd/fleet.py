"""Fleet budgets (SPEC §8, ``cost.budget_store``): the engine thread's side, no I/O.

Every daemon of a fleet writes, per budgeted key and budget period, its own cumulative spend in
that period into one Redis hash field named by its instance id (:mod:`metricsd.fleet_store`
does the I/O on a thread of its own). The fleet's spend is the sum of the hash's fields; this
daemon adds the other daemons' fields, as last read, to its own spend, which it always knows
exactly and at once. Because a field holds a total and not an increment, writing it again is
harmless: nothing a retry, a reconnection or a Redis that lost its data can do makes spend count
twice, and after a loss every daemon simply writes its fields again.

Here, on the engine thread:

- :meth:`Ledger.tick` (each tick, from the cost tracker's ``expire``) works out the value each
  budget's hash should hold for this daemon, for the keys that moved, and hands the changed
  values to the store thread through the :class:`Outbox` (a dict swap under a lock);
- :meth:`Ledger.apply` (a command the store thread submits after each round trip) takes the
  other daemons' totals, re-checks the budgets they moved (alerts), and marks the fleet fresh or
  stale;
- :meth:`Ledger.sync_budgets` applies budget definitions changed elsewhere; local PUT/DELETE go
  the other way through :meth:`Ledger.local_change`.

Hash names carry the budget period (``{prefix}spend:{key_id}:{period}:{first day}``), so a
period's counters are never reset by anyone: the next period is another hash, and the old one
expires by itself two days after its end.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlsplit

from metricsd.budgets import (
    LIMIT_TYPES,
    MAX_LIMIT_USD,
    PERIODS,
    Budget,
    apply_update,
    period_bounds,
    used_since,
)
from metricsd.pricing import PICO, usd, usd_str

if TYPE_CHECKING:
    from metricsd.config import CostConfig
    from metricsd.persist import Reader

__all__ = [
    "FleetView",
    "Health",
    "Ledger",
    "Outbox",
    "RoundTrip",
    "check_budget_store",
    "decode_budget",
    "encode_budget",
    "spend_key",
]

#: A period's hash outlives the period by this much (a late writer, a clock a little off).
GRACE_SECONDS: Final = 2 * 86400
#: ``never`` budgets have no period end: their hash lives this long after its last write.
NEVER_TTL: Final = 400 * 86400
_KEY_ID: Final = re.compile(r"(k_[0-9a-f]{12}|\*)\Z")
_INSTANCE: Final = re.compile(r"[A-Za-z0-9._-]{1,80}\Z")
#: Settings a ``redis://`` URL may carry as query parameters (TLS files and checks only: the
#: timeouts and the password have settings of their own).
URL_OPTIONS: Final = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname"}
)


# --- names and encodings (pure) ----------------------------------------------------------------


def spend_key(prefix: str, key_id: str, period: str, first_day: int | None) -> str:
    """The hash holding every daemon's spend of one key in one budget period."""
    label = "all" if first_day is None else date.fromordinal(first_day).isoformat()
    who = "all-keys" if key_id == "*" else key_id  # no glob character in a key name
    return f"{prefix}spend:{who}:{period}:{label}"


def new_instance_id() -> str:
    """This process run's field name: the host (for people reading Redis) and 48 random bits."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{secrets.token_hex(6)}"


def encode_budget(b: Budget) -> str:
    """A budget definition as stored in the fleet's budgets hash (no alert state: alerts are
    each daemon's own)."""
    return json.dumps(
        {
            "limit_pusd": b.limit,
            "period": b.period,
            "limit_type": b.limit_type,
            "alert_threshold": str(b.threshold),
        },
        sort_keys=True,
    )


def decode_budget(raw: bytes | str) -> dict[str, Any] | None:
    """A stored definition → the fields of :func:`metricsd.budgets.apply_update`; None when it
    is not one (whatever is in Redis is checked like any other input)."""
    if len(raw) > 1024:
        return None
    try:
        m = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(m, dict):
        return None
    limit, period, kind, threshold = (
        m.get(k) for k in ("limit_pusd", "period", "limit_type", "alert_threshold")
    )
    if isinstance(limit, bool) or not isinstance(limit, int):
        return None
    if not 0 <= limit <= MAX_LIMIT_USD * PICO or period not in PERIODS or kind not in LIMIT_TYPES:
        return None
    try:
        fraction = Decimal(threshold) if isinstance(threshold, str) else None
    except InvalidOperation:
        return None
    if fraction is None or not fraction.is_finite() or not 0 < fraction <= 1:
        return None
    return {"limit": limit, "period": period, "limit_type": kind, "threshold": fraction}


def same_budget(b: Budget, fields: Mapping[str, Any]) -> bool:
    return (b.limit, b.period, b.limit_type, b.threshold) == (
        fields["limit"],
        fields["period"],
        fields["limit_type"],
        fields["threshold"],
    )


def check_budget_store(cost: CostConfig) -> None:
    """The ``cost.budget_store*`` checks of ``config._check``; raises ConfigError."""
    from metricsd.config import ConfigError

    url = cost.budget_store
    if not 0 < cost.budget_store_timeout <= 60:
        raise ConfigError("cost.budget_store_timeout: must be > 0 and at most 60 s")
    if not re.fullmatch(r"[A-Za-z0-9:._{}-]{0,64}", cost.budget_store_prefix):
        raise ConfigError(
            "cost.budget_store_prefix: at most 64 of A-Z a-z 0-9 : . _ - { } (a Redis key prefix)"
        )
    if not url:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError("cost.budget_store: expected redis://HOST:PORT/DB or rediss://…")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError("cost.budget_store: the port is not a number 0-65535") from None
    if not parts.hostname or port == 0:
        raise ConfigError("cost.budget_store: expected redis://HOST:PORT/DB (a host is needed)")
    if parts.password is not None:
        raise ConfigError(
            "cost.budget_store: no password in the URL; put it in a file named by "
            "cost.budget_store_password_file"
        )
    if parts.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", parts.path):
        raise ConfigError("cost.budget_store: the path must be a database number (/0)")
    for name, _value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            raise ConfigError(
                f"cost.budget_store: unknown URL option {name!r} "
                f"(allowed: {', '.join(sorted(URL_OPTIONS))})"
            )


def redacted(url: str) -> str:
    """``scheme://host:port/db`` for logs (no user name, no query)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"


# --- hand-over between the engine thread and the store thread ---------------------------------


class Health:
    """Whether the last round trip worked and when the fleet was last read (Unix seconds):
    one tuple, replaced whole, so any thread reads a consistent pair."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: tuple[bool, float | None] = (False, None)


@dataclass(frozen=True, slots=True)
class RoundTrip:
    """What one round trip brought back (built on the store thread, applied on the engine's).

    ``reads``: hash → (the other daemons' spend, this daemon's carry: spend a previous run of
    this instance wrote that its restored state does not hold); ``budgets``: the fleet's budget
    definitions when they changed (key → fields), ``keep``: keys whose stored definition is
    unreadable (left as they are here); ``seq``: the last local budget change written.
    """

    ok: bool
    wall: float
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    budgets: dict[str, dict[str, Any]] | None = None
    keep: frozenset[str] = frozenset()
    seq: int = 0


class Outbox:
    """What the engine thread hands the store thread; each ``take`` gets the latest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._spend: dict[str, tuple[str, int, int | None]] | None = None
        self._ops: list[tuple[int, str, str | None]] = []
        self._defs: dict[str, str] | None = None

    def offer(
        self,
        spend: dict[str, tuple[str, int, int | None]] | None,
        defs: dict[str, str] | None,
        wake: bool = True,
    ) -> None:
        """Each tick: the spend each live hash should hold (None: unchanged), the budget
        definitions (None: unchanged); wakes the store thread for its round trip."""
        with self._lock:
            if spend is not None:
                self._spend = spend
            if defs is not None:
                self._defs = defs
        if wake:
            self.wake.set()

    def op(self, seq: int, key_id: str, encoded: str | None) -> None:
        """A budget created, changed (``encoded``) or deleted (None) on this daemon."""
        with self._lock:
            self._ops.append((seq, key_id, encoded))
        self.wake.set()

    def take(
        self,
    ) -> tuple[
        dict[str, tuple[str, int, int | None]] | None,
        list[tuple[int, str, str | None]],
        dict[str, str] | None,
    ]:
        with self._lock:
            spend, ops, defs = self._spend, self._ops, self._defs
            self._spend, self._ops, self._defs = None, [], None
        return spend, ops, defs


# --- what a snapshot holds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetView:
    """The fleet as the views of one snapshot see it."""

    prefix: str
    extra: Mapping[str, int]  # hash → other daemons' spend + this instance's carry
    health: Health
    stale_after: float

    def adjust(self, budget: Budget, local: int, first_day: int | None) -> int:
        name = spend_key(self.prefix, budget.key_id, budget.period, first_day)
        return local + self.extra.get(name, 0)

    def fields(self, wall: float, local: int) -> dict[str, Any]:
        """What a budget status adds with a fleet: freshness and this daemon's own share."""
        ok, read = self.health.state
        age = None if read is None else max(0.0, wall - read)
        fresh = ok and age is not None and age <= self.stale_after
        return {
            "fleet": "ok" if fresh else "stale",
            "fleet_age_seconds": None if age is None else round(age, 3),
            "local_used_usd": usd(local),
            "local_used_usd_str": usd_str(local),
        }


# --- the engine thread's ledger ---------------------------------------------------------------


class Ledger:
    """The cost tracker's link to the fleet; only the engine thread calls it (see the module
    docstring). ``tracker`` arguments are the :class:`~metricsd.trackers.cost.CostTracker`."""

    def __init__(self, prefix: str, stale_after: float, tick: float = 0.0) -> None:
        self.prefix = prefix
        self.stale_after = stale_after
        #: Snapshots published between ticks (after a fleet read) do not start round trips.
        self.min_wake = tick / 2
        self._woke = float("-inf")
        self.instance = new_instance_id()
        self.restored = False
        self.health = Health()
        self.outbox = Outbox()
        self.extra: dict[str, int] = {}
        self._others: dict[str, int] = {}
        self._offered: dict[str, tuple[str, int, int | None]] = {}
        self._by_key: dict[str, str] = {}
        self._firsts: dict[str, int | None] = {}
        self._recheck: set[str] = set()
        self._defs_due = True
        self._view: FleetView | None = None
        self.seq = 0

    # --- engine → store

    def tick(self, tracker: Any, wall: float, moved: set[str]) -> None:
        """Work out the spend each budget's hash should hold now, for the keys that moved (all
        of them when a period turned or a budget changed), and hand the changes over."""
        budgets: dict[str, Budget] = tracker.budgets
        bounds = {p: period_bounds(p, wall, tracker.tz) for p in PERIODS}
        firsts = {p: b[0] for p, b in bounds.items()}
        if firsts != self._firsts:
            self._firsts = firsts
            keys = set(budgets) | set(self._by_key)
        else:
            keys = {k for k in moved if k in budgets} | self._recheck
            if moved and "*" in budgets:
                keys.add("*")
        self._recheck = set()
        changed = False
        for key in keys:
            budget = budgets.get(key)
            old = self._by_key.pop(key, None)
            if budget is None:
                if old is not None and self._offered.pop(old, None) is not None:
                    changed = True
                continue
            first_day, _start, resets = bounds[budget.period]
            name = spend_key(self.prefix, key, budget.period, first_day)
            if old is not None and old != name:
                self._offered.pop(old, None)
                changed = True
            totals = tracker._totals_for(key)
            local = used_since(totals.days, totals.total, first_day) if totals is not None else 0
            expire = None if resets is None else int(resets) + GRACE_SECONDS
            entry = (key, local, expire)
            self._by_key[key] = name
            if self._offered.get(name) != entry:
                self._offered[name] = entry
                changed = True
        if changed:
            live = set(self._offered)
            for name in [n for n in self.extra if n not in live]:
                del self.extra[name]
                self._others.pop(name, None)
                self._view = None
        defs = None
        if self._defs_due:
            self._defs_due = False
            defs = {k: encode_budget(b) for k, b in budgets.items()}
        wake = not wall - self.min_wake < self._woke <= wall
        if wake:
            self._woke = wall
        self.outbox.offer(dict(self._offered) if changed else None, defs, wake)

    def recompute(self) -> None:
        """Work every budget out again at the next tick (and hand over the definitions)."""
        self._firsts = {}
        self._defs_due = True

    def local_change(self, key_id: str, budget: Budget | None) -> None:
        """A budget PUT, DELETE or configured on this daemon: written to the fleet."""
        self.seq += 1
        self._recheck.add(key_id)
        self._defs_due = True
        self.outbox.op(self.seq, key_id, None if budget is None else encode_budget(budget))

    # --- store → engine

    def apply(self, trip: RoundTrip, tracker: Any, wall: float) -> bool:
        """A round trip's result: other daemons' spend (never taken lower than already seen
        for a period: spend only grows, and a Redis that is being rebuilt reads low for a
        moment), budget definitions changed elsewhere, and freshness. True when a budget's
        numbers or definition changed (worth publishing a snapshot at once)."""
        _ok, read = self.health.state
        self.health.state = (True, trip.wall) if trip.ok else (False, read)
        if not trip.ok:
            return False
        moved: set[str] = set()
        for name, (others, carry) in trip.reads.items():
            entry = self._offered.get(name)
            if entry is None:
                continue  # no longer a budget's current hash
            seen = max(self._others.get(name, 0), others)
            self._others[name] = seen
            if self.extra.get(name, 0) != seen + carry:
                self.extra[name] = seen + carry
                moved.add(entry[0])
        if moved:
            self._view = None
            tracker.dirty = True
            tracker._check_budgets(moved, wall)
        synced = trip.budgets is not None and self.sync_budgets(
            tracker, trip.budgets, trip.keep, trip.seq, wall
        )
        return bool(moved) or synced

    def sync_budgets(
        self,
        tracker: Any,
        defs: dict[str, dict[str, Any]],
        keep: frozenset[str],
        seq: int,
        wall: float,
    ) -> bool:
        """Make this daemon's budgets the fleet's. Skipped when a local change is not in Redis
        yet (a later read will include it); alert state is kept unless the limit or the
        threshold changed (as for a PUT)."""
        if seq < self.seq:
            return False
        budgets: dict[str, Budget] = tracker.budgets
        cap = tracker.config.cost.max_budgets
        changed: set[str] = set()
        for key, fields in sorted(defs.items()):
            existing = budgets.get(key)
            if existing is not None and same_budget(existing, fields):
                continue
            if existing is None and len(budgets) >= cap:
                continue
            budgets[key] = apply_update(key, existing, dict(fields))
            changed.add(key)
        removed = {k for k in budgets if k not in defs and k not in keep}
        for key in removed:
            del budgets[key]
        if not changed and not removed:
            return False
        self._recheck |= changed | removed
        self._defs_due = True
        tracker._budgets_changed()
        if changed:
            tracker._check_budgets(changed, wall)
        return True

    # --- views and state

    def adjust(self, budget: Budget, local: int, first_day: int | None) -> int:
        """The fleet's spend for a budget, given this daemon's own (``local``)."""
        name = spend_key(self.prefix, budget.key_id, budget.period, first_day)
        return local + self.extra.get(name, 0)

    def fields(self, wall: float, local: int) -> dict[str, Any]:
        return self.freeze().fields(wall, local)

    def freeze(self) -> FleetView:
        if self._view is None:
            self._view = FleetView(self.prefix, dict(self.extra), self.health, self.stale_after)
        return self._view

    def state(self, now: float = 0.0) -> dict[str, Any]:
        """The instance id: a restart that restores the state writes the same fields again
        instead of adding a second copy of the spend they hold."""
        return {"instance": self.instance}

    def restore(self, state: Any, now: float = 0.0) -> None:
        from metricsd.persist import Reader

        r: Reader = Reader("fleet")
        m = r.map(state)
        instance = r.str(m.get("instance"), "instance", 80)
        if not _INSTANCE.match(instance):
            raise r.fail("not an instance id", "instance")
        self.instance = instance
        self.restored = True
