"""Budgets: calendar periods in a timezone, hard limits, resets and alerts, on a synthetic clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest

from metricsd.budgets import BudgetError, parse_update, period_bounds
from metricsd.config import load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode, hash_key
from metricsd.snapshot import Snapshot
from metricsd.trackers.cost import CostTracker

WALL = datetime(2026, 3, 31, 22, 0, tzinfo=UTC).timestamp()  # a Tuesday
HOUR = 3600.0


def ts(*args: int, tz: str = "UTC") -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


class Harness:
    def __init__(self, **cost: Any) -> None:
        self.config = load_config(environ={}, overrides={"cost": cost})
        self.tracker = CostTracker(self.config, 0.0, WALL)
        self.engine = Engine(self.config, [self.tracker])
        #: Every alert the snapshots carried (what the WebSocket hub sends) and the budget
        #: alerts among them (what the webhook sender is given).
        self.published: list[dict[str, Any]] = []
        self.sunk: list[dict[str, Any]] = []

    def snap(self, now: float) -> Snapshot:
        """An engine tick: the alerts raised since the last one leave with the snapshot."""
        snap = self.engine.snapshot(now, WALL + now)
        self.published.extend(snap.alerts)
        self.sunk.extend(a for a in snap.alerts if a.get("type") == "budget_alert")
        return snap

    def spend(self, key: str, dollars_x800: int, now: float) -> None:
        """gpt-4o, 100 in / 50 out = $0.00125 per request (1/800 USD)."""
        events = [
            {"type": "request", "duration_ms": 1, "model": "gpt-4o", "api_key": key}
            | {"input_tokens": 100, "output_tokens": 50}
        ] * dollars_x800
        packed = msgpack.packb(events)
        self.engine.apply(decode(packed, WALL + now, self.engine.limits), now, WALL + now)
        self.snap(now)

    def status(self, key: str, now: float) -> dict[str, Any]:
        found = self.tracker.budget_status(key if key == "*" else hash_key(key), WALL + now)
        assert found is not None
        return found


def test_period_bounds_utc() -> None:
    utc = ZoneInfo("UTC")
    assert period_bounds("daily", WALL, utc)[1:] == (ts(2026, 3, 31), ts(2026, 4, 1))
    assert period_bounds("weekly", WALL, utc)[1:] == (ts(2026, 3, 30), ts(2026, 4, 6))
    assert period_bounds("monthly", WALL, utc)[1:] == (ts(2026, 3, 1), ts(2026, 4, 1))
    assert period_bounds("monthly", ts(2026, 12, 5), utc)[1:] == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert period_bounds("never", WALL, utc) == (None, 0.0, None)


def test_period_bounds_in_other_timezones() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")  # WALL is already 1 April, 07:00 there
    tk = "Asia/Tokyo"
    assert period_bounds("daily", WALL, tokyo)[1:] == (ts(2026, 4, 1, tz=tk), ts(2026, 4, 2, tz=tk))
    assert period_bounds("monthly", WALL, tokyo)[1] == ts(2026, 4, 1, tz=tk)
    ny = ZoneInfo("America/New_York")  # 2026-03-08 has 23 hours (DST starts)
    ny_s = "America/New_York"
    start, end = period_bounds("daily", ts(2026, 3, 8, 12), ny)[1:]
    assert (start, end) == (ts(2026, 3, 8, tz=ny_s), ts(2026, 3, 9, tz=ny_s))
    assert end is not None and end - start == 23 * HOUR
    assert period_bounds("weekly", ts(2026, 3, 10, 12), ny)[1] == ts(2026, 3, 9, tz=ny_s)


def test_hard_budget_flips_allowed_at_the_limit_and_resets_at_midnight() -> None:
    h = Harness(
        budgets=[{"key": "sk-a", "limit_usd": 0.0025, "limit_type": "hard", "period": "daily"}]
    )
    h.spend("sk-a", 1, now=1.0)
    s = h.status("sk-a", 2.0)
    assert (s["used_usd"], s["allowed"], s["exceeded"], s["percentage"]) == (
        0.00125,
        True,
        False,
        50.0,
    )
    assert h.sunk == []
    h.spend("sk-a", 1, now=3.0)  # exactly at the limit
    s = h.status("sk-a", 4.0)
    assert (s["used_usd_str"], s["allowed"], s["exceeded"], s["remaining_usd"]) == (
        "0.0025",
        False,
        True,
        0.0,
    )
    assert [a["level"] for a in h.sunk] == ["threshold", "exceeded"]
    assert s["period_start"] == ts(2026, 3, 31) and s["resets_at"] == ts(2026, 4, 1)
    midnight = ts(2026, 4, 1) - WALL
    assert h.status("sk-a", midnight - 0.001)["allowed"] is False
    s = h.status("sk-a", midnight)  # evaluated on read: never late
    assert (s["used_usd"], s["allowed"], s["period_start"]) == (0.0, True, ts(2026, 4, 1))
    h.spend("sk-a", 2, now=midnight + 10)  # a new period alerts again
    assert [a["level"] for a in h.sunk] == ["threshold", "exceeded"] * 2
    assert h.published == h.sunk
    alert = h.sunk[-1]
    assert alert == {
        "type": "budget_alert",
        "timestamp": WALL + midnight + 10,
        "key_id": hash_key("sk-a"),
        "level": "exceeded",
        "used_usd": 0.0025,
        "limit_usd": 0.0025,
        "period": "daily",
        "limit_type": "hard",
    }


def test_hard_budget_resets_at_midnight_in_its_timezone() -> None:
    tk = "Asia/Tokyo"
    h = Harness(
        timezone=tk,
        budgets=[{"key": "sk-a", "limit_usd": 0.00125, "limit_type": "hard", "period": "daily"}],
    )
    h.spend("sk-a", 1, now=1.0)  # 1 April, 07:00 in Tokyo
    assert h.status("sk-a", 2.0)["allowed"] is False
    tokyo_midnight = ts(2026, 4, 2, tz=tk) - WALL  # 17 h later; UTC's midnight is long past
    assert h.status("sk-a", ts(2026, 4, 1) - WALL + 60)["allowed"] is False
    assert h.status("sk-a", tokyo_midnight - 1)["allowed"] is False
    s = h.status("sk-a", tokyo_midnight)
    assert (s["allowed"], s["used_usd"], s["period_start"]) == (True, 0.0, ts(2026, 4, 2, tz=tk))


def test_soft_budget_never_blocks() -> None:
    h = Harness(budgets=[{"key": "sk-a", "limit_usd": 0.001}])
    h.spend("sk-a", 2, now=1.0)
    s = h.status("sk-a", 2.0)
    assert (s["exceeded"], s["allowed"], s["limit_type"], s["period"]) == (
        True,
        True,
        "soft",
        "monthly",
    )
    assert s["percentage"] == 250.0 and s["remaining_usd"] == -0.0015


def test_budget_created_mid_period_counts_the_period_so_far() -> None:
    h = Harness()
    h.spend("sk-a", 1, now=1.0)  # Tuesday 31 March
    h.spend("sk-a", 2, now=3 * HOUR)  # Wednesday 1 April, 01:00
    key = hash_key("sk-a")
    used = {}
    for period in ("daily", "weekly", "monthly", "never"):
        h.tracker.put_budget(key, {"limit_usd": 1, "period": period}, WALL + 4 * HOUR)
        used[period] = h.status("sk-a", 4 * HOUR)["used_usd_str"]
    assert used == {"daily": "0.0025", "weekly": "0.00375", "monthly": "0.0025", "never": "0.00375"}


def test_all_keys_budget_and_alerts_once_per_level() -> None:
    h = Harness(budgets=[{"key": "*", "limit_usd": 0.01, "alert_threshold": 0.5}])
    h.spend("sk-a", 2, now=1.0)
    h.spend("sk-b", 2, now=2.0)  # $0.005: the threshold
    assert [(a["key_id"], a["level"]) for a in h.sunk] == [("*", "threshold")]
    h.spend("sk-c", 1, now=3.0)
    assert len(h.sunk) == 1  # once per level per period
    h.spend("sk-c", 3, now=4.0)  # $0.01: the limit
    assert [a["level"] for a in h.sunk] == ["threshold", "exceeded"]
    h.spend("sk-c", 3, now=5.0)
    assert len(h.sunk) == 2
    assert h.tracker.alerts_sent == {"threshold": 1, "exceeded": 1}


def test_put_updates_only_the_fields_given() -> None:
    h = Harness()
    key = hash_key("sk-a")
    h.tracker.put_budget(key, {"limit_usd": 5, "period": "weekly", "limit_type": "hard"}, WALL)
    s = h.tracker.put_budget(key, {"alert_threshold": 0.5}, WALL)
    assert (s["limit_usd"], s["period"], s["limit_type"], s["alert_threshold"]) == (
        5.0,
        "weekly",
        "hard",
        0.5,
    )
    s = h.tracker.put_budget(key, {"limit_usd": 7.5}, WALL)
    assert (s["limit_usd"], s["period"], s["alert_threshold"]) == (7.5, "weekly", 0.5)
    view = h.snap(0.0).parts["cost"].budgets_view(WALL)
    assert view["timezone"] == "UTC" and [b["key_id"] for b in view["budgets"]] == [key]
    assert h.tracker.delete_budget(key) and not h.tracker.delete_budget(key)
    assert h.tracker.budget_status(key, WALL) is None


def test_budget_gauges() -> None:
    h = Harness(budgets=[{"key": "sk-a", "limit_usd": 0.005, "limit_type": "hard"}])
    h.spend("sk-a", 4, now=1.0)
    text = render_both(h.snap(2.0).families())[0].decode()
    key = hash_key("sk-a")
    assert f'llm_budget_limit_usd{{key_id="{key}"}} 0.005' in text
    assert f'llm_budget_used_usd{{key_id="{key}"}} 0.005' in text
    assert f'llm_budget_exceeded{{key_id="{key}"}} 1' in text
    assert f'cost_budget_usage_percentage{{key_id="{key}"}} 100' in text
    assert 'metricsd_budget_alerts_total{level="exceeded"} 1' in text


@pytest.mark.parametrize(
    "body,creating,message",
    [
        ([1], True, "must be a JSON object"),
        ({}, True, "limit_usd is required"),
        ({"limit_usd": "5"}, True, "limit_usd must be a number"),
        ({"limit_usd": True}, True, "limit_usd must be a number"),
        ({"limit_usd": -1}, True, "between 0 and"),
        ({"limit_usd": 1, "period": "yearly"}, True, "period must be one of"),
        ({"limit_usd": 1, "limit_type": "strict"}, True, "limit_type must be one of"),
        ({"limit_usd": 1, "alert_threshold": 0}, True, r"alert_threshold must be in \(0, 1\]"),
        ({"limit_usd": 1, "alert_threshold": 1.5}, True, r"alert_threshold must be in \(0, 1\]"),
        ({"limit": 1}, False, "unknown field 'limit'"),
    ],
)
def test_bad_budget_bodies(body: Any, creating: bool, message: str) -> None:
    with pytest.raises(BudgetError, match=message):
        parse_update(body, creating)


def test_limits_and_thresholds_are_exact() -> None:
    fields = parse_update({"limit_usd": 0.1, "alert_threshold": 1}, creating=True)
    assert fields["limit"] == 100_000_000_000
    assert parse_update({"period": "never"}, creating=False) == {"period": "never"}
