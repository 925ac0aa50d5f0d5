"""Every metric that the Grafana dashboard and the compose Prometheus rules query is one the real
daemon exports: names are read from /metrics after sending events of every type."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "metricsd.json"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "docker" / "prometheus.yml"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_VARIABLES = re.compile(r"\$\{?\w+\}?")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords and Grafana
    variables are not names)."""
    s = _STRINGS.sub('""', expr)
    s = _MATCHERS.sub(" ", s)
    s = _RANGES.sub(" ", s)
    s = _GROUPING.sub(" ", s)
    s = _VARIABLES.sub(" ", s)
    names = set()
    for m in _NAME.finditer(s):
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or unit of a number: 1e-9, 5m
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() not in _KEYWORDS:
            names.add(m.group(0))
    return names


def test_metric_names_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(llm_request_duration_seconds_bucket"
        '{model=~"$m", endpoint="a{b}"}[$__rate_interval]))) / on (job) group_left(slo) '
        "clamp_min(sum without (status) (x:y:z offset 5m), 1e-9) > bool 0.5 unless vector(1)"
    )
    assert metric_names(expr) == {"llm_request_duration_seconds_bucket", "x:y:z"}
    assert metric_names("sum(rate(a_total[5m])) by (model) * 3600") == {"a_total"}


def dashboard_queries() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for variable in data["templating"]["list"]:
        text = variable["query"]["query"]
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text)
        assert m is not None, text
        queries.append(m.group(1))
    return queries


def rule_queries() -> tuple[list[str], set[str]]:
    """The expressions of the rule files the compose Prometheus loads, and the names they record."""
    config = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    exprs: list[str] = []
    recorded: set[str] = set()
    for rule_file in config["rule_files"]:
        path = ROOT / "deploy" / "prometheus" / Path(rule_file).relative_to("rules")
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                exprs.append(str(rule["expr"]))
                if "record" in rule:
                    recorded.add(rule["record"])
    return exprs, recorded


def every_event_type(now: float) -> list[dict[str, Any]]:
    chat = {"model": "gpt-4o", "endpoint": "/v1/chat/completions"}
    return [
        {
            "type": "request",
            **chat,
            "duration_ms": 120,
            "input_tokens": 100,
            "output_tokens": 50,
            "cached_tokens": 10,
            "ttft_ms": 30,
            "streaming": True,
            "queue_ms": 5,
            "finish_reason": "stop",
            "api_key": "sk-test-a",
        },
        {"type": "request", **chat, "duration_ms": 80, "status": 503, "error_type": "upstream"},
        {"type": "error", **chat, "error_type": "timeout", "error_message": "timed out"},
        {"type": "stream.start", **chat, "stream_id": "s1", "ts": now},
        {"type": "stream.token", "stream_id": "s1", "n": 1, "ts": now + 0.05},
        {"type": "stream.token", "stream_id": "s1", "n": 2, "ts": now + 0.1},
        {"type": "stream.backpressure", "stream_id": "s1", "buffer_size": 10},
        {"type": "stream.token", "stream_id": "s1", "n": 2, "ts": now + 0.8},
        {"type": "stream.end", "stream_id": "s1", "ts": now + 0.9},
        {"type": "cache", **chat, "hit": True, "total_tokens": 100, "matched_tokens": 50},
        {"type": "queue", "depth": 3, "queue": "default"},
        {"type": "usage", "model": "gpt-4o", "prompt_tokens": 1000, "api_key": "sk-test-b"},
        {"type": "usage", "model": "unpriced-model", "prompt_tokens": 10, "api_key": "sk-test-b"},
        {"type": "client", "dropped": 2, "source": "app"},
    ]


@pytest.fixture
def exported(daemon_factory: Any, tmp_path: Path) -> set[str]:
    config = tmp_path / "budget.toml"
    config.write_text('[[cost.budgets]]\nkey = "*"\nlimit_usd = 100.0\n')
    d: Daemon = daemon_factory("--config", str(config))
    events = every_event_type(time.time())
    d.send(events)
    assert d.wait_for("metricsd_events_received_total", 3, type="stream.token") == 3
    time.sleep(0.25)  # the next tick renders what the last event changed
    status, _, body = d.request("/metrics")
    assert status == 200
    names = set()
    for family in text_string_to_metric_families(body.decode()):
        # Sample names are what Prometheus stores: counters with _total, histograms as
        # _bucket/_sum/_count, so a query on a bare histogram name is caught too.
        names.update(sample.name for sample in family.samples)
    return names


def test_every_queried_metric_is_exported(exported: set[str]) -> None:
    rule_exprs, recorded = rule_queries()
    missing = {}
    for source, queries in (("dashboard", dashboard_queries()), ("rules", rule_exprs)):
        for query in queries:
            unknown = metric_names(query) - exported - recorded
            if unknown:
                missing[f"{source}: {' '.join(query.split())}"] = sorted(unknown)
    assert missing == {}
    used = set().union(*(metric_names(q) for q in dashboard_queries()))
    assert len(used) >= 20  # the extraction found the dashboard's metrics, not nothing
