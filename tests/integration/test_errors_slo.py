"""Errors, patterns and SLOs through the real daemon: ZeroMQ in, HTTP JSON and Prometheus out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text
from websockets.sync.client import connect

from tests.conftest import Daemon

CHAT = "/v1/chat/completions"
UUIDS = (
    "550e8400-e29b-41d4-a716-446655440000",
    "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
    "123e4567-e89b-12d3-a456-426614174000",
    "00000000-0000-0000-0000-000000000001",
    "FFFFFFFF-0000-0000-0000-00000000000A",
)


def wait_json(
    daemon: Daemon, path: str, ready: Callable[[Any], bool], timeout: float = 10.0
) -> Any:
    """Poll a JSON route until ``ready(body)`` (each request has its own 5 s timeout)."""
    deadline = time.monotonic() + timeout
    body = daemon.get_json(path)
    while not ready(body):
        assert time.monotonic() < deadline, f"{path} never became ready: {body}"
        time.sleep(0.05)
        body = daemon.get_json(path)
    return body


def successes(n: int, endpoint: str = CHAT, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "v": 1,
        "type": "request",
        "const": {"endpoint": endpoint, "model": model},
        "cols": {"duration_ms": [20.0] * n},
    }


def failure(i: int) -> dict[str, Any]:
    return {
        "type": "error",
        "error_type": "upstream_timeout",
        "endpoint": CHAT,
        "model": "gpt-4o",
        "error_message": f"session {UUIDS[i]} timed out after {30 + i}s",
        "request_id": f"req-{i}",
        "user_id": f"u{i % 2}",
        "api_key": "sk-live-secret",
    }


def test_errors_slo_and_patterns_over_the_wire(daemon: Daemon) -> None:
    daemon.send(successes(99))
    daemon.send(failure(0))
    slo = wait_json(daemon, "/metrics/slo", lambda b: b["total_requests"] == 100)
    assert slo["burn_rate"] == 10.0  # 1 bad in 100 at 99.9 %
    assert slo["slo_violated"] is True
    assert slo["error_budget_total"] == 0.1
    assert slo["error_budget_percentage"] == 0.0
    assert [s["name"] for s in slo["slos"]] == ["availability"]
    assert slo["slos"][0]["burn_rates"]["5m"] == 10.0
    assert slo["endpoint_error_rates"] == {CHAT: 0.01}
    slo = wait_json(daemon, "/metrics/slo", lambda b: b["alerts"]["page"])
    assert slo["alerts"] == {"page": True, "ticket": True}  # 10 > 6 on 6h and 30m; > 1 on 3d

    daemon.send([failure(i) for i in range(1, 5)])
    errors = wait_json(daemon, "/metrics/errors", lambda b: b["total_errors"] == 5)
    assert (errors["total_requests"], errors["total_successes"]) == (104, 99)
    assert errors["error_rate"] == 5 / 104
    assert errors["windowed"] == {
        "requests": 104,
        "errors": 5,
        "error_rate": 5 / 104,
        "window_seconds": 300.0,
    }
    assert errors["by_status_code"] == {"500": 5}
    assert errors["by_error_type"] == {"upstream_timeout": 5}
    assert errors["by_endpoint"] == {CHAT: 5} and errors["by_model"] == {"gpt-4o": 5}
    assert errors["pattern_count"] == 1 and errors["bursts"] == []
    (pattern,) = errors["top_patterns"]
    assert pattern["count"] == 5
    assert pattern["normalized_message"] == "session <UUID> timed out after <NUM>s"
    assert pattern["affected_users_count"] == 2
    assert pattern["example_request_ids"] == [f"req-{i}" for i in range(5)]
    assert len(errors["recent_errors"]) == 5
    assert errors["recent_errors"][0]["key_id"].startswith("k_")
    assert "sk-live-secret" not in json.dumps(errors)

    patterns = daemon.get_json("/metrics/error-patterns")
    assert [p["fingerprint"] for p in patterns] == [pattern["fingerprint"]]
    assert daemon.get_json("/metrics/error-patterns?min_count=6") == []
    assert len(daemon.get_json("/metrics/error-patterns?recent_only=true&limit=5")) == 1
    assert daemon.get_json("/metrics/error-patterns?limit=0") == []
    for query in ("min_count=abc", "recent_only=maybe", "limit=-1"):
        status, headers, body = daemon.request(f"/metrics/error-patterns?{query}")
        assert status == 400 and headers["Content-Type"].startswith("application/json")
        assert set(json.loads(body)) == {"error"}

    text = daemon.request("/metrics")[2].decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parse_text(text)
        for s in family.samples
    }
    ids = (
        ("sloth_id", "metricsd-availability"),
        ("sloth_service", "metricsd"),
        ("sloth_slo", "availability"),
    )
    assert samples[("slo:sli_error:ratio_rate1h", (*ids, ("sloth_window", "1h")))] == 5 / 104
    assert samples[("slo:objective:ratio", ids)] == 0.999
    assert samples[("llm_error_patterns", ())] == 1
    assert samples[("error_total_errors_total", ())] == 5
    assert samples[("error_total_requests_total", ())] == 104
    assert samples[("error_slo_violated", ())] == 1
    assert text.count("# TYPE llm_errors_total counter") == 1
    body = daemon.request("/metrics", headers={"Accept": "application/openmetrics-text"})[2]
    om = {f.name: f for f in parse_om(body.decode())}
    for window in ("5m", "30m", "1h", "6h", "1d", "3d", "30d"):
        assert f"slo:sli_error:ratio_rate{window}" in om
    assert om["llm_slo_burn_rate"].type == "gauge"


def test_configured_slos_with_selectors(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    config = tmp_path / "metricsd.toml"
    config.write_text(
        "[prometheus]\ncompat = false\n"
        '[[slo]]\nname = "chat"\nobjective = 0.99\nendpoints = ["/v1/chat/completions"]\n'
        'service = "llm-api"\n'
        '[[slo]]\nname = "embeddings"\nendpoints = ["/v1/embeddings"]\n'
        "bad_min_status = 400\nbad_statuses = []\n"
    )
    daemon = daemon_factory("--config", str(config))
    daemon.send(
        [
            {**successes(98), "cols": {"duration_ms": [5.0] * 98}},
            {"type": "request", "endpoint": CHAT, "duration_ms": 5.0, "status": 503},
            {"type": "request", "endpoint": CHAT, "duration_ms": 5.0, "status": 404},
            successes(9, endpoint="/v1/embeddings"),
            {"type": "error", "error_type": "bad_request", "endpoint": "/v1/embeddings"}
            | {"status": 400},
        ]
    )
    slo = wait_json(daemon, "/metrics/slo", lambda b: b["slos"][1]["total_requests"] == 10)
    chat, embeddings = slo["slos"]
    assert (chat["name"], chat["total_requests"], chat["failed_requests"]) == ("chat", 100, 1)
    assert chat["burn_rate"] == 1.0  # 1 bad in 100 at 99 %
    assert chat["slo_violated"] is False
    assert chat["error_budget_total"] == 1.0 and chat["error_budget_remaining"] == 0.0
    assert (embeddings["failed_requests"], embeddings["burn_rate"]) == (1, 100.0)
    assert slo["name"] == "chat"
    text = daemon.request("/metrics")[2].decode()
    names = {f.name for f in parse_text(text)}
    assert "slo:current_burn_rate:ratio" in names and "error_burn_rate" not in names
    assert 'sloth_id="llm-api-chat"' in text and 'sloth_service="metricsd"' in text


def test_websocket_slo_category_and_alert(daemon: Daemon) -> None:
    url = daemon.http.replace("http://", "ws://") + "/metrics/stream"
    with connect(url, open_timeout=5.0) as ws:
        first = json.loads(ws.recv(timeout=5.0))
        assert first["type"] == "historical_data"
        assert first["data"]["slo"] == {
            "availability": {
                "burn_rates": {w: 0.0 for w in ("5m", "30m", "1h", "6h", "1d", "3d")},
                "error_budget_percentage": 100.0,
            }
        }
        daemon.send(successes(90))
        daemon.send([failure(i) for i in range(5)] * 2)  # 10 bad in 100: burn 100
        alerts: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10.0
        while len(alerts) < 2 and time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message["type"] == "slo_alert":
                alerts.append(message)
    assert [(a["slo"], a["level"]) for a in alerts] == [
        ("availability", "page"),
        ("availability", "ticket"),
    ]
    assert alerts[0]["burn_rates"]["1h"] == 100.0
    assert isinstance(alerts[0]["timestamp"], float)
