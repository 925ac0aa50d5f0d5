"""``--workers N``: decode in worker processes, apply in order, exactly what one process gives."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from metricsd.decode import Decoder
from metricsd.engine import Engine
from metricsd.workers import WorkerPool
from tests.conftest import start_daemon
from tests.unit.test_differential import NOW, WALL, _engine, frames, traffic, views


def _through_pool(engine: Engine, packed: list[bytes], workers: int) -> WorkerPool:
    """Send ``packed`` through a real pool of ``workers`` processes into ``engine``."""
    pool = WorkerPool(workers, engine.limits, engine, lambda: NOW, wall=lambda: WALL)
    ctx: zmq.Context[Any] = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        pool.start()
        for frame in packed:
            push.send(frame)
        deadline = time.monotonic() + 60.0
        while engine.frames_received < len(packed) or not pool.idle:  # idle: deltas added up
            assert time.monotonic() < deadline, "the pool did not apply every frame in 60 s"
            pool.check()
            pool.collect(0.02)
            pool.forward(pull, 0.02)
            pull.poll(5)
        assert pool.lost_frames == 0 and pool.restarts == 0 and pool.bad_results == 0
        assert pool.deltas > 0
    finally:
        pool.stop()
        push.close()
        pull.close()
        ctx.term()
    return pool


@pytest.mark.parametrize("seed", [11, 12])
def test_three_workers_give_exactly_the_snapshot_of_one_process(seed: int) -> None:
    # Decoded at WALL (the traffic's time): the workers decode at the real time, so their
    # clock-skew check must accept the traffic's timestamps.
    events = traffic(seed)  # as the differential test: the rings of recent rows hold them all
    shift = time.time() - WALL
    for event in events:
        if isinstance(event.get("ts"), float):
            event["ts"] += shift
    packed = frames(events, random.Random(seed))
    one = _engine()
    for frame in packed:  # one process, one frame per wake-up
        decoder = Decoder(time.time(), one.limits)
        decoder.add(frame)
        one.apply(decoder.finish(), NOW, WALL)
    three = _engine()
    _through_pool(three, packed, 3)
    assert one.events_received == three.events_received
    assert one.events_invalid == three.events_invalid == {}
    a, b = views(one, NOW + 5.0, WALL + 5.0), views(three, NOW + 5.0, WALL + 5.0)
    for name in a:
        assert a[name] == b[name], name
    # The persisted state of both, restored into fresh engines, reads the same again.
    restored = []
    for engine in (one, three):
        fresh = _engine()
        fresh.restore(engine.state(NOW + 5.0), NOW + 5.0)
        restored.append(views(fresh, NOW + 6.0, WALL + 6.0))
    assert restored[0] == restored[1]


def _counters(d: Any) -> dict[Any, float]:
    """Every sample that does not depend on when it is read or how frames were cut (error
    bursts are counted by arrival time, which differs between two daemons)."""
    skip = (
        "process_",
        "metricsd_tick",
        "metricsd_frames",
        "metricsd_worker",
        "metricsd_ws_",
        "llm_error_bursts",
    )
    return {
        k: v
        for k, v in d.samples().items()
        if k[0].endswith(("_total", "_count", "_sum", "_bucket")) and not k[0].startswith(skip)
    }


def _mixed_frames(seed: int, n: int) -> list[bytes]:
    events = traffic(seed, n)
    shift = time.time() - WALL
    for event in events:
        if isinstance(event.get("ts"), float):
            event["ts"] += shift
    return frames(events, random.Random(seed))


def _requests(seed: int, n: int) -> int:
    """Request outcomes the traffic holds: requests, errors and the streams it ends."""
    return sum(1 for e in traffic(seed, n) if e["type"] in ("request", "error", "stream.end"))


def test_a_daemon_with_workers_counts_like_one_and_restores_with_another_count(
    tmp_path: Path,
) -> None:
    packed = _mixed_frames(21, 1500)
    state = tmp_path / "state.bin"
    many = start_daemon(tmp_path, "--workers", "3", "--state", str(state))
    (tmp_path / "single").mkdir()
    (tmp_path / "again").mkdir()
    single = start_daemon(tmp_path / "single", "--workers", "1")
    try:
        for frame in packed:
            many.send_raw(frame)
            single.send_raw(frame)
        expected = float(len(packed))
        many.wait_for("metricsd_frames_received_total", expected, timeout=30)
        single.wait_for("metricsd_frames_received_total", expected, timeout=30)
        assert many.value("metricsd_workers") == 3.0
        # The workers' last deltas come within engine.merge_interval (0.25 s) of the frames.
        want = _counters(single)
        deadline = time.monotonic() + 10
        while (before := _counters(many)) != want and time.monotonic() < deadline:
            time.sleep(0.05)
        assert before == want
        assert many.value("metricsd_worker_merges_total") >= 1  # the counts came as deltas
        assert many.value("metricsd_worker_lost_frames_total") == 0
        requests = sum(v for (name, _l), v in before.items() if name == "llm_requests_total")
        assert requests == _requests(21, 1500)
    finally:
        single.stop()
        assert many.stop() == 0
    # The state saved by three workers, restored by one process.
    again = start_daemon(tmp_path / "again", "--workers", "1", "--state", str(state))
    try:
        assert _counters(again) == before
    finally:
        again.stop()


def test_a_worker_that_dies_is_restarted_and_ingest_goes_on(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--workers", "2")
    try:
        d.send({"type": "request", "model": "m", "duration_ms": 5.0})
        d.wait_for("llm_requests_total", 1.0, timeout=10, status="200")
        children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
        workers = [int(p) for p in children]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        d.wait_for("metricsd_worker_restarts_total", 1.0, timeout=10)
        for _ in range(20):
            d.send({"type": "request", "model": "m", "duration_ms": 5.0})
        d.wait_for("llm_requests_total", 21.0, timeout=10, status="200")
        assert d.value("metricsd_worker_lost_frames_total") == 0.0  # it held nothing
        status, _, body = d.request("/healthz")
        assert status == 200, body
    finally:
        assert d.stop() == 0


def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--workers", "2")
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    frame = msgpack.packb(
        {"type": "request", "const": {"model": "m"}, "cols": {"duration_ms": [5.0] * 500}}
    )
    for _ in range(200):
        d.send_raw(frame)
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 10.0
    log = d.log_path.read_text()
    assert "discarded" not in log  # everything queued was applied
    for pid in children:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )


def _frame(model: str, rows: int) -> bytes:
    return msgpack.packb(
        {
            "type": "request",
            "const": {"model": model},
            "cols": {"duration_ms": [5.0] * rows, "input_tokens": [1000] * rows},
        }
    )


def test_a_worker_killed_before_its_delta_loses_that_and_counts_it(tmp_path: Path) -> None:
    # A merge interval longer than the test: what the workers add up stays with them.
    d = start_daemon(tmp_path, "--workers", "2", env={"METRICSD_ENGINE_MERGE_INTERVAL": "60"})
    try:
        for _ in range(6):
            d.send_raw(_frame("m", 100))
        # Received and applied in order by the serving process …
        assert d.wait_for("metricsd_events_received_total", 600, type="request") == 600
        # … but not yet added up: the workers hold that part.
        assert d.value("llm_requests_total", endpoint="unknown", model="m", provider="unknown",
                       status="200") == 0  # fmt: skip
        assert d.value("metricsd_worker_merges_total") == 0
        children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        d.wait_for("metricsd_worker_restarts_total", 2.0, timeout=10)
        # Every frame is either added up or counted lost: here, all six.
        assert d.wait_for("metricsd_worker_lost_frames_total", 6.0, timeout=10) == 6.0
        assert d.value("metricsd_events_received_total", type="request") == 600
    finally:
        assert d.stop() == 0


def test_sighup_reprices_in_the_workers(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    prices = '[cost.prices.models."my-model"]\ninput = {}\noutput = 0.0\n'
    config.write_text(prices.format(1.0))
    d = start_daemon(tmp_path, "--workers", "2", "--config", str(config))
    labels = {"endpoint": "unknown", "key_id": "unknown", "model": "my-model"}
    try:
        d.send_raw(_frame("my-model", 10))  # 10 × 1 000 input tokens at $1 per million
        assert d.wait_for("llm_cost_usd_total", 0.01, **labels) == pytest.approx(0.01)
        config.write_text(prices.format(3.0))
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reloaded pricing" not in d.log_path.read_text():
            assert time.monotonic() < deadline, "no reload in 5 s"
            time.sleep(0.05)
        d.send_raw(_frame("my-model", 10))  # priced by the workers at $3 per million
        assert d.wait_for("llm_cost_usd_total", 0.04, **labels) == pytest.approx(0.04)
    finally:
        assert d.stop() == 0


def test_workers_exit_when_the_serving_process_is_killed(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, "--workers", "2", env={"METRICSD_ENGINE_MERGE_INTERVAL": "60"})
    for _ in range(4):
        d.send_raw(_frame("m", 100))
    d.wait_for("metricsd_events_received_total", 400, type="request")
    children = Path(f"/proc/{d.proc.pid}/task/{d.proc.pid}/children").read_text().split()
    assert len(children) == 2
    d.proc.kill()  # no drain, no stop message: the workers hold deltas nobody will take
    d.proc.wait(5)
    deadline = time.monotonic() + 10
    alive = list(children)
    while alive and time.monotonic() < deadline:
        alive = [
            p
            for p in alive
            if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()
        ]
        time.sleep(0.1)
    assert alive == [], "workers outlived the serving process by 10 s"
