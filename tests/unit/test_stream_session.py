"""The WebSocket protocol session: replies, filters, limits, deltas (pure, no sockets)."""

from __future__ import annotations

import json

import pytest

from metricsd.web.stream import Limits, PolicyViolation, Session, compute_deltas


def send(session: Session, message: object, now: float = 1.0) -> list[dict]:
    text = message if isinstance(message, str) else json.dumps(message)
    return session.receive(text, now, wall=1000.0 + now)


def test_subscribe_ack_and_accumulating_filters() -> None:
    s = Session(connected_at=0.0)
    (ack,) = send(
        s,
        {
            "type": "subscribe",
            "filters": {
                "endpoint": "/v1/chat/completions",
                "metric_type": "latency",
                "interval": 2.0,
            },
        },
    )
    assert ack == {
        "type": "subscribed",
        "timestamp": 1001.0,
        "filters": {
            "endpoints": ["/v1/chat/completions"],
            "models": [],
            "metric_types": ["latency"],
            "interval": 2.0,
        },
    }
    (ack,) = send(
        s,
        {
            "type": "subscribe",
            "filters": {"endpoint": "/v1/embeddings", "model": "m", "metric_type": "throughput"},
        },
    )
    assert ack["filters"] == {
        "endpoints": ["/v1/chat/completions", "/v1/embeddings"],
        "models": ["m"],
        "metric_types": ["latency", "throughput"],
        "interval": 2.0,
    }
    (ack,) = send(s, {"type": "subscribe", "filters": {"metric_type": "all"}})
    assert ack["filters"]["metric_types"] == ["all"]


def test_first_metric_type_replaces_all() -> None:
    s = Session(connected_at=0.0)
    assert s.key()[2] == frozenset({"all"})
    send(s, {"type": "subscribe", "filters": {"metric_type": "cache"}})
    assert s.key()[2] == frozenset({"cache"})


def test_unsubscribe_resets_and_ping() -> None:
    s = Session(connected_at=0.0)
    send(s, {"type": "subscribe", "filters": {"endpoint": "/x", "interval": 5}})
    assert send(s, {"type": "unsubscribe"}) == [{"type": "unsubscribed", "timestamp": 1001.0}]
    assert s.filters() == {"endpoints": [], "models": [], "metric_types": ["all"], "interval": 1.0}
    assert send(s, {"type": "ping"}) == [{"type": "pong", "timestamp": 1001.0}]


@pytest.mark.parametrize(
    "message,expected",
    [
        ("{nope", "Invalid JSON: "),
        ("[1, 2]", "a message must be a JSON object"),
        ({"type": "dance"}, "Unknown message type: dance"),
        ({"kind": "ping"}, "Unknown message type: a string 'type' is required"),
        ({"type": "subscribe", "filters": "x"}, "filters must be an object"),
        ({"type": "subscribe", "filters": {"metric_type": "bogus"}}, "Invalid metric type: bogus"),
        ({"type": "subscribe", "filters": {"endpoint": ["a"]}}, "endpoint must be a string"),
        ({"type": "subscribe", "filters": {"interval": "fast"}}, "interval must be a number"),
        ({"type": "subscribe", "filters": {"interval": -1}}, "interval must be a positive"),
        ({"type": "subscribe", "filters": {"interval": True}}, "interval must be a number"),
    ],
)
def test_bad_input_gets_an_error_and_changes_nothing(message: object, expected: str) -> None:
    s = Session(connected_at=0.0)
    before = s.filters()
    (reply,) = send(s, message)
    assert reply["type"] == "error" and reply["message"].startswith(expected)
    assert s.filters() == before


def test_partial_subscribe_is_not_applied() -> None:
    s = Session(connected_at=0.0)
    (reply,) = send(s, {"type": "subscribe", "filters": {"endpoint": "/x", "metric_type": "nope"}})
    assert reply["type"] == "error" and s.endpoints == set()


def test_interval_clamped_and_echoed() -> None:
    s = Session(connected_at=0.0)
    assert (
        send(s, {"type": "subscribe", "filters": {"interval": 0.01}})[0]["filters"]["interval"]
        == 0.1
    )
    assert (
        send(s, {"type": "subscribe", "filters": {"interval": 3600}})[0]["filters"]["interval"]
        == 60.0
    )


def test_filter_set_limits() -> None:
    s = Session(connected_at=0.0, limits=Limits(max_endpoints=2, rate=1e9, burst=1e9))
    send(s, {"type": "subscribe", "filters": {"endpoint": "/a"}})
    send(s, {"type": "subscribe", "filters": {"endpoint": "/b"}})
    (reply,) = send(s, {"type": "subscribe", "filters": {"endpoint": "/c"}})
    assert reply["message"] == "at most 2 endpoints per client"
    assert send(s, {"type": "subscribe", "filters": {"endpoint": "/a"}})[0]["type"] == "subscribed"


def test_rate_limit_closes() -> None:
    s = Session(connected_at=0.0, limits=Limits(rate=1.0, burst=3.0))
    for _ in range(3):
        send(s, {"type": "ping"}, now=0.0)
    with pytest.raises(PolicyViolation):
        send(s, {"type": "ping"}, now=0.0)
    s2 = Session(connected_at=0.0, limits=Limits(rate=1.0, burst=3.0))
    for i in range(10):  # one per second is within the rate
        send(s2, {"type": "ping"}, now=float(i))


def test_binary_is_an_error() -> None:
    s = Session(connected_at=0.0)
    (reply,) = s.receive_binary(1.0, 1001.0)
    assert reply["type"] == "error" and "binary" in reply["message"]


def test_due_respects_interval_since_connect() -> None:
    s = Session(connected_at=10.0)
    assert not s.due(10.5)
    assert s.due(11.0)


def test_deltas_worked_values_and_per_client_baseline() -> None:
    assert (
        compute_deltas(
            None, {"total_requests_per_sec": 1, "total_tokens_per_sec": 2, "active_streams": 3}
        )
        == {}
    )
    prev = {"total_requests_per_sec": 10.0, "total_tokens_per_sec": 500.0, "active_streams": 3.0}
    cur = {"total_requests_per_sec": 15.0, "total_tokens_per_sec": 650.0, "active_streams": 7.0}
    assert compute_deltas(prev, cur) == {
        "throughput": {"total_requests_per_sec": 5.0, "total_tokens_per_sec": 150.0},
        "streaming": {"active_streams_delta": 4},
    }
    s = Session(connected_at=0.0)
    assert s.deltas(prev) == {}
    assert s.deltas(cur)["throughput"]["total_requests_per_sec"] == 5.0
