"""Label sets that grow with what emitters send, bounded by the caps (issue 17, rows 6-8;
SPEC §8): the probes of the issue at full size, against one daemon with a small
``limits.max_series``, each checked on the ``/metrics`` text it produces.

- Row 6: 200 000 distinct ``source`` values on ``client`` events.
- Row 7: 400 000 distinct custom metric names.
- Row 8: 200 models × 500 status codes.

Every event stays counted (the totals are exact); only the number of lines is bounded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from metricsd.engine import MAX_SOURCES
from metricsd.outcomes import status_label
from tests.conftest import Daemon, start_daemon
from tests.reliability.reliability_support import (
    at_least,
    exposition,
    log_failures,
    mib,
    rss,
    wait_until,
    write_config,
)

MAX_SERIES = 100
#: The request tracker keeps at most this many (series, status) pairs (8 per series).
MAX_STATUS_LINES = 8 * MAX_SERIES
BATCH = 1000
MiB = 1 << 20


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("labels")
    config = write_config(tmp, f"[limits]\nmax_series = {MAX_SERIES}\n")
    d = start_daemon(tmp, "--config", str(config))
    try:
        yield d
        assert log_failures(d) == []
    finally:
        d.stop()


def received(d: Daemon, event_type: str) -> float:
    return d.value("metricsd_events_received_total", type=event_type)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_distinct_sources_are_bounded(capped: Daemon) -> None:
    """Row 6: 200 000 sources → MAX_SOURCES lines and one ``__overflow__`` line; every
    dropped event is still counted."""
    d = capped
    sources = 200_000
    for start in range(0, sources, BATCH):
        d.send(
            {
                "type": "client",
                "cols": {
                    "source": [f"worker-{i}" for i in range(start, start + BATCH)],
                    "dropped": [1] * BATCH,
                },
            }
        )
    assert wait_until(lambda: received(d, "client"), at_least(sources), 60.0) == sources
    text = exposition(d)
    samples = families(text)["metricsd_client_dropped_events"].samples
    by_source = {s.labels["source"]: s.value for s in samples}
    print(f"{sources} sources: {len(samples)} lines of metricsd_client_dropped_events_total")
    assert len(samples) == MAX_SOURCES + 1
    assert by_source["__overflow__"] == sources - MAX_SOURCES
    assert sum(by_source.values()) == sources
    assert all(by_source[f"worker-{i}"] == 1 for i in range(MAX_SOURCES))


def test_distinct_custom_metric_names_are_bounded(capped: Daemon) -> None:
    """Row 7: 400 000 names → MAX_SERIES families, the rest refused and counted; the name
    table does not grow with the names refused (resident memory flat over the second half)."""
    d = capped
    names, half = 400_000, 200_000
    rss_at: list[int] = []
    step = 25 * BATCH  # applied before more is sent: what one wake-up decodes stays small
    for first in (0, half):
        for chunk in range(first, first + half, step):
            for start in range(chunk, chunk + step, BATCH):
                names_ = [f"flood_metric_{i}" for i in range(start, start + BATCH)]
                d.send(
                    {
                        "type": "metric",
                        "const": {"kind": "counter", "value": 1.0},
                        "cols": {"name": names_},
                    }
                )
            sent = chunk + step
            got = wait_until(lambda: received(d, "metric"), at_least(sent), 60.0, step=0.02)
            assert got == sent
        rss_at.append(rss(d))
    text = exposition(d)
    found = [name for name in families(text) if name.startswith("flood_metric_")]
    refused = d.value("metricsd_custom_refused_total", reason="too_many_names")
    second_half = rss_at[1] - rss_at[0]
    print(
        f"{names} custom names: {len(found)} families, {refused:.0f} refused; resident memory "
        f"{mib(rss_at[0])} after {half}, {mib(rss_at[1])} after {names}"
    )
    assert sorted(found) == sorted(f"flood_metric_{i}" for i in range(MAX_SERIES))
    assert refused == names - MAX_SERIES
    # Far past the cap, another 200 000 names cost nothing that stays (the issue: 121 MB).
    assert second_half < 8 * MiB, mib(second_half)


def test_statuses_times_models_are_bounded(capped: Daemon) -> None:
    """Row 8: 200 models × 500 status codes (100 000 outcomes) → ``llm_requests_total``
    lines bounded by the caps: rare codes folded into their class, at most 8 statuses per
    series on average; every outcome counted once."""
    d = capped
    models, statuses = 200, range(100, 600)
    for m in range(models):
        d.send(
            {
                "type": "request",
                "const": {"model": f"status-model-{m:03d}", "endpoint": "/v1/chat"},
                "cols": {"status": list(statuses), "duration_ms": [1.0] * len(statuses)},
            }
        )
    total = models * len(statuses)
    assert wait_until(lambda: received(d, "request"), at_least(total), 60.0) == total
    text = exposition(d)
    parsed = families(text)
    samples = parsed["llm_requests"].samples
    print(
        f"{models} models x {len(statuses)} statuses: {len(samples)} llm_requests_total lines, "
        f"{len(text.splitlines())} lines in /metrics"
    )
    assert len(samples) <= MAX_STATUS_LINES + 1
    assert sum(s.value for s in samples) == total
    allowed = {status_label(s) for s in statuses} | {"__overflow__"}
    assert {s.labels["status"] for s in samples} <= allowed
    assert len({status_label(s) for s in statuses}) < 100  # folded: far fewer than 500
    # A model inside the caps: exactly one line per folded status, with the folded counts.
    first = Counter(status_label(s) for s in statuses)
    got = {s.labels["status"]: s.value for s in samples if s.labels["model"] == "status-model-000"}
    assert got == dict(first)
    errors = parsed["llm_errors"].samples
    assert len(errors) <= MAX_STATUS_LINES + 1
    assert len(text.splitlines()) < 20_000  # the issue saw 100 000 lines of one family
