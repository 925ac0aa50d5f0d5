"""DaemonBackend.sync against a scripted /metrics (no daemon): the rules of a consistent read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from metricsd_client import Emitter, MetricsdHTTPError
from metricsd_client.backend import DaemonBackend
from metricsd_client.http import HttpReader, parse_samples


class Script:
    """What /metrics says: the daemon's start time, events seen, and a tick number."""

    def __init__(self) -> None:
        self.start = 1000.0
        self.seen = 0
        self.tick = 0
        self.polls = 0
        self.auto_tick = True

    def body(self) -> bytes:
        self.polls += 1
        if self.auto_tick and self.polls % 2 == 0:
            self.tick += 1
        return (
            "# TYPE metricsd_events_received counter\n"
            f'metricsd_events_received_total{{type="request"}} {self.seen}\n'
            'metricsd_events_received_total{type="client"} 1000\n'
            'metricsd_events_invalid_total{reason="decode"} 0\n'
            f"metricsd_tick_duration_seconds 0.{self.tick:06d}\n"
            f"process_start_time_seconds {self.start}\n"
        ).encode()


@pytest.fixture
def scripted() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path != "/metrics":
                data = b'{"error": "not found"}'
                self.send_response(404)
            else:
                data = script.body()
                self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class Counted(Emitter):
    """An emitter that says it sent ``sent_now`` events (nothing goes anywhere)."""

    sent_now = 0

    @property
    def sent(self) -> int:
        return self.sent_now

    def flush(self, timeout: float = 5.0) -> bool:
        return True


def backend(url: str) -> tuple[DaemonBackend, Counted]:
    emitter = Counted("tcp://127.0.0.1:9")
    return DaemonBackend(url, emitter=emitter, timeout=1.0), emitter


def test_waits_for_a_new_tick_and_the_count(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    b, emitter = backend(url)
    emitter.sent_now, script.seen = 5, 5
    assert b.sync() and script.polls >= 2  # even when counted at once: one newer tick
    emitter.sent_now = 8
    script.auto_tick = False
    script.seen = 8
    script.polls = 0

    def later() -> None:
        script.auto_tick = True

    timer = threading.Timer(0.2, later)
    timer.start()
    assert b.sync() and script.polls > 4  # it waited for the tick to move
    timer.join()


def test_a_restarted_daemon_counts_from_zero(scripted: tuple[Script, str]) -> None:
    script, url = scripted
    b, emitter = backend(url)
    emitter.sent_now, script.seen = 100, 100
    assert b.sync()
    script.start, script.seen = 2000.0, 0  # restarted: what we sent before is gone
    emitter.sent_now = 103
    script.seen = 3
    assert b.sync()


def test_gives_up_after_the_timeout(
    scripted: tuple[Script, str], caplog: pytest.LogCaptureFixture
) -> None:
    script, url = scripted
    b, emitter = backend(url)
    emitter.sent_now, script.seen = 10, 4
    with caplog.at_level(logging.WARNING, logger="metricsd_client"):
        assert not b.sync(timeout=0.3)
    assert "did not confirm 10 events" in caplog.text and "it reports 4" in caplog.text


def test_http_errors_and_parsing(scripted: tuple[Script, str]) -> None:
    _script, url = scripted
    reader = HttpReader(url, timeout=1.0)
    assert reader.get_json("/nope", missing_ok=True) is None
    with pytest.raises(MetricsdHTTPError) as info:
        reader.get_json("/nope")
    assert info.value.status == 404 and info.value.message == "not found"
    text = 'a_total{x="1",y="b c"} 3\nb 4.5\n# c 1\nd{} nan\nbad line\n'
    assert parse_samples(text, frozenset({"a_total", "b", "d"})) == {
        "a_total": [('x="1",y="b c"', 3.0)],
        "b": [("", 4.5)],
        "d": [("", pytest.approx(float("nan"), nan_ok=True))],
    }
    assert HttpReader("127.0.0.1:1").url == "http://127.0.0.1:1"
