"""Cost and budgets through the real daemon: ZeroMQ in, HTTP and Prometheus out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from metricsd.protocol import hash_key
from tests.conftest import Daemon


def req(model: str, i: int = 0, o: int = 0, **fields: Any) -> dict[str, Any]:
    event = {"type": "request", "duration_ms": 50.0, "model": model, **fields}
    return {**event, "input_tokens": i, "output_tokens": o}


WORKED: list[tuple[str, dict[str, Any], str]] = [
    ("gpt-4o", req("gpt-4o", 100, 50), "0.00125"),
    ("gpt-3.5", req("gpt-3.5-turbo", 1000, 500), "0.00125"),
    ("embedding", req("text-embedding-3-small", 1000), "0.00002"),
    ("cached", req("gpt-4o", 1000, 500, cached_tokens=500), "0.01125"),
    ("dalle", {"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1024"}}, "0.04"),
    (
        "dalle-hd",
        {"type": "usage", "model": "dall-e-3", "images": {"size": "1024x1792", "quality": "hd"}},
        "0.12",
    ),
    ("tts", {"type": "usage", "model": "tts-1", "characters": 1000}, "0.015"),
    ("ft-4o", req("ft:gpt-4o-2024-08-06:my-org::abc123", 1000, 500), "0.01125"),
    ("ft-mini", req("ft:gpt-4o-mini-2024-07-18:my-org::abc123", 1000, 500), "0.0009"),
    ("unknown", req("mystery-model", 100, 50), "0"),
    ("negative", req("gpt-4o", 100, 0, cached_tokens=500), "0.00025"),
]


def poll(fetch: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not ok(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = fetch()
    return value


def costs(daemon: Daemon, requests: int) -> dict[str, Any]:
    found = poll(
        lambda: daemon.get_json("/metrics/costs"), lambda s: s["total_requests"] >= requests
    )
    assert found["total_requests"] == requests
    return found


def send_json(daemon: Daemon, method: str, path: str, body: Any) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _headers, data = daemon.request(path, method=method, body=raw)
    return status, json.loads(data)


def test_worked_values_over_zeromq(daemon: Daemon) -> None:
    for name, event, _ in WORKED:
        daemon.send({"v": 1, **event, "api_key": f"sk-{name}"})
    for i in range(3):
        daemon.send(req("gpt-4o", 100, 50, api_key=f"sk-three-{i}"))
    summary = costs(daemon, len(WORKED) + 3)
    for name, _, expected in WORKED:
        view = daemon.get_json(f"/metrics/costs/keys/sk-{name}")
        assert view["total_cost_usd_str"] == expected, name
        assert view["key_id"] == hash_key(f"sk-{name}")
    three = [summary["by_key"][hash_key(f"sk-three-{i}")] for i in range(3)]
    assert three == [0.00125] * 3
    assert summary["total_cost_usd_str"] == "0.20492"  # the worked values + 3 × 0.00125
    assert summary["unpriced_requests"] == 1 and summary["clamped_requests"] == 1
    assert summary["pricing"]["updated"] == "2026-11-23"
    assert daemon.wait_for("llm_unpriced_requests_total", 1, model="mystery-model") == 1
    assert daemon.value("metricsd_cost_clamped_total") == 1
    assert daemon.value("cost_total_usd") == 0.20492
    labels = {"model": "gpt-4o", "endpoint": "unknown", "key_id": hash_key("sk-cached")}
    assert daemon.value("llm_cost_usd_total", **labels) == 0.01125
    assert daemon.value("llm_request_cost_usd_count", model="dall-e-3") == 2
    status, _, body = daemon.request("/metrics/costs/keys/sk-never-seen")
    assert status == 404 and json.loads(body) == {"error": "no costs recorded for this key"}
    assert daemon.get_json("/metrics/costs/suggestions") == []


def test_budgets_over_http(daemon: Daemon) -> None:
    raw = "sk-budget-raw"
    key = hash_key(raw)
    status, body = send_json(
        daemon, "PUT", f"/metrics/budgets/{raw}", {"limit_usd": 0.0025, "limit_type": "hard"}
    )
    assert status == 201 and body["key_id"] == key
    assert (body["limit_usd"], body["period"], body["allowed"]) == (0.0025, "monthly", True)
    status, body = send_json(daemon, "PUT", f"/metrics/budgets/{key}", {"period": "daily"})
    assert status == 200 and (body["limit_type"], body["period"]) == ("hard", "daily")
    daemon.send([req("gpt-4o", 100, 50, api_key=raw)] * 2)  # $0.0025: at the limit
    found = poll(
        lambda: daemon.get_json(f"/metrics/budgets/{raw}"), lambda b: b["used_usd"] >= 0.0025
    )
    assert (found["allowed"], found["exceeded"], found["percentage"]) == (False, True, 100.0)
    assert found["resets_at"] > found["period_start"]
    assert daemon.get_json(f"/metrics/costs/keys/{key}")["budget"]["allowed"] is False
    listing = daemon.get_json("/metrics/budgets")
    assert [b["key_id"] for b in listing["budgets"]] == [key]
    assert daemon.wait_for("llm_budget_exceeded", 1, key_id=key) == 1
    assert daemon.value("llm_budget_limit_usd", key_id=key) == 0.0025
    status, body = send_json(daemon, "DELETE", f"/metrics/budgets/{raw}", b"")
    assert status == 200 and body == {"key_id": key, "deleted": True}
    for method in ("GET", "DELETE"):
        status, _, data = daemon.request(f"/metrics/budgets/{raw}", method=method)
        assert status == 404 and json.loads(data) == {"error": "no budget for this key"}
    status, body = send_json(daemon, "PUT", "/metrics/budgets/*", {"limit_usd": 100})
    assert status == 201 and body["key_id"] == "*"


BAD_BODIES: list[tuple[Any, str]] = [
    (b"{not json", "the body must be a JSON object"),
    (b"\xff\xfe", "the body must be a JSON object"),
    ([1, 2], "the body must be a JSON object"),
    ({"period": "daily"}, "limit_usd is required to create a budget"),
    ({"limit_usd": "ten"}, "limit_usd must be a number, got str"),
    ({"limit_usd": -5}, "limit_usd must be between 0 and 1000000000000"),
    ({"limit_usd": 5, "period": "fortnightly"}, "period must be one of"),
    ({"limit_usd": 5, "alert_threshold": 0}, "alert_threshold must be in (0, 1]"),
    ({"limit_usd": 5, "alert_threshold": 1.01}, "alert_threshold must be in (0, 1]"),
    ({"limit_usd": 5, "limit_type": "firm"}, "limit_type must be one of soft, hard"),
    ({"limit_usd": 5, "extra": 1}, "unknown field 'extra'"),
]


def test_bad_budget_bodies_are_400_and_413(daemon: Daemon) -> None:
    for body, message in BAD_BODIES:
        status, data = send_json(daemon, "PUT", "/metrics/budgets/k_0123456789ab", body)
        assert status == 400 and data["error"].startswith(message), data
    big = json.dumps({"limit_usd": 1, "pad": "x" * 70_000}).encode()
    status, data = send_json(daemon, "PUT", "/metrics/budgets/k_0123456789ab", big)
    assert status == 413 and data == {"error": "request body too large"}
    status, _, _ = daemon.request("/metrics/budgets/k_0123456789ab")
    assert status == 404  # nothing was created


def test_raw_key_never_leaves_the_daemon(daemon_factory: Any, tmp_path: Path) -> None:
    raw = "sk-RAW-SECRET-7f3a"
    config = tmp_path / "m.toml"
    config.write_text(f'[[cost.budgets]]\nkey = "{raw}-2"\nlimit_usd = 1\n')
    daemon = daemon_factory("--config", str(config), "--log-level", "debug")
    daemon.send([req("gpt-4", 1000, 500, api_key=raw)] * 20)
    daemon.send({"type": "usage", "model": "gpt-4o", "prompt_tokens": 10, "api_key": raw})
    costs(daemon, 21)
    bodies = []
    for method, path, body in [
        ("PUT", f"/metrics/budgets/{raw}", b'{"limit_usd": 0.5, "limit_type": "hard"}'),
        ("PUT", f"/metrics/budgets/{raw}", b'{"limit_usd": "bad"}'),
        ("GET", f"/metrics/budgets/{raw}", None),
        ("GET", "/metrics/budgets", None),
        ("GET", f"/metrics/costs/keys/{raw}", None),
        ("GET", f"/metrics/costs/suggestions?key={raw}", None),
        ("GET", "/metrics/costs/suggestions", None),
        ("GET", "/metrics/costs", None),
        ("GET", "/metrics", None),
        ("GET", f"/metrics/costs/keys/{raw}x", None),
        ("DELETE", f"/metrics/budgets/{raw}", None),
        ("DELETE", f"/metrics/budgets/{raw}", None),
    ]:
        status, _, data = daemon.request(path, method=method, body=body)
        assert status < 500
        bodies.append(data.decode())
    everything = "\n".join(bodies)
    assert hash_key(raw) in everything and hash_key(f"{raw}-2") in everything
    assert raw not in everything
    daemon.stop()
    assert raw not in daemon.log_path.read_text()


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, list[Any]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def test_budget_alerts_reach_the_webhook(
    daemon_factory: Any, tmp_path: Path, hook: tuple[str, list[Any]]
) -> None:
    url, received = hook
    config = tmp_path / "m.toml"
    config.write_text(
        f'[cost]\nwebhook_url = "{url}"\ntimezone = "Asia/Tokyo"\n'
        '[[cost.budgets]]\nkey = "*"\nlimit_usd = 0.0025\nperiod = "daily"\n'
    )
    daemon = daemon_factory("--config", str(config))
    daemon.send([req("gpt-4o", 100, 50, api_key="sk-w")] * 2)
    poll(lambda: len(received), lambda n: n >= 2)
    assert [(a["key_id"], a["level"]) for a in received] == [("*", "threshold"), ("*", "exceeded")]
    assert received[1]["used_usd"] == 0.0025 and received[1]["type"] == "budget_alert"
    assert daemon.wait_for("metricsd_webhook_sent_total", 2) == 2
    assert daemon.get_json("/metrics/budgets")["timezone"] == "Asia/Tokyo"
