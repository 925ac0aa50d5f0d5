"""The demo traffic: valid events of every kind, and an error rate the default SLO absorbs (no
page or ticket alert in steady state), or, with the incident, a page within a minute."""

from __future__ import annotations

from collections import Counter

from metricsd.config import Config, load_config
from metricsd.demo import BAD_EVERY, BUDGET_KEY, PERIOD, DemoTraffic, frames, with_demo_budget
from metricsd.engine import Engine
from metricsd.protocol import decode, hash_key
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.window import Geometry

WALL0 = 1_800_000_000.0


class Simulation:
    """The demo's frames decoded and applied to the streaming and SLO trackers, on a simulated
    clock (stream outcomes reach the SLO tracker as in the daemon)."""

    def __init__(self, rate: float, incident: bool = False) -> None:
        config = Config()
        geometry = Geometry(slot_seconds=config.engine.slot_seconds)
        self.streaming = StreamingTracker(config, geometry, 0.0)
        self.slo = SloTracker(config, geometry, 0.0, wall_offset=WALL0)
        self.engine = Engine(config, [self.streaming, self.slo])
        self.traffic = DemoTraffic(rate, incident=incident)
        self.now = 0.0
        self.types: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.alerts: list[tuple[float, str]] = []  # (when, level) of alerts that started

    def run(self, seconds: float, step: float = PERIOD) -> None:
        """``seconds`` of traffic, a beat every ``step`` seconds (the daemon's arrival time has
        that resolution; the events' own timestamps are exact)."""
        beats = round(seconds / step)
        for i in range(beats):
            self.now += step
            wall = WALL0 + self.now
            for frame in frames(self.traffic.beat(wall)):
                result = decode(frame, wall, self.engine.limits)
                self.rejected.update(result.rejected)
                for batch in result.batches:
                    self.types[batch.type] += batch.n
                self.engine.apply(result, self.now, wall)
            if i % max(1, round(1 / step)) == 0:
                # A tick: expiry and alert evaluation, the alerts raised since the last one.
                snap = self.engine.snapshot(self.now, wall)
                self.alerts += [(self.now, a["level"]) for a in snap.alerts if "level" in a]

    def active(self) -> tuple[bool, bool]:
        (slo,) = self.slo.slos
        return slo.page, slo.ticket


def test_every_event_is_valid_and_every_kind_is_sent() -> None:
    sim = Simulation(rate=50)
    sim.run(10)
    assert sim.rejected == Counter()
    assert set(sim.types) == {
        "request",
        "error",
        "stream.start",
        "stream.token",
        "stream.end",
        "stream.backpressure",
        "cache",
        "queue",
        "usage",
        "metric",
    }
    # 50 requests a second: the outcomes of 10 s (streams still open are not outcomes yet).
    assert sim.traffic.outcomes == 500 and sim.traffic.bad == 0


def test_steady_state_stays_inside_the_slo() -> None:
    """An hour at 5 requests/s: four bad outcomes (one in 4 000), no alert, burn rates < 1."""
    sim = Simulation(rate=5)
    sim.run(3600, step=5.0)
    # 5 requests a second for an hour, less the first step (which covers one PERIOD only).
    assert sim.traffic.outcomes == round(5 * (3600 - 5 + PERIOD)) == 17_976
    assert sim.traffic.bad == 17_976 // BAD_EVERY == 4
    assert sim.alerts == [] and sim.active() == (False, False)
    (slo,) = sim.slo.slos
    rates = slo.evaluate(sim.now).burn_rates
    assert all(rate < 1 for rate in rates.values()), rates


def test_the_incident_pages_within_a_minute_and_recovers() -> None:
    sim = Simulation(rate=20, incident=True)
    sim.run(30)
    pages = [when for when, level in sim.alerts if level == "page"]
    assert pages and pages[0] <= 20.0  # the incident starts 10 s in
    assert sim.active() == (True, True)
    sim.run(570, step=1.0)
    # 5 % of 30 s of traffic: the page ends when that is under 0.6 % of the time since the start
    # (about 4 minutes in); the ticket stays (burn rate over 1 for 6 hours and 3 days).
    assert sim.active() == (False, True)
    assert [level for _, level in sim.alerts] == ["ticket", "page"]
    assert 10 <= sim.traffic.bad <= 60


def test_the_demo_budget_is_added_once() -> None:
    config = with_demo_budget(load_config(environ={}, overrides={"demo": {"enabled": True}}))
    (budget,) = config.cost.budgets
    assert budget.key == hash_key(BUDGET_KEY) and budget.period == "daily"
    assert budget.limit_usd == 360.0 * 50
    assert with_demo_budget(config) == config
    assert with_demo_budget(Config()).cost.budgets == ()  # no demo, no budget
