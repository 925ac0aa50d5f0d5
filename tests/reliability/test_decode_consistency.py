"""An event's verdict never depends on what travels with it (SPEC §1.4).

The decoder validates a value on its own (an event sent as a map) or inside a column (a
columnar batch, or events pooled by type): both paths must accept and reject the same values,
whatever the neighbouring rows hold. Found by the live fuzz: huge integers and floats near the
int64 limit were accepted alone but rejected in a column, or the other way round, so the same
bytes gave different reject counts depending on the frames next to them.

Booleans in numeric columns are the one documented leniency of columnar batches (numpy reads
them as 0 and 1), so they are left out.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import msgpack
import pytest

from fuzz.make_corpus import event
from metricsd import protocol
from metricsd.protocol import Limits, decode
from metricsd.schema import EVENT_TYPES, NUMERIC_KINDS

EDGES: list[Any] = [
    0,
    -0.0,
    1,
    -1,
    1.5,
    2**53 + 1,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    -(2**63),
    -(2**63) + 1,
    9.2e18,
    9.21e18,
    2.0**63,
    -(2.0**63),
    1e19,
    1e100,
    1.0000000000000002e100,
    -1e100,
    1e300,
    sys.float_info.max,
    math.nan,
    math.inf,
    -math.inf,
]
NEIGHBOURS: list[Any] = [1, 2.5, 2**62, 7.0]
FIELDS = [
    (t, name)
    for t, fields in sorted(EVENT_TYPES.items())
    for name, f in sorted(fields.items())
    if f.kind in NUMERIC_KINDS
]


def rejected(frame: Any) -> int:
    return sum(decode(msgpack.packb(frame), 0.0, Limits()).rejected.values())


@pytest.mark.parametrize(("type_name", "name"), FIELDS)
def test_a_value_gets_the_same_verdict_alone_and_in_a_column(type_name: str, name: str) -> None:
    base = {k: v for k, v in event(type_name).items() if k not in (name, "type")}
    # By position, not by value: 2**63 == 2.0**63 and 0 == -0.0 are distinct inputs here.
    alone = [rejected({**event(type_name), name: v}) for v in EDGES]
    neighbours = [rejected({**event(type_name), name: v}) for v in NEIGHBOURS]
    problems = []
    for value, value_rejected in zip(EDGES, alone, strict=True):
        for other, other_rejected in zip(NEIGHBOURS, neighbours, strict=True):
            column = rejected({"type": type_name, "const": base, "cols": {name: [value, other]}})
            if column != value_rejected + other_rejected:
                problems.append((value, other, value_rejected, column))
    assert problems == [], "(value, neighbour, rejected alone, rejected in a column of 2)"


@pytest.mark.skipif(not hasattr(protocol, "Decoder"), reason="no multi-frame decoder")
def test_pooled_frames_count_like_single_frames() -> None:
    """Frames decoded together (one ingest wake-up) count exactly as frames decoded alone."""
    frames = [msgpack.packb({**event(t), name: v}) for t, name in FIELDS for v in EDGES]
    single = sum(rejected(msgpack.unpackb(f, strict_map_key=False)) for f in frames)
    decoder = protocol.Decoder(0.0, Limits())
    for frame in frames:
        decoder.add(frame)
    pooled = decoder.finish()
    assert sum(pooled.rejected.values()) == single
    assert pooled.accepted == len(frames) - single
