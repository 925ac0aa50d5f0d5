"""The real daemon process over real ZeroMQ and HTTP: shapes, rejects, lifecycle, auth."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import zmq

from tests.conftest import Daemon


def request_batch(n: int, model: str = "gpt-4o") -> dict[str, Any]:
    return {
        "v": 1,
        "type": "request",
        "const": {"model": model, "endpoint": "/v1/chat/completions"},
        "cols": {"duration_ms": [100.0] * n, "output_tokens": [10] * n},
    }


def test_health_ready_and_build_info(daemon: Daemon) -> None:
    assert daemon.get_json("/healthz") == {"status": "ok"}
    assert daemon.get_json("/readyz") == {"status": "ready"}
    assert daemon.value("metricsd_build_info", version="0.1.0") == 1
    status, headers, body = daemon.request("/metrics/prometheus")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, headers, body = daemon.request(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_every_frame_shape_over_zeromq(daemon: Daemon) -> None:
    daemon.send({"type": "request", "duration_ms": 10, "model": "a"})  # 1: event
    daemon.send([{"type": "request", "duration_ms": 10, "model": "a"}] * 3)  # 2: array
    daemon.send(request_batch(5, "a"))  # 3: columnar
    daemon.send(
        [
            request_batch(2, "a"),
            request_batch(4, "b"),  # 4: mixed
            {"type": "request", "duration_ms": 1, "model": "b"},
        ]
    )
    assert daemon.wait_for("metricsd_events_received_total", 16, type="request") == 16
    assert daemon.value("metricsd_frames_received_total") == 4
    base = {"endpoint": "unknown", "provider": "unknown", "status": "200"}
    samples = daemon.samples()
    a = samples[
        ("llm_requests_total", tuple(sorted({**base, "model": "a", "endpoint": "unknown"}.items())))
    ]
    assert a == 4  # the two plain-map frames have no endpoint
    key = tuple(
        sorted(
            {
                "endpoint": "/v1/chat/completions",
                "model": "a",
                "provider": "unknown",
                "status": "200",
            }.items()
        )
    )
    assert samples[("llm_requests_total", key)] == 7


def test_every_reject_reason_is_visible_and_ingest_keeps_going(daemon: Daemon) -> None:
    daemon.send_raw(b"\xc1 not msgpack")  # decode
    daemon.send({"v": 9, "type": "request", "duration_ms": 1})  # version
    daemon.send(12345)  # shape
    daemon.send({"type": "teleport"})  # unknown_type
    daemon.send({"type": "request"})  # missing_field
    daemon.send({"type": "request", "duration_ms": -5})  # bad_value
    daemon.send_raw(msgpack.packb({"type": "request", "duration_ms": 1, "m": "x" * (1 << 20)}))
    daemon.send({"type": "request", "cols": {"duration_ms": [1] * 10_001}})  # too_many
    daemon.push().send_multipart([b"a", b"b"])  # multipart
    daemon.send(request_batch(3))
    assert daemon.wait_for("metricsd_events_received_total", 3, type="request") == 3
    s = daemon.samples()
    reasons = {k[1][0][1]: v for k, v in s.items() if k[0] == "metricsd_events_invalid_total"}
    assert reasons == {
        "decode": 1,
        "version": 1,
        "shape": 2,
        "unknown_type": 1,
        "missing_field": 1,
        "bad_value": 1,
        "too_large": 1,
        "too_many": 10_001,
    }
    assert s[("metricsd_frames_received_total", ())] == 10
    assert daemon.get_json("/healthz") == {"status": "ok"}


def test_ipc_and_multiple_endpoints(daemon_factory: Any, tmp_path: Path) -> None:
    sock_path = tmp_path / "ingest.sock"
    d = daemon_factory("--ingest", f"ipc://{sock_path}")
    assert len(d.ingest) == 2 and d.ingest[1] == f"ipc://{sock_path}"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(d.ingest[1])
    push.send(msgpack.packb(request_batch(2)))
    d.send(request_batch(3))
    assert d.wait_for("metricsd_events_received_total", 5, type="request") == 5
    push.close()
    ctx.term()


def test_ipc_socket_mode_ignores_the_umask(daemon_factory: Any, tmp_path: Path) -> None:
    """systemd's UMask=0077 would leave the socket srwx------: applications running as another
    user of the daemon's group could not connect. ingest.ipc_mode (0660) is set after binding."""
    previous = os.umask(0o077)
    try:
        d = daemon_factory("--ingest", f"ipc://{tmp_path}/a.sock")
        e = daemon_factory(
            "--ingest", f"ipc://{tmp_path}/b.sock", env={"METRICSD_INGEST_IPC_MODE": "0600"}
        )
    finally:
        os.umask(previous)
    a, b = os.stat(tmp_path / "a.sock"), os.stat(tmp_path / "b.sock")
    assert stat.S_ISSOCK(a.st_mode) and stat.S_IMODE(a.st_mode) == 0o660
    assert stat.S_ISSOCK(b.st_mode) and stat.S_IMODE(b.st_mode) == 0o600
    assert d.ingest[1] == f"ipc://{tmp_path}/a.sock" and e.ingest[1] == f"ipc://{tmp_path}/b.sock"


def test_http_errors_are_json(daemon: Daemon) -> None:
    status, _, body = daemon.request("/nope")
    assert status == 404 and json.loads(body) == {"error": "not found"}
    status, _, body = daemon.request("/metrics", method="POST", body=b"{}")
    assert status == 405 and "error" in json.loads(body)
    status, _, body = daemon.request("/metrics/summary?window_seconds=abc")
    assert status == 400 and json.loads(body) == {"error": "window_seconds must be a number"}


def test_token_auth(daemon_factory: Any) -> None:
    d = daemon_factory("--token", "s3cret")
    assert d.get_json("/metrics/json")["requests"] == {}
    status, _, body = d.request("/metrics", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body) == {"error": "missing or invalid bearer token"}
    status, _, _ = d.request("/metrics", headers={"Authorization": ""})
    assert status == 401
    status, _, _ = d.request("/healthz", headers={"Authorization": ""})
    assert status == 200


def test_sigterm_drains_and_exits_zero(daemon: Daemon) -> None:
    for _ in range(50):
        daemon.send(request_batch(100))
    code = daemon.stop(signal.SIGTERM)
    assert code == 0
    log = daemon.log_path.read_text()
    assert "metricsd ready http=http://127.0.0.1:" in log
    assert "stopped" in log


def test_ready_line_matches_ready_file(daemon: Daemon) -> None:
    time.sleep(0.2)
    log = daemon.log_path.read_text()
    assert f"metricsd ready http={daemon.http} ingest={daemon.ingest[0]}" in log


def test_emit_command(daemon: Daemon) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricsd",
            "emit",
            "request",
            "duration_ms=120",
            "model=gpt-4o",
            "status=503",
            "--ingest",
            daemon.ingest[0],
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert (
        daemon.wait_for(
            "llm_requests_total",
            1,
            provider="openai",
            endpoint="unknown",
            model="gpt-4o",
            status="503",
        )
        == 1
    )


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")}
    return subprocess.run(
        [sys.executable, "-m", "metricsd", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=env,
    )


def test_emit_refuses_what_the_daemon_would_reject(daemon: Daemon) -> None:
    target = ["--ingest", daemon.ingest[0]]
    cases = {
        ("request", "model=x"): "missing_field duration_ms",
        ("bogus", "a=1"): "unknown_type bogus",
        ("request", "duration_ms=-5"): "bad_value duration_ms=-5 (expected a finite number ≥ 0)",
    }
    for args, reason in cases.items():
        out = run_cli("emit", *args, *target)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stdout == ""
        assert f"not sent, the daemon would reject it: {reason}" in out.stderr
    # Nothing reached the daemon; --no-check sends as is, and the daemon counts the rejects.
    out = run_cli("emit", "--no-check", "request", "model=x", *target)
    assert out.returncode == 0 and out.stdout == f"sent request to {daemon.ingest[0]}\n"
    assert daemon.wait_for("metricsd_events_invalid_total", 1, reason="missing_field") == 1
    assert daemon.value("metricsd_frames_received_total") == 1
    assert daemon.value("metricsd_events_invalid_total", reason="unknown_type") == 0
    assert daemon.value("metricsd_events_invalid_total", reason="bad_value") == 0


def test_emit_without_daemon_fails_clearly() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "metricsd",
            "emit",
            "request",
            "duration_ms=1",
            "--ingest",
            "tcp://127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "no daemon accepted the event" in out.stderr


def test_json_views_over_http(daemon: Daemon) -> None:
    daemon.send(
        {
            "v": 1,
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": "/v1/chat"},
            "cols": {
                "duration_ms": [100.0, 200.0, 300.0],
                "status": [200, 200, 500],
                "input_tokens": [10, 10, 10],
                "output_tokens": [5, 5, 5],
            },
        }
    )
    daemon.wait_for("metricsd_events_received_total", 3, type="request")
    time.sleep(0.25)  # the next tick
    view = daemon.get_json("/metrics/json")
    assert set(view) == {
        "requests",
        "responses",
        "tokens",
        "errors",
        "latency",
        "streaming_stats",
        "by_model",
    }
    assert view["latency"]["/v1/chat"]["min"] == 0.1
    assert view["latency"]["/v1/chat"]["max"] == 0.3
    assert view["latency"]["/v1/chat"]["avg"] == 0.2
    summary = daemon.get_json("/metrics/summary?window_seconds=60")
    assert summary["requests"] == 3 and summary["total_tokens"] == 45
    assert abs(summary["error_rate"] - 1 / 3) < 1e-12
    recent = daemon.get_json("/metrics/recent?limit=2")
    assert [r["latency_ms"] for r in recent] == [300.0, 200.0]
    assert recent[0]["error"] == "HTTP 500"
    hist = daemon.get_json("/metrics/histograms?name=llm_request_duration_seconds")
    (entry,) = hist["histograms"]
    assert entry["count"] == 3 and entry["labels"]["model"] == "gpt-4o"
    from hdrh.histogram import HdrHistogram

    decoded = HdrHistogram.decode(entry["histogram"].encode())
    assert decoded.get_total_count() == 3


def test_custom_metrics_from_metric_events(daemon: Daemon) -> None:
    daemon.send(
        [
            {
                "type": "metric",
                "name": "llm_circuit_breaker_open",
                "kind": "gauge",
                "value": 1,
                "labels": {"provider": "openai"},
            },
            {
                "type": "metric",
                "name": "llm_circuit_breaker_open",
                "kind": "gauge",
                "value": 0,
                "labels": {"provider": "anthropic"},
            },
            {"type": "metric", "name": "app_retries", "kind": "counter", "value": 2},
            {"type": "metric", "name": "app_retries", "kind": "counter", "value": 3},
            {"type": "metric", "name": "app_batch_seconds", "kind": "histogram", "value": 0.2},
            {"type": "metric", "name": "app_batch_seconds", "kind": "histogram", "value": 3.0},
            {"type": "metric", "name": "app_retries", "kind": "gauge", "value": 9},  # kind conflict
            {
                "type": "metric",
                "name": "llm_requests",
                "kind": "gauge",
                "value": 1,
            },  # built-in name
        ]
    )
    daemon.wait_for("metricsd_events_received_total", 8, type="metric")
    time.sleep(0.3)
    s = daemon.samples()
    assert s[("llm_circuit_breaker_open", (("provider", "openai"),))] == 1
    assert s[("llm_circuit_breaker_open", (("provider", "anthropic"),))] == 0
    assert s[("app_retries_total", ())] == 5
    assert s[("app_batch_seconds_bucket", (("le", "0.25"),))] == 1
    assert s[("app_batch_seconds_bucket", (("le", "5"),))] == 2
    assert s[("app_batch_seconds_count", ())] == 2
    assert s[("metricsd_custom_refused_total", (("reason", "kind_conflict"),))] == 1
    assert s[("metricsd_custom_refused_total", (("reason", "reserved_name"),))] == 1
