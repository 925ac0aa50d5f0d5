"""Persistence with the real daemon: SIGTERM loses nothing, SIGKILL loses at most one interval,
budgets are saved at once, a corrupt file is moved aside, SIGHUP reloads SLOs and prices."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import Daemon


def batch(n: int, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "type": "request",
        "const": {"model": model, "endpoint": "/v1/chat/completions"},
        "cols": {"duration_ms": [120.0] * n, "input_tokens": [100] * n, "output_tokens": [50] * n},
    }


def received(d: Daemon) -> float:
    return d.value("metricsd_events_received_total", type="request")


def test_sigterm_under_load_loses_nothing(daemon_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    d = daemon_factory("--state", str(state))
    sent = 0
    for i in range(300):  # 30 000 events, SIGTERM right behind the last send
        d.send(batch(100, model=f"model-{i % 3}"))
        sent += 100
    assert d.stop(signal.SIGTERM) == 0
    assert state.exists()
    d2 = daemon_factory("--state", str(state))
    assert received(d2) == sent
    total = sum(v for (name, _), v in d2.samples().items() if name == "llm_requests_total")
    assert total == sent
    count = sum(
        v for (name, _), v in d2.samples().items() if name == "llm_request_duration_seconds_count"
    )
    assert count == sent


def test_restart_restores_exactly(daemon_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    d = daemon_factory("--state", str(state))
    d.send(
        {
            "type": "request",
            "const": {
                "model": "gpt-4o",
                "endpoint": "/v1/chat/completions",
                "api_key": "sk-restore",
            },
            "cols": {
                "duration_ms": [100.0, 200.0, 700.0],
                "status": [200, 200, 503],
                "input_tokens": [100, 100, 100],
                "output_tokens": [50, 50, 50],
            },
        }
    )
    d.wait_for("metricsd_events_received_total", 3, type="request")
    status, _, _ = d.request(
        "/metrics/budgets/sk-restore",
        method="PUT",
        body=json.dumps({"limit_usd": 1.0, "limit_type": "hard"}).encode(),
    )
    assert status in (200, 201)
    time.sleep(0.3)
    before = {
        k: v
        for k, v in d.samples().items()
        if k[0].startswith("llm_") or k[0].startswith("slo:") or k[0].startswith("metricsd_events")
    }
    costs_before = d.get_json("/metrics/costs")
    assert d.stop() == 0
    d2 = daemon_factory("--state", str(state))
    after = {k: v for k, v in d2.samples().items() if k in before}
    assert after == before
    costs_after = d2.get_json("/metrics/costs")
    for key in ("total_cost_usd", "total_cost_usd_str", "by_model", "by_key"):
        if key in costs_before:
            assert costs_after[key] == costs_before[key], key
    budget = d2.get_json("/metrics/budgets/sk-restore")
    assert budget["limit_usd"] == 1.0 and budget["limit_type"] == "hard"
    assert "sk-restore" not in state.read_bytes().decode("latin-1")


def test_sigkill_loses_at_most_what_came_after_the_last_save(
    daemon_factory: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state.bin"
    config = tmp_path / "c.toml"
    config.write_text("[state]\ninterval = 0.3\n")
    d = daemon_factory("--state", str(state), "--config", str(config))
    d.send(batch(500))
    assert d.wait_for("metricsd_events_received_total", 500, type="request") == 500
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.05)
    time.sleep(0.8)  # at least one save after the 500 were applied
    d.send(batch(7))
    d.proc.kill()
    d.proc.wait(5)
    d2 = daemon_factory("--state", str(state), "--config", str(config))
    assert 500 <= received(d2) <= 507


def test_budget_change_is_saved_at_once(daemon_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    d = daemon_factory("--state", str(state))  # periodic saves every 60 s: only the PUT saves
    status, _, _ = d.request(
        "/metrics/budgets/k_0123456789ab",
        method="PUT",
        body=json.dumps({"limit_usd": 5, "period": "daily"}).encode(),
    )
    assert status in (200, 201)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not state.exists():
        time.sleep(0.02)
    d.proc.kill()
    d.proc.wait(5)
    d2 = daemon_factory("--state", str(state))
    assert d2.get_json("/metrics/budgets/k_0123456789ab")["limit_usd"] == 5.0


def test_corrupt_state_is_moved_aside(daemon_factory: Any, tmp_path: Path) -> None:
    state = tmp_path / "state.bin"
    state.write_bytes(b"METRICSD-STATE\n\x00\x00\x00\x02{}garbage")
    d = daemon_factory("--state", str(state))
    assert d.get_json("/readyz") == {"status": "ready"}
    moved = list(tmp_path.glob("state.bin.corrupt-*"))
    assert len(moved) == 1
    log = d.log_path.read_text()
    assert "cannot be used" in log and "moved to" in log


def test_sighup_reloads_slos_and_keeps_counts(daemon_factory: Any, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[[slo]]\nname = "availability"\nobjective = 0.99\n')
    d = daemon_factory("--config", str(config))
    d.send({"type": "request", "cols": {"duration_ms": [1.0] * 10, "status": [200] * 9 + [500]}})
    d.wait_for("metricsd_events_received_total", 10, type="request")
    time.sleep(0.3)
    assert d.get_json("/metrics/slo")["slo_target"] == 0.99
    config.write_text(
        '[[slo]]\nname = "availability"\nobjective = 0.99\n'
        '[[slo]]\nname = "strict"\nobjective = 0.9999\n'
    )
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    slos: list[Any] = []
    while time.monotonic() < deadline:
        slos = d.get_json("/metrics/slo")["slos"]
        if len(slos) == 2:
            break
        time.sleep(0.1)
    assert [s["name"] for s in slos] == ["availability", "strict"]
    assert slos[0]["total_requests"] == 10  # kept across the reload
    assert slos[1]["total_requests"] == 0  # new: starts empty
    config.write_text("[[slo]]\nname = 5\n")  # invalid: the running config stays
    d.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert len(d.get_json("/metrics/slo")["slos"]) == 2
    assert "the config is invalid, keeping the running one" in d.log_path.read_text()
