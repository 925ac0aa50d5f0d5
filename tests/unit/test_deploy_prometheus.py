"""deploy/prometheus: rule files are well formed, match the daemon's SLO definitions, and (when
promtool is installed) pass ``promtool check``/``promtool test rules``; the daemon's exposition
passes ``promtool check metrics`` apart from the colons that Sloth's names carry by design."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml

from metricsd.config import SloConfig, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_text
from metricsd.protocol import decode
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.slo import WINDOWS, SloTracker
from metricsd.window import Geometry

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = (
    "slo-recording-rules.yml",
    "slo-alerting-rules.yml",
    "slo-alerting-rules-per-daemon.yml",
)
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict)
    return data


def rules(name: str) -> list[dict[str, Any]]:
    return [rule for group in load(name)["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("name", RULE_FILES)
def test_rule_files_have_the_prometheus_structure(name: str) -> None:
    data = load(name)
    assert set(data) == {"groups"}
    names = [g["name"] for g in data["groups"]]
    assert len(names) == len(set(names))
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for rule in group["rules"]:
            assert ("record" in rule) != ("alert" in rule)
            assert isinstance(rule["expr"], (str, int, float)) and str(rule["expr"]).strip()
            allowed = (
                {"record", "expr", "labels"}
                if "record" in rule
                else {
                    "alert",
                    "expr",
                    "for",
                    "labels",
                    "annotations",
                    "keep_firing_for",
                }
            )
            assert set(rule) <= allowed, rule
            if "record" in rule:
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
            for value in rule.get("labels", {}).values():
                assert isinstance(value, str)


def test_recording_rules_cover_every_window_with_the_daemon_definitions() -> None:
    recorded = {r["record"]: r for r in rules("slo-recording-rules.yml")}
    default = SloConfig()
    for window in WINDOWS:
        ratio = recorded[f"fleet:llm_slo_error_ratio:rate{window}"]
        expr = ratio["expr"]
        assert f"[{window}]" in expr and "llm_requests_total" in expr
        assert 'status=~"5..|429"' in expr  # default bad: status ≥ 500 or 429
        assert ratio["labels"] == {"slo": default.name}
        burn = recorded[f"fleet:llm_slo_burn_rate:rate{window}"]["expr"]
        assert f"fleet:llm_slo_error_ratio:rate{window}" in burn
        assert "fleet:llm_slo_error_budget:ratio" in burn
    objective = recorded["fleet:llm_slo_objective:ratio"]["expr"]
    budget = recorded["fleet:llm_slo_error_budget:ratio"]["expr"]
    assert objective == f"vector({default.objective})"
    assert budget == f"vector({round(1 - default.objective, 12)})"


@pytest.mark.parametrize("name", ["slo-alerting-rules.yml", "slo-alerting-rules-per-daemon.yml"])
def test_alerts_use_the_multiwindow_thresholds(name: str) -> None:
    alerts = {r["alert"]: r for r in rules(name)}
    assert set(alerts) == {"LLMErrorBudgetBurnPage", "LLMErrorBudgetBurnTicket"}
    page = " ".join(alerts["LLMErrorBudgetBurnPage"]["expr"].split())
    ticket = " ".join(alerts["LLMErrorBudgetBurnTicket"]["expr"].split())
    for window, threshold in (("1h", "14.4"), ("5m", "14.4"), ("6h", "6"), ("30m", "6")):
        assert re.search(rf"{window}\b[^>]*> {re.escape(threshold)}\b", page), (window, page)
    for window in ("3d", "6h"):
        assert re.search(rf"{window}\b[^>]*> 1\b", ticket), (window, ticket)
    assert alerts["LLMErrorBudgetBurnPage"]["labels"] == {"severity": "page"}
    assert alerts["LLMErrorBudgetBurnTicket"]["labels"] == {"severity": "ticket"}


def test_scrape_config_loads_the_rules() -> None:
    config = load("prometheus.yml")
    assert config["rule_files"] == ["slo-recording-rules.yml", "slo-alerting-rules.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"


def _promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY, input=stdin, capture_output=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_checks_rules_and_config() -> None:
    result = _promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    tests = sorted(str(p.relative_to(DEPLOY)) for p in (DEPLOY / "tests").glob("*.test.yml"))
    assert tests
    result = _promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_exposition() -> None:
    config = load_config(environ={})
    trackers = [
        RequestTracker(config, Geometry(), 0.0),
        ErrorTracker(config, Geometry(), 0.0),
        SloTracker(config, Geometry(), 0.0),
    ]
    engine = Engine(config, list(trackers))
    frame = {
        "type": "request",
        "const": {"endpoint": "/v1/chat", "model": "gpt-4o"},
        "cols": {"duration_ms": [12.0] * 9 + [30.0], "status": [200] * 9 + [503]},
    }
    engine.apply(decode(msgpack.packb(frame), 1e9, engine.limits), 1.0, 1e9)
    text = render_text(engine.snapshot(2.0, 1e9 + 2).families())
    result = _promtool("check", "metrics", stdin=text)
    # Exit 3 is "lint problems", 1 a parse error. The only lint allowed: Sloth's recording-rule
    # names (`slo:*`), which contain colons by design.
    assert result.returncode in (0, 3), result.stdout + result.stderr
    problems = (result.stdout + result.stderr).decode().strip().splitlines()
    assert all(p.startswith("slo:") and p.endswith("should not contain ':'") for p in problems), (
        problems
    )
