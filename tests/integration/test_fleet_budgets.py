"""Fleet budgets: real daemons sharing one real redis-server (``cost.budget_store``).

Amounts are sent as ``cost_usd`` so every expected total is exact (pUSD), and compared as the
``*_usd_str`` strings the daemon prints with every digit.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.redis_support import RedisServer, redis_server_for


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    yield from redis_server_for(tmp_path)


KEY = "k_0123456789ab"
TICK = 0.1


def spend(daemon: Daemon, usd: str, n: int = 1, key: str = KEY) -> None:
    event = {"type": "request", "duration_ms": 5.0, "model": "gpt-4o", "key_id": key}
    daemon.send([{**event, "cost_usd": float(usd)}] * n)


def put(daemon: Daemon, body: dict[str, Any], key: str = KEY) -> dict[str, Any]:
    status, _, data = daemon.request(
        f"/metrics/budgets/{key}", method="PUT", body=json.dumps(body).encode()
    )
    assert status in (200, 201), data
    found: dict[str, Any] = json.loads(data)
    return found


def budget(daemon: Daemon, key: str = KEY) -> dict[str, Any] | None:
    status, _, data = daemon.request(f"/metrics/budgets/{key}", timeout=2.0)
    if status == 404:
        return None
    assert status == 200, data
    found: dict[str, Any] = json.loads(data)
    return found


def key_view(daemon: Daemon, key: str = KEY) -> dict[str, Any] | None:
    status, _, data = daemon.request(f"/metrics/costs/keys/{key}", timeout=2.0)
    if status == 404:
        return None  # not seen yet
    assert status == 200, data
    found: dict[str, Any] = json.loads(data)
    return found


def wait(fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.02)
        value = fetch()
    assert ok(value), value
    return value


def used(expected: str) -> Callable[[Any], bool]:
    """The budget's fleet spend is exactly ``expected`` and freshly read."""
    return lambda b: (
        b is not None and Decimal(b["used_usd_str"]) == Decimal(expected) and b["fleet"] == "ok"
    )


def fleet_pair(daemon_factory: Any, redis: RedisServer, *args: str) -> tuple[Daemon, Daemon]:
    env = {"METRICSD_BUDGET_STORE": redis.url, "METRICSD_COST_BUDGET_STORE_TIMEOUT": "0.2"}
    return daemon_factory(*args, env=env), daemon_factory(*args, env=env)


def test_two_daemons_add_up_and_share_a_hard_budget(
    daemon_factory: Any, redis_server: RedisServer
) -> None:
    a, b = fleet_pair(daemon_factory, redis_server)
    created = put(a, {"limit_usd": 1.0, "limit_type": "hard", "period": "daily"})
    assert (created["fleet"], created["allowed"]) == ("ok", True)
    # (c) a budget PUT on one daemon is visible on the other within two ticks.
    started = time.monotonic()
    seen = wait(lambda: budget(b), lambda s: s is not None, timeout=5.0)
    assert time.monotonic() - started < 2 * TICK + 0.5
    assert (seen["limit_usd"], seen["limit_type"], seen["period"]) == (1.0, "hard", "daily")
    # Neither daemon alone reaches the threshold (0.8) or the limit; the sum crosses both.
    spend(a, "0.25", 3)  # 0.75
    spend(b, "0.3", 2)  # 0.60
    sent = time.monotonic()
    for d, local in ((a, "0.75"), (b, "0.6")):
        view = wait(
            lambda d=d: key_view(d),
            lambda v: v is not None and v["budget"]["used_usd_str"] == "1.35",
        )
        assert view["total_cost_usd_str"] == local  # the key's own totals stay this daemon's
        status = view["budget"]
        assert (status["allowed"], status["exceeded"], status["fleet"]) == (False, True, "ok")
        assert status["local_used_usd_str"] == local and status["remaining_usd"] == -0.35
    # Applied, written, read back by the other and published: a few ticks (0.1 s here), with
    # room for a busy machine.
    assert time.monotonic() - sent < 10 * TICK
    time.sleep(5 * TICK)  # more ticks: no second alert
    for d in (a, b):
        assert d.value("metricsd_budget_alerts_total", level="exceeded") == 1
        assert d.value("metricsd_budget_alerts_total", level="threshold") == 1
        assert d.value("llm_budget_used_usd", key_id=KEY) == 1.35
        assert d.value("metricsd_budget_store_up") == 1
        assert d.value("metricsd_budget_store_errors_total", reason="connection") == 0
    # The Python client's budget check reads the same fleet view.
    from metricsd_client import CostTracker

    tracker = CostTracker(url=b.http, ingest=b.ingest[0], consistent=False)
    try:
        assert tracker.is_allowed(KEY) is False
        found = tracker.get_budget_status(KEY)
        assert found is not None and found.used == 1.35 and found.fleet == "ok"
    finally:
        tracker.close()
    # A DELETE on one daemon removes it from both.
    status_code, _, _ = b.request(f"/metrics/budgets/{KEY}", method="DELETE")
    assert status_code == 200
    wait(lambda: budget(a), lambda s: s is None, timeout=5.0)


def test_redis_down_for_ten_seconds_then_back_empty(
    daemon_factory: Any, redis_server: RedisServer
) -> None:
    """(b): both daemons keep ingesting and serving, say ``stale`` meanwhile, and once Redis
    is back (without its data) the fleet totals are the exact sum of everything sent."""
    a, b = fleet_pair(daemon_factory, redis_server)
    put(a, {"limit_usd": 1000, "period": "daily"})
    wait(lambda: budget(b), lambda s: s is not None, timeout=5.0)
    sent = {"a": 0, "b": 0}
    stop = threading.Event()
    lock = threading.Lock()

    def traffic() -> None:
        while not stop.is_set():
            for name, d in (("a", a), ("b", b)):
                with lock:
                    spend(d, "0.01")
                    sent[name] += 1
            time.sleep(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        time.sleep(1.0)
        redis_server.stop()
        down_at = time.monotonic()
        stale = wait(lambda: budget(a), lambda s: s["fleet"] == "stale", timeout=3.0)
        assert stale["fleet_age_seconds"] > 0
        samples: list[tuple[str, float]] = []
        while time.monotonic() - down_at < 10.0:
            for d in (a, b):
                status, _, body = d.request("/healthz", timeout=2.0)
                assert status == 200, body
                view = budget(d)
                assert view is not None
                samples.append((view["fleet"], view["fleet_age_seconds"]))
            time.sleep(0.5)
        assert all(fleet == "stale" for fleet, _age in samples[2:])
        assert samples[-1][1] > 9.0  # the age of the last fleet read keeps growing
        with lock:
            during = dict(sent)
        redis_server.start()
        time.sleep(0.5)
    finally:
        stop.set()
        sender.join(5)
    total = Decimal("0.01") * (sent["a"] + sent["b"])
    assert during["a"] > 400  # traffic flowed the whole time
    for d in (a, b):
        found = wait(lambda d=d: budget(d), used(str(total)), timeout=10.0)
        assert found["fleet"] == "ok"
        assert d.value("metricsd_budget_store_errors_total", reason="connection") > 0
        assert d.value("metricsd_budget_store_rebuilds_total") == 1
    # Each daemon's own share, in Redis, is exactly what it was sent.
    client = redis_server.client()
    try:
        names = [n for n in client.scan_iter("metricsd:spend:*")]
        assert len(names) == 1
        fields = sorted(int(v) for v in client.hvals(names[0]))
        assert fields == sorted(round(n * 0.01 * 10**12) for n in sent.values())
        # The budget itself was put back too.
        assert json.loads(client.hget("metricsd:budgets", KEY))["limit_pusd"] == 1000 * 10**12
    finally:
        client.close()


def test_hung_redis_never_slows_serving(daemon_factory: Any, redis_server: RedisServer) -> None:
    """A Redis that accepts and never answers: timeouts, ``stale``, fast HTTP; then exact."""
    a, b = fleet_pair(daemon_factory, redis_server)
    put(a, {"limit_usd": 10, "period": "monthly"})
    spend(a, "0.5")
    spend(b, "0.25")
    for d in (a, b):
        wait(lambda d=d: budget(d), used("0.75"))
    redis_server.pause()
    try:
        wait(lambda: budget(a), lambda s: s["fleet"] == "stale", timeout=3.0)
        spend(a, "1.5")
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            view = budget(a)
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        assert view is not None and view["used_usd_str"] == "2.25"  # own spend counts at once
        assert slowest < 0.5
        assert a.value("metricsd_budget_store_errors_total", reason="timeout") > 0
    finally:
        redis_server.resume()
    for d in (a, b):
        found = wait(lambda d=d: budget(d), used("2.25"))
        assert found["fleet"] == "ok"


def test_restarts_never_count_spend_twice(
    daemon_factory: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A daemon restarted with its state file writes its own field again (same instance id);
    one restarted without state starts a new field and the old one stays: exact either way."""
    env = {"METRICSD_BUDGET_STORE": redis_server.url}
    state = tmp_path / "a.state"
    a = daemon_factory("--state", str(state), env=env)
    b = daemon_factory(env=env)
    put(a, {"limit_usd": 10, "period": "weekly"})
    spend(a, "1.25")
    spend(b, "2")
    wait(lambda: budget(b), used("3.25"))
    assert a.stop() == 0
    a = daemon_factory("--state", str(state), env=env)
    assert budget(a)["local_used_usd_str"] == "1.25"  # type: ignore[index]
    spend(a, "0.5")
    assert b.stop() == 0
    b = daemon_factory(env=env)  # no state: a new instance
    spend(b, "0.125")
    for d in (a, b):
        wait(lambda d=d: budget(d), used("3.875"))
    client = redis_server.client()
    try:
        (name,) = list(client.scan_iter("metricsd:spend:*"))
        values = sorted(int(v) for v in client.hvals(name))
        assert values == [125_000_000_000, 1_750_000_000_000, 2_000_000_000_000]
        assert client.ttl(name) > 0  # expires by itself after its period
    finally:
        client.close()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0"])
def test_unreachable_at_start_still_serves(daemon_factory: Any, url: str) -> None:
    """No Redis at all: the daemon starts, ingests, and budgets count its own spend."""
    d = daemon_factory(env={"METRICSD_BUDGET_STORE": url})
    created = put(d, {"limit_usd": 1, "limit_type": "hard"})
    assert created["fleet"] == "stale" and created["fleet_age_seconds"] is None
    spend(d, "1")
    found = wait(lambda: budget(d), lambda b: b["used_usd_str"] == "1")
    assert (found["allowed"], found["fleet"]) == (False, "stale")
    assert d.wait_for("metricsd_budget_store_errors_total", 1, reason="connection") >= 1
