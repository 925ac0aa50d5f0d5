"""OTLP push end to end: the real daemon pushes to a local OTLP/HTTP receiver.

The receiver is a stdlib HTTP server that decodes each POST /v1/metrics body as an
``ExportMetricsServiceRequest``. The daemon gets events over ZeroMQ; the pushed metrics must carry
the GenAI semantic-convention names and attributes, and the same numbers /metrics shows.
"""

from __future__ import annotations

import gzip
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Daemon

pb = pytest.importorskip(
    "opentelemetry.proto.collector.metrics.v1.metrics_service_pb2",
    reason="the otlp extra is not installed (pip install -e '.[otlp]')",
)
pytest.importorskip("opentelemetry.sdk.metrics", reason="the otlp extra is not installed")

#: Emitter timestamps: a whole second of today (a ``ts`` more than a day from the daemon's
#: clock is refused, SPEC §8), so the intervals below are exact.
T0 = float(int(time.time()))
CHAT = "/v1/chat/completions"
WAIT = 10.0

Attrs = tuple[tuple[str, Any], ...]


@dataclass
class Receiver:
    """A local OTLP/HTTP metrics endpoint that keeps every request it gets."""

    server: ThreadingHTTPServer
    requests: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def last(self) -> Any:
        with self.lock:
            return self.requests[-1] if self.requests else None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/metrics":
                self.send_response(404)
                self.end_headers()
                return
            request = pb.ExportMetricsServiceRequest()
            request.ParseFromString(body)
            recv = holder[0]
            with recv.lock:
                recv.requests.append(request)
                recv.headers.append({k.lower(): v for k, v in self.headers.items()})
            reply = pb.ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    holder.append(Receiver(server))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
    thread.join(5)


# --- decoding what the receiver got -----------------------------------------------------------


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attrs(point: Any) -> Attrs:
    return tuple(sorted((kv.key, _value(kv.value)) for kv in point.attributes))


@dataclass
class Pushed:
    """One export request, indexed: name → metric, and the resource attributes."""

    metrics: dict[str, Any]
    resource: dict[str, Any]
    scopes: list[tuple[str, str]]

    def sums(self, name: str) -> dict[Attrs, float]:
        metric = self.metrics[name]
        assert metric.WhichOneof("data") == "sum", name
        return {
            _attrs(p): (p.as_int if p.WhichOneof("value") == "as_int" else p.as_double)
            for p in metric.sum.data_points
        }

    def histograms(self, name: str) -> dict[Attrs, Any]:
        metric = self.metrics[name]
        assert metric.WhichOneof("data") == "histogram", name
        return {_attrs(p): p for p in metric.histogram.data_points}


def index(request: Any) -> Pushed:
    metrics: dict[str, Any] = {}
    scopes: list[tuple[str, str]] = []
    (resource_metrics,) = request.resource_metrics
    for scope_metrics in resource_metrics.scope_metrics:
        scopes.append((scope_metrics.scope.name, scope_metrics.schema_url))
        for metric in scope_metrics.metrics:
            assert metric.name not in metrics, f"{metric.name} twice in one export"
            metrics[metric.name] = metric
    resource = {kv.key: _value(kv.value) for kv in resource_metrics.resource.attributes}
    return Pushed(metrics, resource, scopes)


# --- /metrics, read the same way --------------------------------------------------------------


@dataclass
class PromHistogram:
    bounds: list[float]
    cumulative: list[float]
    sum: float
    count: float


def prom_histograms(daemon: Daemon, family: str) -> dict[Attrs, PromHistogram]:
    status, _, body = daemon.request("/metrics")
    assert status == 200
    out: dict[Attrs, PromHistogram] = {}
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name != family:
            continue
        for s in fam.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            h = out.setdefault(labels, PromHistogram([], [], 0.0, 0.0))
            if s.name.endswith("_bucket"):
                h.bounds.append(float(s.labels["le"]))
                h.cumulative.append(s.value)
            elif s.name.endswith("_sum"):
                h.sum = s.value
            elif s.name.endswith("_count"):
                h.count = s.value
    return out


def cumulate(counts: Any) -> list[float]:
    out, total = [], 0
    for c in counts:
        total += c
        out.append(float(total))
    return out


def rename(labels: Attrs, names: dict[str, str]) -> Attrs:
    return tuple(sorted((names[k], v) for k, v in labels))


# --- the test ---------------------------------------------------------------------------------


def stream_frames(sid: str, model: str, token_ts: list[float], end_ts: float) -> list[Any]:
    return [
        {
            "type": "stream.start",
            "stream_id": sid,
            "model": model,
            "endpoint": CHAT,
            "ts": T0,
        },
        {"type": "stream.token", "const": {"stream_id": sid}, "cols": {"ts": token_ts}},
        {"type": "stream.end", "stream_id": sid, "ts": end_ts, "finish_reason": "stop"},
    ]


def wait_for_push(receiver: Receiver, ready: Any, after: int = 0) -> Pushed:
    """The first export (numbered after ``after``) for which ``ready(pushed)`` holds."""
    deadline = time.monotonic() + WAIT
    seen = after
    while time.monotonic() < deadline:
        with receiver.lock:
            fresh = receiver.requests[seen:]
        for request in fresh:
            seen += 1
            pushed = index(request)
            if ready(pushed):
                return pushed
        time.sleep(0.05)
    raise AssertionError(f"no matching OTLP export within {WAIT} s ({seen} received)")


def test_push_carries_semconv_names_and_the_numbers_of_metrics(
    daemon_factory: Any, receiver: Receiver, tmp_path: Path
) -> None:
    config = tmp_path / "metricsd.toml"
    config.write_text(
        f'[otlp]\nendpoint = "{receiver.url}"\ninterval = 0.2\ntimeout = 2.0\n'
        '[otlp.headers]\n"x-tenant" = "team-a"\n'
    )
    daemon = daemon_factory("--config", str(config))
    daemon.send(
        {
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": CHAT},
            "cols": {
                "duration_ms": [100.0, 250.0],
                "input_tokens": [10, 20],
                "output_tokens": [5, 5],
            },
        }
    )
    daemon.send(
        {
            "type": "request",
            "model": "gpt-4o",
            "endpoint": CHAT,
            "duration_ms": 3000.0,
            "input_tokens": 30,
            "output_tokens": 500,
            "status": 503,
            "error_type": "overloaded",
        }
    )
    daemon.send({"type": "request", "model": "claude-3", "endpoint": CHAT, "duration_ms": 40.0})
    for frame in stream_frames("s1", "gpt-4o", [T0 + 0.1, T0 + 0.15, T0 + 0.25], T0 + 0.5):
        daemon.send(frame)
    # The stream's outcome is a fifth request: wait for all of them on /metrics.
    assert daemon.wait_for("metricsd_events_received_total", 4, type="request") == 4
    assert daemon.wait_for("llm_streams_total", 1, model="gpt-4o", status="completed") == 1

    gpt = (
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o"),
        ("metricsd.endpoint", CHAT),
    )
    requests_name = "metricsd.llm.requests"

    def complete(p: Pushed) -> bool:
        if requests_name not in p.metrics:
            return False
        total = sum(p.sums(requests_name).values())
        return total == 5 and "gen_ai.server.time_to_first_token" in p.metrics

    pushed = wait_for_push(receiver, complete)

    # Resource and scope.
    assert pushed.resource["service.name"] == "metricsd"
    assert pushed.resource["service.version"] == "0.1.0"
    assert pushed.scopes == [("metricsd", "https://opentelemetry.io/schemas/1.37.0")]
    with receiver.lock:
        assert receiver.headers[-1]["x-tenant"] == "team-a"
        assert receiver.headers[-1]["content-type"] == "application/x-protobuf"

    # Counters: names, attributes (status as an int, per the semantic conventions), values.
    # gpt-4o at 200: two requests of the batch and the stream's outcome.
    requests = pushed.sums(requests_name)
    assert requests[tuple(sorted((*gpt, ("http.response.status_code", 200))))] == 3
    assert requests[tuple(sorted((*gpt, ("http.response.status_code", 503))))] == 1
    claude = (
        ("gen_ai.provider.name", "anthropic"),
        ("gen_ai.request.model", "claude-3"),
        ("metricsd.endpoint", CHAT),
    )
    assert requests[tuple(sorted((*claude, ("http.response.status_code", 200))))] == 1
    assert pushed.metrics[requests_name].sum.is_monotonic
    assert pushed.metrics[requests_name].sum.aggregation_temporality == 2  # cumulative
    tokens = pushed.sums("metricsd.llm.tokens")
    assert tokens[tuple(sorted((*gpt, ("gen_ai.token.type", "input"))))] == 60
    assert tokens[tuple(sorted((*gpt, ("gen_ai.token.type", "output"))))] == 5 + 5 + 500 + 3
    errors = pushed.sums("metricsd.llm.errors")
    assert errors == {
        (
            ("error.type", "overloaded"),
            ("gen_ai.request.model", "gpt-4o"),
            ("http.response.status_code", 503),
            ("metricsd.endpoint", CHAT),
        ): 1
    }
    events = pushed.sums("metricsd.events_received")
    assert events[(("type", "request"),)] == 4
    streams = pushed.sums("metricsd.llm.streams")
    completed = (("gen_ai.request.model", "gpt-4o"), ("metricsd.stream.status", "completed"))
    assert streams[completed] == 1
    gauge = pushed.metrics["metricsd.build_info"]
    assert gauge.WhichOneof("data") == "gauge"
    assert [(_attrs(p), p.as_int) for p in gauge.gauge.data_points] == [
        ((("version", "0.1.0"),), 1)
    ]

    # Histograms: GenAI semantic-convention names and units, and exactly /metrics' numbers.
    duration = pushed.metrics["gen_ai.client.operation.duration"]
    assert (duration.unit, duration.histogram.aggregation_temporality) == ("s", 2)
    point = pushed.histograms("gen_ai.client.operation.duration")[gpt]
    assert (point.count, point.sum) == (4, 0.1 + 0.25 + 3.0 + 0.5)  # with the stream's 0.5 s
    assert list(point.explicit_bounds) == [
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92
    ]  # fmt: skip
    assert list(point.bucket_counts) == [0, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0]
    assert not point.HasField("min") and not point.HasField("max")
    usage = pushed.histograms("gen_ai.client.token.usage")
    out_tokens = usage[(("gen_ai.request.model", "gpt-4o"), ("gen_ai.token.type", "output"))]
    assert (out_tokens.count, out_tokens.sum) == (4, 513.0)
    assert pushed.metrics["gen_ai.client.token.usage"].unit == "{token}"

    checks = {
        "llm_request_duration_seconds": "gen_ai.client.operation.duration",
        "llm_request_tokens": "gen_ai.client.token.usage",
        "llm_time_to_first_token_seconds": "gen_ai.server.time_to_first_token",
        "llm_time_per_output_token_seconds": "gen_ai.server.time_per_output_token",
        "llm_inter_token_latency_seconds": "gen_ai.client.operation.time_per_output_chunk",
    }
    names = {
        "provider": "gen_ai.provider.name",
        "model": "gen_ai.request.model",
        "endpoint": "metricsd.endpoint",
        "type": "gen_ai.token.type",
    }
    for family, otel_name in checks.items():
        prom = prom_histograms(daemon, family)
        otel = pushed.histograms(otel_name)
        assert prom, family
        assert set(otel) == {rename(labels, names) for labels in prom}, family
        for labels, h in prom.items():
            p = otel[rename(labels, names)]
            assert [*p.explicit_bounds, math.inf] == h.bounds, family
            assert cumulate(p.bucket_counts) == h.cumulative, family
            assert (p.sum, p.count) == (h.sum, h.count), family
    ttft = pushed.histograms("gen_ai.server.time_to_first_token")
    assert ttft[(("gen_ai.request.model", "gpt-4o"), ("metricsd.endpoint", CHAT))].sum == 0.1


def test_shutdown_pushes_the_last_numbers(
    daemon_factory: Any, receiver: Receiver, tmp_path: Path
) -> None:
    """A long interval: the only export is the final one at SIGTERM, with everything applied."""
    config = tmp_path / "metricsd.toml"
    config.write_text(f'[otlp]\nendpoint = "{receiver.url}/v1/metrics"\ninterval = 3600\n')
    daemon = daemon_factory("--config", str(config))
    daemon.send({"type": "request", "model": "gpt-4o", "endpoint": CHAT, "duration_ms": 5.0})
    assert daemon.wait_for("metricsd_events_received_total", 1, type="request") == 1
    assert receiver.count() == 0
    assert daemon.stop() == 0
    pushed = index(receiver.last())
    assert sum(pushed.sums("metricsd.llm.requests").values()) == 1
    point = pushed.histograms("gen_ai.client.operation.duration")
    assert [(p.count, p.sum) for p in point.values()] == [(1, 0.005)]


def test_unreachable_collector_does_not_stall_the_daemon(
    daemon_factory: Any, tmp_path: Path
) -> None:
    """Exports fail in the SDK's thread; ingest and /metrics go on; shutdown stays bounded."""
    config = tmp_path / "metricsd.toml"
    config.write_text('[otlp]\nendpoint = "http://127.0.0.1:9"\ninterval = 0.1\ntimeout = 0.5\n')
    daemon = daemon_factory("--config", str(config))
    for i in range(20):
        daemon.send({"type": "request", "model": "m", "endpoint": "/e", "duration_ms": i})
    assert daemon.wait_for("metricsd_events_received_total", 20, type="request") == 20
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 5.0
