"""Decoded batches handed between processes: applied, they give exactly what the original gives."""

from __future__ import annotations

import random
from typing import Any

import msgpack
import numpy as np
import pytest

from metricsd.batch import Cat
from metricsd.decode import Decoder
from metricsd.handoff import HandoffError, pack_result, unpack_result
from tests.unit.test_differential import NOW, WALL, _engine, frames, traffic, views


@pytest.mark.parametrize("seed", [4, 5])
def test_a_handed_off_result_applies_exactly_like_the_original(seed: int) -> None:
    events = traffic(seed)
    direct, handed = _engine(), _engine()
    rng = random.Random(seed)
    packed = frames(events, rng)
    for j in range(0, len(packed), 5):
        chunk = packed[j : j + 5]
        for engine, via in ((direct, False), (handed, True)):
            decoder = Decoder(WALL, engine.limits)
            for frame in chunk:
                decoder.add(frame)
            result = decoder.finish()
            count = len(chunk)
            if via:
                result, count = unpack_result(pack_result(result, len(chunk)))
            engine.apply(result, NOW, WALL, frames=count)
    assert direct.events_received == handed.events_received
    assert direct.frames_received == handed.frames_received
    a, b = views(direct, NOW + 5.0, WALL + 5.0), views(handed, NOW + 5.0, WALL + 5.0)
    for name in a:
        assert a[name] == b[name], name


def test_elided_events_travel_and_count_as_received() -> None:
    decoder = Decoder(WALL)
    decoder.add(msgpack.packb({"type": "request", "model": "m", "duration_ms": 5.0}))
    result = decoder.finish()
    result.elided.update({"request": 999, "usage": 3})
    back, _frames = unpack_result(pack_result(result, 1))
    assert back.elided == {"request": 999, "usage": 3}
    engine = _engine()
    engine.apply(back, NOW, WALL)
    assert engine.events_received == {"request": 1000, "usage": 3}


def test_rejections_and_truncations_travel() -> None:
    decoder = Decoder(WALL)
    decoder.add(b"\xc1")  # not msgpack
    decoder.add(msgpack.packb({"type": "request", "model": "m" * 300, "duration_ms": 5.0}))
    decoder.add(msgpack.packb({"type": "request", "duration_ms": "slow"}))
    result = decoder.finish()
    back, frames_ = unpack_result(pack_result(result, 3))
    assert frames_ == 3
    assert back.rejected == result.rejected and sum(back.rejected.values()) == 2
    assert back.truncated == result.truncated == 1
    (batch,) = back.batches
    assert batch.n == 1
    model = batch.const["model"] if "model" in batch.const else batch.cols["model"].tolist()[0]
    assert model == "m" * 256


def _message(batches: list[Any], elided: Any = None) -> bytes:
    """A handoff message: one frame, nothing rejected or truncated, these batches."""
    return msgpack.packb([1, {}, 0, batches, {} if elided is None else elided])


def _ext(code: int, value: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(value))


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"\xc1",
        msgpack.packb([1, {}, 0]),
        msgpack.packb([1, {}, 0, []]),  # the elided counts are missing
        msgpack.packb([1, {"x": -1}, 0, [], {}]),
        _message([["nope", 1, {}, {}]]),
        _message([["request", 2, {}, {"duration_ms": [1.0]}]]),
        _message([["request", 1, {}, {"duration_ms": _ext(1, ["|O", b""])}]]),
        _message(
            [
                [
                    "request",
                    1,
                    {},
                    {"model": _ext(2, [_ext(1, ["<i8", np.array([3]).tobytes()]), ["a"]])},
                ]
            ]
        ),
        _message([["request", 1, {}, {"x": msgpack.ExtType(9, b"")}]]),
        _message([], {"request": -1}),
        _message([], {"request": 0}),
        _message([], {"nope": 1}),
        _message([], [1]),
    ],
)
def test_anything_else_is_refused(message: bytes) -> None:
    with pytest.raises(HandoffError):
        unpack_result(message)


def test_label_codes_round_trip() -> None:
    from metricsd.batch import Batch
    from metricsd.decode import DecodeResult

    cat = Cat(np.array([0, 1, 1, 0], dtype=np.intp), ["a", "b"])
    result = DecodeResult(batches=[Batch("request", 4, {"endpoint": "/x"}, {"model": cat})])
    back, _ = unpack_result(pack_result(result, 1))
    assert back.batches[0].cols["model"].tolist() == ["a", "b", "b", "a"]
    assert back.batches[0].const == {"endpoint": "/x"}
