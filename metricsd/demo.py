"""``serve --demo``: synthetic LLM traffic sent over the daemon's own ingest socket.

The demo goes through the real wire path (a PUSH socket, msgpack columnar frames), so what a new
user sees on ``/metrics`` is exactly what an application would produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any

import msgpack
import zmq
import zmq.asyncio

__all__ = ["demo_frame", "run_demo"]

MODELS = (
    ("gpt-4o", "/v1/chat/completions", 650.0),
    ("gpt-4o-mini", "/v1/chat/completions", 320.0),
    ("claude-3-5-sonnet", "/v1/messages", 900.0),
    ("text-embedding-3-small", "/v1/embeddings", 45.0),
)
FINISH = ("stop", "stop", "stop", "length", "tool_calls")


def demo_frame(rng: random.Random, n: int, now: float) -> bytes:
    """One frame: an array of columnar batches, one per model, ``n`` events in all."""
    batches: list[dict[str, Any]] = []
    for model, endpoint, median_ms in MODELS:
        k = max(1, n // len(MODELS))
        statuses = [
            429 if r < 0.01 else 500 if r < 0.02 else 200 for r in (rng.random() for _ in range(k))
        ]
        batches.append(
            {
                "v": 1,
                "type": "request",
                "const": {"model": model, "endpoint": endpoint, "source": "demo"},
                "cols": {
                    "ts": [now] * k,
                    "duration_ms": [
                        round(rng.lognormvariate(0, 0.5) * median_ms, 3) for _ in range(k)
                    ],
                    "status": statuses,
                    "input_tokens": [rng.randint(20, 2000) for _ in range(k)],
                    "output_tokens": [
                        0 if "embedding" in model else rng.randint(1, 800) for _ in range(k)
                    ],
                    "finish_reason": [rng.choice(FINISH) for _ in range(k)],
                },
            }
        )
    batches.append(
        {
            "v": 1,
            "type": "queue",
            "queue": "default",
            "depth": rng.randint(0, 12),
            "capacity": 64,
            "source": "demo",
        }
    )
    hits = [rng.random() < 0.6 for _ in range(4)]
    batches.append(
        {
            "v": 1,
            "type": "cache",
            "const": {"model": "gpt-4o", "endpoint": "/v1/chat/completions", "source": "demo"},
            "cols": {
                "hit": hits,
                "total_tokens": [1000] * 4,
                "matched_tokens": [800 if h else 0 for h in hits],
            },
        }
    )
    packed: bytes = msgpack.packb(batches)
    return packed


async def run_demo(context: zmq.asyncio.Context, endpoint: str, rate: float) -> None:
    """Send about ``rate`` request events per second until cancelled."""
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100)
    sock.connect(endpoint)
    rng = random.Random(0)
    period = 0.25
    try:
        while True:
            n = max(len(MODELS), int(rate * period))
            with contextlib.suppress(zmq.Again):  # the daemon is busy: skip this beat
                await sock.send(demo_frame(rng, n, time.time()), flags=zmq.NOBLOCK)
            await asyncio.sleep(period)
    finally:
        sock.close(linger=0)
