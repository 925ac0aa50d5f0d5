"""The dashboard in a real headless Chromium against the real daemon."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Chromium is not installed (scripts/test installs it when run as root)",
)


@pytest.fixture
def page() -> Any:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Chromium must be installed in CI"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        # bypass_csp: the page forbids eval, which Playwright needs for its own probes.
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
        pg = context.new_page()
        pg.set_default_timeout(15_000)
        yield pg
        context.close()
        browser.close()


def test_dashboard_shows_emitted_numbers(daemon_factory: Any, page: Any) -> None:
    d: Daemon = daemon_factory("--token", "dash-token")
    console: list[str] = []
    page.on(
        "console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    # Known traffic: 4 requests of 250 ms on one endpoint, one of them a server error.
    d.send(
        {
            "type": "request",
            "const": {"endpoint": "/v1/chat/completions", "model": "gpt-4o"},
            "cols": {
                "duration_ms": [250.0] * 4,
                "status": [200, 200, 200, 500],
                "output_tokens": [100] * 4,
            },
        }
    )
    d.wait_for("metricsd_events_received_total", 4, type="request")
    page.goto(f"{d.http}/dashboard?token=dash-token")
    page.wait_for_function("document.getElementById('status').dataset.state === 'live'")
    page.wait_for_function("window.metricsd.updates >= 2")
    assert page.get_attribute("#t-p50", "data-value") == "250"
    assert page.get_attribute("#t-p99", "data-value") == "250"
    assert page.text_content("#t-p99") == "250"
    assert page.text_content("#t-err") == "25.00 %"
    assert float(page.get_attribute("#t-rps", "data-value")) > 0
    # The charts hold the same numbers as the tiles.
    assert page.evaluate("window.metricsd.charts.latency.last('p99')") == 250
    assert page.evaluate("window.metricsd.charts.errors.last('error rate')") == 25
    rows = page.locator("#latency-table tr")
    assert rows.count() == 1
    assert rows.nth(0).locator("td").nth(0).text_content() == "/v1/chat/completions"
    # A hostile endpoint name is shown as text, never parsed as HTML.
    d.send({"type": "request", "endpoint": "<img src=x onerror=alert(1)>", "duration_ms": 1.0})
    page.wait_for_function("document.querySelectorAll('#latency-table tr').length === 2")
    assert page.locator("#latency-table img").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert console == []
    assert page.evaluate("window.metricsd.errors") == []


def test_dashboard_static_files_need_no_token_but_stream_does(daemon_factory: Any) -> None:
    d: Daemon = daemon_factory("--token", "t")
    status, headers, body = d.request("/dashboard", headers={"Authorization": ""})
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="dashboard.js">' in body and b"http" not in body.split(b"<body>")[1]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    status, _, js = d.request("/dashboard.js", headers={"Authorization": ""})
    assert status == 200 and b".innerHTML" not in js and b"insertAdjacentHTML" not in js


def test_dashboard_shows_alerts_already_active_when_it_opens(
    daemon_factory: Any, page: Any
) -> None:
    """slo_alert messages come when an alert starts; a page opened later shows the active ones
    from the daemon's state (GET /metrics/slo, with the page's token)."""
    d: Daemon = daemon_factory("--token", "dash-token")
    d.send({"type": "request", "cols": {"duration_ms": [5.0] * 10, "status": [503] * 10}})
    deadline = time.monotonic() + 10
    while not d.get_json("/metrics/slo")["alerts"]["page"]:
        assert time.monotonic() < deadline, "the page alert did not start"
        time.sleep(0.05)
    page.goto(f"{d.http}/dashboard?token=dash-token")
    page.wait_for_function("window.metricsd.activeAlerts === 2")
    items = page.locator("#alerts li[data-active]")
    assert sorted(items.all_text_contents()) == [
        "active: SLO availability: page (1h burn 1.0k)",
        "active: SLO availability: ticket (1h burn 1.0k)",
    ]
    assert page.get_attribute("#alerts li[data-active='availability/page']", "class") == "page"
