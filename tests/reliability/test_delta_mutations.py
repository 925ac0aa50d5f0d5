"""A worker's delta damaged at random is refused with a clear error, never another exception.

Deltas come only from the daemon's own workers over a private socket, but a bug in a worker
must not become one in the serving process: every value of a delta is read with the checks a
state file gets (:class:`metricsd.persist.Reader`), and what cannot be read is refused as a
``StateError`` or ``ValueError``, which the pool counts as lost frames. Here a real delta (every
tracker the workers apply, from the differential test's mixed traffic) has one to three of its
values replaced by a value of another kind, or removed, and is added to a fresh engine.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest

from metricsd.config import load_config
from metricsd.decode import Decoder
from metricsd.persist import StateError, unpack_state
from metricsd.wiring import build_engine
from metricsd.worker import Applier
from metricsd.workers import REMOTE, worker_sections
from tests.unit.test_differential import frames, traffic

JUNK: list[Any] = [
    None,
    -1,
    2**70,
    "x",
    1.5,
    float("nan"),
    b"\x00\x01",
    [],
    {},
    [1, 2],
    {"dtype": "<f8", "shape": [1], "data": b"\0" * 8},
    {"dtype": {}, "shape": [1], "data": b""},
    {"ints": ["1", "x"], "shape": [2]},
]


def _delta() -> dict[str, Any]:
    config = load_config(environ={})
    applier = Applier(
        {name: sorted(types) for name, types in REMOTE.items()},
        ["request", "error", "cache", "usage"],
        worker_sections(config),
    )
    wall = time.time()
    events = traffic(3)
    for event in events:
        if isinstance(event.get("ts"), float):
            event["ts"] = wall
    decoder = Decoder(wall, build_engine(config, 0.0, wall).limits)
    for frame in frames(events, random.Random(3)):
        decoder.add(frame)
    applier.apply(decoder.finish(), 5.0, wall, 1)
    _header, body = applier.delta()
    state = unpack_state(body)
    assert isinstance(state, dict)
    return state


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path


@pytest.mark.parametrize("seed", [0, 1])
def test_a_damaged_delta_is_refused_with_a_clear_error(seed: int) -> None:
    config = load_config(environ={})
    base = _delta()
    paths = [p for p in _leaves(base) if p]
    rng = random.Random(seed)
    refused = 0
    for _ in range(300):
        state = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            parent: Any = state
            for key in path[:-1]:
                parent = parent[key] if isinstance(parent, (dict, list)) else None
            if isinstance(parent, dict) and rng.random() < 0.2:
                parent.pop(path[-1], None)
            elif isinstance(parent, dict) or (isinstance(parent, list) and path[-1] < len(parent)):
                parent[path[-1]] = rng.choice(JUNK)
        engine = build_engine(config, 0.0, time.time())
        engine.remote = dict(REMOTE)
        try:
            for name, value in state.items():
                engine.absorb(name, value, 6.0, time.time())
            engine.snapshot(7.0, time.time())  # what was added reads back
        except (StateError, ValueError):
            refused += 1
    assert refused > 100  # most damage is refused; the rest is a value of the right kind
