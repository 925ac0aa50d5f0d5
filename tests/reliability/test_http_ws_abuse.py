"""HTTP and WebSocket abuse against a running daemon: clear errors, limits enforced, nothing
else disturbed (SPEC §2, §2.1, §5.5).

- Oversized bodies (with and without Content-Length) → 413 JSON.
- Invalid JSON and wrong types in budget PUTs, bad query values → 400 JSON with a message.
- Connections beyond ``http.max_ws_clients`` → 503 JSON, while the clients in place keep
  their stream and the HTTP API keeps answering.
- Garbage, binary, huge and oddly typed WebSocket messages → an ``error`` reply, connection
  open; a message flood → close 1008; a message over 64 KiB → close 1009.
- No response body and no WebSocket error holds a Python exception name or traceback text, and
  the daemon logs no traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import (
    EXCEPTION_TEXT,
    assert_healthy,
    log_failures,
    wait_until,
    write_config,
)

TIMEOUT = 5.0
MAX_WS = 8
CONFIG = f"""
[http]
max_ws_clients = {MAX_WS}
"""


@pytest.fixture(scope="module")
def abused(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the whole module: every test abuses it, none may disturb the next."""
    tmp = tmp_path_factory.mktemp("abuse")
    d = start_daemon(tmp, "--config", str(write_config(tmp, CONFIG)))
    try:
        yield d
        # aiohttp itself logs the malformed requests of test_bad_queries_methods_and_paths.
        assert log_failures(d, allow_http_parse_errors=True) == []
    finally:
        d.stop()


def ws_url(d: Daemon) -> str:
    return d.http.replace("http://", "ws://") + "/metrics/stream"


def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def until(ws: ClientConnection, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        message = recv(ws, max(0.01, deadline - time.monotonic()))
        if message["type"] == kind:
            return message


def raw_http(d: Daemon, method: str, path: str, body: bytes, headers: dict[str, str]) -> Any:
    url = urlsplit(d.http)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def assert_json_error(status: int, body: bytes, expected: int) -> str:
    assert status == expected, (status, body)
    parsed = json.loads(body)
    assert set(parsed) == {"error"} and isinstance(parsed["error"], str) and parsed["error"]
    assert not EXCEPTION_TEXT.search(parsed["error"]), parsed
    return str(parsed["error"])


# --- HTTP ------------------------------------------------------------------------------------


def test_oversized_bodies_get_413(abused: Daemon) -> None:
    big = b'{"limit_usd": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'
    status, _, body = abused.request("/metrics/budgets/k_000000000001", "PUT", big)
    assert assert_json_error(status, body, 413) == "request body too large"
    # Chunked, no Content-Length: the limit holds while reading.
    url = urlsplit(abused.http)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=TIMEOUT)
    try:
        conn.putrequest("PUT", "/metrics/budgets/k_000000000002")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        chunk = b"x" * 8192
        for _ in range(10):  # 80 KiB
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        assert_json_error(resp.status, resp.read(), 413)
    finally:
        conn.close()
    # Nothing was created, and the daemon still answers.
    status, _, _ = abused.request("/metrics/budgets/k_000000000001")
    assert status == 404
    assert_healthy(abused)


BAD_BUDGETS: list[tuple[bytes, str]] = [
    (b"", "JSON object"),
    (b"{", "JSON object"),
    (b"not json", "JSON object"),
    (b"\xff\xfe\x00", "JSON object"),
    (b"[" * 30_000, "JSON object"),  # nested deeper than the JSON parser's recursion limit
    (b'{"limit_usd": ' + b"9" * 5000 + b"}", "JSON object"),  # an integer of 5000 digits
    (b"[1, 2]", "JSON object"),
    (b'"ten dollars"', "JSON object"),
    (b"null", "JSON object"),
    (b"{}", "limit_usd is required"),
    (b'{"limit_usd": "ten"}', "limit_usd must be a number"),
    (b'{"limit_usd": true}', "limit_usd must be a number"),
    (b'{"limit_usd": [1]}', "limit_usd must be a number"),
    (b'{"limit_usd": {"usd": 1}}', "limit_usd must be a number"),
    (b'{"limit_usd": null}', "limit_usd must be a number"),
    (b'{"limit_usd": NaN}', "limit_usd must be finite"),
    (b'{"limit_usd": Infinity}', "limit_usd must be finite"),
    (b'{"limit_usd": 1e999}', "limit_usd must be finite"),
    (b'{"limit_usd": -1}', "limit_usd must be between"),
    (b'{"limit_usd": 1e13}', "limit_usd must be between"),
    (b'{"limit_usd": 5, "period": "hourly"}', "period must be one of"),
    (b'{"limit_usd": 5, "period": ["daily"]}', "period must be one of"),
    (b'{"limit_usd": 5, "period": {"a": 1}}', "period must be one of"),
    (b'{"limit_usd": 5, "limit_type": 1}', "limit_type must be one of"),
    (b'{"limit_usd": 5, "alert_threshold": 0}', "alert_threshold must be in"),
    (b'{"limit_usd": 5, "alert_threshold": "high"}', "alert_threshold must be a number"),
    (b'{"limit_usd": 5, "owner": "me"}', "unknown field"),
]


def test_bad_budget_puts_get_400_with_a_message(abused: Daemon) -> None:
    for body, expected in BAD_BUDGETS:
        status, _, reply = abused.request("/metrics/budgets/sk-raw-key", "PUT", body)
        message = assert_json_error(status, reply, 400)
        assert expected in message, (body[:60], message)
        assert "sk-raw-key" not in reply.decode()
    # Nothing was created by any of them; a good PUT still works.
    status, _, _ = abused.request("/metrics/budgets/sk-raw-key")
    assert status == 404
    status, _, reply = abused.request(
        "/metrics/budgets/sk-raw-key", "PUT", b'{"limit_usd": 12.5, "period": "daily"}'
    )
    assert status == 201 and json.loads(reply)["limit_usd"] == 12.5


BAD_QUERIES = [
    "/metrics/summary?window_seconds=nan",
    "/metrics/summary?window_seconds=1e999",
    "/metrics/summary?window_seconds=-5",
    "/metrics/summary?window_seconds=abc",
    "/metrics/recent?limit=-1",
    "/metrics/recent?limit=1e99",
    "/metrics/histograms?encoding=json",
    "/metrics/error-patterns?min_count=" + "9" * 5000,
    "/metrics/error-patterns?min_count=x",
    "/metrics/error-patterns?recent_only=maybe",
    "/metrics/error-patterns?limit=-3",
]


def test_bad_queries_methods_and_paths(abused: Daemon) -> None:
    for path in BAD_QUERIES:
        status, _, body = abused.request(path)
        assert_json_error(status, body, 400)
    status, _, body = abused.request("/metrics", "DELETE")
    assert_json_error(status, body, 405)
    status, _, body = abused.request("/no/such/route/" + "a" * 2000)
    assert_json_error(status, body, 404)
    status, _, body = abused.request("/metrics/costs/keys/sk-never-seen")
    assert_json_error(status, body, 404)
    # Malformed HTTP at the protocol level: a plain 4xx, no exception text.
    url = urlsplit(abused.http)
    for raw in (
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 20_000 + b"\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS hello
    ):
        with socket.create_connection((url.hostname, url.port or 0), timeout=TIMEOUT) as sock:
            sock.sendall(raw)
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except TimeoutError:
                pass
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 4" in head.split(b"\r\n")[0], reply[:200]
        assert not EXCEPTION_TEXT.search(body.decode("utf-8", "replace")), body[:300]
    assert_healthy(abused)


# --- WebSocket limits ------------------------------------------------------------------------


def attempt(d: Daemon) -> int:
    """One WebSocket handshake: the HTTP status it got (101 when it was let in)."""
    try:
        with connect(ws_url(d), open_timeout=TIMEOUT):
            return 101
    except InvalidStatus as exc:
        response = exc.response
        assert response.status_code == 503, response.status_code
        reply = json.loads(response.body or b"{}")
        assert reply == {"error": "too many WebSocket clients"}, reply
        return int(response.status_code)


def overflow_ws_clients(d: Daemon, attempts: int) -> None:
    with contextlib.ExitStack() as stack:
        clients = [
            stack.enter_context(connect(ws_url(d), open_timeout=TIMEOUT)) for _ in range(MAX_WS)
        ]
        for ws in clients:
            assert recv(ws)["type"] == "historical_data"
            ws.send(json.dumps({"type": "subscribe", "filters": {"interval": 0.2}}))
        ws_clients = wait_until(
            lambda: d.value("metricsd_ws_clients"), lambda v: v == MAX_WS, TIMEOUT
        )
        assert ws_clients == MAX_WS
        stop = threading.Event()
        updates = [0] * MAX_WS

        def keep_reading(i: int) -> None:
            while not stop.is_set():
                try:
                    if recv(clients[i], 2.0)["type"] == "metrics_update":
                        updates[i] += 1
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    return

        readers = [threading.Thread(target=keep_reading, args=(i,)) for i in range(MAX_WS)]
        for reader in readers:
            reader.start()
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=16) as pool:
                statuses = list(pool.map(lambda _: attempt(d), range(attempts)))
            elapsed = time.monotonic() - started
            assert statuses.count(503) == attempts, {s: statuses.count(s) for s in statuses}
            assert_healthy(d)
            before = list(updates)
            time.sleep(1.0)
            # Every client in place kept its stream through the storm, and still does.
            assert all(b >= 1 for b in before), before
            assert all(u > b for u, b in zip(updates, before, strict=True)), (before, updates)
            print(f"{attempts} refused WebSocket handshakes in {elapsed:.1f} s")
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=5.0)
    # The slots free up: a new client is let in again.
    assert wait_until(lambda: d.value("metricsd_ws_clients"), lambda v: v == 0, TIMEOUT) == 0
    assert attempt(d) == 101


def test_connections_beyond_the_websocket_limit_get_503(abused: Daemon) -> None:
    overflow_ws_clients(abused, attempts=1000)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_thousand_connections_beyond_the_websocket_limit(abused: Daemon) -> None:
    overflow_ws_clients(abused, attempts=10_000)


# --- WebSocket messages ----------------------------------------------------------------------

BAD_MESSAGES: list[tuple[str | bytes, str]] = [
    ("{not json", "Invalid JSON"),
    ("", "Invalid JSON"),
    ("[" * 5000, "Invalid JSON"),  # deeper than the JSON parser's recursion limit
    ("1" * 5000, "Invalid JSON"),  # an integer of 5000 digits
    ('{"type":"subscribe","filters":{"interval":' + "9" * 5000 + "}}", "Invalid JSON"),
    ("[1,2,3]", "must be a JSON object"),
    ('"ping"', "must be a JSON object"),
    ('{"type": 5}', "Unknown message type"),
    ('{"type": "' + "x" * 10_000 + '"}', "Unknown message type"),
    ('{"type":"subscribe","filters":[1]}', "filters must be an object"),
    ('{"type":"subscribe","filters":{"metric_type":["latency"]}}', "Invalid metric type"),
    ('{"type":"subscribe","filters":{"metric_type":{"a":1}}}', "Invalid metric type"),
    ('{"type":"subscribe","filters":{"interval":NaN}}', "interval must be a positive"),
    ('{"type":"subscribe","filters":{"interval":-Infinity}}', "interval must be a positive"),
    ('{"type":"subscribe","filters":{"endpoint":{"$ne":1}}}', "endpoint must be a string"),
    (json.dumps({"type": "ping", "pad": "p" * 20_000}), "message too large"),
    (b"\x00\x01\x02", "binary messages are not supported"),
    (b"\xff" * 30_000, "binary messages are not supported"),
]


def test_bad_websocket_messages_get_an_error_and_the_connection_stays(abused: Daemon) -> None:
    with connect(ws_url(abused), open_timeout=TIMEOUT, max_size=None) as ws:
        assert recv(ws)["type"] == "historical_data"
        for message, expected in BAD_MESSAGES:
            ws.send(message)
            reply = until(ws, "error")
            assert expected in reply["message"], (str(message)[:60], reply["message"])
            assert not EXCEPTION_TEXT.search(reply["message"]), reply["message"]
            assert len(reply["message"]) <= 512
            time.sleep(0.06)  # stay under the message rate limit: this is not the flood test
        # An integer too large for a float is a number of seconds like any other: clamped.
        ws.send('{"type":"subscribe","filters":{"interval":' + "1" * 400 + "}}")
        assert until(ws, "subscribed")["filters"]["interval"] == 60.0
        ws.send(json.dumps({"type": "ping"}))
        assert until(ws, "pong")["type"] == "pong"


def test_flood_and_oversized_message_close_only_their_connection(abused: Daemon) -> None:
    with connect(ws_url(abused), open_timeout=TIMEOUT) as bystander:
        assert recv(bystander)["type"] == "historical_data"
        # close_timeout: after the 1008 the client sometimes sees the connection end only at
        # its own close timeout (10 s by default); the daemon holds nothing meanwhile.
        with connect(ws_url(abused), open_timeout=TIMEOUT, close_timeout=1.0) as flooder:
            recv(flooder)
            with pytest.raises(ConnectionClosed) as flood:
                for _ in range(1000):  # bounded: the close comes after ~40
                    flooder.send('{"type":"ping"}')
                while True:
                    recv(flooder)
            assert flood.value.rcvd is not None and flood.value.rcvd.code == 1008
        with connect(ws_url(abused), open_timeout=TIMEOUT, max_size=None) as huge:
            recv(huge)
            with pytest.raises(ConnectionClosed) as closed:
                huge.send("x" * (65 * 1024))  # over the daemon's 64 KiB frame limit
                while True:
                    recv(huge)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        bystander.send(json.dumps({"type": "ping"}))
        assert until(bystander, "pong")["type"] == "pong"
    assert_healthy(abused)
