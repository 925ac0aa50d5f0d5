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
from metricsd.export.prometheus import render_both
from metricsd.protocol import decode
from metricsd.trackers.cost import CostTracker
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
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

    def states(self, now: float) -> dict[str, dict[str, Any]]:
        """As the daemon captures them (``Daemon._states``)."""
        out = {t.name: t.state(now) for t in self.engine.trackers}
        out["engine"] = self.engine.state(now)
        return out

    def restore(self, loaded: persist.Loaded) -> None:
        """As the daemon restores them: its clock continues from the saved one (no gap here)."""
        targets = {t.name: t for t in self.engine.trackers} | {"engine": self.engine}
        for name, state in loaded.trackers.items():
            targets[name].restore(state, loaded.saved_now)  # type: ignore[attr-defined]

    def exposition(self, now: float) -> str:
        text = render_both(self.engine.snapshot(now, WALL + now).families())[0].decode()
        return "\n".join(line for line in text.splitlines() if not PROCESS.search(line))

    def views(self, now: float) -> dict[str, Any]:
        snap = self.engine.snapshot(now, WALL + now)
        return {
            "json": snap.view("json"),
            "summary": snap.view("summary", 300),
            "recent": snap.view("recent", 50),
            "slo": snap.parts["slo"].live(frozenset()),
            "cost": snap.parts["cost"].live(now, frozenset()),
            "budget": snap.view("budget", "k_budgetkey01", WALL + now),
        }


def save(path: Path, states: dict[str, Any], config: Config, now: float, wall: float) -> int:
    """What the daemon's save does: encode, then write atomically; returns the size."""
    return persist.write_atomic(path, persist.encode(states, config, now, wall))


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
    size = save(path, a.states(now), config, now, WALL + now)
    assert size == path.stat().st_size > 0
    b = Stack(config, now=500.0)  # a fresh process, a different clock
    b.restore(persist.load(path, config))
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
    path = tmp_path / "state.bin"
    # The file is the magic line and one msgpack map (no separate header any more): damage
    # right after the magic line is an unreadable state.
    for content, message in (
        (b"hello", "not a metricsd state file"),
        (persist.MAGIC + b"\x00\x00\x00\x05{bad", "unreadable state"),
    ):
        path.write_bytes(content)
        with pytest.raises(persist.StateError, match=message):
            persist.load(path, config)
    a = Stack(config)
    traffic(a)
    good = persist.encode(a.states(1.0), config, 1.0, WALL)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(persist.StateError, match="unreadable state"):
        persist.load(path, config)


def test_other_layout_is_refused(config: Config, tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    save(path, Stack(config).states(1.0), config, 1.0, WALL)
    other = load_config(environ={}, overrides={"engine": {"slot_seconds": 5.0}})
    with pytest.raises(persist.StateError, match="other window slots"):
        persist.load(path, other)


def test_a_tampered_file_cannot_run_code(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    class Boom:
        def __reduce__(self) -> Any:
            return (print, ("this must never run",))

    payload = pickle.dumps({"engine": {"x": Boom()}})
    path = tmp_path / "state.bin"
    # A pickle where the msgpack body belongs: refused, never unpickled.
    path.write_bytes(persist.MAGIC + payload)
    with pytest.raises(persist.StateError, match="unreadable state"):
        persist.load(path, config)
    # A pickle inside a well-formed file: it stays bytes, and restoring refuses them.
    body = {
        "format": persist.FORMAT_VERSION,
        "layout": persist.layout_fingerprint(config),
        "saved_now": 0.0,
        "saved_wall": 0.0,
        "trackers": {"engine": payload},
    }
    path.write_bytes(persist.MAGIC + msgpack.packb(body, use_bin_type=True))
    loaded = persist.load(path, config)
    with pytest.raises(persist.StateError, match="not a map"):
        Stack(config).restore(loaded)
    assert "this must never run" not in capsys.readouterr().out


def test_move_aside(tmp_path: Path) -> None:
    path = tmp_path / "state.bin"
    path.write_bytes(b"junk")
    target = persist.move_aside(path, "test")
    assert not path.exists() and target.read_bytes() == b"junk"
    assert target.name.startswith("state.bin.corrupt-")
