"""What a request can reach and what it leaves behind (issue 17, rows 11, 14, 15; SPEC §8).

- Row 11: DNS rebinding. A loopback daemon without a token answers only requests addressed to
  a loopback name: a foreign ``Host`` gets 421 on data routes, budget PUT/DELETE and the
  WebSocket upgrade, and changes nothing.
- Row 14: a request line (or header) over 8 190 bytes holding a raw API key: a quiet 400 whose
  body and the daemon's log never contain the key.
- Row 15: with a token, ``?token=`` is refused on ``/metrics`` and the JSON routes (401) and
  accepted only for the WebSocket; the ``Bearer`` scheme is case-insensitive.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator

import pytest

from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import (
    http_address,
    log_failures,
    raw_exchange,
    status_of,
)

TOKEN = "t0ken-for-row-15"
DATA_ROUTES = (
    "/metrics",
    "/metrics/prometheus",
    "/metrics/json",
    "/metrics/summary",
    "/metrics/recent",
    "/metrics/histograms",
    "/metrics/streaming",
    "/metrics/errors",
    "/metrics/error-patterns",
    "/metrics/slo",
    "/metrics/costs",
    "/metrics/budgets",
    "/metrics/budgets/k_00000000000a",
)
FOREIGN_HOSTS = (
    "evil.example",
    "evil.example:9465",
    "127.0.0.1.evil.example",
    "localhost.evil.example",
    "10.0.0.5",
    "[2001:db8::1]:9465",
)


@pytest.fixture(scope="module")
def open_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The default exposure: loopback, no token."""
    d = start_daemon(tmp_path_factory.mktemp("open"))
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def token_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("token"), "--token", TOKEN)
    try:
        yield d
        assert log_failures(d) == []
    finally:
        d.stop()


def request(method: str, path: str, host: str, headers: str = "", body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def websocket_upgrade(path: str, host: str, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# --- row 11 ----------------------------------------------------------------------------------


def test_foreign_host_is_refused_on_a_loopback_daemon_without_token(open_daemon: Daemon) -> None:
    d = open_daemon
    host, port = http_address(d)
    budget = b'{"limit_usd": 5}'
    for foreign in FOREIGN_HOSTS:
        for path in DATA_ROUTES:
            reply = raw_exchange(d, request("GET", path, foreign))
            assert status_of(reply) == 421, (foreign, path, reply[:120])
            assert reply.endswith(
                b'{"error":"misdirected request: this daemon answers on loopback names"}'
            )
        for method in ("PUT", "DELETE"):
            reply = raw_exchange(
                d, request(method, "/metrics/budgets/sk-rebound", foreign, body=budget)
            )
            assert status_of(reply) == 421, (foreign, method, reply[:120])
        for origin in ("", f"Origin: http://{foreign}\r\n"):
            reply = raw_exchange(d, websocket_upgrade("/metrics/stream", foreign, origin), 2.0)
            assert status_of(reply) == 421 and b"Upgrade: websocket" not in reply, (foreign, reply)
    # Nothing was created by the refused PUTs; the same requests on loopback names work.
    for loopback in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert status_of(raw_exchange(d, request("GET", "/metrics/json", loopback))) == 200
    assert status_of(raw_exchange(d, request("GET", "/metrics/budgets/sk-rebound", host))) == 404
    put = request("PUT", "/metrics/budgets/sk-rebound", f"{host}:{port}", body=budget)
    assert status_of(raw_exchange(d, put)) == 201
    delete = request("DELETE", "/metrics/budgets/sk-rebound", f"localhost:{port}")
    assert status_of(raw_exchange(d, delete)) == 200
    upgrade = websocket_upgrade("/metrics/stream", f"127.0.0.1:{port}")
    assert status_of(raw_exchange(d, upgrade, 1.0)) == 101


def test_with_a_token_the_host_is_not_what_protects(token_daemon: Daemon) -> None:
    """A daemon with a token (it may sit behind a proxy with any name) serves any ``Host``
    that brings the token, and refuses one that does not (401, not 421)."""
    d = token_daemon
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    assert (
        status_of(raw_exchange(d, request("GET", "/metrics/json", "metrics.example", auth))) == 200
    )
    assert status_of(raw_exchange(d, request("GET", "/metrics/json", "metrics.example"))) == 401


# --- row 14 ----------------------------------------------------------------------------------


def test_oversized_request_line_with_a_raw_key_is_answered_and_logged_without_it(
    open_daemon: Daemon,
) -> None:
    d = open_daemon
    key = "sk-proj-" + "Zq9rT3xKw7mB" * 700  # 8 408 characters: over aiohttp's 8 190
    host = "127.0.0.1"
    probes = {
        "path": f"GET /metrics/costs/keys/{key} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        "query": f"GET /metrics/recent?api_key={key} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(),
        "header": (
            f"GET /metrics/json HTTP/1.1\r\nHost: {host}\r\nX-Api-Key: {key}\r\n\r\n"
        ).encode(),
        "budget": (
            f"PUT /metrics/budgets/{key} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n\r\n{{}}"
        ).encode(),
    }
    fragment = key[:24].encode()  # any recognisable part of the key
    for name, raw in probes.items():
        assert len(raw.split(b"\r\n")[0 if name != "header" else 2]) > 8190
        reply = raw_exchange(d, raw)
        _, _, body = reply.partition(b"\r\n\r\n")
        assert status_of(reply) == 400, (name, reply[:200])
        assert json.loads(body) == {"error": "bad request"}, (name, body[:200])
        assert fragment not in reply and b"sk-proj" not in reply, name
    log = d.log_path.read_text()
    assert key[:24] not in log and "sk-proj" not in log
    assert log.count("bad HTTP request from 127.0.0.1: LineTooLong") == len(probes)
    assert "Traceback" not in log


# --- row 15 ----------------------------------------------------------------------------------


def test_query_token_only_for_the_websocket_and_bearer_in_any_case(token_daemon: Daemon) -> None:
    d = token_daemon
    host, port = http_address(d)
    where = f"{host}:{port}"
    for path in ("/metrics", "/metrics/json", "/metrics/costs", "/metrics/budgets"):
        reply = raw_exchange(d, request("GET", f"{path}?token={TOKEN}", where))
        assert status_of(reply) == 401, (path, reply[:120])
        assert reply.endswith(b'{"error":"missing or invalid bearer token"}')
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        headers = f"Authorization: {scheme} {TOKEN}\r\n"
        assert status_of(raw_exchange(d, request("GET", "/metrics", where, headers))) == 200
    for wrong in (f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        headers = f"Authorization: {wrong}\r\n"
        assert status_of(raw_exchange(d, request("GET", "/metrics", where, headers))) == 401
    # The WebSocket (a browser cannot set its headers) takes ?token=, and only the right one.
    ok = websocket_upgrade(f"/metrics/stream?token={TOKEN}", where)
    assert status_of(raw_exchange(d, ok, 1.0)) == 101
    wrong = websocket_upgrade("/metrics/stream?token=nope", where)
    assert status_of(raw_exchange(d, wrong, 1.0)) == 401
    # Health checks never need it.
    assert status_of(raw_exchange(d, request("GET", "/healthz", where))) == 200
