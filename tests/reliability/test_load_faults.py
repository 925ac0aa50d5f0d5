"""Sustained load at 80 % of the measured ceiling, with SIGHUP reloads, WebSocket churn, a slow
client and SIGTERM at a random moment: after the restart (same ingest endpoint, same
``--state``), events offered = events applied + events the sender counted as dropped, to the
event. See ``load_scenario`` for the steps; ``scripts/load-faults`` runs it for any duration.

- ``test_load_with_faults`` (CI, ~20 s of load, one SIGTERM) and its three-minute version: the
  application's sender stops at the moment of the SIGTERM and a new one starts with the new
  daemon, so every frame handed to ZeroMQ is either read before the daemon closes or queued in
  the sender until it is back.
- ``test_sender_keeps_sending_through_the_restart``: the sender does not stop. Frames in flight
  when the daemon closes its ingest connections are lost without anyone counting them (ZeroMQ
  PUSH/PULL has no acknowledgements); docs/reliability.md has the figures. It is marked as an
  expected failure until the daemon loses nothing in this case.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import load_scenario


def check(outcome: load_scenario.Outcome, restarts: int) -> None:
    print(outcome.summary())
    sent, dropped = outcome.sender["sent"], outcome.sender["dropped"]
    assert outcome.sender["reported"]
    assert outcome.exit_codes == [0] * restarts  # SIGTERM: drained, saved, exit 0
    assert outcome.invalid == 0
    assert outcome.achieved >= 0.9 * outcome.rate  # the load really was ~80 % of the ceiling
    assert outcome.reloads >= 3
    assert outcome.slo_target == outcome.slo_target_written  # the last SIGHUP took effect
    assert outcome.ws_joined >= 3
    assert outcome.slow_closed >= 1
    # Every event the sender handed to ZeroMQ was applied (none twice); every one it dropped,
    # it counted and reported. Nothing is lost silently.
    assert outcome.reported_dropped == dropped
    assert outcome.applied == sent, f"{sent - outcome.applied:,.0f} events lost"
    assert outcome.applied + outcome.reported_dropped == outcome.sender["offered"]


def seed() -> int | None:
    value = os.environ.get("METRICSD_LOAD_SEED")
    return int(value) if value else None


def test_load_with_faults(daemon_factory: Any, tmp_path: Path) -> None:
    outcome = load_scenario.run(daemon_factory, tmp_path, duration=20.0, restarts=1, seed=seed())
    check(outcome, 1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_load_with_faults_for_minutes(daemon_factory: Any, tmp_path: Path) -> None:
    outcome = load_scenario.run(daemon_factory, tmp_path, duration=180.0, restarts=3, seed=seed())
    check(outcome, 3)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xfail(
    strict=False,  # it can pass by luck (a SIGTERM landing in a lull); it should pass for good
    reason="frames in the kernel's TCP buffers when the daemon unbinds its ingest endpoints at "
    "SIGTERM are lost uncounted: 0 to 1 500 events a run (docs/reliability.md, 'Load and faults')",
)
def test_sender_keeps_sending_through_the_restart(daemon_factory: Any, tmp_path: Path) -> None:
    outcome = load_scenario.run(
        daemon_factory, tmp_path, duration=20.0, restarts=1, seed=seed(), sender_through_stop=True
    )
    check(outcome, 1)
