"""Cardinality flood (SPEC §3.3): every table stays at its cap, every overflow is counted
exactly, resident memory stops growing once the caps are reached. See ``flood_scenario``.

The CI version sends 25 000 distinct values (5 000 per dimension: five times each cap); the slow
one 1 000 000 (200 000 each of models, endpoints, API keys, error messages and stream ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.reliability.flood_scenario import (
    CONFIG,
    PEAK_RSS_LIMIT,
    RSS_GROWTH_LIMIT,
    check_caps,
    flood,
    report,
)
from tests.reliability.reliability_support import assert_healthy, log_failures, write_config


def test_cardinality_flood(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory("--config", str(write_config(tmp_path, CONFIG)))
    f = flood(d, per_dimension=5000, batch=1000)
    figures = check_caps(d, 5000, 1000)
    report(f, figures)
    assert f.rss_after_all - f.rss_after_caps < RSS_GROWTH_LIMIT
    assert f.peak_rss < PEAK_RSS_LIMIT
    assert_healthy(d)
    assert log_failures(d) == []


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_cardinality_flood_million(daemon_factory: Any, tmp_path: Path) -> None:
    d: Daemon = daemon_factory("--config", str(write_config(tmp_path, CONFIG)))
    f = flood(d, per_dimension=200_000, batch=2000)
    figures = check_caps(d, 200_000, 2000)
    report(f, figures)
    assert f.sent == 1_000_000
    assert f.rss_after_all - f.rss_after_caps < RSS_GROWTH_LIMIT
    assert f.peak_rss < PEAK_RSS_LIMIT
    assert_healthy(d)
    assert log_failures(d) == []
