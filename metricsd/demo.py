"""``serve --demo``: synthetic LLM traffic sent over the daemon's own ingest socket.

The demo goes through the real wire path (a PUSH socket, msgpack columnar frames), so what a new
user sees on ``/metrics``, ``/dashboard`` and Grafana is exactly what an application would
produce, and every view has data within a few seconds of the start:

- requests on four models and three endpoints, with tokens, prompt-cache reuse, queue waits,
  finish reasons and two API keys, one of them under a daily budget;
- streams (``stream.start`` / ``stream.token`` / ``stream.end``) with a time to first token,
  token gaps, the occasional stall, back-pressure and cancellation, so the TTFT, inter-token and
  tokens/s panels fill;
- cache lookups, queue depths, image generation billed by ``usage`` events, and the
  ``llm_circuit_breaker_open`` gauge;
- client errors (400, 401, 404: not bad for the SLO) of four kinds, with messages that group
  into error patterns.

Outcomes that are bad for the default SLO (99.9 % availability; bad = status ≥ 500 or 429) come
one in :data:`BAD_EVERY` (4 000), counted, not drawn at random: 0.025 % of the traffic, a burn
rate of 0.25 in every window of 4 000 outcomes or more, and the first one only after 4 000
outcomes. The page alert needs a burn above 14.4 (1 h and 5 m) or 6 (6 h and 30 m), the ticket
alert above 1 (3 d and 6 h): neither fires in steady state, at any ``demo.rate``.

The threshold holds for any ``demo.rate`` above 0.02 requests per second (below, one bad outcome
could be more than 1.44 % of an hour).

``--demo-incident`` (``demo.incident``) adds one incident: from :data:`INCIDENT_START` seconds
after the start, for :data:`INCIDENT_SECONDS`, 5 % of outcomes fail (503, 429, 500, failed
streams: 50 times the error budget), latencies triple, the queue fills and the OpenAI circuit
breaker opens. About 4 s in, the bad share since the start passes 1.44 % (burn rate 14.4 over
both the 5-minute and the 1-hour window): the page alert fires within 15 s of the start. Then
the traffic recovers; the page alert ends when the incident weighs less than 1.44 % of the last
hour and 0.6 % of the last 6 hours (about 4 minutes after the start), the ticket alert (burn
rate above 1 over 6 hours and 3 days) about 25 minutes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any, Final

import msgpack
import zmq
import zmq.asyncio

from metricsd.config import BudgetConfig, Config, DemoConfig

__all__ = ["DemoTraffic", "run_demo", "with_demo_budget"]

log = logging.getLogger("metricsd.demo")

#: One outcome in this many is bad for the SLO in steady state (see the module docstring).
BAD_EVERY: Final = 4000
#: Client errors (4xx other than 429: not bad for the SLO), as a share of requests.
CLIENT_ERROR_SHARE: Final = 0.02
#: The incident of ``--demo-incident``: when it starts (seconds after the demo), how long it
#: lasts, and the share of outcomes that fail during it.
INCIDENT_START: Final = 10.0
INCIDENT_SECONDS: Final = 30.0
INCIDENT_BAD: Final = 0.05
#: Largest number of events per frame (the daemon's default limit is 10 000).
FRAME_EVENTS: Final = 1000
#: Seconds between two sends.
PERIOD: Final = 0.25


@dataclass(frozen=True)
class DemoModel:
    name: str
    endpoint: str
    weight: float  # share of the traffic
    latency_ms: float  # median duration of a request that is not streamed
    streamed: float  # share of its requests that are streamed
    ttft_ms: float  # median time to first token
    tokens_per_second: float  # median decode rate
    cached: bool  # prompt caching: some requests reuse a cached prefix


MODELS: Final = (
    DemoModel("gpt-4o", "/v1/chat/completions", 0.3, 650.0, 0.5, 320.0, 70.0, True),
    DemoModel("gpt-4o-mini", "/v1/chat/completions", 0.35, 320.0, 0.5, 180.0, 120.0, True),
    DemoModel("claude-3-5-sonnet", "/v1/messages", 0.2, 900.0, 0.5, 450.0, 60.0, True),
    DemoModel("text-embedding-3-small", "/v1/embeddings", 0.15, 45.0, 0.0, 0.0, 0.0, False),
)
_WEIGHTS: Final = [m.weight for m in MODELS]
FINISH: Final = ("stop", "stop", "stop", "stop", "length", "tool_calls")
#: API keys (hashed to key_ids on arrival) and their share of the traffic.
KEYS: Final = (("sk-demo-frontend", 0.7), ("sk-demo-batch-jobs", 0.3))
BUDGET_KEY: Final = KEYS[0][0]
#: The budgeted key's spend is about 7.5 USD per hour per request/s of ``demo.rate`` (measured):
#: a daily budget of 360 USD per request/s is about 50 % used at the end of a day.
BUDGET_USD_PER_RATE: Final = 360.0

#: (status, error_type, message) of client errors: failures, not bad for the SLO.
CLIENT_ERRORS: Final = (
    (400, "invalid_request_error", "Invalid value for 'temperature': {n} is above the maximum 2"),
    (
        400,
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens; you requested {n} tokens",
    ),
    (401, "authentication_error", "Incorrect API key provided: sk-...{n}"),
    (404, "model_not_found", "The model 'gpt-5-preview-{n}' does not exist"),
)
#: (status, error_type, message) of failures that are bad for the SLO.
BAD_OUTCOMES: Final = (
    (503, "overloaded_error", "The server is overloaded; retry after {n} ms"),
    (429, "rate_limit_error", "Rate limit reached for requests: {n} per minute"),
    (500, "server_error", "Internal error while processing request req-{n}"),
)


def with_demo_budget(config: Config) -> Config:
    """The config with a daily budget on the demo's frontend key, unless it has one: so the
    budget views and ``llm_budget_*`` have something to show. Only with ``demo.enabled``."""
    if not config.demo.enabled:
        return config
    budget = BudgetConfig(
        key=BUDGET_KEY, limit_usd=round(BUDGET_USD_PER_RATE * config.demo.rate, 2), period="daily"
    )
    if any(b.key == budget.key for b in config.cost.budgets):
        return config
    return replace(config, cost=replace(config.cost, budgets=(*config.cost.budgets, budget)))


class DemoTraffic:
    """The events of the demo, beat by beat: :meth:`beat` returns what is due at ``now``."""

    def __init__(self, rate: float, incident: bool = False, seed: int = 0) -> None:
        self.rate = rate
        self.incident = incident
        self.rng = random.Random(seed)
        self.outcomes = 0
        self.bad = 0
        self.started: float | None = None
        self.last = 0.0
        self.carry = 0.0
        self.queue_depth = 2
        self._pending: list[tuple[float, int, dict[str, Any]]] = []  # (ts, seq, event) heap
        self._seq = itertools.count()
        self._streams = itertools.count(1)
        self._next_image = 0.0
        self._next_breaker = 0.0

    def in_incident(self, elapsed: float) -> bool:
        return self.incident and INCIDENT_START <= elapsed < INCIDENT_START + INCIDENT_SECONDS

    def beat(self, now: float) -> list[dict[str, Any]]:
        """The events due at wall time ``now``: the requests since the last beat (``rate`` per
        second), queue, cache and gauge events, and the stream events scheduled until ``now``."""
        if self.started is None:
            self.started = self.last = now - PERIOD
        elapsed = now - self.started
        incident = self.in_incident(elapsed)
        self.carry += self.rate * max(0.0, now - self.last)
        self.last = now
        count = int(self.carry)
        self.carry -= count
        events: list[dict[str, Any]] = []
        for _ in range(count):
            events += self._request(now, incident)
        events.append(self._queue(now, incident))
        events += self._cache(now, max(1, count // 4))
        if now >= self._next_breaker:
            self._next_breaker = now + 1.0
            events += [
                self._event(
                    "metric",
                    now,
                    name="llm_circuit_breaker_open",
                    kind="gauge",
                    value=1 if incident and provider == "openai" else 0,
                    labels={"provider": provider},
                )
                for provider in ("openai", "anthropic")
            ]
        if now >= self._next_image:
            self._next_image = now + 5.0
            events.append(
                self._event(
                    "usage",
                    now,
                    model="dall-e-3",
                    endpoint="/v1/images/generations",
                    api_key=BUDGET_KEY,
                    images={"size": "1024x1024", "quality": "standard", "n": 1},
                )
            )
        while self._pending and self._pending[0][0] <= now:
            events.append(heapq.heappop(self._pending)[2])
        return events

    # --- one event of each kind -----------------------------------------------------------

    @staticmethod
    def _event(type_name: str, ts: float, **fields: Any) -> dict[str, Any]:
        return {"v": 1, "type": type_name, "ts": round(ts, 6), "source": "demo", **fields}

    def _is_bad(self, incident: bool) -> bool:
        """Whether the next outcome is bad for the SLO; counts it."""
        self.outcomes += 1
        bad = self.rng.random() < INCIDENT_BAD if incident else self.outcomes % BAD_EVERY == 0
        self.bad += bad
        return bad

    def _request(self, now: float, incident: bool) -> list[dict[str, Any]]:
        rng = self.rng
        model = rng.choices(MODELS, _WEIGHTS)[0]
        key = rng.choices([k for k, _ in KEYS], [w for _, w in KEYS])[0]
        labels = {"model": model.name, "endpoint": model.endpoint, "api_key": key}
        slow = 3.0 if incident else 1.0
        if self._is_bad(incident):
            if model.streamed and rng.random() < 0.3:
                return self._stream(now, model, labels, incident, fail=True)
            status, error_type, message = rng.choice(BAD_OUTCOMES)
            return [
                self._event(
                    "request",
                    now,
                    **labels,
                    status=status,
                    duration_ms=round(rng.lognormvariate(0, 0.4) * model.latency_ms * slow, 3),
                    error_type=error_type,
                    error_message=message.format(n=rng.randint(10, 99999)),
                )
            ]
        if rng.random() < CLIENT_ERROR_SHARE:
            status, error_type, message = rng.choice(CLIENT_ERRORS)
            fields = {
                **labels,
                "status": status,
                "error_type": error_type,
                "error_message": message.format(n=rng.randint(3, 999999)),
            }
            if rng.random() < 0.5:  # refused before any work: an ``error`` event
                return [self._event("error", now, **fields)]
            return [self._event("request", now, duration_ms=round(rng.uniform(3, 30), 3), **fields)]
        if rng.random() < model.streamed:
            return self._stream(now, model, labels, incident, fail=False)
        inputs = rng.randint(50, 1500)
        embedding = not model.streamed
        return [
            self._event(
                "request",
                now,
                **labels,
                status=200,
                duration_ms=round(rng.lognormvariate(0, 0.5) * model.latency_ms * slow, 3),
                input_tokens=inputs,
                output_tokens=0 if embedding else rng.randint(10, 500),
                cached_tokens=self._cached(model, inputs),
                queue_ms=round(self.queue_depth * rng.uniform(2.0, 12.0), 3),
                finish_reason="stop" if embedding else rng.choice(FINISH),
                batch=key == "sk-demo-batch-jobs" and rng.random() < 0.3,
            )
        ]

    def _cached(self, model: DemoModel, inputs: int) -> int:
        if not model.cached or self.rng.random() >= 0.4:
            return 0
        return int(inputs * self.rng.uniform(0.5, 0.9))

    def _stream(
        self, now: float, model: DemoModel, labels: dict[str, Any], incident: bool, fail: bool
    ) -> list[dict[str, Any]]:
        """A stream starting now; its tokens and end are scheduled for later beats."""
        rng = self.rng
        stream_id = f"demo-{next(self._streams)}"
        prompt = rng.randint(50, 1500)
        start = self._event(
            "stream.start",
            now,
            **labels,
            stream_id=stream_id,
            prompt_tokens=prompt,
            max_tokens=512,
            temperature=0.7,
        )
        slow = 4.0 if incident else 1.0
        ts = now + rng.lognormvariate(0, 0.35) * model.ttft_ms * slow / 1000.0
        total = rng.randint(8, 40) if fail else rng.randint(20, 160)
        cancelled = not fail and rng.random() < 0.02
        if cancelled:
            total = rng.randint(2, 10)
        sent = 0
        while sent < total:
            n = min(total - sent, rng.choice((1, 1, 2, 3)))
            sent += n
            self._schedule(
                self._event("stream.token", ts, stream_id=stream_id, n=n, bytes=4 * n + 40)
            )
            if rng.random() < 0.002:
                self._schedule(
                    self._event("stream.backpressure", ts, stream_id=stream_id, buffer_size=64)
                )
            gap = n / model.tokens_per_second * rng.lognormvariate(0, 0.3) * slow
            if rng.random() < 0.003:
                gap += rng.uniform(0.6, 1.2)  # a stall (an inter-token gap above 500 ms)
            ts += gap
        end: dict[str, Any] = {"stream_id": stream_id, "finish_reason": "stop"}
        if fail:
            end = {
                "stream_id": stream_id,
                "status": "failed",  # a 500 outcome
                "error_type": "upstream_disconnect",
                "error_message": f"Upstream connection reset after {sent} tokens",
            }
        elif cancelled:
            end = {"stream_id": stream_id, "status": "cancelled"}
        elif sent >= 150:
            end["finish_reason"] = "length"
        self._schedule(self._event("stream.end", ts, **end))
        return [start]

    def _schedule(self, event: dict[str, Any]) -> None:
        heapq.heappush(self._pending, (event["ts"], next(self._seq), event))

    def _queue(self, now: float, incident: bool) -> dict[str, Any]:
        target = 45 if incident else 4
        step = self.rng.choice((-1, 0, 1)) + (1 if self.queue_depth < target else -1)
        self.queue_depth = max(1, min(64, self.queue_depth + step))
        return self._event("queue", now, queue="default", depth=self.queue_depth, capacity=64)

    def _cache(self, now: float, count: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(count):
            model = self.rng.choice(MODELS[:3])
            total = self.rng.randint(500, 4000)
            hit = self.rng.random() < 0.6
            out.append(
                self._event(
                    "cache",
                    now,
                    model=model.name,
                    endpoint=model.endpoint,
                    hit=hit,
                    total_tokens=total,
                    matched_tokens=int(total * self.rng.uniform(0.5, 0.95)) if hit else 0,
                )
            )
        return out


def frames(events: list[dict[str, Any]]) -> list[bytes]:
    """Events as msgpack frames of columnar batches (SPEC §1.2, the fast path), one batch per
    event type and at most :data:`FRAME_EVENTS` events per frame. A field an event lacks is
    ``None`` in its column: the decoder reads that as absent."""
    out: list[bytes] = []
    for i in range(0, len(events), FRAME_EVENTS):
        by_type: dict[str, list[dict[str, Any]]] = {}
        for event in events[i : i + FRAME_EVENTS]:
            by_type.setdefault(event["type"], []).append(event)
        batches = []
        for type_name, group in by_type.items():
            names = sorted({k for e in group for k in e} - {"type", "v"})
            cols = {k: [e.get(k) for e in group] for k in names}
            const = {k: c[0] for k, c in cols.items() if all(v == c[0] for v in c)}
            batches.append(
                {
                    "v": 1,
                    "type": type_name,
                    "const": const,
                    "cols": {k: c for k, c in cols.items() if k not in const},
                }
            )
        out.append(msgpack.packb(batches))
    return out


def _connect(
    context: zmq.asyncio.Context, endpoints: list[str], curve_public_key: bytes | None
) -> zmq.asyncio.Socket:
    """A PUSH socket to a local endpoint of the daemon; without one, to the first endpoint with
    CURVE (a fresh keypair: the endpoint asks for CURVE, ``ingest.curve_client_keys`` would have
    to list it)."""
    from metricsd.security import is_local_endpoint

    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    local = [e for e in endpoints if is_local_endpoint(e)]
    if local or curve_public_key is None:
        sock.connect((local or endpoints)[0])
        return sock
    public, secret = zmq.curve_keypair()
    sock.setsockopt(zmq.CURVE_SERVERKEY, curve_public_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.connect(endpoints[0])
    return sock


async def run_demo(
    context: zmq.asyncio.Context,
    endpoints: list[str],
    config: DemoConfig,
    curve_public_key: bytes | None = None,
) -> None:
    """Send the demo traffic (``config.rate`` requests per second) until cancelled."""
    sock = _connect(context, endpoints, curve_public_key)
    traffic = DemoTraffic(config.rate, incident=config.incident)
    if config.incident:
        log.info(
            "demo: an incident starts in %.0f s and lasts %.0f s", INCIDENT_START, INCIDENT_SECONDS
        )
    try:
        while True:
            for frame in frames(traffic.beat(time.time())):
                with contextlib.suppress(zmq.Again):  # the daemon is busy: skip this frame
                    await sock.send(frame, flags=zmq.NOBLOCK)
            await asyncio.sleep(PERIOD)
    finally:
        sock.close(linger=0)
