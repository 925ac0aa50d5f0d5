"""Fleet budgets: the Redis client, on a thread of its own (see :mod:`metricsd.fleet`).

One round trip per tick, pipelined, in this order:

1. ``GET epoch``: a marker written once into an empty Redis. Missing, or different from the
   one seen before, means Redis lost its data (a restart without persistence, a flush): every
   spend field this daemon holds is written again and its budget definitions are put back
   where missing (``HSETNX``), so the fleet's counters are rebuilt from what the daemons hold;
2. budget definitions changed here (``HSET``/``HDEL`` on ``budgets``, ``INCR budgets:version``);
3. ``HSET`` of this instance's field in every spend hash whose value moved, with its expiry;
4. ``GET budgets:version``, and ``HGETALL`` of every live spend hash (the fleet totals).

The budgets hash itself is read (a second round trip) only when its version changed. Nothing
here ever blocks the engine or the event loop: the engine hands values over through the
:class:`~metricsd.fleet.Outbox` and gets results back as a command; a Redis that is down or
slow only makes this thread's round trips fail or wait (up to ``cost.budget_store_timeout``
per socket operation), counted in ``metricsd_budget_store_errors_total{reason}``. Until a
round trip succeeds again the budget views say ``"fleet": "stale"``; every value not written
meanwhile is still held (a field is a total, so the next write carries all of it).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from metricsd.config import Config, ConfigError
from metricsd.export.prometheus import Family
from metricsd.fleet import (
    _KEY_ID,
    NEVER_TTL,
    Ledger,
    RoundTrip,
    decode_budget,
    redacted,
)

__all__ = ["REASONS", "BudgetStore", "FleetBudgets", "connector"]

log = logging.getLogger("metricsd.fleet")

REASONS: Final = ("connection", "timeout", "auth", "error", "bad_value")
#: Every spend hash written in one command: ``KEYS`` the hashes, ``ARGV`` this instance's field,
#: the ``never`` hashes' time to live, then (value, expiry as Unix seconds or 0) per hash.
#: Returns 1 or 0 per hash (0: not a hash, e.g. a foreign key of another type).
WRITE_SCRIPT: Final = """
local field, ttl, out = ARGV[1], ARGV[2], {}
for i, key in ipairs(KEYS) do
  local ok = redis.pcall('HSET', key, field, ARGV[2 * i + 1])
  if type(ok) == 'table' and ok.err then
    out[i] = 0
  else
    if ARGV[2 * i + 2] == '0' then
      redis.call('EXPIRE', key, ttl)
    else
      redis.call('EXPIREAT', key, ARGV[2 * i + 2])
    end
    out[i] = 1
  end
end
return out
"""
#: Every live spend hash read in one command: ``HGETALL`` of each (false where it fails).
#: The sums are done here in Python: exact integers, whatever their size.
READ_SCRIPT: Final = """
local out = {}
for i, key in ipairs(KEYS) do
  local found = redis.pcall('HGETALL', key)
  if type(found) == 'table' and found.err then out[i] = false else out[i] = found end
end
return out
"""
#: A stored spend value longer than this is not a number we wrote (and int() of a huge string
#: is slow): it is counted as ``bad_value`` and skipped.
MAX_DIGITS: Final = 40


def connector(url: str, password: str | None, timeout: float) -> Callable[[], Any]:
    """A function making the Redis client: every socket operation bounded by ``timeout``, no
    retries inside the client (the next tick is the retry)."""

    def connect() -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            client_name="metricsd",
            # RESP2: any Redis from 2.8 on, and its replies parse faster in pure Python.
            protocol=2,
        )

    return connect


def _reason(exc: BaseException) -> str:
    from redis import exceptions as rx

    if isinstance(exc, rx.AuthenticationError | rx.AuthorizationError):
        return "auth"
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, rx.ConnectionError | ConnectionError | OSError):
        return "connection"
    return "error"


class BudgetStore:
    """The store thread: see the module docstring. Only ``start``, ``stop`` and ``families``
    are called from other threads."""

    def __init__(
        self,
        connect: Callable[[], Any],
        ledger: Ledger,
        deliver: Callable[[RoundTrip], None],
        where: str = "",
    ) -> None:
        self._connect = connect
        self.outbox = ledger.outbox
        self.field = ledger.instance.encode()
        self.restored = ledger.restored
        self.deliver = deliver
        self.where = where
        prefix = ledger.prefix
        self.k_epoch = prefix + "epoch"
        self.k_budgets = prefix + "budgets"
        self.k_version = prefix + "budgets:version"
        self._client: Any = None
        # The store thread's own state.
        self.spend: dict[str, tuple[str, int, int | None]] = {}
        self.written: dict[str, int] = {}
        self.carry: dict[str, int] = {}
        self.synced: set[str] = set()
        self.leftover: dict[str, tuple[int, int | None]] = {}
        self.ops: list[tuple[int, str, str | None]] = []
        self.defs: dict[str, str] = {}
        self.epoch: bytes | None = None
        self.version: Any = None
        self.read_budgets = True
        self.rebuild = False
        self.written_seq = 0
        # Read by the exposition (plain values, replaced whole).
        self.errors = dict.fromkeys(REASONS, 0)
        self.rebuilds = 0
        self.up = False
        self.last_ok: float | None = None
        self.round_trip_seconds = 0.0
        self._failing_since: float | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="metricsd-fleet", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after one last write of what is not in Redis yet (bounded by the timeouts)."""
        self._stopping.set()
        self.outbox.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def families(self) -> list[Family]:
        errors = Family(
            "metricsd_budget_store_errors",
            "counter",
            "Failed budget store (Redis) operations, by reason.",
        )
        for reason in REASONS:
            errors.counter(self.errors[reason], (("reason", reason),))
        up = Family("metricsd_budget_store_up", "gauge", "1 when the last round trip succeeded.")
        up.add(1 if self.up else 0)
        last = Family(
            "metricsd_budget_store_last_read_timestamp_seconds",
            "gauge",
            "Unix time of the last successful read of the fleet's totals (0: never).",
        )
        last.add(self.last_ok or 0.0)
        trip = Family(
            "metricsd_budget_store_round_trip_seconds",
            "gauge",
            "Duration of the last successful round trip to the budget store.",
        )
        trip.add(self.round_trip_seconds)
        rebuilds = Family(
            "metricsd_budget_store_rebuilds",
            "counter",
            "Times the budget store was found without its data and rebuilt from this daemon.",
        )
        rebuilds.counter(self.rebuilds)
        return [errors, up, last, trip, rebuilds]

    # --- the thread -----------------------------------------------------------------------

    def _main(self) -> None:
        while not self._stopping.is_set():
            self.outbox.wake.wait()
            self.outbox.wake.clear()
            if self._stopping.is_set():
                break
            self._take()
            self.deliver(self.attempt())
        self._take()
        if self.up:  # one last write; a Redis already down is not waited for
            self.attempt(final=True)
        if self._client is not None:
            self._client.close()

    def _take(self) -> None:
        """Merge what the engine handed over since the last round trip."""
        spend, ops, defs = self.outbox.take()
        if spend is not None:
            for name, (_key, local, expire) in self.spend.items():
                if name in spend:
                    continue
                # A hash no longer live (its period ended, its budget went): write its last
                # value once if Redis does not have it yet, then forget it.
                want = local + self.carry.get(name, 0)
                if want and want != self.written.get(name, 0):
                    self.leftover[name] = (want, expire)
                self.written.pop(name, None)
                self.carry.pop(name, None)
                self.synced.discard(name)
            self.spend = spend
        self.ops.extend(ops)
        if defs is not None:
            self.defs = defs

    def attempt(self, final: bool = False) -> RoundTrip:
        """One round trip, its failure counted and logged (never raised)."""
        try:
            trip = self.round_trip(final)
        except Exception as exc:
            reason = _reason(exc)
            self.errors[reason] += 1
            self.up = False
            if self._client is not None:
                self._client.close()
                self._client = None
            now = time.time()
            if self._failing_since is None:
                self._failing_since = now
                log.warning(
                    "budget store %s unreachable (%s: %s): budgets use this daemon's spend "
                    "(and the fleet's as last read) until it is back",
                    self.where,
                    type(exc).__name__,
                    exc,
                )
            return RoundTrip(False, now)
        self.up = True
        self.last_ok = trip.wall
        if self._failing_since is not None:
            log.info(
                "budget store %s reachable again after %.1f s",
                self.where,
                trip.wall - self._failing_since,
            )
            self._failing_since = None
        return trip

    def round_trip(self, final: bool = False) -> RoundTrip:
        """See the module docstring; raises on a connection failure or timeout."""
        if self._client is None:
            self._client = self._connect()
        client = self._client
        pipe = client.pipeline(transaction=False)
        pipe.get(self.k_epoch)
        ops = list(self.ops)
        for _seq, key, encoded in ops:
            if encoded is None:
                pipe.hdel(self.k_budgets, key)
            else:
                pipe.hset(self.k_budgets, key, encoded)
        rebuild = self.rebuild
        if rebuild:
            for key, encoded in self.defs.items():
                pipe.hsetnx(self.k_budgets, key, encoded)
        if ops or rebuild:
            pipe.incr(self.k_version)
        writes: list[tuple[str, int, int | None]] = []
        for name, (_key, local, expire) in self.spend.items():
            if self.restored and name not in self.synced:
                continue  # read this run's first value before writing over it
            want = local + self.carry.get(name, 0)
            if want != self.written.get(name, 0):
                writes.append((name, want, expire))
        leftover = dict(self.leftover)
        writes.extend((name, want, expire) for name, (want, expire) in leftover.items())
        if writes:
            args: list[Any] = [name for name, _w, _e in writes]
            args += [self.field, NEVER_TTL]
            for _name, want, expire in writes:
                args += [want, expire or 0]
            pipe.eval(WRITE_SCRIPT, len(writes), *args)
        reads = [] if final else list(self.spend)
        if not final:
            pipe.get(self.k_version)
            if reads:
                pipe.eval(READ_SCRIPT, len(reads), *reads)
        started = time.perf_counter()
        results = pipe.execute(raise_on_error=False)
        elapsed = time.perf_counter() - started
        epoch = results[0]
        if isinstance(epoch, Exception):
            raise epoch
        at = 1 + len(ops) + (len(self.defs) if rebuild else 0) + (1 if ops or rebuild else 0)
        if any(isinstance(r, Exception) for r in results[1:at]):
            self.errors["error"] += 1  # kept, and tried again next time
        else:
            self.ops = self.ops[len(ops) :]
            if ops:
                self.written_seq = max(seq for seq, _k, _e in ops)
            if rebuild:
                self.rebuild = False
        if writes:
            done = results[at]
            at += 1
            if isinstance(done, Exception):
                self.errors["error"] += 1
                done = []
            for (name, want, _e), ok in zip(writes, done, strict=False):
                if ok == 1:
                    self.leftover.pop(name, None)
                    if name in self.spend:
                        self.written[name] = want
        lost = epoch is None or (self.epoch is not None and epoch != self.epoch)
        if lost:
            self._lost(client, epoch)
        else:
            self.epoch = epoch
        self.round_trip_seconds = elapsed
        wall = time.time()
        if final:
            return RoundTrip(True, wall)
        version = results[at]
        found = results[at + 1] if reads else []
        if isinstance(found, Exception) or len(found) != len(reads):
            raise RuntimeError(f"the read script failed: {found}")
        out: dict[str, tuple[int, int]] = {}
        for name, raw in zip(reads, found, strict=True):
            if not isinstance(raw, list):
                self.errors["error"] += 1  # e.g. a key of another type: skipped
                continue
            own, others = self._sum(raw)
            local = self.spend[name][1]
            if self.restored and name not in self.synced:
                self.carry[name] = max(0, own - local)
                self.synced.add(name)
                self.written[name] = own
            elif own != self.written.get(name, 0):
                self.written.pop(name, None)  # lost or rolled back in Redis: write it again
            out[name] = (others, self.carry.get(name, 0))
        budgets: dict[str, dict[str, Any]] | None = None
        keep: frozenset[str] = frozenset()
        fresh = not lost and not isinstance(version, Exception)
        if fresh and (self.read_budgets or version != self.version):
            budgets, keep = self._budgets(client.hgetall(self.k_budgets))
            self.version = version
            self.read_budgets = False
        return RoundTrip(True, wall, out, budgets, keep, self.written_seq)

    def _lost(self, client: Any, seen: bytes | None) -> None:
        """Redis has no epoch marker (a new or emptied Redis) or another one (emptied and
        already re-marked by another daemon): write everything again."""
        first = self.epoch is None
        if seen is None:
            pipe = client.pipeline(transaction=False)
            pipe.set(self.k_epoch, secrets.token_hex(8), nx=True)
            pipe.get(self.k_epoch)
            seen = pipe.execute()[1]
        if first:
            log.info("budget store %s holds no fleet data yet: initialising it", self.where)
        else:
            self.rebuilds += 1
            log.warning(
                "budget store %s lost its data (restarted empty?): rebuilding it from this "
                "daemon's spend and budgets",
                self.where,
            )
        self.epoch = seen
        self.rebuild = True
        self.written.clear()
        self.read_budgets = True

    def _sum(self, raw: list[bytes]) -> tuple[int, int]:
        """(this instance's value, the other instances' sum) of one spend hash, read as
        ``HGETALL``'s flat field, value, field, value… list."""
        own = others = bad = 0
        for name, value in zip(raw[::2], raw[1::2], strict=True):
            if len(value) > MAX_DIGITS or not value.isdigit():
                bad += 1
                continue
            if name == self.field:
                own = int(value)
            else:
                others += int(value)
        if bad:
            self.errors["bad_value"] += bad
        return own, others

    def _budgets(self, raw: dict[bytes, bytes]) -> tuple[dict[str, dict[str, Any]], frozenset[str]]:
        """The fleet's budget definitions; unreadable ones are counted and left alone here."""
        out: dict[str, dict[str, Any]] = {}
        keep: set[str] = set()
        for name, value in raw.items():
            key = name.decode("utf-8", "replace")
            if not _KEY_ID.match(key):
                self.errors["bad_value"] += 1
                continue
            fields = decode_budget(value)
            if fields is None:
                self.errors["bad_value"] += 1
                keep.add(key)
                continue
            out[key] = fields
        return out, frozenset(keep)


class FleetBudgets:
    """The daemon's handle on fleet budgets: the ledger (engine side) and the store thread."""

    def __init__(self, config: Config) -> None:
        cost = config.cost
        self.config = config
        stale_after = 2 * config.engine.tick + cost.budget_store_timeout
        self.ledger = Ledger(cost.budget_store_prefix, stale_after, config.engine.tick)
        self.tracker: Any = None
        self.store: BudgetStore | None = None
        self.password: str | None = None

    def attach(self, tracker: Any) -> None:
        """Give the cost tracker its ledger; the configured budgets are written to the fleet
        (a daemon's config file wins when it starts, as it does over its saved state)."""
        self.tracker = tracker
        tracker.fleet = self.ledger
        self.ledger.recompute()  # a new tracker (a state that could not be applied): all of it
        for b in self.config.cost.budgets:
            self.ledger.local_change(b.key, tracker.budgets.get(b.key))

    def load_password(self) -> None:
        """Read the password file (at start, before anything is bound)."""
        path = self.config.cost.budget_store_password_file
        if path:
            try:
                self.password = Path(path).read_text().strip() or None
            except OSError as exc:
                raise ConfigError(
                    f"cost.budget_store_password_file: cannot read {path}: {exc.strerror}"
                ) from None

    def start(self, submit: Callable[[Callable[[], Any]], Any], publish: Callable[[], Any]) -> None:
        """Start the store thread. ``submit`` runs a function on the engine thread;
        ``publish`` (called there) publishes a snapshot at once: a fleet read that moved a
        budget is shown now rather than at the next tick, so another daemon's spend shows
        here within two ticks of being applied there."""
        cost = self.config.cost
        ledger = self.ledger

        def apply(trip: RoundTrip) -> None:
            if ledger.apply(trip, self.tracker, time.time()):
                publish()

        def deliver(trip: RoundTrip) -> None:
            submit(lambda: apply(trip))

        where = redacted(cost.budget_store)
        self.store = BudgetStore(
            connector(cost.budget_store, self.password, cost.budget_store_timeout),
            ledger,
            deliver,
            where,
        )
        self.store.start()
        log.info("fleet budgets in %s (instance %s)", where, ledger.instance)

    def stop(self) -> None:
        if self.store is not None:
            self.store.stop(timeout=3 * self.config.cost.budget_store_timeout + 1.0)

    def families(self) -> list[Family]:
        return [] if self.store is None else self.store.families()
