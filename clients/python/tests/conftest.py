"""Fixtures of the client tests: real ``metricsd serve`` processes, and a fake OpenAI server.

The daemon launcher is a minimal copy of the repository's ``tests/conftest.py`` pattern: the
daemon binds free ports (``--http 127.0.0.1:0 --ingest tcp://127.0.0.1:0``), ticks every 0.1 s
and reports its addresses in a ready file. The fake OpenAI-compatible server is stdlib
``http.server`` in a thread, answering ``POST /v1/chat/completions`` with JSON or SSE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

READY_TIMEOUT = 20.0
TOKEN = "client-test-token"


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    http: str
    ingest: str
    token: str
    log_path: Path

    def env(self) -> dict[str, str]:
        """The client's environment for this daemon."""
        out = {"METRICSD_URL": self.http, "METRICSD_INGEST": self.ingest}
        if self.token:
            out["METRICSD_TOKEN"] = self.token
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_daemon(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Daemon:
    stamp = time.monotonic_ns()
    ready, log_path = tmp / f"ready-{stamp}.json", tmp / f"daemon-{stamp}.log"
    cmd = [sys.executable, "-m", "metricsd", "serve", "--http", "127.0.0.1:0", "--ingest",
           "tcp://127.0.0.1:0", "--tick", "0.1", "--ready-file", str(ready), *args]  # fmt: skip
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")}
    full_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            token = args[args.index("--token") + 1] if "--token" in args else ""
            return Daemon(proc, info["http"], info["ingest"][0], token, log_path)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"daemon did not become ready:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the tests that isolate themselves by label (with a token, and cost
    suggestions evaluated every 0.2 s)."""
    d = start_daemon(
        tmp_path_factory.mktemp("daemon"),
        "--token",
        TOKEN,
        env={"METRICSD_COST_SUGGESTION_INTERVAL": "0.2"},
    )
    yield d
    d.stop()


@pytest.fixture
def daemon(shared_daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> Daemon:
    """The shared daemon, with METRICSD_URL / METRICSD_INGEST / METRICSD_TOKEN set for it."""
    for name, value in shared_daemon.env().items():
        monkeypatch.setenv(name, value)
    return shared_daemon


@pytest.fixture
def fresh_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon of this test's own (exact totals), with the environment set for it."""
    d = start_daemon(tmp_path)
    for name, value in d.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("METRICSD_TOKEN", raising=False)
    yield d
    d.stop()


# ----------------------------------------------------------------------- fake OpenAI server


@dataclass
class FakeOpenAI:
    """What the fake server saw; ``base_url`` for ``openai.OpenAI(base_url=...)``."""

    base_url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    token_gap: float = 0.02


CONTENT = ["Hello", " from", " the", " fake", " server"]
USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 5,
    "total_tokens": 17,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def _handler(state: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            state.requests.append(
                {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
            )
            model = str(body.get("model", ""))
            if model.startswith("fail-"):
                status = int(model.split("-")[1])
                error = {"message": f"fake failure {status}", "type": "server_error"}
                self._json(status, {"error": error})
                return
            base = {"id": "chatcmpl-fake1", "created": int(time.time()), "model": model}
            if not body.get("stream"):
                message = {"role": "assistant", "content": "".join(CONTENT)}
                choice = {"index": 0, "message": message, "finish_reason": "stop"}
                reply = {**base, "object": "chat.completion", "choices": [choice], "usage": USAGE}
                self._json(200, reply)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()

            def send(obj: dict[str, Any]) -> None:
                self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
                self.wfile.flush()

            chunk = {**base, "object": "chat.completion.chunk"}

            def delta(d: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
                return {**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

            send(delta({"role": "assistant", "content": ""}))
            for i, text in enumerate(CONTENT):
                time.sleep(state.token_gap)
                if model == "midstream-error" and i == 2:
                    send({"error": {"message": "upstream overloaded", "type": "server_error"}})
                    return
                send(delta({"content": text}))
            send(delta({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                send({**chunk, "choices": [], "usage": USAGE})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    state = FakeOpenAI(base_url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)
