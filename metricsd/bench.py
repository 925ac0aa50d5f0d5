"""``metricsd bench``: events/s through a real daemon for each frame shape, beside the ceiling.

For every shape the same frames are sent twice from this process over ZeroMQ (blocking sends,
so nothing is dropped): once to a bare receiver in another process that only receives and
msgpack-decodes them (the transport ceiling), once to the daemon (which decodes, validates and
applies them to every tracker). Both rates come from the same run on the same machine, so their
ratio is meaningful even where absolute figures are not.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

__all__ = ["SHAPES", "run_bench"]

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "text-embedding-3-small")
ENDPOINTS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses")


@dataclass(frozen=True)
class Shape:
    name: str
    description: str
    type: str  # the event type counted on the daemon
    per_frame: int
    frames: int  # at scale 1.0
    make: Callable[[np.random.Generator, int], list[bytes]]
    setup: Callable[[], list[bytes]] | None = None


def _typed(values: np.ndarray[Any, Any]) -> msgpack.ExtType:
    if values.dtype.kind == "f":
        return msgpack.ExtType(1, values.astype("<f8").tobytes())
    return msgpack.ExtType(2, values.astype("<i8").tobytes())


def _request_cols(rng: np.random.Generator, n: int, typed: bool) -> dict[str, Any]:
    cols = {
        "ts": 1.7e9 + rng.random(n),
        "duration_ms": np.round(rng.lognormal(5.5, 0.8, n), 3),
        "input_tokens": rng.integers(10, 4000, n),
        "output_tokens": rng.integers(1, 1000, n),
        "status": np.where(rng.random(n) < 0.02, 500, 200),
    }
    if typed:
        return {k: _typed(v) for k, v in cols.items()}
    return {k: v.tolist() for k, v in cols.items()}


def _columnar(typed: bool) -> Callable[[np.random.Generator, int], list[bytes]]:
    def make(rng: np.random.Generator, count: int) -> list[bytes]:
        return [
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {
                        "model": MODELS[i % 4],
                        "endpoint": ENDPOINTS[i % 4],
                        "source": "bench",
                    },
                    "cols": _request_cols(rng, 1000, typed),
                }
            )
            for i in range(count)
        ]

    return make


def _event(rng: np.random.Generator, i: int) -> dict[str, Any]:
    return {
        "type": "request",
        "model": MODELS[i % 4],
        "endpoint": ENDPOINTS[i % 4],
        "duration_ms": round(float(rng.lognormal(5.5, 0.8)), 3),
        "status": 200,
        "input_tokens": int(rng.integers(10, 4000)),
        "output_tokens": int(rng.integers(1, 1000)),
        "ts": 1.7e9 + float(rng.random()),
    }


def _array64(rng: np.random.Generator, count: int) -> list[bytes]:
    return [msgpack.packb([_event(rng, i * 64 + j) for j in range(64)]) for i in range(count)]


def _single(rng: np.random.Generator, count: int) -> list[bytes]:
    return [msgpack.packb(_event(rng, i)) for i in range(count)]


STREAMS = 1000


def _stream_ids() -> list[str]:
    return [f"bench-{i:04d}" for i in range(STREAMS)]


def _stream_starts() -> list[bytes]:
    ids = _stream_ids()
    return [
        msgpack.packb(
            {
                "v": 1,
                "type": "stream.start",
                "const": {"model": "gpt-4o", "endpoint": ENDPOINTS[0]},
                "cols": {"stream_id": ids, "ts": [1.7e9] * STREAMS},
            }
        )
    ]


def _tokens(rng: np.random.Generator, count: int) -> list[bytes]:
    ids = _stream_ids()  # every frame: one token for each of the 1 000 concurrent streams
    frames = []
    for i in range(count):
        ts = 1.7e9 + 0.05 * (i + 1) + rng.random(STREAMS) * 0.01
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "stream.token",
                    "cols": {
                        "stream_id": ids,
                        "ts": _typed(ts),
                        "bytes": _typed(np.full(STREAMS, 12)),
                    },
                }
            )
        )
    return frames


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape(
            "columnar",
            "columnar batches of 1 000 request events (msgpack arrays)",
            "request",
            1000,
            1500,
            _columnar(typed=False),
        ),
        Shape(
            "typed",
            "columnar batches of 1 000 request events (typed columns)",
            "request",
            1000,
            2500,
            _columnar(typed=True),
        ),
        Shape("array64", "arrays of 64 request event maps", "request", 64, 5000, _array64),
        Shape("single", "one request event per frame", "request", 1, 150_000, _single),
        Shape(
            "tokens",
            "stream tokens, 1 000 concurrent streams, columnar",
            "stream.token",
            1000,
            2000,
            _tokens,
            _stream_starts,
        ),
    )
}


# --- the two receivers --------------------------------------------------------------------------


def _ext(code: int, data: bytes) -> Any:
    return np.frombuffer(data, dtype="<f8" if code == 1 else "<i8")


def _sink(endpoint_out: Any, frames: int, result_out: Any) -> None:
    """The transport ceiling: receive and msgpack-decode, nothing else."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.bind("tcp://127.0.0.1:*")
    endpoint_out.send(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    sock.recv()  # a warm-up frame
    started = 0.0
    for i in range(frames):
        data = sock.recv()
        if i == 0:
            started = time.perf_counter()
        msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)
    result_out.send(time.perf_counter() - started)
    sock.close(linger=0)
    ctx.term()


def _send(endpoint: str, frames: list[bytes], warmup: bytes | None = None) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.LINGER, 30_000)
    sock.connect(endpoint)
    if warmup is not None:
        sock.send(warmup)
    for frame in frames:
        sock.send(frame)
    sock.close()
    ctx.term()


def _ceiling(frames: list[bytes], events: int) -> float:
    spawn = mp.get_context("spawn")
    endpoint_in, endpoint_out = spawn.Pipe(duplex=False)
    result_in, result_out = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=_sink, args=(endpoint_out, len(frames), result_out))
    proc.start()
    try:
        endpoint = endpoint_in.recv()
        _send(endpoint, frames, warmup=frames[0])
        if not result_in.poll(120):
            raise RuntimeError("the ceiling receiver did not finish")
        elapsed: float = result_in.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return events / elapsed


# --- the daemon ---------------------------------------------------------------------------------


def _received(http: str, event_type: str, token: str | None) -> float:
    req = urllib.request.Request(http + "/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=10) as resp:
        text = resp.read().decode()
    prefix = f'metricsd_events_received_total{{type="{event_type}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def _through_daemon(
    http: str, ingest: str, shape: Shape, frames: list[bytes], token: str | None
) -> float:
    if shape.setup is not None:
        _send(ingest, shape.setup())
    before = _received(http, shape.type, token)
    target = before + len(frames) * shape.per_frame
    started = time.perf_counter()
    _send(ingest, frames)
    deadline = time.monotonic() + 300
    count = before
    while count < target and time.monotonic() < deadline:
        time.sleep(0.01)
        count = _received(http, shape.type, token)
    elapsed = time.perf_counter() - started
    if count < target:
        raise RuntimeError(
            f"{shape.name}: the daemon applied {count - before:.0f} of {target - before:.0f} events"
        )
    return (target - before) / elapsed


class _Daemon:
    """A daemon started for the run (no state, default trackers)."""

    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        ready = Path(self.tmp.name) / "ready.json"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "metricsd",
                "serve",
                "--http",
                "127.0.0.1:0",
                "--ingest",
                "tcp://127.0.0.1:0",
                "--ready-file",
                str(ready),
                "--log-level",
                "warning",
            ],
            env={k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")},
        )
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("the daemon did not start")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.http: str = info["http"]
        self.ingest: str = info["ingest"][0]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.tmp.cleanup()


def run_bench(
    shapes: list[str],
    scale: float = 1.0,
    target: tuple[str, str] | None = None,
    token: str | None = None,
    progress: Callable[[str], None] = lambda _m: None,
) -> list[dict[str, Any]]:
    """Measure each shape; ``target`` is (http url, ingest endpoint) of a running daemon."""
    rng = np.random.default_rng(0)
    daemon = None if target is not None else _Daemon()
    http, ingest = target if target is not None else (daemon.http, daemon.ingest)  # type: ignore[union-attr]
    rows = []
    try:
        for name in shapes:
            shape = SHAPES[name]
            count = max(10, int(shape.frames * scale))
            progress(f"{name}: building {count} frames")
            frames = shape.make(rng, count)
            events = count * shape.per_frame
            progress(f"{name}: transport ceiling")
            ceiling = _ceiling(frames, events)
            progress(f"{name}: through the daemon")
            rate = _through_daemon(http, ingest, shape, frames, token)
            rows.append(
                {
                    "shape": name,
                    "description": shape.description,
                    "events": events,
                    "ceiling_events_per_second": ceiling,
                    "daemon_events_per_second": rate,
                    "ratio": rate / ceiling,
                }
            )
    finally:
        if daemon is not None:
            daemon.close()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = f"{'shape':<9} {'events':>9} {'ceiling ev/s':>14} {'daemon ev/s':>14} {'ratio':>6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['shape']:<9} {r['events']:>9,} {r['ceiling_events_per_second']:>14,.0f} "
            f"{r['daemon_events_per_second']:>14,.0f} {r['ratio']:>6.2f}"
        )
    return "\n".join(lines)
