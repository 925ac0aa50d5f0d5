"""Fleet budgets, the engine's side (no Redis): names, encodings, the ledger's hand-over and
how round-trip results move budget status and alerts. Synthetic clock, exact values."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgpack
import pytest

from metricsd.budgets import Budget
from metricsd.config import ConfigError, load_config
from metricsd.engine import Engine
from metricsd.fleet import (
    GRACE_SECONDS,
    Ledger,
    RoundTrip,
    check_budget_store,
    decode_budget,
    encode_budget,
    spend_key,
)
from metricsd.persist import StateError
from metricsd.protocol import decode
from metricsd.trackers.cost import CostTracker

WALL = 1_774_994_400.0  # 2026-03-31 22:00:00 UTC
KEY = "k_0123456789ab"
PICO = 10**12


class Fleet:
    """An engine with the cost tracker and a ledger attached, as the daemon wires them."""

    def __init__(self, **cost: Any) -> None:
        self.config = load_config(
            environ={}, overrides={"cost": {"budget_store": "redis://127.0.0.1:1/0", **cost}}
        )
        self.tracker = CostTracker(self.config, 0.0, WALL)
        self.engine = Engine(self.config, [self.tracker])
        self.ledger = Ledger("m:", stale_after=1.0)
        self.tracker.fleet = self.ledger

    def spend(self, usd: str, now: float = 1.0, key: str = KEY) -> None:
        event = {"type": "request", "duration_ms": 1.0, "key_id": key, "cost_usd": float(usd)}
        packed = msgpack.packb(event)
        self.engine.apply(decode(packed, WALL + now, self.engine.limits), now, WALL + now)

    def tick(self, now: float = 2.0) -> Any:
        return self.engine.snapshot(now, WALL + now)

    def offered(self) -> dict[str, tuple[str, int, int | None]]:
        spend, _ops, _defs = self.ledger.outbox.take()
        assert spend is not None
        return spend

    def status(self, now: float = 2.0, key: str = KEY) -> dict[str, Any]:
        found = self.tick(now).parts["cost"].budget_status(key, WALL + now)
        assert found is not None
        return found


def test_names_and_encodings() -> None:
    day = 739_706  # 2026-03-31
    assert spend_key("m:", KEY, "daily", day) == f"m:spend:{KEY}:daily:2026-03-31"
    assert spend_key("m:", "*", "never", None) == "m:spend:all-keys:never:all"
    b = Budget(KEY, 25 * PICO, "weekly", "hard", Decimal("0.75"))
    text = encode_budget(b)
    assert text == (
        '{"alert_threshold": "0.75", "limit_pusd": 25000000000000, '
        '"limit_type": "hard", "period": "weekly"}'
    )
    assert decode_budget(text) == {
        "limit": 25 * PICO,
        "period": "weekly",
        "limit_type": "hard",
        "threshold": Decimal("0.75"),
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"limit_pusd": true, "period": "daily", "limit_type": "soft", "alert_threshold": "1"}',
        b'{"limit_pusd": -1, "period": "daily", "limit_type": "soft", "alert_threshold": "1"}',
        b'{"limit_pusd": 1.5, "period": "daily", "limit_type": "soft", "alert_threshold": "1"}',
        b'{"limit_pusd": 1, "period": "yearly", "limit_type": "soft", "alert_threshold": "1"}',
        b'{"limit_pusd": 1, "period": "daily", "limit_type": "firm", "alert_threshold": "1"}',
        b'{"limit_pusd": 1, "period": "daily", "limit_type": "soft", "alert_threshold": "0"}',
        b'{"limit_pusd": 1, "period": "daily", "limit_type": "soft", "alert_threshold": "NaN"}',
        b'{"limit_pusd": 1, "period": "daily", "limit_type": "soft", "alert_threshold": 0.5}',
        b'{"limit_pusd": 1, "period": "daily", "limit_type": "soft", "alert_threshold": "x"}',
        b'{"limit_pusd": 1000000000000000000000001, "period": "daily", "limit_type": "soft", '
        b'"alert_threshold": "1"}',
        b"{" + b" " * 2000 + b"}",
    ],
)
def test_stored_definitions_are_checked(raw: bytes) -> None:
    assert decode_budget(raw) is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget_store": "redis://:secret@h:6379/0"}, "no password in the URL"),
        ({"budget_store": "http://h:6379"}, "expected redis://"),
        ({"budget_store": "redis://h:70000/0"}, "port is not a number"),
        ({"budget_store": "redis:///0"}, "a host is needed"),
        ({"budget_store": "redis://h:6379/db"}, "database number"),
        ({"budget_store": "redis://h/0?socket_timeout=9"}, "unknown URL option 'socket_timeout'"),
        ({"budget_store_timeout": 0}, "budget_store_timeout"),
        ({"budget_store_prefix": "a b"}, "budget_store_prefix"),
    ],
)
def test_store_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={}, overrides={"cost": settings})


def test_store_settings_from_the_environment() -> None:
    config = load_config(
        environ={
            "METRICSD_BUDGET_STORE": "rediss://cache.internal:6380/2?ssl_ca_certs=/etc/ca.pem",
            "METRICSD_COST_BUDGET_STORE_PASSWORD_FILE": "/run/secrets/redis",
        }
    )
    assert config.cost.budget_store.startswith("rediss://cache.internal:6380/2")
    assert config.cost.budget_store_password_file == "/run/secrets/redis"
    check_budget_store(config.cost)


def test_ledger_offers_what_moved_and_counts_the_fleet() -> None:
    f = Fleet()
    f.tracker.put_budget(KEY, {"limit_usd": 2, "limit_type": "hard", "period": "daily"}, WALL)
    _spend, ops, defs = f.ledger.outbox.take()
    assert [(seq, key) for seq, key, _enc in ops] == [(1, KEY)]
    f.spend("0.5")
    f.tick()
    name = f"m:spend:{KEY}:daily:2026-03-31"
    resets = 1_775_001_600  # 2026-04-01 00:00 UTC
    assert f.offered() == {name: (KEY, PICO // 2, resets + GRACE_SECONDS)}
    f.tick(3.0)
    spend, _ops, defs = f.ledger.outbox.take()
    assert spend is None and defs is None  # nothing moved: nothing handed over again
    # Before any read: this daemon's spend only, and the fleet is stale.
    status = f.status(3.0)
    assert (status["used_usd_str"], status["fleet"], status["fleet_age_seconds"]) == (
        "0.5",
        "stale",
        None,
    )
    # Another daemon spent 1.6: the sum crosses the limit (neither alone does).
    f.ledger.apply(RoundTrip(True, WALL + 3.0, {name: (1_600_000_000_000, 0)}), f.tracker, WALL)
    snap = f.tick(3.5)
    status = snap.parts["cost"].budget_status(KEY, WALL + 3.5)
    assert status["used_usd_str"] == "2.1" and status["local_used_usd_str"] == "0.5"
    assert (status["allowed"], status["fleet"], status["fleet_age_seconds"]) == (False, "ok", 0.5)
    assert [a["level"] for a in snap.alerts] == ["threshold", "exceeded"]
    # Read again (and lower, as from a Redis being rebuilt): never taken lower, no new alert.
    f.ledger.apply(RoundTrip(True, WALL + 4.0, {name: (1_000_000_000_000, 0)}), f.tracker, WALL)
    snap = f.tick(4.0)
    assert snap.alerts == ()
    assert snap.parts["cost"].budget_status(KEY, WALL + 4.0)["used_usd_str"] == "2.1"
    # A failed round trip: stale, with the age of the last good read.
    f.ledger.apply(RoundTrip(False, WALL + 5.0), f.tracker, WALL)
    status = f.status(6.0)
    assert (status["fleet"], status["fleet_age_seconds"], status["used_usd_str"]) == (
        "stale",
        2.0,
        "2.1",
    )


def test_all_keys_budget_and_period_turn() -> None:
    f = Fleet()
    f.tracker.put_budget("*", {"limit_usd": 100, "period": "daily"}, WALL)
    f.spend("1.25", key="k_aaaaaaaaaaaa")
    f.spend("0.75", key="k_bbbbbbbbbbbb")
    f.tick()
    today = "m:spend:all-keys:daily:2026-03-31"
    assert f.offered()[today][1] == 2 * PICO
    # Two hours later it is another day (UTC): a new hash, starting from nothing.
    f.tick(2 * 3600.0)
    assert f.offered() == {
        "m:spend:all-keys:daily:2026-04-01": ("*", 0, 1_775_088_000 + GRACE_SECONDS)
    }


def test_never_budgets_have_no_period_end() -> None:
    f = Fleet()
    f.tracker.put_budget(KEY, {"limit_usd": 5, "period": "never"}, WALL)
    f.spend("3")
    f.tick()
    assert f.offered() == {f"m:spend:{KEY}:never:all": (KEY, 3 * PICO, None)}


def test_fleet_budget_changes_apply_unless_a_local_one_is_pending() -> None:
    f = Fleet()
    f.tracker.put_budget(KEY, {"limit_usd": 1}, WALL)  # local change number 1
    other = "k_cccccccccccc"
    remote = {
        KEY: {
            "limit": 3 * PICO,
            "period": "monthly",
            "limit_type": "hard",
            "threshold": Decimal(1),
        },
        other: {
            "limit": PICO,
            "period": "daily",
            "limit_type": "soft",
            "threshold": Decimal("0.5"),
        },
    }
    f.ledger.apply(RoundTrip(True, WALL, {}, remote, frozenset(), seq=0), f.tracker, WALL)
    assert f.tracker.budgets[KEY].limit == PICO  # read before our change reached Redis: ignored
    f.ledger.apply(RoundTrip(True, WALL, {}, remote, frozenset(), seq=1), f.tracker, WALL)
    assert f.tracker.budgets[KEY].limit == 3 * PICO
    assert f.tracker.budgets[other].period == "daily"
    # A key whose stored definition is unreadable is kept; one absent from the fleet goes.
    f.ledger.apply(RoundTrip(True, WALL, {}, {}, frozenset({other}), seq=1), f.tracker, WALL)
    assert sorted(f.tracker.budgets) == [other]


def test_configured_budgets_are_written_at_attach_and_reload() -> None:
    from metricsd.fleet_store import FleetBudgets

    f = Fleet(budgets=[{"key": KEY, "limit_usd": 7, "period": "weekly"}])
    fleet = FleetBudgets(f.config)
    fleet.attach(f.tracker)
    _spend, ops, _defs = fleet.ledger.outbox.take()
    assert [(key, decode_budget(enc)["limit"]) for _s, key, enc in ops] == [(KEY, 7 * PICO)]  # type: ignore[index]
    f.tracker.reload(f.config)
    _spend, ops, _defs = fleet.ledger.outbox.take()
    assert [key for _s, key, _enc in ops] == [KEY]


def test_instance_id_survives_in_the_state() -> None:
    ledger = Ledger("m:", 1.0)
    fresh = Ledger("m:", 1.0)
    assert ledger.instance != fresh.instance and not fresh.restored
    fresh.restore(ledger.state())
    assert (fresh.instance, fresh.restored) == (ledger.instance, True)
    for bad in ({"instance": "a b"}, {"instance": 7}, {}, "x"):
        with pytest.raises(StateError):
            Ledger("m:", 1.0).restore(bad)


def test_compose_fleet_example() -> None:
    """deploy/docker/compose.fleet.yaml: two daemons whose command lines the real CLI accepts,
    sharing one Redis whose password is a secret file (never a URL or a command line)."""
    from pathlib import Path

    import yaml

    from tests.unit.test_deploy_files import serve_config

    root = Path(__file__).resolve().parents[2]
    data = yaml.safe_load((root / "deploy" / "docker" / "compose.fleet.yaml").read_text())
    services = data["services"]
    assert sorted(services) == ["metricsd-a", "metricsd-b", "redis"]
    secret = data["secrets"]["redis_password"]["file"]
    assert secret == "./redis_password.txt"
    assert "redis_password.txt" in (root / ".gitignore").read_text()
    ports = []
    for name in ("metricsd-a", "metricsd-b"):
        service = services[name]
        assert service["secrets"] == ["redis_password"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        config = serve_config(service["command"], environ=service["environment"])
        assert config.cost.budget_store == "redis://redis:6379/0"
        password_file = config.cost.budget_store_password_file
        assert password_file == "/run/secrets/redis_password"
        ports.append(service["ports"][0])
    assert ports == ["127.0.0.1:9465:9465", "127.0.0.1:9466:9465"]
    redis = services["redis"]
    assert redis["secrets"] == ["redis_password"]
    assert "/run/secrets/redis_password" in " ".join(redis["entrypoint"])
    assert "requirepass" in " ".join(redis["entrypoint"])


def test_round_trips_start_on_ticks_not_on_extra_snapshots() -> None:
    """A fleet read that moved a budget publishes a snapshot at once; that snapshot hands its
    values over but does not start another round trip (only ticks, half a tick apart, do)."""
    f = Fleet()
    f.ledger = Ledger("m:", 1.0, tick=0.5)
    f.tracker.fleet = f.ledger
    f.tracker.put_budget(KEY, {"limit_usd": 2}, WALL)
    wake = f.ledger.outbox.wake
    for now, woken in ((2.0, True), (2.01, False), (2.2, False), (2.5, True), (2.6, False)):
        wake.clear()
        f.tick(now)
        assert wake.is_set() is woken, now
    f.ledger.outbox.take()
    f.spend("0.25", now=2.7)
    f.tick(2.7)  # not a round trip, but the value is handed over for the next one
    assert not wake.is_set() and f.offered()[f"m:spend:{KEY}:monthly:2026-03-01"][1] == PICO // 4
    name = f"m:spend:{KEY}:monthly:2026-03-01"
    assert f.ledger.apply(RoundTrip(True, WALL, {name: (5, 0)}), f.tracker, WALL) is True
    assert f.ledger.apply(RoundTrip(True, WALL, {name: (5, 0)}), f.tracker, WALL) is False
