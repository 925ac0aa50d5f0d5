"""The user-like shapes of ``metricsd bench`` are valid frames holding the intended traffic.

``emitter-mixed`` is packed by the Python client's own code and ``cols-mixed`` by hand; both must
decode with the daemon's decoder without a reject, hold every event built, and carry the mix the
bench promises: 12 endpoint × model combinations per frame, about 4 % errors with 429/500/502/503
and an ``error_type``, ``finish_reason="stop"`` on successes, one key.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd import bench
from metricsd.protocol import decode

FRAMES = 3


_DTYPES = {1: "<f8", 2: "<i8", 3: "<i4", 4: "u1"}


def _ext(code: int, data: bytes) -> Any:
    """Typed columns (ext 1-4) and dictionary columns (ext 5, ``[values, codes]``) as lists."""
    if code == 5:
        values, codes = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)
        width = 1 if len(values) <= 256 else 2 if len(values) <= 65536 else 4
        return [values[c] for c in np.frombuffer(codes, dtype=f"<u{width}").tolist()]
    return np.frombuffer(data, dtype=_DTYPES[code]).tolist()


def _expand(frame: bytes) -> tuple[int, list[dict[str, Any]]]:
    """A frame's batches and events as SPEC §1.2 defines them (row i of a columnar batch is
    ``{"type": T, **const, **{f: cols[f][i]}}``), read without the daemon's internals."""
    obj = msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_ext)
    parts = obj if isinstance(obj, list) else [obj]
    rows = []
    for part in parts:
        cols, const = part["cols"], part.get("const", {})
        n = len(next(iter(cols.values())))
        assert all(len(c) == n for c in cols.values())
        for i in range(n):
            # A nil in a column: the field is absent from that row.
            row = {f: c[i] for f, c in cols.items() if c[i] is not None}
            rows.append({"type": part["type"], **const, **row})
    return len(parts), rows


def _decoded(frames: list[bytes]) -> list[tuple[int, list[dict[str, Any]]]]:
    """Per frame, after checking the daemon's decoder takes every event: (batches, events)."""
    now = time.time()
    out = []
    for frame in frames:
        result = decode(frame, now)
        assert not result.rejected, result.rejected
        assert sum(b.n for b in result.batches) == bench.MIXED_ROWS
        assert {b.type for b in result.batches} == {"request"}
        batches, rows = _expand(frame)
        assert len(rows) == bench.MIXED_ROWS
        out.append((batches, rows))
    return out


@pytest.fixture(params=["emitter-mixed", "cols-mixed"])
def shape(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_shapes_come_first_and_are_user_like(shape: str) -> None:
    assert list(bench.SHAPES)[:2] == ["emitter-mixed", "cols-mixed"]
    assert bench.SHAPES[shape].per_frame == bench.MIXED_ROWS


def test_mixed_frames_decode_whole_with_the_intended_mix(shape: str) -> None:
    frames = bench.SHAPES[shape].make(np.random.default_rng(0), FRAMES)
    assert len(frames) == FRAMES
    decoded = _decoded(frames)
    statuses: Counter[int] = Counter()
    for batches, rows in decoded:
        combos = {(r["endpoint"], r["model"]) for r in rows}
        assert combos == {(e, m) for e in bench.MIXED_ENDPOINTS for m in bench.MODELS}
        assert len(combos) == 12
        if shape == "emitter-mixed":
            # As the installed client packs it: one batch per label set (about 39), or, with
            # dictionary columns, one batch per frame.
            assert 1 <= batches <= 50
        else:
            assert batches == 1  # one batch, every label a column
        for r in rows:
            statuses[r["status"]] += 1
            assert r["key_id"] == bench.KEY_ID
            assert r["source"] == "bench"
            assert r["duration_ms"] > 0 and r["input_tokens"] >= 10
            assert r["type"] == "request"
            if r["status"] == 200:
                assert r["finish_reason"] == "stop"
                assert r.get("error_type") is None
            else:
                assert r["error_type"] == bench.ERROR_TYPES[r["status"]]
                assert r.get("finish_reason") is None
                assert r["output_tokens"] == 0
    assert set(statuses) == {200, 429, 500, 502, 503}
    errors = sum(n for s, n in statuses.items() if s != 200)
    assert 0.02 < errors / (FRAMES * bench.MIXED_ROWS) < 0.07


def test_both_shapes_carry_the_same_traffic() -> None:
    """Same seed, same rows: only the encoding differs (grouped by the client or not)."""
    t0 = time.time()
    a = bench.emitter_frames(np.random.default_rng(7), 1, t0=t0)
    b = bench.cols_frames(np.random.default_rng(7), 1, t0=t0)

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["ts"], r["endpoint"], r["model"], r["status"], r["duration_ms"])

    rows_a = sorted(map(key, _decoded(a)[0][1]))
    rows_b = sorted(map(key, _decoded(b)[0][1]))
    assert rows_a == rows_b


def test_rows_follow_the_emitters_request_layout() -> None:
    """The bench builds ``Emitter.request``'s tuples itself: check them against the client's
    row layout (``_wire.SPECS``), so a change there shows here rather than as odd frames."""
    from metricsd_client import _wire

    t = bench._mixed(np.random.default_rng(1), 50, 1.8e9)
    rows = bench._emitter_rows(t)
    spec = _wire.SPECS[_wire.REQUEST]
    assert len(rows) == 50
    for i, row in enumerate(rows):
        assert row[0] == _wire.REQUEST
        fields = dict(zip(spec.fields, row[1:], strict=True))
        for name in ("ts", "duration_ms", "status", "input_tokens", "output_tokens"):
            assert fields[name] == t[name][i]
        assert fields["endpoint"] == t["endpoint"][i] and fields["model"] == t["model"][i]
        assert fields["key_id"] == bench.KEY_ID and fields["api_key"] is None
        assert fields["finish_reason"] == t["finish_reason"][i]
        assert fields["error_type"] == t["error_type"][i]
        assert fields["cached_tokens"] == 0 and fields["streaming"] is None


@pytest.mark.parametrize("name", list(bench.SHAPES))
def test_every_shape_decodes_whole(name: str) -> None:
    """Every shape the bench sends is valid now (e.g. within the clock-skew limit)."""
    shape = bench.SHAPES[name]
    frames = (shape.setup() if shape.setup else []) + shape.make(np.random.default_rng(0), 2)
    now = time.time()
    made = 0
    for frame in frames[-2:]:
        result = decode(frame, now)
        assert not result.rejected, result.rejected
        made += sum(b.n for b in result.batches)
    assert made == 2 * shape.per_frame
    for frame in frames[:-2]:
        assert not decode(frame, now).rejected
