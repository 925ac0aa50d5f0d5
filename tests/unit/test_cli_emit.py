"""``metricsd emit``: the event is checked with the daemon's decoder before it is sent."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from click.testing import CliRunner

from metricsd.cli import check_event, main


def run_emit(*args: str) -> Any:
    return CliRunner().invoke(main, ["emit", *args, "--ingest", "tcp://127.0.0.1:1"], env={})


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["request", "model=x"], "missing_field duration_ms"),
        (["stream.token", "n=3"], "missing_field stream_id"),
        (["metric", "value=1"], "missing_field name kind"),
        (["request", "duration_ms=-5"], "bad_value duration_ms=-5 (expected a finite number ≥ 0)"),
        (
            ["request", "duration_ms=abc", "status=x"],
            'bad_value duration_ms="abc" (expected a finite number ≥ 0); '
            'status="x" (expected an integer)',
        ),
        (["cache", "hit=1"], "bad_value hit=1 (expected true or false)"),
        (
            ["stream.end", "stream_id=s", "status=done"],
            'bad_value status="done" (expected one of cancelled, completed, failed)',
        ),
        (
            ["metric", "name=1x", "kind=counter", "value=1"],
            'bad_value name="1x" (expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*))',
        ),
        (["request", "duration_ms=1", "v=2"], "version (v=2; this daemon speaks v=1)"),
    ],
)
def test_an_event_the_daemon_would_reject_is_not_sent(args: list[str], reason: str) -> None:
    result = run_emit(*args)
    assert result.exit_code == 2
    assert result.output == (
        f"metricsd: not sent, the daemon would reject it: {reason}; --no-check sends it anyway\n"
    )


def test_unknown_type_lists_the_known_types() -> None:
    result = run_emit("bogus", "a=1")
    assert result.exit_code == 2
    assert result.output == (
        "metricsd: not sent, the daemon would reject it: unknown_type bogus (known types: "
        "cache, client, error, metric, queue, request, stream.backpressure, stream.end, "
        "stream.start, stream.token, usage); --no-check sends it anyway\n"
    )


def test_check_event_accepts_valid_events_and_warns_about_ignored_fields() -> None:
    assert check_event({"v": 1, "type": "request", "duration_ms": 5}) == (None, [])
    assert check_event({"type": "cache", "hit": True, "modle": "gpt-4o"}) == (
        None,
        ["modle: not a field of cache events; the daemon ignores it"],
    )
    assert check_event({"type": "request", "duration_ms": 1, "model": "m" * 300}) == (
        None,
        ["1 string field(s) over the length limit would be truncated"],
    )


def receive_emit(*args: str) -> tuple[Any, list[Any]]:
    """Run ``emit`` against a PULL socket of this test; return the result and the frames."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = CliRunner().invoke(
            main, ["emit", *args, "--ingest", f"tcp://127.0.0.1:{port}"], env={}
        )
        frames = []
        while pull.poll(1000 if not frames else 100):
            frames.append(msgpack.unpackb(pull.recv()))
        return result, frames
    finally:
        pull.close()
        ctx.term()


def test_a_valid_event_is_sent_as_typed() -> None:
    result, frames = receive_emit("request", "duration_ms=840", "model=gpt-4o", "status=200")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sent request to tcp://127.0.0.1:")
    (frame,) = frames
    ts = frame.pop("ts")
    assert isinstance(ts, float)
    assert frame == {
        "v": 1,
        "type": "request",
        "duration_ms": 840,
        "model": "gpt-4o",
        "status": 200,
    }


def test_no_check_sends_a_bad_event_as_is() -> None:
    result, frames = receive_emit("--no-check", "bogus", "a=1")
    assert result.exit_code == 0, result.output
    assert [{k: v for k, v in f.items() if k != "ts"} for f in frames] == [
        {"v": 1, "type": "bogus", "a": 1}
    ]
