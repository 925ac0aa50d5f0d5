"""What must hold whatever happens: no daemon, a fork, a missing daemon package; and the
examples run."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, FakeOpenAI
from metricsd_client import (
    CostTracker,
    DaemonSink,
    Emitter,
    ErrorMetricsTracker,
    InMemoryMetricsSink,
    MetricsCollector,
    MetricsConfig,
    MetricsdUnavailable,
    RequestMetrics,
    StreamingMetricsTracker,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_daemon_down_nothing_blocks_nothing_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICSD_URL", f"http://127.0.0.1:{closed_port()}")
    emitter = Emitter(f"tcp://127.0.0.1:{closed_port()}", sndhwm=5)
    try:
        streams = StreamingMetricsTracker(emitter=emitter, timeout=1.0)
        errors = ErrorMetricsTracker(emitter=emitter, timeout=1.0)
        collector = MetricsCollector(MetricsConfig(), [DaemonSink(emitter=emitter)])
        record = RequestMetrics(model="gpt-4o", latency_ms=12.0, output_tokens=3)
        started = time.perf_counter()
        for i in range(20_000):  # 100 000 calls
            sid = f"down-{i}"
            streams.start_stream(sid, "gpt-4o", prompt_tokens=3)
            streams.record_token(sid, "x")
            streams.complete_stream(sid)
            errors.record_error("/v1/chat/completions", 503, "Overloaded", "busy")
            collector.record(record)
        elapsed = time.perf_counter() - started
        assert elapsed < 5.0, f"100 000 calls took {elapsed:.2f} s"
        assert emitter.flush(5.0)
        # Every event was either handed to ZeroMQ (queued for a daemon that may come back) or
        # dropped and counted: none vanished, none raised.
        assert emitter.sent + emitter.dropped == 100_000 and emitter.dropped > 0
        started = time.perf_counter()
        with pytest.raises(MetricsdUnavailable, match="cannot reach"):
            streams.get_metrics()
        with pytest.raises(MetricsdUnavailable):
            CostTracker(emitter=emitter, pricing="local", timeout=1.0).check_budget("sk")
        assert time.perf_counter() - started < 3.0
    finally:
        emitter.close(timeout=0.5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork test: Linux only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_child_records_with_its_own_state(daemon: Daemon) -> None:
    model = f"fork-{uuid.uuid4().hex[:8]}"
    tracker = StreamingMetricsTracker()
    sink = InMemoryMetricsSink()
    collector = MetricsCollector(MetricsConfig(), [sink, DaemonSink()])
    tracker.start_stream("parent-1", model)
    tracker.record_token("parent-1", "x")
    tracker.complete_stream("parent-1")
    collector.record(RequestMetrics(model=model, latency_ms=5.0))
    assert tracker.get_metrics(model).completed_streams == 1  # threads and sockets now live
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            for i in range(3):
                tracker.start_stream(f"child-{i}", model)
                tracker.record_token(f"child-{i}", "y", n=2)
                tracker.complete_stream(f"child-{i}")
            collector.record(RequestMetrics(model=model, latency_ms=6.0))
            seen = tracker.get_metrics(model).completed_streams  # waits for its own events
            ok = sink.get_stats()["stored_metrics"] == 2 and seen == 4
            code = 0 if tracker.emitter.close(5.0) and ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    metrics = tracker.get_metrics(model)
    assert metrics.completed_streams == 4 and metrics.total_tokens_generated == 7
    assert sink.get_stats()["stored_metrics"] == 1  # the child's record stayed in the child
    tracker.start_stream("parent-2", model)  # the parent's emitter still works
    tracker.complete_stream("parent-2")
    assert tracker.get_metrics(model).total_streams == 5


def test_importing_the_client_never_imports_the_daemon() -> None:
    code = (
        "import sys, metricsd_client as m\n"
        "[getattr(m, n) for n in m.__all__]\n"
        "import metricsd_client.instrument, metricsd_client.trackers\n"
        "bad = sorted(k for k in sys.modules if k == 'metricsd' or k.startswith('metricsd.'))\n"
        "assert not bad, bad\n"
        "assert 'openai' not in sys.modules and 'opentelemetry' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_slo_status_example(daemon: Daemon) -> None:
    ErrorMetricsTracker().record_success("/example", duration_ms=3)
    script = str(EXAMPLES / "slo_status.py")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=60)
    assert run.returncode in (0, 2), run.stderr
    assert "SLO availability: objective 99.9000% over 30 days" in run.stdout
    assert "burn rates" in run.stdout
    run = subprocess.run([sys.executable, script, "--json", "--objective", "0.5"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert json.loads(run.stdout)["target_success_rate"] == 0.5
    down = f"http://127.0.0.1:{closed_port()}"
    run = subprocess.run([sys.executable, script, "--url", down],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1 and "cannot reach" in run.stderr


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_aiohttp_example(daemon: Daemon, fake_openai: FakeOpenAI) -> None:
    openai = pytest.importorskip("openai")
    from aiohttp.test_utils import TestClient, TestServer

    model = f"gpt-4o-mini-{uuid.uuid4().hex[:6]}"
    upstream = openai.AsyncOpenAI(api_key="sk-app", base_url=fake_openai.base_url, max_retries=0)
    app = load_example("aiohttp_app").make_app(client=upstream, model=model)
    async with TestClient(TestServer(app)) as http:
        reply = await http.post("/chat", json={"message": "Hi"})
        assert (await reply.json())["reply"] == "Hello from the fake server"
        reply = await http.post("/chat", json={"message": "Hi", "stream": True})
        assert await reply.text() == "Hello from the fake server"
    # The app's cleanup flushed its collector; the daemon has both calls.
    metrics = StreamingMetricsTracker().get_metrics(model)
    assert metrics.completed_streams == 1 and metrics.total_tokens_generated == 5
    summary = DaemonSink().get_summary(window_seconds=60)
    assert summary.models[model] == 2
