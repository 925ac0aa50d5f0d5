"""Custom metrics from ``metric`` events: names as exported, and a valid exposition."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import msgpack
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from metricsd.config import Config
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.trackers.base import Ctx
from metricsd.trackers.custom import CustomTracker, CustomView


def metric(name: str, kind: str, value: float, **labels: str) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "metric", "name": name, "kind": kind, "value": value}
    if labels:
        event["labels"] = labels
    return event


def tracker_with(*events: dict[str, Any]) -> CustomView:
    tracker = CustomTracker(Config())
    tracker.reserved = frozenset({"llm_requests"})
    (batch,) = decode(msgpack.packb(list(events)), 1000.0).batches
    tracker.apply(batch, Ctx(1.0, 1000.0, 1))
    return tracker.freeze(1.0)


def test_a_counter_already_named_total_is_not_suffixed_again() -> None:
    tracker = tracker_with(
        metric("my_custom_total", "counter", 2),
        metric("my_custom", "counter", 3),  # the same counter, as prometheus_client names it
        metric("app_retries", "counter", 4, reason="timeout"),
        metric("queue_total", "gauge", 7),
        metric("queue", "counter", 1),  # would expose queue_total twice
        metric("app_retries_total", "gauge", 1),  # the same clash, the other way round
        metric("llm_requests_total", "counter", 1),  # a built-in family, by its sample name
        metric("llm_requests_total", "gauge", 1),
    )
    text, om = render_both(tracker.families(1.0))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in parse_text(text.decode())
        for s in fam.samples
    }
    assert samples == {
        ("my_custom_total", ()): 5.0,
        ("app_retries_total", (("reason", "timeout"),)): 4.0,
        ("queue_total", ()): 7.0,
        ("metricsd_custom_refused_total", (("reason", "kind_conflict"),)): 2.0,
        ("metricsd_custom_refused_total", (("reason", "reserved_name"),)): 2.0,
        ("metricsd_custom_refused_total", (("reason", "too_many_names"),)): 0.0,
    }
    assert b"_total_total" not in text and b"_total_total" not in om
    kinds = {fam.name: fam.type for fam in parse_openmetrics(om.decode())}
    assert kinds == {
        "my_custom": "counter",
        "app_retries": "counter",
        "queue_total": "gauge",
        "metricsd_custom_refused": "counter",
    }


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_custom_counters() -> None:
    tracker = tracker_with(
        metric("my_custom_total", "counter", 2), metric("app_seconds", "histogram", 0.3)
    )
    text, _ = render_both(tracker.families(1.0))
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
