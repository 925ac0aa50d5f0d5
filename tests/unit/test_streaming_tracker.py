"""The streaming tracker through the engine, with a synthetic clock and the worked values.

Worked values (fakeai-behaviour §2.2 and §7): start 1.0 s, first token 1.1 s → TTFT 100.0 ms;
1.0 → 1.5 s → duration 500.0 ms; tokens at 1.00, 1.05, 1.15 s → ITLs [50.0, 100.0]; 20 tokens
50 ms apart → decode TPS 19/0.95 = 20.0; a 650 ms gap → 1 stall; jitter = sample stdev of the
ITLs; smoothness = clamp(100 × (1 − stdev/mean), 0, 100). Emitter timestamps are Unix seconds
around 1.7e9, as real emitters send them.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config, ConfigError, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.snapshot import Snapshot
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.window import Geometry

WALL = 1_700_000_000.0
T0 = 1_700_000_000.0  # emitter clock: unrelated to the daemon's monotonic clock
CHAT = "/v1/chat/completions"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Harness:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config(environ={})
        geometry = Geometry(slot_seconds=self.config.engine.slot_seconds)
        self.requests = RequestTracker(self.config, geometry, start=0.0)
        self.tracker = StreamingTracker(self.config, geometry, start=0.0)
        self.engine = Engine(self.config, [self.requests, self.tracker])

    def send(self, frame: Any, now: float) -> None:
        result = decode(msgpack.packb(frame), WALL + now, self.engine.limits)
        assert not result.rejected, result.rejected
        self.engine.apply(result, now, WALL + now)

    def snap(self, now: float) -> Snapshot:
        return self.engine.snapshot(now, WALL + now)

    def snapshot(self, now: float) -> tuple[str, str]:
        text, om = render_both(self.snap(now).families())
        return text.decode(), om.decode()

    def samples(self, now: float) -> Samples:
        out: Samples = {}
        for fam in parse_text(self.snapshot(now)[0]):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def view(self, now: float, model: str | None = None) -> dict[str, Any]:
        out = self.snap(now).view("streaming", model)
        json.dumps(out, allow_nan=False)  # strict JSON, plain types
        return out


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def start(sid: str, ts: float, model: str = "gpt-4o", **fields: Any) -> dict[str, Any]:
    return {
        "type": "stream.start",
        "stream_id": sid,
        "ts": ts,
        "model": model,
        "endpoint": CHAT,
        **fields,
    }


def tokens(sid: str, times: list[float], **cols: Any) -> dict[str, Any]:
    return {"type": "stream.token", "const": {"stream_id": sid}, "cols": {"ts": times, **cols}}


def end(sid: str, ts: float, **fields: Any) -> dict[str, Any]:
    return {"type": "stream.end", "stream_id": sid, "ts": ts, **fields}


def worked_stream(h: Harness, sid: str = "s1", model: str = "gpt-4o") -> None:
    """Start 1.0, tokens 1.1/1.15/1.25 (ITLs 50, 100), end 1.5 (emitter seconds + T0)."""
    h.send(start(sid, T0 + 1.0, model, prompt_tokens=12), now=1.0)
    h.send(tokens(sid, [T0 + 1.1, T0 + 1.15, T0 + 1.25], bytes=[5, 6, 7]), now=1.2)
    h.send(end(sid, T0 + 1.5, finish_reason="stop"), now=1.5)


def test_worked_values() -> None:
    h = Harness()
    worked_stream(h)
    v = h.view(2.0)
    assert v["ttft"]["avg"] == v["ttft"]["min"] == v["ttft"]["max"] == 100.0
    assert v["ttft"]["count"] == 1
    assert v["ttft_percentiles"] == v["ttft"]
    assert (v["duration"]["min"], v["duration"]["count"]) == (500.0, 1)
    assert (v["itl"]["min"], v["itl"]["max"], v["itl"]["avg"], v["itl"]["count"]) == (
        50.0,
        100.0,
        75.0,
        2,
    )
    assert v["time_per_output_token"]["avg"] == 75.0  # the stream's mean ITL, one sample
    jitter = statistics.stdev([50.0, 100.0])
    assert v["jitter_ms"]["avg"] == pytest.approx(jitter, rel=1e-12)
    assert v["smoothness"]["avg"] == pytest.approx(100 * (1 - jitter / 75.0), rel=1e-12)
    assert v["tokens_per_second"]["avg"] == pytest.approx(2 / 0.15, rel=1e-12)  # (3−1)/(last−first)
    assert v["e2e_tokens_per_second"]["avg"] == 6.0  # 3 tokens / 0.5 s
    assert (v["total_streams"], v["completed_streams"], v["successful_streams"]) == (1, 1, 1)
    assert (v["active_streams"], v["success_rate"]) == (0, 1.0)
    assert (v["total_tokens_generated"], v["total_bytes_sent"]) == (3, 18)
    assert v["streams_by_model"] == {"gpt-4o": 1} and v["tokens_by_model"] == {"gpt-4o": 3}
    assert v["by_model"]["gpt-4o"]["ttft"]["avg"] == 100.0
    assert v["window_seconds"] == 300.0


def test_decode_tps_and_smoothness_of_evenly_spaced_tokens() -> None:
    h = Harness()
    h.send(start("s", T0), now=1.0)
    h.send(tokens("s", [T0 + 0.2 + i * 0.05 for i in range(20)]), now=2.0)
    h.send(end("s", T0 + 2.0), now=3.0)
    v = h.view(3.0)
    assert v["tokens_per_second"]["avg"] == 20.0  # 19 / 0.95
    assert v["smoothness"]["avg"] == 100.0
    assert v["jitter_ms"]["avg"] == 0.0
    assert (v["itl"]["min"], v["itl"]["max"], v["itl"]["count"]) == (50.0, 50.0, 19)
    assert v["stalls"] == 0


@pytest.mark.parametrize(("gap_ms", "stalls"), [(500.0, 0), (600.0, 1), (650.0, 1)])
def test_stall_is_a_gap_strictly_above_500_ms(gap_ms: float, stalls: int) -> None:
    h = Harness()
    h.send(start("s", T0), now=1.0)
    h.send(tokens("s", [T0 + 0.1, T0 + 0.15, T0 + 0.15 + gap_ms / 1000]), now=2.0)
    v = h.view(2.0)
    assert v["stalls"] == stalls and v["by_model"]["gpt-4o"]["stalls"] == stalls
    assert h.samples(2.0)[key("llm_stream_stalls_total", model="gpt-4o")] == stalls


def test_itl_divides_a_gap_by_the_tokens_of_the_later_chunk() -> None:
    h = Harness()
    h.send(start("s", T0), now=1.0)
    h.send(tokens("s", [T0 + 0.1, T0 + 0.4], n=[1, 3]), now=2.0)
    v = h.view(2.0)
    assert (v["itl"]["avg"], v["itl"]["count"], v["total_tokens_generated"]) == (100.0, 1, 4)


def test_bulk_batches_equal_one_token_at_a_time() -> None:
    """Interleaved streams in one shuffled batch give the same per-stream numbers as replaying
    each token on its own, and both match numpy on the raw gaps."""
    rng = np.random.default_rng(7)
    times = {f"s{i}": T0 + np.cumsum(rng.uniform(0.01, 0.8, size=12)) for i in range(30)}
    rows = [(sid, float(t)) for sid, ts in times.items() for t in ts]
    order = rng.permutation(len(rows))
    bulk, single = Harness(), Harness()
    for h in (bulk, single):
        h.send({"type": "stream.start", "cols": {"stream_id": list(times), "ts": [T0] * 30}}, 0.0)
    bulk.send(
        {
            "type": "stream.token",
            "cols": {"stream_id": [rows[i][0] for i in order], "ts": [rows[i][1] for i in order]},
        },
        now=1.0,
    )
    for sid, t in rows:
        single.send(tokens(sid, [t]), now=1.0)
    for h in (bulk, single):
        table = h.tracker.table
        slots = np.array([table.ids[sid] for sid in times])
        gaps = [np.round(np.diff(times[sid]) * 1000, 3) for sid in times]
        # The table keeps exact sums of each stream's gaps (whole µs) and of their squares;
        # the mean and the sum of squared deviations (ms, ms²) follow from them.
        n, total, squares = table.itl_n[slots], table.itl_sum[slots], table.itl_sq[slots]
        itl_mean = total / n / 1000.0
        itl_m2 = (squares - total * total / n) / 1e6
        assert np.allclose(itl_mean, [g.mean() for g in gaps], rtol=1e-12)
        assert np.allclose(itl_m2, [((g - g.mean()) ** 2).sum() for g in gaps], rtol=1e-9)
        assert table.stalls[slots].tolist() == [int((g > 500).sum()) for g in gaps]
        assert table.tokens[slots].tolist() == [12] * 30
    for block in ("itl", "ttft"):  # the sums differ only in their float addition order
        assert bulk.view(1.0)[block] == pytest.approx(single.view(1.0)[block], rel=1e-12)


def test_stream_end_is_one_request_outcome() -> None:
    h = Harness()
    worked_stream(h)
    h.send(start("c", T0 + 2.0, "claude-3"), now=2.0)
    h.send(end("c", T0 + 2.2, status="cancelled"), now=2.2)
    h.send(start("f", T0 + 3.0, "claude-3"), now=3.0)
    h.send(end("f", T0 + 3.4, status="failed", error_type="upstream_timeout"), now=3.4)
    s = h.samples(4.0)
    chat = {"endpoint": CHAT}
    assert (
        s[key("llm_requests_total", **chat, model="gpt-4o", provider="openai", status="200")] == 1
    )
    assert s[key("llm_tokens_total", **chat, model="gpt-4o", provider="openai", type="input")] == 12
    assert s[key("llm_tokens_total", **chat, model="gpt-4o", provider="openai", type="output")] == 3
    claude = {**chat, "model": "claude-3", "provider": "anthropic"}
    assert s[key("llm_requests_total", **claude, status="499")] == 1
    assert s[key("llm_requests_total", **claude, status="500")] == 1
    errors = {k[1]: v for k, v in s.items() if k[0] == "llm_errors_total"}
    err = {"endpoint": CHAT, "model": "claude-3"}
    assert errors[tuple(sorted({**err, "error_type": "stream_cancelled", "status": "499"}.items()))]
    assert errors[tuple(sorted({**err, "error_type": "upstream_timeout", "status": "500"}.items()))]
    total = sum(v for k, v in s.items() if k[0] == "llm_requests_total")
    assert total == 3  # exactly one outcome per stream
    assert s[key("llm_finish_reason_total", finish_reason="stop", model="gpt-4o")] == 1
    duration = s[key("llm_request_duration_seconds_sum", **chat, model="gpt-4o", provider="openai")]
    assert duration == pytest.approx(0.5)
    assert h.engine.events_derived["request"] == 3
    v = h.view(4.0)
    assert (v["completed_streams"], v["cancelled_streams"], v["failed_streams"]) == (1, 1, 1)
    assert v["success_rate"] == pytest.approx(1 / 3)
    assert s[key("llm_streams_total", model="claude-3", status="cancelled")] == 1
    assert s[key("streaming_failed_streams_total")] == 1
    assert s[key("streaming_total_streams_total")] == 3


def test_capacity_evicts_the_oldest_idle_stream() -> None:
    h = Harness(load_config(environ={}, overrides={"limits": {"max_active_streams": 5}}))
    for i in range(10):
        if i >= 1:  # s0 keeps streaming: the others are the idle ones
            h.send(tokens("s0", [T0 + i + 0.5]), now=float(i))
        h.send(start(f"s{i}", T0 + i), now=float(i))
    table = h.tracker.table
    assert len(table) == 5
    assert sorted(table.ids) == ["s0", "s6", "s7", "s8", "s9"]
    v = h.view(10.0)
    assert (v["active_streams"], v["abandoned_streams"], v["evicted_streams"]) == (5, 5, 5)
    s = h.samples(10.0)
    assert s[key("metricsd_streams_evicted_total")] == 5
    assert s[key("llm_streams_total", model="gpt-4o", status="abandoned")] == 5
    assert s[key("llm_streams_active", model="gpt-4o")] == 5
    assert s[key("streaming_active_streams")] == 5
    base = {"endpoint": CHAT, "model": "gpt-4o", "provider": "openai"}
    assert s[key("llm_requests_total", **base, status="500")] == 5
    # One batch larger than the capacity keeps its newest rows.
    h.send({"type": "stream.start", "cols": {"stream_id": [f"b{i}" for i in range(8)]}}, 11.0)
    assert sorted(table.ids) == ["b3", "b4", "b5", "b6", "b7"]
    assert h.tracker.evicted == 13


def test_idle_streams_end_as_abandoned() -> None:
    config = load_config(environ={}, overrides={"streaming": {"idle_timeout": 60.0}})
    h = Harness(config)
    h.send(start("s", T0, prompt_tokens=7), now=0.0)
    h.send(tokens("s", [T0 + 0.2, T0 + 0.3]), now=10.0)
    h.samples(69.0)
    assert len(h.tracker.table) == 1
    s = h.samples(71.0)  # the tick expires it: 61 s after its last event
    assert len(h.tracker.table) == 0
    assert s[key("llm_streams_total", model="gpt-4o", status="abandoned")] == 1
    assert s[key("metricsd_streams_evicted_total")] == 0
    base = {"endpoint": CHAT, "model": "gpt-4o"}
    assert s[key("llm_requests_total", **base, provider="openai", status="500")] == 1
    assert s[key("llm_errors_total", **base, error_type="stream_abandoned", status="500")] == 1
    # The outcome's duration runs to the stream's last event (emitter clock).
    assert s[key("llm_request_duration_seconds_sum", **base, provider="openai")] == 0.3
    v = h.view(71.0)
    assert v["abandoned_streams"] == 1 and v["duration"]["count"] == 0  # end unknown: no sample
    assert v["ttft"]["count"] == 1 and v["itl"]["count"] == 1


def test_orphan_and_duplicate_events_are_counted() -> None:
    h = Harness()
    h.send(start("s", T0), now=0.0)
    h.send(start("s", T0 + 5), now=0.5)  # duplicate: the first start stands
    h.send(tokens("nope", [T0 + 1, T0 + 2]), now=1.0)
    h.send({"type": "stream.token", "cols": {"stream_id": ["s", "x"], "ts": [T0 + 1] * 2}}, 1.0)
    h.send(end("nope", T0 + 3), now=1.0)
    h.send({"type": "stream.backpressure", "stream_id": "x", "buffer_size": 3}, now=1.0)
    h.send({"type": "stream.backpressure", "stream_id": "s"}, now=1.0)
    h.send(end("s", T0 + 2), now=2.0)
    h.send(end("s", T0 + 2), now=2.0)  # ended twice
    s = h.samples(3.0)
    orphaned = "metricsd_stream_events_orphaned_total"
    assert s[key(orphaned, type="stream.start")] == 1
    assert s[key(orphaned, type="stream.token")] == 3
    assert s[key(orphaned, type="stream.end")] == 2
    assert s[key(orphaned, type="stream.backpressure")] == 1
    v = h.view(3.0)
    assert v["ttft"]["avg"] == 1000.0  # from the first start
    assert (v["total_backpressure_events"], v["completed_streams"]) == (1, 1)
    assert s[key("llm_stream_backpressure_total", model="gpt-4o")] == 1


def test_compact_path_feeds_streaming_without_a_second_outcome() -> None:
    h = Harness()
    h.send(
        {
            "type": "request",
            "const": {"model": "gpt-4o", "endpoint": CHAT, "streaming": True},
            "cols": {
                "duration_ms": [1000.0, 400.0],
                "ttft_ms": [120.0, 80.0],
                "output_tokens": [50, 0],
                "status": [200, 503],
            },
        },
        now=1.0,
    )
    h.send({"type": "request", "model": "gpt-4o", "endpoint": CHAT, "duration_ms": 30.0}, 1.0)
    v = h.view(2.0)
    assert (v["total_streams"], v["completed_streams"], v["failed_streams"]) == (2, 1, 1)
    assert (v["ttft"]["min"], v["ttft"]["max"], v["ttft"]["count"]) == (80.0, 120.0, 2)
    assert v["e2e_tokens_per_second"]["avg"] == 50.0 and v["e2e_tokens_per_second"]["count"] == 1
    assert v["duration"]["count"] == 2 and v["total_tokens_generated"] == 50
    assert (v["streaming_requests"], v["non_streaming_requests"]) == (2, 1)
    assert v["streaming_percentage"] == pytest.approx(200 / 3)
    assert (v["avg_streaming_latency"], v["avg_non_streaming_latency"]) == (700.0, 30.0)
    s = h.samples(2.0)
    assert sum(v for k, v in s.items() if k[0] == "llm_requests_total") == 3
    assert h.engine.events_derived["request"] == 0
    ttft = key("llm_time_to_first_token_seconds_count", endpoint=CHAT, model="gpt-4o")
    assert s[ttft] == 2


def test_request_mix_counts_finished_lifecycle_streams() -> None:
    h = Harness()
    worked_stream(h)
    v = h.view(2.0)
    assert (v["streaming_requests"], v["avg_streaming_latency"]) == (1, 500.0)
    assert (v["non_streaming_requests"], v["streaming_percentage"]) == (0, 100.0)


def test_exposition_parses_and_compat_summaries() -> None:
    h = Harness()
    worked_stream(h, model='we"ird\\model\n')
    text, om = h.snapshot(2.0)
    families = {f.name: f for f in parse_text(text)}
    om_families = {f.name: f for f in parse_om(om)}
    for name in (
        "llm_time_to_first_token_seconds",
        "llm_inter_token_latency_seconds",
        "llm_time_per_output_token_seconds",
        "llm_stream_output_tokens_per_second",
        "llm_streams",
        "llm_streams_active",
        "llm_stream_stalls",
        "llm_stream_backpressure",
        "streaming_ttft_milliseconds",
        "streaming_tokens_per_second",
        "streaming_total_streams",
        "streaming_failed_streams",
        "streaming_active_streams",
    ):
        assert name in families and name in om_families, name
    summary = families["streaming_ttft_milliseconds"].samples
    ttft = {x.labels.get("quantile"): x.value for x in summary if "quantile" in x.labels}
    assert set(ttft) == {"0.5", "0.9", "0.95", "0.99"} and ttft["0.95"] == 100.0
    s = h.samples(2.0)
    assert s[key("streaming_ttft_milliseconds_sum")] == 100.0
    assert s[key("streaming_ttft_milliseconds_count")] == 1
    assert s[key("streaming_tokens_per_second_count")] == 1
    itl = [
        x for x in families["llm_inter_token_latency_seconds"].samples if x.name.endswith("_count")
    ]
    assert itl[0].labels["model"] == 'we"ird\\model\n' and itl[0].value == 2
    bucket = key("llm_inter_token_latency_seconds_bucket", le="0.05", model='we"ird\\model\n')
    assert s[bucket] == 1  # 50 ms is ≤ 0.05 s: exact buckets
    # The summary's window is 5 minutes: it empties, the lifetime counters stay.
    s = h.samples(400.0)
    assert s[key("streaming_ttft_milliseconds_count")] == 0
    assert key("streaming_ttft_milliseconds", quantile="0.95") not in s
    assert s[key("streaming_total_streams_total")] == 1
    assert h.view(400.0)["ttft_percentiles"] is None


def test_compat_off_and_empty_tracker() -> None:
    h = Harness(load_config(environ={}, overrides={"prometheus": {"compat": False}}))
    s = h.samples(1.0)
    assert not any(k[0].startswith("streaming_") for k in s)
    v = h.view(1.0)
    assert v["ttft_percentiles"] is None and v["ttft"]["count"] == 0
    assert (v["total_streams"], v["success_rate"], v["streaming_percentage"]) == (0, 0.0, 0.0)
    assert h.snap(1.0).parts["streaming"].json_stats(1.0) == {
        "active_streams": 0,
        "completed_streams": 0,
        "failed_streams": 0,
        "ttft": {},
        "tokens_per_second": {},
    }


def test_metrics_json_streaming_stats_in_seconds() -> None:
    h = Harness()
    worked_stream(h)
    h.send(start("open", T0 + 5), now=2.0)
    snap = h.snap(2.0)
    stats = snap.parts["streaming"].json_stats(2.0)
    assert (stats["active_streams"], stats["completed_streams"], stats["failed_streams"]) == (
        1,
        1,
        0,
    )
    assert stats["ttft"]["avg"] == 0.1 and set(stats["ttft"]) == {
        "avg",
        "min",
        "max",
        "p50",
        "p90",
        "p99",
    }
    assert stats["tokens_per_second"]["max"] == pytest.approx(2 / 0.15)
    out = snap.parts["requests"].json(2.0, stats)
    assert out["streaming_stats"] is stats


def test_model_filter_and_live_view() -> None:
    h = Harness()
    worked_stream(h, "a", "gpt-4o")
    h.send(start("b", T0 + 10, "claude-3"), now=3.0)
    h.send(tokens("b", [T0 + 10.25]), now=3.0)
    only = h.view(4.0, "claude-3")
    assert (only["total_streams"], only["active_streams"], only["completed_streams"]) == (1, 1, 0)
    assert only["ttft"]["avg"] == 250.0 and list(only["by_model"]) == ["claude-3"]
    assert h.view(4.0, "nope")["total_streams"] == 0
    streaming = h.snap(4.0).parts["streaming"]
    live = streaming.live(4.0, frozenset({"gpt-4o"}))
    assert live["active_streams"] == 0 and live["completed_streams"] == 1
    assert live["ttft"]["avg"] == 100.0 and "tokens_per_second" in live
    everything = streaming.live(4.0, frozenset())
    assert everything["active_streams"] == 1 and everything["ttft"]["max"] == 250.0
    assert "ttft" not in streaming.live(4.0, frozenset({"nope"}))


def test_streaming_config_section(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[streaming]\nidle_timeout = 30\nstall_ms = 250\n")
    config = load_config(path, environ={})
    assert (config.streaming.idle_timeout, config.streaming.stall_ms) == (30.0, 250.0)
    env = {"METRICSD_STREAMING_STALL_MS": "100"}
    assert load_config(environ=env).streaming.stall_ms == 100.0
    with pytest.raises(ConfigError, match=r"streaming\.idle_timeout"):
        load_config(environ={}, overrides={"streaming": {"idle_timeout": 0}})
    with pytest.raises(ConfigError, match=r"streaming\.nope"):
        load_config(environ={}, overrides={"streaming": {"nope": 1}})
    with pytest.raises(ConfigError, match=r"prometheus\.tps_buckets"):
        load_config(environ={}, overrides={"prometheus": {"tps_buckets": [2, 1]}})


def test_stall_threshold_is_configurable() -> None:
    h = Harness(load_config(environ={}, overrides={"streaming": {"stall_ms": 100.0}}))
    h.send(start("s", T0), now=0.0)
    h.send(tokens("s", [T0 + 0.1, T0 + 0.2, T0 + 0.35]), now=1.0)
    assert h.view(1.0)["stalls"] == 1


def test_model_codes_stay_bounded() -> None:
    h = Harness()
    h.tracker.model_codes_floor = 16
    h.send(start("keep", T0, "kept"), now=0.0)
    for i in range(4):
        ids = [f"s{i}-{j}" for j in range(10)]
        models = [f"m{i}-{j}" for j in range(10)]
        h.send({"type": "stream.start", "cols": {"stream_id": ids, "model": models}}, float(i))
        h.send({"type": "stream.end", "cols": {"stream_id": ids}}, now=float(i))
    h.send(start("last", T0, "final"), now=5.0)
    assert len(h.tracker.table.models) <= 16
    h.send(tokens("last", [T0 + 0.5]), now=6.0)
    h.send(tokens("keep", [T0 + 0.25]), now=6.0)
    assert h.view(6.0, "final")["ttft"]["avg"] == 500.0
    assert h.view(6.0, "kept")["ttft"]["avg"] == 250.0
    assert h.view(6.0)["completed_streams"] == 40


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_checks_the_exposition() -> None:
    h = Harness()
    worked_stream(h)
    h.send(start("open", T0 + 9, "claude-3"), now=3.0)
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=h.snapshot(4.0)[0].encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    # Exit 3 is "lint problems", 1 a parse error. The only lint allowed: the seed documents'
    # name in milliseconds, which their queries use as written (SPEC §3.2).
    assert result.returncode in (0, 3), result.stdout + result.stderr
    problems = (result.stdout + result.stderr).decode().strip().splitlines()
    seed_name = 'streaming_ttft_milliseconds use base unit "seconds" instead of "milliseconds"'
    assert problems in ([], [seed_name])
