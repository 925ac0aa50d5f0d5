"""The budget store's round trips against a real redis-server, driven one at a time (no thread):
what is written, what is read back, and how it heals a Redis that lost or garbled data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from metricsd.budgets import Budget
from metricsd.fleet import Ledger, RoundTrip, encode_budget
from metricsd.fleet_store import BudgetStore, connector
from tests.redis_support import RedisServer, redis_server_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server_for(tmp_path)


KEY = "k_0123456789ab"
H1 = f"t:spend:{KEY}:daily:2026-03-31"
H2 = f"t:spend:{KEY}:daily:2026-04-01"
EXPIRE = 1_900_000_000


class Harness:
    def __init__(self, redis: RedisServer, ledger: Ledger | None = None) -> None:
        self.ledger = ledger or Ledger("t:", 1.0)
        self.trips: list[RoundTrip] = []
        self.store = BudgetStore(
            connector(redis.url, None, 1.0), self.ledger, self.trips.append, "test"
        )
        self.redis = redis.client()

    def offer(self, **values: int) -> None:
        names = {"h1": H1, "h2": H2}
        spend = {names[k]: (KEY, v, EXPIRE) for k, v in values.items()}
        self.ledger.outbox.offer(spend, None)

    def trip(self) -> RoundTrip:
        self.store._take()
        found = self.store.attempt()
        assert found.ok, self.store.errors
        return found

    def field(self, name: str = H1) -> int | None:
        raw = self.redis.hget(name, self.ledger.instance)
        return None if raw is None else int(raw)

    def close(self) -> None:
        if self.store._client is not None:
            self.store._client.close()
        self.redis.close()


@pytest.fixture
def harness(redis_server: RedisServer) -> Iterator[Harness]:
    h = Harness(redis_server)
    yield h
    h.close()


def test_writes_only_what_moved_and_reads_the_others(harness: Harness) -> None:
    harness.offer(h1=500)
    first = harness.trip()  # an empty Redis: it is marked, nothing is lost
    assert harness.store.rebuilds == 0 and harness.redis.get("t:epoch") is not None
    assert first.reads == {H1: (0, 0)} and harness.field() == 500
    assert harness.redis.ttl(H1) > 0
    harness.redis.hset(H1, "other-daemon", "1250")
    harness.redis.hset(H1, "third-daemon", "250")
    assert harness.trip().reads == {H1: (1500, 0)}
    harness.offer(h1=800)
    assert harness.trip().reads == {H1: (1500, 0)} and harness.field() == 800


def test_a_field_lost_in_redis_is_written_again(harness: Harness) -> None:
    harness.offer(h1=42)
    harness.trip()  # the first contact marks an empty Redis, and writes again once after it
    harness.trip()
    harness.redis.hdel(H1, harness.ledger.instance)  # e.g. a rollback to an older snapshot
    harness.trip()  # sees it gone
    assert harness.field() is None
    harness.trip()
    assert harness.field() == 42


def test_an_emptied_redis_is_rebuilt_budgets_included(harness: Harness) -> None:
    harness.offer(h1=7)
    harness.trip()  # the first contact marks the empty Redis
    budget = Budget(KEY, 3 * 10**12, "daily", "hard", Decimal("0.5"))
    harness.ledger.local_change(KEY, budget)
    trip = harness.trip()
    assert trip.budgets is not None and trip.seq == 1
    assert trip.budgets[KEY]["limit"] == 3 * 10**12
    harness.ledger.outbox.offer(None, {KEY: encode_budget(budget)})
    harness.redis.flushall()
    lost = harness.trip()
    assert harness.store.rebuilds == 1 and lost.budgets is None  # not read while empty
    again = harness.trip()
    assert harness.field() == 7
    assert again.budgets is not None and KEY in again.budgets


def test_a_restored_instance_keeps_what_its_last_run_wrote(redis_server: RedisServer) -> None:
    """Restored from a state saved before its last writes (a crash): what Redis holds of this
    instance beyond the restored spend is carried, so nothing is lost or counted twice."""
    before = Ledger("t:", 1.0)
    ledger = Ledger("t:", 1.0)
    ledger.restore(before.state())
    client = redis_server.client()
    client.set("t:epoch", "e1")
    client.hset(H1, mapping={ledger.instance: "900", "other": "100"})
    client.close()
    h = Harness(redis_server, ledger)
    try:
        h.offer(h1=600)  # the restored state knew 600 of the 900 written
        assert h.trip().reads == {H1: (100, 300)}
        assert h.field() == 900  # read, not written over
        h.offer(h1=650)
        assert h.trip().reads == {H1: (100, 300)}
        assert h.field() == 950
    finally:
        h.close()


def test_a_hash_no_longer_live_gets_its_last_value_once(harness: Harness) -> None:
    harness.offer(h1=10)
    harness.store._take()
    harness.offer(h2=3)  # the period turned before the first round trip
    harness.trip()
    assert (harness.field(H1), harness.field(H2)) == (10, 3)
    assert harness.store.leftover == {}


def test_garbage_in_redis_is_counted_and_skipped(harness: Harness) -> None:
    harness.offer(h1=5)
    harness.trip()
    harness.redis.hset(H1, mapping={"bad": "12x", "huge": "9" * 50, "fine": "20"})
    harness.redis.hset(
        "t:budgets",
        mapping={"not-a-key": "{}", "k_aaaaaaaaaaaa": "{broken", KEY: json.dumps(_limit(1))},
    )
    harness.redis.incr("t:budgets:version")
    harness.redis.set(H2, "a string, not a hash")
    harness.offer(h1=5, h2=1)
    trip = harness.trip()
    assert trip.reads == {H1: (20, 0)}  # H2 could not be read: skipped, not fatal
    assert trip.budgets is not None and list(trip.budgets) == [KEY]
    assert trip.keep == frozenset({"k_aaaaaaaaaaaa"})
    assert harness.store.errors["bad_value"] == 4
    assert harness.store.errors["error"] >= 1


def test_unreachable_is_a_counted_failure_not_an_exception(redis_server: RedisServer) -> None:
    ledger = Ledger("t:", 1.0)
    trips: list[RoundTrip] = []
    store = BudgetStore(connector("redis://127.0.0.1:1/0", None, 0.2), ledger, trips.append)
    store._take()
    assert store.attempt().ok is False
    assert store.errors["connection"] == 1 and store.up is False


def _limit(usd: int) -> dict[str, Any]:
    return {
        "limit_pusd": usd * 10**12,
        "period": "daily",
        "limit_type": "soft",
        "alert_threshold": "1",
    }
