"""State save and restore: exact round trips, unusable files moved aside, no code execution."""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from metricsd import persist
from metricsd.config import Config, load_config
from metricsd.engine import Engine
from metricsd.protocol import decode
from metricsd.trackers.cost import CostTracker
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.requests_export import json_view, recent_view, summary_view
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.window import Geometry

WALL = 1_800_000_000.0
#: Families whose value is about this process, not the data.
PROCESS = re.compile(r"(process_|metricsd_tick_duration|metricsd_ws_)")


class Stack:
    """The daemon's trackers without sockets."""

    def __init__(self, config: Config, now: float = 0.0) -> None:
        self.config = config
        self.geometry = Geometry(slot_seconds=config.engine.slot_seconds)
        self.requests = RequestTracker(config, self.geometry, now)
        self.streaming = StreamingTracker(config, self.geometry, now)
        self.errors = ErrorTracker(config, self.geometry, now)
        self.slo = SloTracker(config, self.geometry, now, wall_offset=WALL)
        self.cost = CostTracker(config, now, WALL + now)
        self.engine = Engine(
            config, [self.requests, self.streaming, self.errors, self.slo, self.cost]
        )

    def send(self, frame: Any, now: float) -> None:
        self.engine.apply(
            decode(msgpack.packb(frame), WALL + now, self.engine.limits), now, WALL + now
        )

    def states(self) -> dict[str, dict[str, Any]]:
        out = {t.name: t.state() for t in self.engine.trackers}
        out["engine"] = self.engine.state()
        return out

    def restore(self, loaded: persist.Loaded) -> None:
        targets = {t.name: t for t in self.engine.trackers} | {"engine": self.engine}
        for name, state in loaded.trackers.items():
            targets[name].restore(state)  # type: ignore[attr-defined]

    def exposition(self, now: float) -> str:
        text = self.engine.snapshot(now, WALL + now).text.decode()
        return "\n".join(line for line in text.splitlines() if not PROCESS.search(line))

    def views(self, now: float) -> dict[str, Any]:
        return {
            "json": json_view(
                self.requests,
                now,
                self.streaming.stats(now) if hasattr(self.streaming, "stats") else None,
            ),
            "summary": summary_view(self.requests, now, 300),
            "recent": recent_view(self.requests, 50),
            "slo": self.slo.live(now, frozenset()),
            "cost": self.cost.live(now, frozenset()),
            "budget": self.cost.budget_status("k_budgetkey01", WALL + now),
        }


def traffic(s: Stack) -> None:
    for t in range(0, 120, 3):
        s.send(
            {
                "type": "request",
                "const": {
                    "model": "gpt-4o",
                    "endpoint": "/v1/chat/completions",
                    "api_key": "sk-test",
                },
                "cols": {
                    "duration_ms": [100.0 + t, 250.0, 900.0],
                    "status": [200, 500, 200],
                    "input_tokens": [100, 200, 300],
                    "output_tokens": [50, 60, 70],
                    "error_message": ["", "upstream 503 for req-abc123", ""],
                },
            },
            now=float(t),
        )
    s.send(
        [
            {
                "type": "stream.start",
                "stream_id": "s1",
                "model": "gpt-4o",
                "ts": WALL + 10.0,
                "prompt_tokens": 12,
            },
            {"type": "stream.token", "stream_id": "s1", "ts": WALL + 10.1},
            {"type": "stream.token", "stream_id": "s1", "ts": WALL + 10.15},
            {"type": "stream.start", "stream_id": "s2", "model": "gpt-4o", "ts": WALL + 11.0},
            {"type": "stream.token", "stream_id": "s2", "ts": WALL + 11.2},
        ],
        now=12.0,
    )
    s.send({"type": "stream.end", "stream_id": "s1", "ts": WALL + 10.5}, now=13.0)
    s.send(
        [
            {"type": "cache", "hit": True, "total_tokens": 100, "matched_tokens": 60},
            {"type": "queue", "depth": 4, "queue": "gpu"},
            {"type": "error", "error_type": "timeout", "endpoint": "/v1/x"},
            {"type": "client", "dropped": 3, "source": "w"},
            {"type": "request", "duration_ms": -1.0},
        ],
        now=14.0,
    )
    s.cost.put_budget("k_budgetkey01", {"limit_usd": 0.01, "limit_type": "hard"}, WALL + 15.0)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(environ={}, overrides={"state": {"path": str(tmp_path / "state.bin")}})


def test_round_trip_is_exact(config: Config, tmp_path: Path) -> None:
    a = Stack(config)
    traffic(a)
    now = 130.0
    before_text, before_views = a.exposition(now), a.views(now)
    path = tmp_path / "state.bin"
    size = persist.save(path, a.states(), config, now, WALL + now)
    assert size == path.stat().st_size > 0
    b = Stack(config, now=500.0)  # a fresh process, a different clock
    b.restore(persist.load(path, config, b.geometry))
    assert b.exposition(now) == before_text
    assert b.views(now) == before_views
    # The restored stack keeps working: the active stream s2 can still end.
    b.send({"type": "stream.end", "stream_id": "s2", "ts": WALL + 11.4}, now=131.0)
    assert "stream.end" not in str(b.streaming.orphaned)


def test_clock_continues_across_restart() -> None:
    clock = persist.Clock()
    gap = clock.continue_from(saved_now=1000.0, saved_wall=time.time() - 5.0)
    assert 4.9 < gap < 6.0
    assert 1004.9 < clock() < 1006.0
    assert persist.Clock().continue_from(10.0, time.time() + 3600) == 0.0  # clock stepped back


def test_corrupt_files_are_refused(config: Config, tmp_path: Path) -> None:
    geometry = Geometry()
    path = tmp_path / "state.bin"
    for content, message in (
        (b"hello", "not a metricsd state file"),
        (persist.MAGIC + b"\x00\x00\x00\x05{bad", "unreadable header"),
    ):
        path.write_bytes(content)
        with pytest.raises(persist.StateError, match=message):
            persist.load(path, config, geometry)
    a = Stack(config)
    traffic(a)
    good = persist.encode(a.states(), config, 1.0, WALL)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(persist.StateError, match="unreadable state"):
        persist.load(path, config, geometry)


def test_other_layout_is_refused(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    persist.save(path, Stack(config).states(), config, 1.0, WALL)
    other = load_config(environ={}, overrides={"engine": {"slot_seconds": 5.0}})
    with pytest.raises(persist.StateError, match="other window slots"):
        persist.load(path, other, Geometry(slot_seconds=5.0))


def test_a_tampered_file_cannot_run_code(config: Config, tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (print, ("this must never run",))

    header = b'{"format": 1, "layout": "%s", "saved_now": 0, "saved_wall": 0}' % (
        persist.layout_fingerprint(config).encode()
    )
    payload = pickle.dumps({"engine": {"x": Boom()}})
    path = tmp_path / "state.bin"
    path.write_bytes(persist.MAGIC + len(header).to_bytes(4, "big") + header + payload)
    with pytest.raises(persist.StateError, match=r"builtins\.print"):
        persist.load(path, config, Geometry())


def test_move_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"junk")
    target = persist.move_aside(path, "test")
    assert not path.exists() and target.read_bytes() == b"junk"
    assert target.name.startswith("state.bin.corrupt-")
