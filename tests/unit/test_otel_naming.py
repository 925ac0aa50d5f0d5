"""OpenTelemetry names: the mapping, its Prometheus translation (``prometheus.naming = "otel"``),
the configuration that switches it, and the families → OTLP snapshot conversion."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.app import Daemon
from metricsd.config import ConfigError, load_config
from metricsd.export import naming
from metricsd.export.naming import (
    MAPPING,
    instrument_for,
    parse_labels,
    prometheus_label,
    prometheus_name,
    translate_families,
)
from metricsd.export.otlp import (
    ExportSnapshot,
    HistogramPoint,
    NumberPoint,
    _Source,
    export_snapshot,
    metrics_url,
)
from metricsd.export.prometheus import Family, render_both, render_labels, render_text
from metricsd.protocol import decode

WALL = 1_700_000_000.0
CHAT = "/v1/chat/completions"

#: Canonical family → (OpenTelemetry name, unit, Prometheus name of its samples' base).
EXPECTED: dict[str, tuple[str, str, str]] = {
    "llm_requests": ("metricsd.llm.requests", "{request}", "metricsd_llm_requests_total"),
    "llm_request_duration_seconds": (
        "gen_ai.client.operation.duration",
        "s",
        "gen_ai_client_operation_duration_seconds",
    ),
    "llm_tokens": ("metricsd.llm.tokens", "{token}", "metricsd_llm_tokens_total"),
    "llm_request_tokens": ("gen_ai.client.token.usage", "{token}", "gen_ai_client_token_usage"),
    "llm_request_cost_usd": (
        "metricsd.llm.request.cost_usd",
        "{USD}",
        "metricsd_llm_request_cost_usd",
    ),
    "llm_finish_reason": (
        "metricsd.llm.finish_reason",
        "{request}",
        "metricsd_llm_finish_reason_total",
    ),
    "llm_errors": ("metricsd.llm.errors", "{error}", "metricsd_llm_errors_total"),
    "llm_queue_depth": ("metricsd.llm.queue.depth", "{request}", "metricsd_llm_queue_depth"),
    "llm_queue_wait_seconds": (
        "metricsd.llm.queue.wait.duration",
        "s",
        "metricsd_llm_queue_wait_duration_seconds",
    ),
    "llm_cache_lookups": (
        "metricsd.llm.cache.lookups",
        "{lookup}",
        "metricsd_llm_cache_lookups_total",
    ),
    "llm_cache_tokens": ("metricsd.llm.cache.tokens", "{token}", "metricsd_llm_cache_tokens_total"),
    "llm_time_to_first_token_seconds": (
        "gen_ai.server.time_to_first_token",
        "s",
        "gen_ai_server_time_to_first_token_seconds",
    ),
    "llm_inter_token_latency_seconds": (
        "gen_ai.client.operation.time_per_output_chunk",
        "s",
        "gen_ai_client_operation_time_per_output_chunk_seconds",
    ),
    "llm_time_per_output_token_seconds": (
        "gen_ai.server.time_per_output_token",
        "s",
        "gen_ai_server_time_per_output_token_seconds",
    ),
    "llm_stream_output_tokens_per_second": (
        "metricsd.llm.stream.output_tokens_per_second",
        "{token}/s",
        "metricsd_llm_stream_output_tokens_per_second",
    ),
    "llm_streams": ("metricsd.llm.streams", "{stream}", "metricsd_llm_streams_total"),
    "llm_streams_active": (
        "metricsd.llm.streams.active",
        "{stream}",
        "metricsd_llm_streams_active",
    ),
    "llm_stream_stalls": (
        "metricsd.llm.stream.stalls",
        "{stall}",
        "metricsd_llm_stream_stalls_total",
    ),
    "llm_stream_backpressure": (
        "metricsd.llm.stream.backpressure",
        "{event}",
        "metricsd_llm_stream_backpressure_total",
    ),
    "llm_stream_tokens": (
        "metricsd.llm.stream.tokens",
        "{token}",
        "metricsd_llm_stream_tokens_total",
    ),
    "llm_stream_bytes": ("metricsd.llm.stream.size", "By", "metricsd_llm_stream_size_bytes_total"),
    "llm_slo_objective": ("metricsd.slo.objective", "1", "metricsd_slo_objective_ratio"),
    "llm_slo_burn_rate": ("metricsd.slo.burn_rate", "1", "metricsd_slo_burn_rate_ratio"),
    "llm_slo_error_budget_remaining_ratio": (
        "metricsd.slo.error_budget.remaining",
        "1",
        "metricsd_slo_error_budget_remaining_ratio",
    ),
    "llm_error_patterns": (
        "metricsd.llm.error.patterns",
        "{pattern}",
        "metricsd_llm_error_patterns",
    ),
    "llm_error_bursts": ("metricsd.llm.error.bursts", "{burst}", "metricsd_llm_error_bursts_total"),
    "llm_cost_usd": ("metricsd.llm.cost_usd", "{USD}", "metricsd_llm_cost_usd_total"),
    "llm_budget_limit_usd": ("metricsd.budget.limit_usd", "{USD}", "metricsd_budget_limit_usd"),
    "llm_budget_used_usd": ("metricsd.budget.used_usd", "{USD}", "metricsd_budget_used_usd"),
    "llm_budget_exceeded": ("metricsd.budget.exceeded", "", "metricsd_budget_exceeded"),
    "llm_unpriced_requests": (
        "metricsd.llm.unpriced_requests",
        "{request}",
        "metricsd_llm_unpriced_requests_total",
    ),
}


def test_every_mapped_family_has_its_exact_names() -> None:
    assert set(MAPPING) == set(EXPECTED)
    for family, (otel, unit, prom) in EXPECTED.items():
        inst = MAPPING[family]
        assert (inst.name, inst.unit) == (otel, unit), family
        base = prometheus_name(inst.name, inst.unit, inst.kind)
        assert base + ("_total" if inst.kind == "counter" else "") == prom, family
    names = [m.name for m in MAPPING.values()]
    assert len(names) == len(set(names))
    semconv = {m.name for m in MAPPING.values() if m.semconv}
    assert semconv == {
        "gen_ai.client.operation.duration",
        "gen_ai.client.token.usage",
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.client.operation.time_per_output_chunk",
    }
    assert all(n.startswith("metricsd.") for n in set(names) - semconv)
    assert naming.GENAI_SEMCONV_VERSION == "1.37.0"


def test_attribute_names() -> None:
    duration = MAPPING["llm_request_duration_seconds"]
    assert [duration.attribute(k) for k in ("provider", "endpoint", "model", "le")] == [
        "gen_ai.provider.name",
        "metricsd.endpoint",
        "gen_ai.request.model",
        "le",
    ]
    assert MAPPING["llm_request_tokens"].attribute("type") == "gen_ai.token.type"
    assert MAPPING["llm_cache_tokens"].attribute("type") == "metricsd.cache.token.type"
    errors = MAPPING["llm_errors"]
    assert [errors.attribute(k) for k in ("error_type", "status")] == [
        "error.type",
        "http.response.status_code",
    ]
    assert MAPPING["llm_streams"].attribute("status") == "metricsd.stream.status"
    assert MAPPING["llm_requests"].attribute("something_new") == "metricsd.something_new"
    assert prometheus_label("gen_ai.request.model") == "gen_ai_request_model"
    assert prometheus_label("9lives") == "key_9lives"


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("a.b", "s", "histogram", "a_b_seconds"),
        ("a.b_seconds", "s", "histogram", "a_b_seconds"),
        ("a.b", "ms", "gauge", "a_b_milliseconds"),
        ("a.b", "By", "counter", "a_b_bytes"),
        ("a.b_total", "", "counter", "a_b"),
        ("a.b", "1", "gauge", "a_b_ratio"),
        ("a.b", "1", "counter", "a_b"),
        ("a.b", "{token}", "histogram", "a_b"),
        ("a.rate", "{token}/s", "gauge", "a_rate_per_second"),
        ("a.speed", "m/s", "gauge", "a_speed_m_per_second"),
        ("a-b.c", "", "gauge", "a_b_c"),
    ],
)
def test_prometheus_name_rules(name: str, unit: str, kind: str, expected: str) -> None:
    assert prometheus_name(name, unit, kind) == expected


def test_self_metrics_keep_their_names_and_the_rest_has_no_otel_form() -> None:
    tick = instrument_for("metricsd_tick_duration_seconds", "gauge")
    assert tick is not None and (tick.name, tick.unit, tick.kind) == (
        "metricsd.tick_duration",
        "s",
        "gauge",
    )
    assert prometheus_name(tick.name, tick.unit, tick.kind) == "metricsd_tick_duration_seconds"
    frames = instrument_for("metricsd_frames_received", "counter")
    assert frames is not None and frames.name == "metricsd.frames_received"
    assert frames.attribute("type") == "type"
    for name, kind in [
        ("streaming_ttft_milliseconds", "summary"),
        ("slo:objective:ratio", "gauge"),
        ("process_cpu_seconds", "counter"),
        ("cost_total_usd", "gauge"),
        ("llm_requests", "gauge"),  # a family whose type does not match the mapping
    ]:
        assert instrument_for(name, kind) is None, name


VALUES = ["plain", 'we"ird', "back\\slash", "new\nline", 'x",model="y', "a,b=c", "", "ü"]
VALUES += ["x,le=", 'q",le="1', "le=", '",']


@pytest.mark.parametrize("value", VALUES)
def test_label_parsing_round_trips_escaped_values(value: str) -> None:
    rendered = render_labels((("model", value), ("endpoint", "/e")))
    assert parse_labels(rendered) == [("model", value), ("endpoint", "/e")]
    (fam,) = translate_families([_one("llm_requests", "counter", rendered)])
    assert fam.samples[0][1] == render_labels(
        (("gen_ai_request_model", value), ("metricsd_endpoint", "/e"))
    )


@pytest.mark.parametrize("value", VALUES)
def test_histogram_buckets_keep_le_after_hostile_values(value: str) -> None:
    for labels in [(("endpoint", "/e"), ("model", value)), (("model", value), ("endpoint", "/e"))]:
        fam = Family("llm_time_to_first_token_seconds", "histogram", "help")
        fam.histogram(labels, (0.1, 1.0), [1, 2, 3], 4.5)
        for _round in range(2):  # the second time from the cache
            (out,) = translate_families([fam])
            names = {"endpoint": "metricsd_endpoint", "model": "gen_ai_request_model"}
            series = tuple((names[k], v) for k, v in labels)
            assert [(suffix, parse_labels(lab), n) for suffix, lab, n in out.samples] == [
                ("_bucket", [*series, ("le", "0.1")], 1),
                ("_bucket", [*series, ("le", "1")], 2),
                ("_bucket", [*series, ("le", "+Inf")], 3),
                ("_sum", list(series), 4.5),
                ("_count", list(series), 3),
            ]
            text = render_text([out]).decode()
            parsed = {s.name: s for f in parse_text(text) for s in f.samples}
            assert parsed["gen_ai_server_time_to_first_token_seconds_count"].value == 3


def _one(name: str, kind: str, rendered: str) -> Family:
    fam = Family(name, kind, "help")
    fam.samples.append(("_total" if kind == "counter" else "", rendered, 1))
    return fam


# --- the translated exposition from a real daemon's engine -----------------------------------


@pytest.fixture
async def otel_daemon() -> AsyncIterator[Daemon]:
    config = load_config(environ={}, overrides={"prometheus": {"naming": "otel"}})
    daemon = Daemon(config)
    yield daemon
    close(daemon)


def close(daemon: Daemon) -> None:
    daemon.ingest.close()
    daemon.context.term()


def feed(daemon: Daemon) -> None:
    frames: list[Any] = [
        {
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": CHAT},
            "cols": {
                "duration_ms": [100.0, 250.0, 3000.0],
                "input_tokens": [10, 20, 30],
                "output_tokens": [5, 5, 500],
                "queue_ms": [1.0, 2.0, 3.0],
                "finish_reason": ["stop", "stop", "length"],
            },
        },
        {"type": "request", "model": 'odd"model', "duration_ms": 7.0, "status": 503},
        {"type": "error", "model": "gpt-4o", "endpoint": CHAT, "error_type": "timeout"},
        {"type": "stream.start", "stream_id": "s", "model": "gpt-4o", "endpoint": CHAT, "ts": WALL},
        {"type": "stream.token", "stream_id": "s", "ts": WALL + 0.1},
        {"type": "stream.token", "stream_id": "s", "ts": WALL + 0.2},
        {"type": "stream.end", "stream_id": "s", "ts": WALL + 0.3},
    ]  # fmt: skip
    for frame in frames:
        result = decode(msgpack.packb(frame), WALL + 1.0, daemon.engine.limits)
        daemon.engine.apply(result, 1.0, WALL + 1.0)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parse_text(text)
        for s in fam.samples
    }


async def test_otel_exposition_parses_and_carries_the_same_numbers(otel_daemon: Daemon) -> None:
    feed(otel_daemon)
    engine = otel_daemon.engine
    snap = engine.snapshot(2.0, WALL + 2.0)
    text_bytes, om_bytes = render_both(snap.families())
    text, om = text_bytes.decode(), om_bytes.decode()
    translated = samples(text)
    om_families = {f.name: f for f in parse_om(om)}
    assert om_families["gen_ai_client_operation_duration_seconds"].type == "histogram"
    assert om_families["metricsd_llm_requests"].type == "counter"
    assert om_families["metricsd_slo_objective_ratio"].type == "gauge"
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))

    gpt = (
        ("gen_ai_provider_name", "openai"),
        ("gen_ai_request_model", "gpt-4o"),
        ("metricsd_endpoint", CHAT),
    )
    assert translated[("gen_ai_client_operation_duration_seconds_count", gpt)] == 4
    bucket = tuple(sorted((*gpt, ("le", "0.16"))))
    assert translated[("gen_ai_client_operation_duration_seconds_bucket", bucket)] == 1
    usage = (("gen_ai_request_model", "gpt-4o"), ("gen_ai_token_type", "input"))
    assert translated[("gen_ai_client_token_usage_sum", usage)] == 60
    ttft = (("gen_ai_request_model", "gpt-4o"), ("metricsd_endpoint", CHAT))
    assert translated[("gen_ai_server_time_to_first_token_seconds_sum", ttft)] == 0.1
    odd = (
        ("gen_ai_provider_name", "unknown"),
        ("gen_ai_request_model", 'odd"model'),
        ("http_response_status_code", "503"),
        ("metricsd_endpoint", "unknown"),
    )
    assert translated[("metricsd_llm_requests_total", odd)] == 1
    assert translated[("metricsd_frames_received_total", ())] == 7
    sloth = (
        ("sloth_id", "metricsd-availability"),
        ("sloth_service", "metricsd"),
        ("sloth_slo", "availability"),
    )
    assert translated[("slo:objective:ratio", sloth)] == 0.999
    assert not any(name.startswith("llm_") for name, _labels in translated)

    # Every canonical sample has one translated twin: same suffix, label values and value.
    canonical = snap.families(canonical=True)
    twins = translate_families(canonical)
    assert len(twins) == len(canonical)
    for fam, twin in zip(canonical, twins, strict=True):
        # Samples made per series (Family.series) count with the plain ones.
        fam_samples, twin_samples = fam.all_samples(), twin.all_samples()
        assert (twin.type, twin.help, len(twin_samples)) == (fam.type, fam.help, len(fam_samples))
        for (suffix, labels, value), (t_suffix, t_labels, t_value) in zip(
            fam_samples, twin_samples, strict=True
        ):
            assert (t_suffix, _number(t_value)) == (suffix, _number(value))
            assert [v for _k, v in parse_labels(t_labels)] == [v for _k, v in parse_labels(labels)]
        if instrument_for(fam.name, fam.type) is None or fam.name.startswith("metricsd_"):
            assert twin is fam


def _number(value: float) -> float:
    return -1.0 if math.isnan(value) else float(value)


def test_llm_naming_is_unchanged() -> None:
    plain = Daemon(load_config(environ={}))
    try:
        feed(plain)
        text = render_text(plain.engine.snapshot(2.0, WALL + 2.0).families()).decode()
        assert "llm_requests_total{" in text and "gen_ai_" not in text
    finally:
        close(plain)


# --- families → OTLP snapshot -----------------------------------------------------------------


def test_snapshot_converts_cumulative_buckets_and_types() -> None:
    duration = Family("llm_request_duration_seconds", "histogram", "Request duration.")
    labels = (("provider", "openai"), ("endpoint", CHAT), ("model", "gpt-4o"))
    # Cumulative counts at the bounds, then the total (+Inf): 5 in all, 2 above the last bound.
    duration.histogram(labels, (0.1, 0.5, 1.0), [1, 3, 3, 5], 2.75)
    other = (("provider", "x"), ("endpoint", "/e"), ("model", "m"))
    duration.histogram(other, (0.1, 0.5, 1.0), [0, 0, 1, 1], 0.9)
    requests = Family("llm_requests", "counter", "Requests.")
    requests.counter(7, (*labels, ("status", "200")))
    requests.counter(2, (*labels, ("status", "weird")))
    frames = Family("metricsd_frames_received", "counter", "Frames.")
    frames.counter(3)
    compat = Family("cost_total_usd", "gauge", "Compat.")
    compat.add(1.5)

    snap = export_snapshot([duration, requests, frames, compat])
    assert sorted(snap.metrics) == [
        "gen_ai.client.operation.duration",
        "metricsd.frames_received",
        "metricsd.llm.requests",
    ]
    hist = snap.metrics["gen_ai.client.operation.duration"]
    assert (hist.kind, hist.unit, hist.description) == ("histogram", "s", "Request duration.")
    first = hist.points[0]
    assert isinstance(first, HistogramPoint)
    assert first.attributes == (
        ("gen_ai.provider.name", "openai"),
        ("metricsd.endpoint", CHAT),
        ("gen_ai.request.model", "gpt-4o"),
    )
    assert (first.bounds, first.bucket_counts, first.count, first.sum) == (
        (0.1, 0.5, 1.0),
        (1, 2, 0, 2),
        5,
        2.75,
    )
    second = hist.points[1]
    assert isinstance(second, HistogramPoint)
    assert (second.bucket_counts, second.count, second.sum) == ((0, 0, 1, 0), 1, 0.9)
    points = snap.metrics["metricsd.llm.requests"].points
    assert [p.attributes[-1] for p in points if isinstance(p, NumberPoint)] == [
        ("http.response.status_code", 200),
        ("http.response.status_code", "weird"),
    ]
    assert [p.value for p in points if isinstance(p, NumberPoint)] == [7, 2]
    assert snap.metrics["metricsd.frames_received"].points == (NumberPoint((), 3),)


def test_source_builds_one_snapshot_per_collection_on_the_collecting_thread() -> None:
    built: list[int] = []

    def build() -> ExportSnapshot:
        built.append(threading.get_ident())
        return ExportSnapshot({})

    source = _Source(build, interval=60.0)
    assert source.current() is None and built == []  # not ready: no fetch
    source.ready = True
    first = source.current()
    assert first is not None and source.current() is first  # pinned for the collection
    source.release()
    assert source.current() is not first
    # Snapshots are immutable: the collecting thread builds the export itself.
    assert built == [threading.get_ident()] * 2 and source.fetches == 2

    def broken() -> ExportSnapshot:
        raise RuntimeError("boom")

    failing = _Source(broken, interval=60.0)
    failing.ready = True
    assert failing.current() is None and failing.failures == 1


def test_metrics_url() -> None:
    assert metrics_url("http://c:4318") == "http://c:4318/v1/metrics"
    assert metrics_url("http://c:4318/") == "http://c:4318/v1/metrics"
    assert metrics_url("https://c/otlp/v1/metrics") == "https://c/otlp/v1/metrics"


# --- configuration ----------------------------------------------------------------------------


def test_naming_and_otlp_settings(tmp_path: Path) -> None:
    assert load_config(environ={}).prometheus.naming == "llm"
    assert load_config(environ={"METRICSD_PROMETHEUS_NAMING": "otel"}).prometheus.naming == "otel"
    with pytest.raises(ConfigError, match=r"prometheus\.naming: must be 'llm' or 'otel', got 'x'"):
        load_config(environ={}, overrides={"prometheus": {"naming": "x"}})
    config = load_config(environ={})
    assert (config.otlp.endpoint, config.otlp.interval, config.otlp.timeout) == ("", 15.0, 10.0)
    path = tmp_path / "m.toml"
    path.write_text(
        '[otlp]\nendpoint = "https://otel.example:4318"\ninterval = 30\n'
        '[otlp.headers]\nauthorization = "Bearer s3cret"\n'
    )
    config = load_config(path, environ={"METRICSD_OTLP_TIMEOUT": "3"})
    assert config.otlp.endpoint == "https://otel.example:4318"
    assert (config.otlp.interval, config.otlp.timeout) == (30.0, 3.0)
    assert config.otlp.headers == {"authorization": "Bearer s3cret"}
    assert config.to_dict()["otlp"]["headers"] == {"authorization": "***"}
    for bad, message in [
        ({"endpoint": "collector:4318"}, "otlp.endpoint: expected an http"),
        ({"interval": 0.0}, "otlp.interval: must be 0.1 to 86400 s"),
        ({"timeout": 0.0}, "otlp.timeout: must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(environ={}, overrides={"otlp": bad})


RUN = """
import sys
{block}
from click.testing import CliRunner
from metricsd.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
print(result.output)
print("exit", result.exit_code)
print("otel imported", any(m.startswith("opentelemetry") for m in sys.modules))
"""


def _serve(tmp_path: Path, toml: str, block: str) -> str:
    path = tmp_path / "m.toml"
    path.write_text(toml)
    code = RUN.format(block=block)
    args = [
        "serve",
        "--config",
        str(path),
        "--http",
        "127.0.0.1:0",
        "--ingest",
        "tcp://127.0.0.1:0",
    ]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=20
    )
    return done.stdout + done.stderr


def test_endpoint_without_the_extra_refuses_to_start(tmp_path: Path) -> None:
    # Import of the SDK fails as it would without the extra installed.
    out = _serve(
        tmp_path,
        '[otlp]\nendpoint = "http://127.0.0.1:9"\n',
        "sys.modules['opentelemetry.sdk'] = None; sys.modules['opentelemetry.sdk.metrics'] = None",
    )
    assert "otlp.endpoint is set but the OpenTelemetry SDK is not installed" in out
    assert "pip install 'metricsd[otlp]'" in out
    assert "exit 0" not in out


def test_without_an_endpoint_nothing_is_imported(tmp_path: Path) -> None:
    # The daemon starts and is stopped by a signal sent from a timer inside the process.
    block = (
        "import os, signal, threading\n"
        "threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()"
    )
    out = _serve(tmp_path, "[prometheus]\nnaming = 'otel'\n", block)
    assert "exit 0" in out and "otel imported False" in out, out
