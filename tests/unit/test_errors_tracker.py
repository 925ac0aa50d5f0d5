"""The error tracker through the engine, with a synthetic clock and exact expected values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config, load_config
from metricsd.engine import Engine
from metricsd.export.prometheus import render_both
from metricsd.protocol import Batch, decode
from metricsd.trackers.base import Ctx
from metricsd.trackers.errors import DEFAULT_MIN_COUNT, ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.slo import SloTracker
from metricsd.window import Geometry

WALL = 1_700_000_000.0
CHAT = "/v1/chat/completions"


class Harness:
    def __init__(self, config: Config | None = None) -> None:
        self.config = config or load_config(environ={})
        self.errors = ErrorTracker(self.config, Geometry(), start=0.0)
        self.requests = RequestTracker(self.config, Geometry(), start=0.0)
        self.slo = SloTracker(self.config, Geometry(), start=0.0)
        self.engine = Engine(self.config, [self.requests, self.errors, self.slo])

    def send(self, frame: Any, now: float) -> None:
        self.engine.apply(
            decode(msgpack.packb(frame), WALL + now, self.engine.limits), now, WALL + now
        )

    def view(self, now: float) -> dict[str, Any]:
        return self.engine.snapshot(now, WALL + now).view("errors")

    def patterns(
        self,
        now: float,
        min_count: int = DEFAULT_MIN_COUNT,
        recent_only: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        snap = self.engine.snapshot(now, WALL + now)
        return snap.view("error_patterns", min_count, recent_only, limit)

    def text(self, now: float) -> str:
        return render_both(self.engine.snapshot(now, WALL + now).families())[0].decode()


def requests(n: int, endpoint: str = CHAT, model: str = "gpt-4o", **cols: Any) -> dict[str, Any]:
    return {
        "type": "request",
        "const": {"endpoint": endpoint, "model": model},
        "cols": {"duration_ms": [10.0] * n, **cols},
    }


def error(message: str, **fields: Any) -> dict[str, Any]:
    return {"type": "error", "error_type": "internal_error", "endpoint": CHAT, **fields} | {
        "error_message": message
    }


def plain_types(value: Any) -> bool:
    """Only JSON-native Python types, recursively (no numpy scalars)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain_types(v) for v in value)
    return value is None or type(value) in (bool, int, float, str)


def test_each_outcome_counts_once() -> None:
    h = Harness()
    h.send(
        requests(4, status=[200, 404, 503, 200], error_type=[None, None, None, "timeout"]),
        now=1.0,
    )
    h.send(error("db down"), now=1.0)
    v = h.view(2.0)
    assert (v["total_requests"], v["total_errors"], v["total_successes"]) == (5, 4, 1)
    assert v["error_rate"] == 0.8
    assert v["success_rate"] == 0.2
    assert v["windowed"] == {
        "requests": 5,
        "errors": 4,
        "error_rate": 0.8,
        "window_seconds": 300.0,
    }
    assert v["by_status_code"] == {"200": 1, "404": 1, "500": 1, "503": 1}
    assert v["by_error_type"] == {"http_error": 2, "internal_error": 1, "timeout": 1}
    assert v["by_endpoint"] == {CHAT: 4}
    assert v["by_model"] == {"gpt-4o": 3, "unknown": 1}


def test_zero_requests_give_zero_rates() -> None:
    v = Harness().view(10.0)
    assert v["error_rate"] == 0.0
    assert v["windowed"]["error_rate"] == 0.0
    assert v["total_requests"] == 0 and v["pattern_count"] == 0
    assert v["top_patterns"] == [] and v["bursts"] == []


def test_error_rate_never_exceeds_one() -> None:
    h = Harness()
    for i in range(15):
        h.send(error(f"failure {i}"), now=float(i * 2))  # 2 s apart: no burst either
    v = h.view(40.0)
    assert v["error_rate"] == 1.0 and v["windowed"]["error_rate"] == 1.0
    assert v["bursts"] == []


def test_windowed_rate_forgets_old_outcomes() -> None:
    h = Harness()
    h.send(requests(10, status=[500] * 10), now=0.0)
    h.send(requests(10), now=400.0)
    v = h.view(401.0)
    assert v["windowed"] == {
        "requests": 10,
        "errors": 0,
        "error_rate": 0.0,
        "window_seconds": 300.0,
    }
    assert v["error_rate"] == 0.5  # lifetime


def test_five_messages_differing_in_numbers_and_uuids_make_one_pattern() -> None:
    h = Harness()
    uuids = [
        "550e8400-e29b-41d4-a716-446655440000",
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6BA7B811-9DAD-11D1-80B4-00C04FD430C8",
        "123e4567-e89b-12d3-a456-426614174000",
        "00000000-0000-0000-0000-000000000000",
    ]
    for i, uuid in enumerate(uuids):
        h.send(
            error(
                f"session {uuid} expired after {30 + i}s",
                model="gpt-4o" if i % 2 else "claude-3",
                user_id=f"user-{i % 3}",
                request_id=f"r{i}",
            ),
            now=1.0 + i,
        )
    v = h.view(10.0)
    assert v["pattern_count"] == 1
    (p,) = v["top_patterns"]
    assert p["count"] == 5
    assert p["normalized_message"] == "session <UUID> expired after <NUM>s"
    assert p["sample_message"] == f"session {uuids[0]} expired after 30s"
    assert p["affected_models"] == ["claude-3", "gpt-4o"]
    assert p["affected_users_count"] == 3
    assert p["example_request_ids"] == ["r0", "r1", "r2", "r3", "r4"]
    assert (p["first_seen"], p["last_seen"]) == (WALL + 1.0, WALL + 5.0)
    assert (p["error_type"], p["endpoint"], p["status"]) == ("internal_error", CHAT, 500)


def test_example_request_ids_keep_the_latest_five() -> None:
    h = Harness()
    h.send(
        {
            "type": "error",
            "const": {"error_type": "x", "error_message": "same"},
            "cols": {"request_id": [f"r{i}" for i in range(8)]},
        },
        now=1.0,
    )
    (p,) = h.patterns(2.0)
    assert p["count"] == 8
    assert p["example_request_ids"] == ["r3", "r4", "r5", "r6", "r7"]


def test_same_message_on_two_endpoints_is_two_patterns() -> None:
    h = Harness()
    h.send([error("boom", endpoint="/a"), error("boom", endpoint="/b")], now=1.0)
    assert len(h.errors.patterns) == 2


def test_patterns_filter_sort_and_limit() -> None:
    h = Harness()
    h.send([error("often")] * 5 + [error("sometimes")] * 3 + [error("rare")] * 2, now=1.0)
    h.send([error("late")] * 4, now=500.0)
    counts = [(p["normalized_message"], p["count"]) for p in h.patterns(501.0)]
    assert counts == [("often", 5), ("late", 4), ("sometimes", 3)]  # min_count 3 by default
    assert len(h.patterns(501.0, min_count=1)) == 4
    recent = h.patterns(501.0, min_count=1, recent_only=True)
    assert [p["normalized_message"] for p in recent] == ["late"]
    assert len(h.patterns(501.0, min_count=0, limit=2)) == 2


def test_pattern_table_evicts_the_least_recently_seen(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[limits]\nmax_patterns = 3\n")
    h = Harness(load_config(path, environ={}))
    h.send(error("first"), now=1.0)
    h.send(error("second"), now=2.0)
    h.send(error("third"), now=3.0)
    h.send(error("first"), now=4.0)  # seen again: now the most recent
    h.send(error("fourth"), now=5.0)  # evicts "second"
    held = sorted(p.normalised for p in h.errors.patterns)
    assert held == ["first", "fourth", "third"]
    assert h.errors.patterns.evicted == 1
    assert "metricsd_error_patterns_evicted_total 1" in h.text(6.0)
    assert h.view(6.0)["patterns_evicted"] == 1


def test_fifteen_quick_errors_make_one_burst() -> None:
    h = Harness()
    for i in range(15):
        h.send(error(f"e{i}"), now=10.0 + i * 0.01)
    bursts = h.view(11.0)["bursts"]
    assert bursts == [
        {
            "timestamp": WALL + 10.09,
            "error_count": 15,
            "threshold": 10,
            "duration_seconds": 1.0,
        }
    ]


def test_one_batch_of_fifteen_errors_is_one_burst() -> None:
    h = Harness()
    h.send(requests(15, status=[500] * 15), now=3.0)
    assert [b["error_count"] for b in h.view(4.0)["bursts"]] == [15]


def test_spread_out_errors_make_no_burst() -> None:
    h = Harness()
    for i in range(5):
        h.send(error("slow"), now=10.0 + i * 0.3)
    assert h.view(12.0)["bursts"] == []


def test_a_sustained_storm_makes_one_burst_per_second() -> None:
    h = Harness()
    for i in range(60):  # 20 errors per second for 3 seconds
        h.send(error("storm"), now=100.0 + i * 0.05)
    bursts = h.view(104.0)["bursts"]
    assert len(bursts) == 3
    assert all(b["error_count"] >= 10 for b in bursts)
    assert "llm_error_bursts_total 3" in h.text(104.0)


def test_recent_errors_show_key_ids_never_raw_keys() -> None:
    h = Harness()
    h.send(error("denied", status=403, api_key="sk-very-secret", request_id="r-1"), now=1.0)
    v = h.view(2.0)
    (recent,) = v["recent_errors"]
    assert recent["key_id"].startswith("k_") and len(recent["key_id"]) == 14
    assert recent["status"] == 403 and recent["request_id"] == "r-1"
    assert "sk-very-secret" not in json.dumps(v)


def test_json_views_hold_plain_python_types_only() -> None:
    h = Harness()
    h.send(requests(50, status=[200] * 45 + [500] * 5, error_message=["x 1"] * 50), now=1.0)
    h.send(error("boom 42", user_id="u"), now=1.5)
    v = h.view(2.0)
    assert plain_types(v)
    assert plain_types(h.patterns(2.0, min_count=0))
    json.dumps(v, allow_nan=False)


def test_derived_request_batches_count_like_requests() -> None:
    h = Harness()
    derived = Batch.derived(
        "request",
        3,
        endpoint=CHAT,
        model="gpt-4o",
        duration_ms=np.array([5.0, 6.0, 7.0]),
        status=np.array([200, 500, 200]),
        error_type=[None, "stream_failed", None],
        error_message=[None, "stream 7 failed", None],
    )
    h.errors.apply(derived, Ctx(1.0, WALL + 1.0, 1))
    v = h.view(2.0)
    assert (v["total_requests"], v["total_errors"]) == (3, 1)
    assert v["top_patterns"][0]["normalized_message"] == "stream <NUM> failed"


def test_prometheus_families_parse_and_llm_errors_is_exported_once() -> None:
    h = Harness()
    h.send(requests(9), now=1.0)
    h.send(error("boom"), now=1.0)
    text_bytes, om_bytes = render_both(h.engine.snapshot(2.0, WALL + 2.0).families())
    text = text_bytes.decode()
    families = {f.name: f for f in parse_text(text)}
    assert text.count("# TYPE llm_errors_total ") == 1
    assert families["llm_error_patterns"].samples[0].value == 1
    assert families["error_total_errors"].samples[0].value == 1
    assert families["error_total_requests"].samples[0].value == 10
    assert {f.name for f in parse_om(om_bytes.decode())} >= {"llm_error_patterns"}


def test_compat_names_follow_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[prometheus]\ncompat = false\n")
    h = Harness(load_config(path, environ={}))
    h.send(error("boom"), now=1.0)
    text = h.text(2.0)
    assert "error_total_errors" not in text and "error_burn_rate" not in text
    assert "llm_error_patterns 1" in text
