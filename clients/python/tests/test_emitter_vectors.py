"""The Python emitter's wire encoding against the conformance vectors (tests/vectors/).

- ``emitter_*`` vectors describe an emitter's output: replaying their calls on an emitter and
  flushing once must give the vector's bytes exactly.
- Every other vector that the daemon accepts: recording its events with the emitter's methods
  must give frames whose rows (SPEC §1.2's expansion) are the vector's events, once the defaults
  of ``defaults.json`` are filled in on both sides. Batches of many events (``limit_10000_events``)
  carry typed columns, read here as lists of their values.
"""

from __future__ import annotations

import struct
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgpack
import pytest
from metricsd_client import Emitter, _wire

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests" / "vectors"))
import vectorlib  # noqa: E402

VECTORS = vectorlib.load_all()
EMITTER = [v for v in VECTORS if "emitter" in v]
ACCEPTED = [v for v in VECTORS if "emitter" not in v and v["accepted"] > 0]
#: The typed columns the emitter sends (msgpack ext code → little-endian struct format).
TYPED_FORMATS = {1: "<d", 2: "<q"}


def _typed_column(code: int, data: bytes) -> list[Any]:
    return [v for (v,) in struct.iter_unpack(TYPED_FORMATS[code], data)]


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, ext_hook=_typed_column)


def record(source: str, calls: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The rows an emitter's methods append for these calls (no thread, no socket)."""
    em = Emitter("tcp://127.0.0.1:9", source=source)
    em._wake = lambda: None  # type: ignore[method-assign]
    try:
        for call in calls:
            args = {k: v for k, v in call.items() if k != "type"}
            getattr(em, vectorlib.METHODS[call["type"]])(**args)
        rows = em._take()
        assert em.dropped == 0
        return rows
    finally:
        em.close(timeout=0.1)


def frames(rows: list[tuple[Any, ...]], source: str, pending_drops: int = 0) -> list[bytes]:
    """The frames one flush cycle sends for these rows (as ``Emitter._cycle`` builds them)."""
    packer = _wire.new_packer()
    packed, bad = _wire.encode(rows, source, packer)
    assert bad == 0
    out = []
    for i, (_, parts) in enumerate(_wire.assemble(packed)):
        client = (
            _wire.client_event(pending_drops, source, packer) if pending_drops and i == 0 else None
        )
        out.append(_wire.frame(parts, client, packer))
    return out


def _has_ext(obj: Any) -> bool:
    if isinstance(obj, msgpack.ExtType):
        return True
    if isinstance(obj, dict):
        return any(_has_ext(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_has_ext(v) for v in obj)
    return False


@pytest.mark.parametrize("vector", EMITTER, ids=[v["name"] for v in EMITTER])
def test_emitter_output_byte_for_byte(vector: dict[str, Any]) -> None:
    spec = vector["emitter"]
    rows = record(spec["source"], spec["calls"])
    got = frames(rows, spec["source"], spec.get("pending_drops", 0))
    assert [f.hex() for f in got] == [vector["hex"]]
    # The Node emitter sends arrays only: its frames match these bytes because every batch of
    # the emitter vectors is below the Python emitter's typed-column threshold.
    assert not _has_ext(msgpack.unpackb(got[0], raw=False))
    rows_out = list(vectorlib.expand(unpack(got[0])))
    assert vectorlib.sort_events(rows_out) == vectorlib.sort_events(vector["events"])


@pytest.mark.parametrize("vector", ACCEPTED, ids=[v["name"] for v in ACCEPTED])
def test_emitter_encodes_the_vector_events(vector: dict[str, Any]) -> None:
    events = [e for e in vectorlib.expected_events(vector) if e["type"] != "client"]
    by_source: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        call = {k: v for k, v in e.items() if k != "source"}
        call.setdefault("ts", vectorlib.NOW)
        by_source[e.get("source", "default")].append(call)
    got: list[dict[str, Any]] = []
    for source, calls in by_source.items():
        for data in frames(record(source, calls), source):
            assert len(data) <= _wire.MAX_FRAME_BYTES
            got.extend(vectorlib.expand(unpack(data)))
    assert vectorlib.sort_events([vectorlib.normalise(r) for r in got]) == vectorlib.sort_events(
        [vectorlib.normalise(e) for e in events]
    )
