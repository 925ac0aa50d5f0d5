"""A paced emitter that counts its own drops: ``python -m tests.reliability.load_sender``.

Sends ``request`` events in columnar frames to one ZeroMQ endpoint at a fixed rate for a fixed
time, with non-blocking sends (SPEC §1.1): a send that would block (``zmq.Again``: the daemon is
down, or slower than the rate) drops the frame and counts its events. At the end it reports its
drops to the daemon in one ``client`` event (SPEC §1.5), sent blocking, flushes, and prints one
JSON line: ``{"sent": events handed to ZeroMQ, "dropped": events dropped, "offered": both,
"reported": whether the drop report went out, "seconds": time sending}``.

``--rate 0`` sends as fast as blocking sends allow (to measure the daemon's ceiling), ``--frames``
frames at most.
Everything is bounded: the run ends after ``--duration`` seconds, or at SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

import msgpack
import zmq

MODELS = ("gpt-4o", "claude-3-5-sonnet", "llama-3-70b")
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")


def frames(per_frame: int) -> list[bytes]:
    """A few distinct pre-packed frames (packing is not what is measured)."""
    out = []
    for i, model in enumerate(MODELS):
        for j, endpoint in enumerate(ENDPOINTS):
            out.append(
                msgpack.packb(
                    {
                        "type": "request",
                        "const": {"model": model, "endpoint": endpoint, "source": "load"},
                        "cols": {
                            "duration_ms": [
                                float(10 + (k * 7 + i + j) % 400) for k in range(per_frame)
                            ],
                            "status": [200 if k % 50 else 503 for k in range(per_frame)],
                            "input_tokens": [100 + k for k in range(per_frame)],
                            "output_tokens": [20 + k % 30 for k in range(per_frame)],
                        },
                    }
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument(
        "--rate", type=float, required=True, help="events/s (0: as fast as possible)"
    )
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--per-frame", type=int, default=100)
    parser.add_argument(
        "--frames", type=int, default=0, help="with --rate 0: send exactly this many, then stop"
    )
    parser.add_argument("--sndhwm", type=int, default=1000)
    parser.add_argument("--source", default="load")
    args = parser.parse_args()
    stop = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, args.sndhwm)
    sock.setsockopt(zmq.LINGER, 10_000)
    sock.connect(args.endpoint)
    packed = frames(args.per_frame)
    n = args.per_frame
    sent = dropped = 0
    started = time.monotonic()
    deadline = started + args.duration
    i = 0
    if args.rate <= 0:
        sock.setsockopt(zmq.SNDTIMEO, 1000)
        while not stop and time.monotonic() < deadline and (not args.frames or i < args.frames):
            try:
                sock.send(packed[i % len(packed)])
                sent += n
            except zmq.Again:
                dropped += n
            i += 1
    else:
        interval = n / args.rate  # seconds per frame
        while not stop:
            now = time.monotonic()
            if now >= deadline:
                break
            due = int((now - started) / interval) + 1
            while i < due:
                try:
                    sock.send(packed[i % len(packed)], zmq.NOBLOCK)
                    sent += n
                except zmq.Again:
                    dropped += n
                i += 1
            time.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
    seconds = time.monotonic() - started
    reported = False
    if dropped:
        sock.setsockopt(zmq.SNDTIMEO, 30_000)
        report = {"type": "client", "dropped": dropped, "source": args.source}
        try:
            sock.send(msgpack.packb(report))
            reported = True
        except zmq.Again:
            pass
    sock.close()  # lingers up to 10 s to deliver what is queued
    ctx.term()
    result = {
        "sent": sent,
        "dropped": dropped,
        "offered": sent + dropped,
        "reported": reported or not dropped,
        "seconds": round(seconds, 3),
    }
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
