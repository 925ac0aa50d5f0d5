"""SLOs, budgets and burn rates with a synthetic clock; exact values from the worked examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config, ConfigError, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.snapshot import Snapshot
from metricsd.trackers.base import Ctx
from metricsd.trackers.slo import CountRing, SloTracker
from metricsd.trackers.slo_view import duration_name, slo_object
from metricsd.window import Geometry

WALL = 1_700_000_000.0
CHAT = "/v1/chat/completions"
HOUR = 3600.0


class Harness:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config(environ={})
        self.slo = SloTracker(self.config, Geometry(), start=0.0)
        self.engine = Engine(self.config, [self.slo])
        #: Alerts a snapshot took out of the tracker's outbox (for the hub), oldest first.
        self.drained: list[dict[str, Any]] = []

    def send(self, frame: Any, now: float) -> None:
        self.engine.apply(
            decode(msgpack.packb(frame), WALL + now, self.engine.limits), now, WALL + now
        )

    def outcomes(self, now: float, good: int, bad: int = 0, **const: Any) -> None:
        """``good`` 200s and ``bad`` 500s in one columnar batch."""
        n = good + bad
        if n:
            const = {"endpoint": CHAT, "model": "gpt-4o", **const}
            cols = {"duration_ms": [1.0] * n, "status": [200] * good + [500] * bad}
            self.send({"type": "request", "const": const, "cols": cols}, now)

    def snap(self, now: float) -> Snapshot:
        snap = self.engine.snapshot(now, WALL + now)
        self.drained.extend(snap.alerts)
        return snap

    def view(self, now: float) -> dict[str, Any]:
        return self.snap(now).view("slo")

    def expire(self, now: float) -> None:
        self.slo.expire(Ctx(now, WALL + now, 1))

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert raised: drained by snapshots, then still in the tracker's outbox."""
        return [*self.drained, *self.slo.alerts]

    def burn(self, now: float, window: str) -> float:
        return float(self.view(now)["burn_rates"][window])


def config_from(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "metricsd.toml"
    path.write_text(text)
    return load_config(path, environ={})


def test_99_good_1_bad_burns_at_exactly_10() -> None:
    h = Harness()
    h.outcomes(5.0, good=99, bad=1)
    v = h.view(6.0)
    assert v["burn_rate"] == 10.0
    assert v["burn_rates"] == {w: 10.0 for w in ("5m", "30m", "1h", "6h", "1d", "3d")}


def test_1000_good_1_bad_budget_is_a_real_number() -> None:
    h = Harness()
    h.outcomes(5.0, good=1000, bad=1)
    v = h.view(6.0)
    assert v["total_requests"] == 1001
    assert v["error_budget_total"] == 1.001
    assert v["error_budget_consumed"] == 1
    assert v["error_budget_remaining"] == 0.001
    assert v["error_budget_percentage"] == pytest.approx(0.001 / 1.001 * 100)
    assert v["slo_violated"] is False  # 1000/1001 = 99.9001 % ≥ 99.9 %


def test_100_with_1_error_is_violated_with_nothing_left() -> None:
    h = Harness()
    h.outcomes(5.0, good=99, bad=1)
    v = h.view(6.0)
    assert v["slo_violated"] is True
    assert v["error_budget_total"] == 0.1
    assert v["error_budget_remaining"] == 0.0
    assert v["error_budget_percentage"] == 0.0  # FakeAI reported 100 here


def test_seed_example_at_99_percent(tmp_path: Path) -> None:
    h = Harness(config_from(tmp_path, '[[slo]]\nname = "a"\nobjective = 0.99\n'))
    h.outcomes(5.0, good=98, bad=2)
    v = h.view(6.0)
    assert v["slo_violated"] is True
    assert v["burn_rate"] == 2.0
    assert v["error_budget_total"] == 1.0


def test_no_traffic() -> None:
    v = Harness().view(100.0)
    assert v["burn_rate"] == 0.0 and set(v["burn_rates"].values()) == {0.0}
    assert v["error_budget_total"] == 0.0 and v["error_budget_percentage"] == 100.0
    assert v["slo_violated"] is False
    assert (v["current_success_rate"], v["current_error_rate"]) == (1.0, 0.0)
    assert v["alerts"] == {"page": False, "ticket": False}


def test_what_counts_as_bad() -> None:
    h = Harness()
    frame = {
        "type": "request",
        "const": {"endpoint": CHAT},
        "cols": {"duration_ms": [1.0] * 6, "status": [200, 404, 400, 429, 500, 503]},
    }
    h.send(frame, 1.0)
    h.send({"type": "error", "error_type": "boom"}, 1.0)  # no status: reads as 500, bad
    h.send({"type": "error", "error_type": "denied", "status": 403}, 1.0)  # a client error
    v = h.view(2.0)
    assert (v["total_requests"], v["failed_requests"], v["successful_requests"]) == (8, 4, 4)


def test_bad_statuses_are_configurable(tmp_path: Path) -> None:
    config = config_from(
        tmp_path, '[[slo]]\nname = "strict"\nbad_min_status = 400\nbad_statuses = []\n'
    )
    h = Harness(config)
    h.send(
        {"type": "request", "cols": {"duration_ms": [1.0] * 4, "status": [200, 404, 429, 500]}},
        1.0,
    )
    assert h.view(2.0)["failed_requests"] == 3


def test_selectors_and_several_slos(tmp_path: Path) -> None:
    config = config_from(
        tmp_path,
        '[[slo]]\nname = "chat"\nobjective = 0.99\nendpoints = ["/v1/chat/completions"]\n'
        '[[slo]]\nname = "claude"\nmodels = ["claude-3"]\n',
    )
    h = Harness(config)
    h.outcomes(1.0, good=9, bad=1)  # chat, gpt-4o
    h.outcomes(1.0, good=5, bad=0, endpoint="/v1/embeddings", model="claude-3")
    v = h.view(2.0)
    assert [s["name"] for s in v["slos"]] == ["chat", "claude"]
    chat, claude = v["slos"]
    assert (chat["total_requests"], chat["failed_requests"]) == (10, 1)
    assert chat["burn_rate"] == 10.0
    assert (claude["total_requests"], claude["failed_requests"]) == (5, 0)
    assert v["name"] == "chat" and v["burn_rate"] == 10.0  # the first SLO at the top level
    assert chat["endpoint_error_rates"] == {CHAT: 0.1}


def test_burn_rates_slide_across_the_5m_and_1h_boundaries() -> None:
    h = Harness()
    h.outcomes(0.0, good=99, bad=1)
    assert h.burn(299.9, "5m") == 10.0  # 10-second slots: [0, 10) is still in the window
    assert h.burn(300.0, "5m") == 0.0  # ... and has left it; no traffic since: 0
    assert h.burn(300.0, "1h") == 10.0
    h.outcomes(310.0, good=100)
    assert h.burn(311.0, "5m") == 0.0
    assert h.burn(311.0, "30m") == 5.0  # 1 bad in 200
    assert h.burn(311.0, "1h") == 5.0
    assert h.burn(HOUR - 0.1, "1h") == 5.0
    h.outcomes(HOUR, good=100)
    assert h.burn(HOUR, "1h") == 0.0  # t=0 left the hour; 200 good outcomes remain
    assert h.burn(HOUR, "6h") == 10 / 3  # 1-minute slots: 1 bad in 300
    assert h.burn(HOUR, "3d") == 10 / 3


def test_budget_window_drops_old_minutes(tmp_path: Path) -> None:
    h = Harness(config_from(tmp_path, '[[slo]]\nname = "d"\nbudget_window = 86400\n'))
    h.outcomes(0.0, good=9, bad=1)
    assert h.view(86399.0)["failed_requests"] == 1
    v = h.view(86400.0)
    assert (v["total_requests"], v["failed_requests"]) == (0, 0)
    assert v["error_budget_percentage"] == 100.0


def test_page_alert_is_edge_triggered() -> None:
    h = Harness()
    h.outcomes(10.0, good=90, bad=10)  # burn 100 on every window
    h.expire(10.0)
    h.expire(10.5)
    alerts = list(h.alerts)
    assert [(a["type"], a["level"], a["slo"]) for a in alerts] == [
        ("slo_alert", "page", "availability"),
        ("slo_alert", "ticket", "availability"),
    ]
    assert alerts[0]["timestamp"] == WALL + 10.0
    assert alerts[0]["burn_rates"]["1h"] == 100.0
    json.dumps(alerts, allow_nan=False)
    assert h.view(10.5)["alerts"] == {"page": True, "ticket": True}
    # Hours of good traffic: every window recovers and both alerts end ...
    for t in range(60, 7 * 3600, 60):
        h.outcomes(float(t), good=1000)
    h.expire(7 * 3600.0)
    assert h.view(7 * 3600.0)["alerts"] == {"page": False, "ticket": False}
    assert len(h.alerts) == 2
    # ... and a new storm of bad outcomes starts each of them again, once.
    h.outcomes(7 * 3600.0 + 1, good=10, bad=9000)
    h.expire(7 * 3600.0 + 1)
    h.expire(7 * 3600.0 + 2)
    assert [a["level"] for a in h.alerts] == ["page", "ticket", "page", "ticket"]


def test_ticket_without_page() -> None:
    h = Harness()
    h.outcomes(10.0, good=998, bad=2)  # burn 2: above 1, below 6
    h.expire(10.0)
    assert [a["level"] for a in h.alerts] == ["ticket"]
    assert h.view(10.0)["alerts"] == {"page": False, "ticket": True}


def test_page_thresholds_are_strict() -> None:
    h = Harness()
    h.outcomes(10.0, good=994, bad=6)  # burn exactly 6: not > 6
    h.expire(10.0)
    assert h.view(10.0)["alerts"]["page"] is False


def test_slo_object_has_every_spec_field() -> None:
    h = Harness()
    h.outcomes(1.0, good=10)
    v = h.view(2.0)
    fields = {
        "name",
        "target_success_rate",
        "slo_target",
        "window_seconds",
        "total_requests",
        "successful_requests",
        "failed_requests",
        "current_success_rate",
        "success_rate",
        "current_error_rate",
        "error_budget_total",
        "error_budget_consumed",
        "error_budget_remaining",
        "error_budget_percentage",
        "slo_violated",
        "burn_rate",
        "burn_rates",
        "alerts",
        "endpoint_error_rates",
    }
    assert set(v) == fields | {"slos"}
    assert set(v["slos"][0]) == fields
    assert v["window_seconds"] == 30 * 86400.0 and v["target_success_rate"] == 0.999
    assert slo_object(h.slo.slos[0].frozen(2.0)) == v["slos"][0]
    json.dumps(v, allow_nan=False)
    assert plain_types(v)


def plain_types(value: Any) -> bool:
    """Only JSON-native Python types, recursively (no numpy scalars, no Decimal)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_types(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def test_prometheus_families_canonical_sloth_and_seed() -> None:
    h = Harness()
    h.outcomes(1.0, good=99, bad=1)
    text, openmetrics = render_both(h.snap(2.0).families())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in parse_text(text.decode())
        for s in f.samples
    }
    assert samples[("llm_slo_objective", (("slo", "availability"),))] == 0.999
    assert samples[("llm_slo_burn_rate", (("slo", "availability"), ("window", "1h")))] == 10.0
    assert samples[("llm_slo_error_budget_remaining_ratio", (("slo", "availability"),))] == 0
    ids = (
        ("sloth_id", "metricsd-availability"),
        ("sloth_service", "metricsd"),
        ("sloth_slo", "availability"),
    )
    for window in ("5m", "30m", "1h", "6h", "1d", "3d", "30d"):
        key = (f"slo:sli_error:ratio_rate{window}", (*ids, ("sloth_window", window)))
        assert samples[key] == 0.01
    assert samples[("slo:objective:ratio", ids)] == 0.999
    assert samples[("slo:error_budget:ratio", ids)] == 0.001
    assert samples[("slo:current_burn_rate:ratio", ids)] == 10.0
    assert samples[("slo:period_error_budget_remaining:ratio", ids)] == -9.0
    assert samples[("error_burn_rate", ())] == 10.0
    assert samples[("error_slo_violated", ())] == 1
    assert samples[("error_budget_percentage", ())] == 0
    om = {f.name for f in parse_om(openmetrics.decode())}
    assert {"slo:sli_error:ratio_rate5m", "slo:objective:ratio", "llm_slo_burn_rate"} <= om


def test_sloth_names_follow_the_setting(tmp_path: Path) -> None:
    h = Harness(config_from(tmp_path, '[prometheus]\nsloth = false\n[[slo]]\nservice = "x"\n'))
    text = render_both(h.snap(1.0).families())[0].decode()
    assert "slo:" not in text and "llm_slo_objective" in text


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"slo\[0\]\.objectiv: unknown key"):
        config_from(tmp_path, "[[slo]]\nobjectiv = 0.9\n")
    with pytest.raises(ConfigError, match=r"slo\[1\]\.objective: must be between 0 and 1"):
        config_from(tmp_path, '[[slo]]\nname = "a"\n[[slo]]\nname = "b"\nobjective = 1.0\n')
    with pytest.raises(ConfigError, match=r"slo\[1\]\.name: must be non-empty and unique"):
        config_from(tmp_path, '[[slo]]\nname = "a"\n[[slo]]\nname = "a"\n')
    with pytest.raises(ConfigError, match=r"slo\[0\]\.budget_window"):
        config_from(tmp_path, "[[slo]]\nbudget_window = 60\n")
    with pytest.raises(ConfigError, match=r"slo\[0\]: expected a table"):
        config_from(tmp_path, "slo = [1]\n")


def test_default_and_empty_config() -> None:
    config = load_config(environ={})
    assert [s.name for s in config.slo] == ["availability"]
    assert config.to_dict()["slo"][0]["objective"] == 0.999


def test_empty_slo_list_falls_back_to_the_default(tmp_path: Path) -> None:
    h = Harness(config_from(tmp_path, "slo = []\n"))
    assert [s.name for s in h.slo.slos] == ["availability"]


def test_budget_ring_memory_is_fixed() -> None:
    slo = Harness().slo.slos[0]
    assert slo.coarse.counts.shape == (43_200, 2)
    assert slo.fine.counts.shape == (360, 2)


def test_count_ring_clears_skipped_slots() -> None:
    ring = CountRing(1.0, 5)
    ring.add(0.0, 10, 1)
    ring.add(3.0, 10, 2)
    assert ring.sums(3.0, 5) == (20, 3)
    assert ring.sums(5.0, 5) == (10, 2)  # slot 0 left the ring
    ring.add(20.0, 1, 0)  # a long gap clears everything
    assert ring.sums(20.0, 5) == (1, 0)
    ring.add(19.0, 1, 1)  # a time before the head counts in the head slot
    assert ring.sums(20.0, 1) == (2, 1)


def test_duration_names() -> None:
    assert [duration_name(s) for s in (2_592_000, 86400, 7200, 1800, 90)] == [
        "30d",
        "1d",
        "2h",
        "30m",
        "90s",
    ]


def test_live_category_for_the_websocket() -> None:
    h = Harness()
    h.outcomes(1.0, good=99, bad=1)
    live = h.snap(2.0).parts["slo"].live(frozenset({"some-model"}))
    assert live == {
        "availability": {
            "burn_rates": {w: 10.0 for w in ("5m", "30m", "1h", "6h", "1d", "3d")},
            "error_budget_percentage": 0.0,
        }
    }
    assert h.slo.live_category == "slo"
