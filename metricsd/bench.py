"""``metricsd bench``: events/s through a real daemon for each frame shape, beside the ceiling.

For every shape the same frames are sent twice from this process over ZeroMQ (blocking sends,
so nothing is dropped): once to a bare receiver in another process that only receives and
msgpack-decodes them (the transport ceiling), once to the daemon (which decodes, validates and
applies them to every tracker). Both rates come from the same run on the same machine, so their
ratio is meaningful even where absolute figures are not.

The first two shapes look like users' traffic: ``emitter-mixed`` is what the Python client's
flusher sends for mixed requests (3 endpoints × 4 models, 4 % errors, one key), packed by the
installed client's own code (so it follows the client: one small columnar batch per label set,
about 39 per frame, up to 923f900; typed and dictionary columns after); ``cols-mixed`` is the
same traffic from an emitter that does not group rows (every label a plain array column). The
others are regular shapes of SPEC §1.2, one series per batch.

Two further measurements start a daemon of their own and treat it as a black box (a child
process, read over HTTP and /proc only): :func:`run_series` (scrape and JSON-route latency,
memory and idle/active CPU with N series held) and :func:`run_liveness` (``/healthz`` and
scrapes while ingest is saturated, a burst of new label values, SIGTERM under load).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import client as http_client
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import numpy as np
import zmq

__all__ = [
    "SHAPES",
    "BenchError",
    "exit_on_sigterm",
    "format_liveness",
    "format_series",
    "format_table",
    "run_bench",
    "run_liveness",
    "run_series",
]

MODELS = ("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "text-embedding-3-small")
ENDPOINTS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/responses")


class BenchError(RuntimeError):
    """A benchmark cannot run (a missing package, a daemon that does not start or apply)."""


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


# --- mixed traffic: the shapes that look like users ----------------------------------------------

#: Rows per emitter flush (the client's default ``batch_size``) and per ``cols-mixed`` batch.
MIXED_ROWS = 1000
MIXED_ENDPOINTS = ENDPOINTS[:3]
MIXED_COMBOS = len(MIXED_ENDPOINTS) * len(MODELS)  # 12
ERROR_RATE = 0.04
ERROR_TYPES = {
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    502: "bad_gateway",
    503: "service_unavailable",
}
ERROR_STATUSES = tuple(ERROR_TYPES)
KEY_ID = "k_5e1f0c2d9a7b"
#: Seconds between two rows' ``ts`` (100 000 requests/s of application traffic).
_ROW_SPACING = 1e-5


def _mixed(rng: np.random.Generator, n: int, t0: float) -> dict[str, list[Any]]:
    """``n`` request outcomes as Python lists: endpoint × model at random per request (every
    one of the 12 combinations in every chunk of :data:`MIXED_ROWS`), 4 % errors."""
    combo = rng.integers(0, MIXED_COMBOS, n)
    for start in range(0, n, MIXED_ROWS):
        k = min(MIXED_COMBOS, n - start)
        combo[start : start + k] = rng.permutation(MIXED_COMBOS)[:k]
    failed = rng.random(n) < ERROR_RATE
    status = np.where(failed, rng.choice(ERROR_STATUSES, n), 200).tolist()
    return {
        "ts": (t0 + (np.arange(n) - n) * _ROW_SPACING).tolist(),  # the last row at t0
        "duration_ms": np.round(rng.lognormal(5.5, 0.8, n), 3).tolist(),
        "status": status,
        "input_tokens": rng.integers(10, 4000, n).tolist(),
        "output_tokens": np.where(failed, 0, rng.integers(1, 1000, n)).tolist(),
        "endpoint": [MIXED_ENDPOINTS[c // len(MODELS)] for c in combo.tolist()],
        "model": [MODELS[c % len(MODELS)] for c in combo.tolist()],
        "finish_reason": [None if s != 200 else "stop" for s in status],
        "error_type": [ERROR_TYPES.get(s) for s in status],
        "key_id": [KEY_ID] * n,
    }


def _client_wire() -> ModuleType:
    """The Python client's packing code (imported lazily: only this shape needs it)."""
    try:
        from metricsd_client import _wire
    except ImportError as exc:
        raise BenchError(
            "the emitter-mixed shape packs frames with the Python client's own code, but "
            f"metricsd_client is not importable ({exc}); install it with "
            "`pip install -e clients/python`, or pick other shapes with --shape"
        ) from exc
    return _wire


def _emitter_rows(t: dict[str, list[Any]]) -> list[tuple[Any, ...]]:
    """The tuples ``Emitter.request`` appends (``_wire.SPECS[0]``; its defaults where unset)."""
    n = len(t["ts"])
    none = [None] * n  # lists, not iterators: zip takes a fresh iterator of each argument
    zero = [0] * n
    # (0, ts, duration_ms, status, input_tokens, output_tokens, cached_tokens,
    #  cache_write_tokens, reasoning_tokens, streaming, ttft_ms, queue_ms, finish_reason,
    #  provider, error_type, error_message, batch, cost_usd,
    #  endpoint, model, api_key, key_id, user_id, request_id)
    return list(
        zip(
            zero, t["ts"], t["duration_ms"], t["status"], t["input_tokens"],
            t["output_tokens"], zero, zero, zero, none, none, none, t["finish_reason"],
            none, t["error_type"], none, none, none,
            t["endpoint"], t["model"], none, t["key_id"], none, none,
            strict=True,
        )
    )  # fmt: skip


def emitter_frames(
    rng: np.random.Generator, count: int, t0: float | None = None, source: str = "bench"
) -> list[bytes]:
    """``count`` frames as the Python emitter's flusher builds them, one per flush of
    :data:`MIXED_ROWS` rows (``_wire.encode`` → ``assemble`` → ``frame``)."""
    wire = _client_wire()
    packer = wire.new_packer()
    traffic = _mixed(rng, count * MIXED_ROWS, time.time() if t0 is None else t0)
    rows = _emitter_rows(traffic)
    frames: list[bytes] = []
    for start in range(0, len(rows), MIXED_ROWS):
        packed, dropped = wire.encode(rows[start : start + MIXED_ROWS], source, packer)
        assembled = wire.assemble(packed)
        if dropped or len(assembled) != 1 or assembled[0][0] != MIXED_ROWS:
            raise BenchError("the client packed a flush other than as one frame of every row")
        frames.append(wire.frame(assembled[0][1], None, packer))
    return frames


def cols_frames(
    rng: np.random.Generator, count: int, t0: float | None = None, source: str = "bench"
) -> list[bytes]:
    """``count`` columnar batches of :data:`MIXED_ROWS` rows with every label a column (an
    emitter that does not group); ``None`` where a row has no ``error_type``/``finish_reason``."""
    traffic = _mixed(rng, count * MIXED_ROWS, time.time() if t0 is None else t0)
    frames = []
    for start in range(0, count * MIXED_ROWS, MIXED_ROWS):
        cols = {k: v[start : start + MIXED_ROWS] for k, v in traffic.items()}
        frames.append(
            msgpack.packb({"v": 1, "type": "request", "const": {"source": source}, "cols": cols})
        )
    return frames


#: Emitter time of the regular shapes' events: the start of this process, not a fixed date, so
#: they stay within the daemon's clock-skew limit (SPEC §8: 1 day by default; they were at
#: 1.7e9, in 2023, before that limit).
BASE_TS = float(int(time.time()))


def _request_cols(rng: np.random.Generator, n: int, typed: bool) -> dict[str, Any]:
    cols = {
        "ts": BASE_TS + rng.random(n),
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
        "ts": BASE_TS + float(rng.random()),
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
                "cols": {"stream_id": ids, "ts": [BASE_TS] * STREAMS},
            }
        )
    ]


def _tokens(rng: np.random.Generator, count: int) -> list[bytes]:
    ids = _stream_ids()  # every frame: one token for each of the 1 000 concurrent streams
    frames = []
    for i in range(count):
        ts = BASE_TS + 0.05 * (i + 1) + rng.random(STREAMS) * 0.01
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
            "emitter-mixed",
            "the Python emitter's frames (its own packing code): 1 000-row flushes of mixed "
            "requests (3 endpoints × 4 models, 4 % errors)",
            "request",
            MIXED_ROWS,
            1000,
            lambda rng, count: emitter_frames(rng, count),
        ),
        Shape(
            "cols-mixed",
            "the same mixed requests, 1 000 per columnar batch, every label a column",
            "request",
            MIXED_ROWS,
            1000,
            lambda rng, count: cols_frames(rng, count),
        ),
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


#: Typed columns (SPEC §1.2, docs/protocol.md): msgpack ext type → element type.
_EXT_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype("<f8"),
    2: np.dtype("<i8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
}
_EXT_DICTIONARY = 5


def _ext(code: int, data: bytes) -> Any:
    """The ceiling's decoding of ext objects: typed columns as arrays over the bytes, and
    dictionary columns (type 5: ``[values, codes]``) as their values and an array of codes."""
    if code == _EXT_DICTIONARY:
        values, codes = msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)
        width = 1 if len(values) <= 1 << 8 else 2 if len(values) <= 1 << 16 else 4
        return values, np.frombuffer(codes, dtype=f"<u{width}")
    dtype = _EXT_DTYPES.get(code)
    if dtype is None or len(data) % dtype.itemsize:
        return msgpack.ExtType(code, data)
    return np.frombuffer(data, dtype=dtype)


def _sink(endpoint_out: Any, frames: int, result_out: Any) -> None:
    """The transport ceiling: receive and msgpack-decode, nothing else."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.RCVTIMEO, 120_000)  # never outlive a bench that stopped sending
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


def _send(
    endpoint: str,
    frames: Sequence[bytes],
    warmup: bytes | None = None,
    timeout: float = 60.0,
    linger: float = 30.0,
) -> None:
    """Send every frame, blocking, but not forever: a receiver that stops reading for
    ``timeout`` seconds has failed."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = _push_socket(ctx, endpoint, hwm=10_000, timeout=timeout, linger=linger)
    try:
        if warmup is not None:
            sock.send(warmup)
        for frame in frames:
            sock.send(frame)
    except zmq.Again:
        raise BenchError(f"{endpoint} accepted no frame for {timeout:g} s") from None
    finally:
        sock.close()
        ctx.term()


def _ceiling(frames: list[bytes], events: int) -> float:
    spawn = mp.get_context("spawn")
    endpoint_in, endpoint_out = spawn.Pipe(duplex=False)
    result_in, result_out = spawn.Pipe(duplex=False)
    proc = spawn.Process(target=_sink, args=(endpoint_out, len(frames), result_out))
    proc.start()
    try:
        if not endpoint_in.poll(60):
            raise BenchError("the ceiling receiver did not start")
        endpoint = endpoint_in.recv()
        _send(endpoint, frames, warmup=frames[0])
        if not result_in.poll(120):
            raise BenchError("the ceiling receiver did not finish")
        elapsed: float = result_in.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    return events / elapsed


# --- the daemon ---------------------------------------------------------------------------------


def _get(url: str, token: str | None = None, timeout: float = 10.0) -> bytes:
    """GET ``url``'s body; raises TimeoutError unless the whole answer arrives in ``timeout`` s
    (a total deadline, not per read: a daemon that trickles its answer still times out)."""
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    cls = http_client.HTTPSConnection if parts.scheme == "https" else http_client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), None, headers)
        sock = conn.sock
        if sock is not None:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
        resp = conn.getresponse()
        chunks = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"GET {url}: no whole answer in {timeout} s")
            if sock is not None:
                sock.settimeout(left)
            chunk = resp.read1(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        if resp.status != 200:
            raise OSError(f"GET {url}: HTTP {resp.status}")
        return b"".join(chunks)
    finally:
        conn.close()


def _sample(text: str, prefix: str) -> float | None:
    """The value of the exposition line starting with ``prefix`` (name and labels, a space)."""
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :].split()[0])
    return None


def _samples(text: str, name: str) -> dict[str, float]:
    """Every sample of one family: ``{labels: value}`` (labels as written, ``""`` for none)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            head, _, value = line.rpartition(" ")
            out[head[len(name) :].strip("{}")] = float(value)
    return out


def _received(http: str, event_type: str, token: str | None) -> float:
    text = _get(http + "/metrics", token).decode()
    return _sample(text, f'metricsd_events_received_total{{type="{event_type}"}} ') or 0.0


def _through_daemon(
    http: str,
    ingest: str,
    shape: Shape,
    frames: list[bytes],
    token: str | None,
    poll: float = 0.01,
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
        # Every read is a scrape the daemon serves: coarse until the end is near.
        time.sleep(poll if count < before + 0.8 * (target - before) else min(poll, 0.01))
        count = _received(http, shape.type, token)
    elapsed = time.perf_counter() - started
    if count < target:
        raise BenchError(
            f"{shape.name}: the daemon applied {count - before:.0f} of {target - before:.0f} events"
        )
    return (target - before) / elapsed


def _die_with_parent() -> None:
    """In a child before exec (Linux): SIGKILL it when the bench dies, however it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _child_setup(cpus: set[int] | None) -> Callable[[], None]:
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        _die_with_parent()

    return setup


def exit_on_sigterm() -> None:
    """Make SIGTERM exit through ``finally`` blocks, so the daemons and helper processes of a
    run are stopped (call from the main thread of a command that runs a benchmark)."""

    def handler(_signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, handler)


class _Daemon:
    """A daemon started for the run (no state, default trackers), as a child process."""

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        log_to_file: bool = False,
        cpus: set[int] | None = None,
    ) -> None:
        """``cpus``: the cores the daemon (and the worker processes it starts) may use."""
        self.tmp = tempfile.TemporaryDirectory()
        ready = Path(self.tmp.name) / "ready.json"
        self.log_path = Path(self.tmp.name) / "daemon.log" if log_to_file else None
        log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        try:
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
                    *extra_args,
                ],
                env={k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")},
                stderr=log,
                preexec_fn=_child_setup(cpus) if sys.platform == "linux" else None,
            )
        finally:
            if log is not None:
                log.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while not ready.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                tail = " / ".join(self.log_tail())
                self.close(kill=True)
                raise BenchError("the daemon did not start" + (f": {tail}" if tail else ""))
            time.sleep(0.05)
        time.sleep(0.05)  # the ready file is written whole, but give the writer a moment
        info = json.loads(ready.read_text())
        self.http: str = info["http"]
        self.ingest: str = info["ingest"][0]

    def log_tail(self, lines: int = 5) -> list[str]:
        if self.log_path is None or not self.log_path.exists():
            return []
        text = self.log_path.read_text(errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def close(self, kill: bool = False) -> None:
        """Stop the daemon (SIGTERM, or SIGKILL when its shutdown is not being measured)."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
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
    width = max([9, *(len(r["shape"]) for r in rows)])
    header = (
        f"{'shape':<{width}} {'events':>9} {'ceiling ev/s':>14} {'daemon ev/s':>14} {'ratio':>6}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['shape']:<{width}} {r['events']:>9,} {r['ceiling_events_per_second']:>14,.0f} "
            f"{r['daemon_events_per_second']:>14,.0f} {r['ratio']:>6.2f}"
        )
    return "\n".join(lines)


# --- black-box probes: latency, /proc ------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)  # socket.timeout is TimeoutError


@dataclass
class _Probe:
    """One HTTP request: when it started (monotonic), how long it took, and how it ended."""

    start: float
    seconds: float
    outcome: str  # "ok", "timeout" (counted at the time waited), "error"


def _probe(url: str, timeout: float = 10.0) -> tuple[_Probe, bytes]:
    start = time.monotonic()
    t0 = time.perf_counter()
    try:
        body = _get(url, timeout=timeout)
    except Exception as exc:
        outcome = "timeout" if _is_timeout(exc) else "error"
        return _Probe(start, time.perf_counter() - t0, outcome), b""
    return _Probe(start, time.perf_counter() - t0, "ok"), body


def _latency(probes: Sequence[_Probe]) -> dict[str, Any]:
    """p50/p99/max in ms over answered and timed-out requests (a timeout counts as its wait)."""
    waited = [p.seconds * 1000 for p in probes if p.outcome != "error"]
    out: dict[str, Any] = {
        "requests": len(probes),
        "timeouts": sum(p.outcome == "timeout" for p in probes),
        "errors": sum(p.outcome == "error" for p in probes),
        "p50_ms": None,
        "p99_ms": None,
        "max_ms": None,
    }
    if waited:
        out["p50_ms"] = float(np.percentile(waited, 50))
        out["p99_ms"] = float(np.percentile(waited, 99))
        out["max_ms"] = max(waited)
    return out


def _sequential(url: str, n: int, timeout: float = 10.0) -> list[_Probe]:
    return [_probe(url, timeout)[0] for _ in range(n)]


class _Poller(threading.Thread):
    """Requests ``url`` every ``interval`` seconds, one at a time (a slow answer delays the next
    request, it never overlaps it), until stopped; keeps every probe (and, if asked, bodies)."""

    def __init__(self, url: str, interval: float, keep_bodies: bool = False) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = interval
        self.keep_bodies = keep_bodies
        self.probes: list[_Probe] = []
        self.bodies: list[tuple[float, bytes]] = []  # (monotonic time answered, body)
        self.halt = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            now = time.monotonic()
            if now < next_at:
                self.halt.wait(next_at - now)
                continue
            next_at = max(next_at + self.interval, now)
            probe, body = _probe(self.url)
            self.probes.append(probe)
            if self.keep_bodies and body:
                self.bodies.append((time.monotonic(), body))

    def stop(self) -> None:
        self.halt.set()
        self.join(15)  # at most one request in flight, with a 10 s timeout


def _push_socket(
    ctx: zmq.Context[zmq.Socket[bytes]],
    endpoint: str,
    hwm: int = 1000,
    timeout: float = 10.0,
    linger: float = 5.0,
) -> zmq.Socket[bytes]:
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.LINGER, int(linger * 1000))
    sock.connect(endpoint)
    return sock


def _send_all(endpoint: str, frames: Sequence[bytes]) -> None:
    _send(endpoint, frames, timeout=10.0, linger=5.0)


def _series_frames(
    models: Sequence[str], per_series: int, rng: np.random.Generator, per_frame: int = 9000
) -> list[bytes]:
    """Columnar request batches: ``per_series`` events for each model name."""
    names = [m for m in models for _ in range(per_series)]
    frames = []
    now = time.time()
    for start in range(0, len(names), per_frame):
        chunk = names[start : start + per_frame]
        n = len(chunk)
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {"endpoint": ENDPOINTS[0], "status": 200, "source": "bench"},
                    "cols": {
                        "model": chunk,
                        "ts": (now + np.arange(n) * 1e-6).tolist(),
                        "duration_ms": np.round(rng.lognormal(5.5, 0.8, n), 3).tolist(),
                        "input_tokens": rng.integers(10, 4000, n).tolist(),
                        "output_tokens": rng.integers(1, 1000, n).tolist(),
                    },
                }
            )
        )
    return frames


def _total_requests(http: str, timeout: float = 10.0) -> int:
    """Requests counted over the daemon's lifetime (``/metrics/errors`` ``total_requests``)."""
    return int(json.loads(_get(http + "/metrics/errors", timeout=timeout))["total_requests"])


def _wait_requests(http: str, target: int, timeout: float) -> int:
    """Poll ``/metrics/errors`` (``total_requests``, lifetime) until it reaches ``target``:
    a way to wait for the daemon without scraping ``/metrics`` before timing it."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a slow answer, or a shape this version lacks
            seen = _total_requests(http, timeout=30)
        if seen >= target:
            return seen
        time.sleep(0.2)
    raise BenchError(f"the daemon counted {seen} of {target} requests in time")


# --- many series: scrape cost, memory, idle and active CPU ---------------------------------------

SERIES_ROUTES = (
    "/metrics/json",
    "/metrics/summary",
    "/metrics/streaming",
    "/metrics/errors",
    "/metrics/slo",
    "/metrics/costs",
    "/metrics/recent",
)


#: Seconds between rounds of scrapes and route requests: more than the daemon's default tick
#: (0.5 s), so a round does not just read what the previous round left cached for that tick.
ROUND_SECONDS = 0.6


def run_series(
    n: int,
    progress: Callable[[str], None] = lambda _m: None,
    per_series: int = 3,
    rounds: int = 20,
    cpu_window: float = 10.0,
    round_budget: float = 120.0,
) -> dict[str, Any]:
    """A fresh daemon holding ``n`` request series (model names ``m-00000``…).

    In order: load the series (applied: ``/metrics/errors`` ``total_requests``, so ``/metrics``
    is not read before it is timed); CPU over ``cpu_window`` s, idle and never scraped;
    ``rounds`` rounds, :data:`ROUND_SECONDS` apart, of one request to every JSON route
    (``/metrics`` never scraped yet); the first ``/metrics`` scrape; ``rounds`` rounds of one
    ``/metrics`` scrape and one request to every JSON route (each set of rounds starts no new
    round after ``round_budget`` s: with slow answers it has fewer samples, see ``n``); CPU over
    ``cpu_window`` s idle again (scraped moments before); CPU over ``cpu_window`` s with a
    scrape a second while 1 % of the series get an event every 0.5 s. RSS (VmRSS) empty, loaded,
    and after the scrapes.
    """
    if n < 1:
        raise BenchError("--series needs at least one series")
    rng = np.random.default_rng(1)
    digits = max(5, len(str(n - 1)))
    models = [f"m-{i:0{digits}d}" for i in range(n)]
    # Above the default cap, raise it so that every series is real (reported below).
    daemon = _Daemon(["--max-series", str(n)] if n > 10_000 else [])
    pid, http = daemon.pid, daemon.http
    out: dict[str, Any] = {"series": n, "events_per_series": per_series}
    try:
        time.sleep(1.0)
        rss_empty = _rss_bytes(pid)
        progress(f"series: sending {n:,} series × {per_series} events")
        _send_all(daemon.ingest, _series_frames(models, per_series, rng))
        _wait_requests(http, n * per_series, timeout=300)
        time.sleep(1.0)
        rss_loaded = _rss_bytes(pid)

        progress(f"series: CPU over {cpu_window:.0f} s idle, never scraped")
        out["cpu_idle_share"] = _cpu_share(pid, cpu_window)

        progress(f"series: {rounds} rounds of every JSON route, /metrics not scraped")
        alone, _ = _rounds(http, SERIES_ROUTES, rounds, round_budget)
        progress("series: the first /metrics scrape")
        first, body = _probe(http + "/metrics", timeout=60)
        if first.outcome != "ok":
            raise BenchError(f"the first /metrics scrape failed ({first.outcome})")
        progress(f"series: {rounds} rounds of /metrics and every JSON route")
        scraped, last = _rounds(http, ("/metrics", *SERIES_ROUTES), rounds, round_budget)
        body = last or body
        text = body.decode()
        out.update(
            first_scrape_ms=first.seconds * 1000,
            scrape=_latency(scraped.pop("/metrics")),
            routes={route: _latency(seen) for route, seen in alone.items()},
            routes_scraped={route: _latency(seen) for route, seen in scraped.items()},
            exposition_bytes=len(body),
            rss_empty_bytes=rss_empty,
            rss_bytes=rss_loaded,
            rss_after_scrapes_bytes=_rss_bytes(pid),
            rss_per_series_bytes=(rss_loaded - rss_empty) / n,
            daemon_series=_samples(text, "metricsd_series"),
            daemon_series_overflow=_samples(text, "metricsd_series_overflow_total"),
        )

        progress(f"series: CPU over {cpu_window:.0f} s idle, just after the scrapes")
        out["cpu_idle_after_scrapes_share"] = _cpu_share(pid, cpu_window)

        progress(f"series: CPU over {cpu_window:.0f} s, 1 % of series each tick, a scrape a second")
        out.update(_series_active(daemon, models, cpu_window, rng))
    finally:
        daemon.close()
    return out


def _rounds(
    http: str, routes: Sequence[str], rounds: int, budget: float
) -> tuple[dict[str, list[_Probe]], bytes]:
    """``rounds`` rounds, :data:`ROUND_SECONDS` apart, of one request to each route in turn (no
    new round after ``budget`` seconds); returns the probes per route and the last ``/metrics``
    body read."""
    probes: dict[str, list[_Probe]] = {route: [] for route in routes}
    last = b""
    t0 = time.monotonic()
    for i in range(rounds):
        if i and time.monotonic() - t0 > budget:
            break
        pause = t0 + i * ROUND_SECONDS - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        for route, seen in probes.items():
            probe, data = _probe(http + route, timeout=60)
            seen.append(probe)
            if route == "/metrics" and data:
                last = data
    return probes, last


def _cpu_share(pid: int, seconds: float) -> float:
    """The process's CPU time over ``seconds`` of wall time, as a share of one core."""
    c0, t0 = _cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def _series_active(
    daemon: _Daemon, models: list[str], seconds: float, rng: np.random.Generator
) -> dict[str, Any]:
    touched = max(1, len(models) // 100)
    halt = threading.Event()
    sent = [0]
    failure: list[BaseException] = []

    def sender() -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = _push_socket(ctx, daemon.ingest)
        try:
            while not halt.is_set():
                picked = rng.choice(len(models), touched, replace=False)
                sock.send(_series_frames([models[i] for i in picked], 1, rng)[0])
                sent[0] += touched
                halt.wait(0.5)
        except BaseException as exc:
            failure.append(exc)
        finally:
            sock.close(linger=0)
            ctx.term()

    def scrape() -> None:
        scrapes.append(_probe(daemon.http + "/metrics", timeout=10)[0])

    thread = threading.Thread(target=sender, daemon=True)
    scrapers: list[threading.Thread] = []
    scrapes: list[_Probe] = []
    c0, t0 = _cpu_seconds(daemon.pid), time.monotonic()
    thread.start()
    try:
        # A scrape a second on the clock, each in its own thread (a slow answer does not delay
        # the next scrape, as with a scraper on a fixed interval), over a window of fixed length.
        for i in range(int(seconds)):
            pause = t0 + i - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            scrapers.append(threading.Thread(target=scrape, daemon=True))
            scrapers[-1].start()
        pause = t0 + seconds - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        cpu = (_cpu_seconds(daemon.pid) - c0) / (time.monotonic() - t0)
    finally:
        halt.set()
        thread.join(15)
        for scraper in scrapers:
            scraper.join(max(0.0, t0 + seconds + 12 - time.monotonic()))
    if failure:
        raise BenchError(f"the series sender failed: {failure[0]!r}")
    return {
        "cpu_active_share": cpu,
        "active_events_per_tick": touched,
        "active_events_sent": sent[0],
        "active_scrape": _latency(scrapes),
    }


def _mib(n: float) -> str:
    return f"{n / (1 << 20):,.1f} MiB"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:,.1f}"


def _lat_header(label: str, width: int) -> str:
    return f"{label:<{width}} {'n':>5} {'fail':>5} {'p50 ms':>10} {'p99 ms':>10} {'max ms':>10}"


def _lat_row(label: str, lat: dict[str, Any], width: int) -> str:
    fails = lat["timeouts"] + lat["errors"]
    return (
        f"{label:<{width}} {lat['requests']:>5} {fails:>5} {_ms(lat['p50_ms']):>10} "
        f"{_ms(lat['p99_ms']):>10} {_ms(lat['max_ms']):>10}"
    )


def format_series(r: dict[str, Any]) -> str:
    series = ", ".join(f"{k or '-'}={v:,.0f}" for k, v in r["daemon_series"].items())
    overflow = sum(r["daemon_series_overflow"].values())
    lines = [
        f"{r['series']:,} series ({r['events_per_series']} request events each), fresh daemon",
        f"first /metrics scrape        {r['first_scrape_ms']:,.1f} ms",
        f"exposition                   {r['exposition_bytes']:,} bytes",
        f"RSS empty → loaded           {_mib(r['rss_empty_bytes'])} → {_mib(r['rss_bytes'])} "
        f"(after scrapes {_mib(r['rss_after_scrapes_bytes'])})",
        f"RSS per series               {r['rss_per_series_bytes']:,.0f} bytes",
        f"daemon's series gauges       {series or '—'} (overflow total {overflow:,.0f})",
        f"CPU, 10 s idle, not scraped  {r['cpu_idle_share'] * 100:.1f} % of a core",
        f"CPU, 10 s idle after scrapes {r['cpu_idle_after_scrapes_share'] * 100:.1f} % of a core",
        f"CPU, 10 s active             {r['cpu_active_share'] * 100:.1f} % of a core "
        f"({r['active_events_per_tick']:,} events per 0.5 s tick, a scrape a second)",
        "",
    ]
    width = 28
    lines += [_lat_header("/metrics", width), "-" * (width + 45)]
    lines.append(_lat_row("rounds, 0.6 s apart", r["scrape"], width))
    lines.append(_lat_row("active phase, 1 s apart", r["active_scrape"], width))
    for title, key in (
        ("JSON route, never scraped", "routes"),
        ("JSON route, with /metrics", "routes_scraped"),
    ):
        lines += ["", _lat_header(title, width), "-" * (width + 45)]
        for route, lat in r[key].items():
            lines.append(_lat_row(route, lat, width))
    return "\n".join(lines)


# --- liveness under saturated ingest -------------------------------------------------------------

LIVENESS_SERIES = 1000
BURST_FRAMES = 10
BURST_EVENTS = 10_000


def _replay(endpoint: str, nframes: int, ready: Any, go: Any, halt: Any, result: Any) -> None:
    """Sender process: replays prebuilt ``emitter-mixed`` frames as fast as ZeroMQ takes them
    (blocking sends, SNDHWM 1000; a 100 ms send timeout only to notice ``halt``)."""
    frames = emitter_frames(np.random.default_rng(2), nframes)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.setsockopt(zmq.SNDTIMEO, 100)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    ready.send(True)
    parent = os.getppid()
    sent = 0
    started = time.perf_counter()
    try:
        if go.wait(120):
            started = time.perf_counter()
            i = 0
            while not halt.is_set():
                try:
                    sock.send(frames[i])
                except zmq.Again:
                    if os.getppid() != parent:
                        break  # the bench is gone
                    continue
                sent += 1
                i = (i + 1) % len(frames)
    finally:
        result.send({"frames": sent, "seconds": time.perf_counter() - started})
        sock.close()
        ctx.term()


class _Sender:
    """The replaying sender as a separate process; ``close()`` always ends it."""

    def __init__(self, endpoint: str, nframes: int = 200) -> None:
        spawn = mp.get_context("spawn")
        self.go = spawn.Event()
        self.halt = spawn.Event()
        ready_in, ready_out = spawn.Pipe(duplex=False)
        self.result_in, result_out = spawn.Pipe(duplex=False)
        self.proc = spawn.Process(
            target=_replay,
            args=(endpoint, nframes, ready_out, self.go, self.halt, result_out),
            daemon=True,
        )
        self.proc.start()
        self.outcome: dict[str, Any] = {"frames": 0, "seconds": 0.0}
        deadline = time.monotonic() + 120
        while not ready_in.poll(0.5):
            if not self.proc.is_alive() or time.monotonic() > deadline:
                self.close()
                raise BenchError("the sender process did not get ready")
        ready_in.recv()

    def start(self) -> None:
        self.go.set()

    def stop(self) -> dict[str, Any]:
        self.halt.set()
        self.go.set()
        if self.result_in.poll(15):
            self.outcome = self.result_in.recv()
        self.close()
        return self.outcome

    def close(self) -> None:
        self.halt.set()
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


class _RssWatch(threading.Thread):
    """Samples the daemon's RSS; calls ``on_limit`` once if it passes ``limit`` bytes."""

    def __init__(self, pid: int, limit: int, on_limit: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.limit = limit
        self.on_limit = on_limit
        self.peak = 0
        self.hit = False
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            try:
                rss = _rss_bytes(self.pid)
            except OSError:
                return
            self.peak = max(self.peak, rss)
            if rss > self.limit and not self.hit:
                self.hit = True
                self.on_limit()

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def _preload(daemon: _Daemon, n: int = LIVENESS_SERIES) -> None:
    """``n`` request series, 2 events each; waits on ``/metrics/errors`` (not a scrape: a
    scraped daemon may work differently, e.g. render the exposition every tick)."""
    models = [f"live-{i:04d}" for i in range(n)]
    _send_all(daemon.ingest, _series_frames(models, 2, np.random.default_rng(3)))
    _wait_requests(daemon.http, 2 * n, timeout=60)


def _burst_frames() -> list[bytes]:
    rng = np.random.default_rng(4)
    now = time.time()
    frames = []
    for f in range(BURST_FRAMES):
        n = BURST_EVENTS
        frames.append(
            msgpack.packb(
                {
                    "v": 1,
                    "type": "request",
                    "const": {"endpoint": ENDPOINTS[0], "source": "bench"},
                    "cols": {
                        "model": [f"burst-{f:02d}-{i:05d}" for i in range(n)],
                        "ts": (now + np.arange(n) * 1e-6).tolist(),
                        "duration_ms": np.round(rng.lognormal(5.5, 0.8, n), 3).tolist(),
                        "input_tokens": rng.integers(10, 4000, n).tolist(),
                        "output_tokens": rng.integers(1, 1000, n).tolist(),
                    },
                }
            )
        )
    return frames


def _read_received(http: str, timeout: float) -> tuple[float, float] | None:
    """``(events received, monotonic time answered)``, retrying for up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            count = _received(http, "request", None)
            return count, time.monotonic()
        except Exception:
            time.sleep(0.2)
    return None


def _saturated(daemon: _Daemon, seconds: float, rss_limit: int) -> dict[str, Any]:
    http = daemon.http
    sender = _Sender(daemon.ingest)
    pollers = [
        _Poller(http + "/healthz", 0.05),
        _Poller(http + "/metrics/summary", 0.2),
        _Poller(http + "/metrics", 1.0),
    ]
    watch = _RssWatch(daemon.pid, rss_limit, lambda: sender.halt.set())
    try:
        before = _received(http, "request", None)
        c0 = _cpu_seconds(daemon.pid)
        t0 = time.monotonic()
        sender.start()
        watch.start()
        for p in pollers:
            p.start()
        while time.monotonic() < t0 + seconds and not watch.hit:
            time.sleep(0.1)
        sent = sender.stop()
        t_stop = time.monotonic()
        cpu = (_cpu_seconds(daemon.pid) - c0) / (t_stop - t0)
        after = _read_received(http, 45)
    finally:
        sender.close()
        for p in pollers:
            p.halt.set()
        for p in pollers:
            p.stop()
        watch.stop()
    out: dict[str, Any] = {
        "seconds": t_stop - t0,
        "cpu_share": cpu,
        "sent_events": sent["frames"] * MIXED_ROWS,
        "sent_events_per_second": sent["frames"] * MIXED_ROWS / max(sent["seconds"], 1e-9),
        "rss_peak_bytes": watch.peak,
        "rss_limit_hit": watch.hit,
        "applied_events": None,
        "applied_events_per_second": None,
        "after_read_seconds": None,
    }
    if after is not None:
        count, t_after = after
        out.update(
            applied_events=count - before,
            applied_events_per_second=(count - before) / (t_after - t0),
            after_read_seconds=t_after - t_stop,
        )
    for p in pollers:
        route = p.url[len(http) :]
        out[route] = _latency([q for q in p.probes if q.start < t_stop])
    return out


def _burst(daemon: _Daemon) -> dict[str, Any]:
    http = daemon.http
    frames = _burst_frames()
    # Counted on /metrics/errors, not /metrics: no scrape before or during the burst.
    before = _total_requests(http)
    poller = _Poller(http + "/healthz", 0.02)
    poller.start()
    try:
        time.sleep(1.0)
        t_burst = time.monotonic()
        _send_all(daemon.ingest, frames)
        t_sent = time.monotonic()
        time.sleep(max(0.0, t_sent + 5.0 - time.monotonic()))
    finally:
        poller.stop()
    # A request that was in flight when the burst was sent belongs to the burst's side.
    pre = [p for p in poller.probes if p.start + p.seconds < t_burst]
    post = [p for p in poller.probes if p.start + p.seconds >= t_burst]
    out: dict[str, Any] = {
        "events": BURST_FRAMES * BURST_EVENTS,
        "send_seconds": t_sent - t_burst,
        "before": _latency(pre),
        "after": _latency(post),
        "healthz_answered_seconds": None,
        "applied_events": None,
        "applied_within_seconds": None,
        "series_overflow": None,
    }
    # The first /healthz answer to a request sent after the burst (polling on if none yet).
    answered = [p for p in post if p.outcome == "ok" and p.start >= t_burst]
    deadline = time.monotonic() + 60  # for both reads below
    while not answered and time.monotonic() < deadline:
        probe = _probe(http + "/healthz")[0]
        if probe.outcome == "ok":
            answered.append(probe)
    if answered:
        out["healthz_answered_seconds"] = answered[0].start + answered[0].seconds - t_burst
    while time.monotonic() < deadline:
        try:
            count = _total_requests(http)
        except Exception:
            time.sleep(0.5)
            continue
        out["applied_events"] = count - before
        out["applied_within_seconds"] = time.monotonic() - t_burst
        if count - before >= out["events"]:
            break
        time.sleep(0.5)
    with contextlib.suppress(Exception):  # the daemon started with no overflow
        text = _get(http + "/metrics", timeout=30).decode()
        out["series_overflow"] = sum(_samples(text, "metricsd_series_overflow_total").values())
    return out


def _sigterm(daemon: _Daemon, settle: float) -> dict[str, Any]:
    sender = _Sender(daemon.ingest)
    try:
        sender.start()
        time.sleep(settle)
        t0 = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        killed = False
        try:
            code = daemon.proc.wait(90)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            code = daemon.proc.wait(10)
            killed = True
        exited = time.monotonic() - t0
        sent = sender.stop()
    finally:
        sender.close()
    return {
        "saturated_for_seconds": settle,
        "exit_seconds": exited,
        "exit_code": code,
        "killed_after_90_s": killed,
        "sent_events": sent["frames"] * MIXED_ROWS,
        "log_tail": [line for line in daemon.log_tail(20) if "metricsd.slo" not in line][-5:],
    }


def run_liveness(
    seconds: float = 15.0,
    progress: Callable[[str], None] = lambda _m: None,
    rss_limit_mib: int = 6144,
    baseline_requests: int = 200,
) -> dict[str, Any]:
    """Latency of ``/healthz`` and scrapes with ingest saturated, each beside its idle baseline.

    Three fresh daemons, each pre-loaded with 1 000 request series: (1) idle baseline then (2)
    ``seconds`` of saturation; (3) a burst of 100 000 events with all-new model names; (4)
    SIGTERM after a few seconds of saturation. A sender whose daemon's RSS passes
    ``rss_limit_mib`` is stopped early (reported), so a queue that grows without bound cannot
    take the machine down.
    """
    _client_wire()  # fail early and clearly without the client
    out: dict[str, Any] = {"saturation_seconds": seconds}
    daemon: _Daemon | None = None
    try:
        progress("liveness: idle baseline")
        daemon = _Daemon(log_to_file=True)
        _preload(daemon)
        http = daemon.http
        out["idle"] = {
            "/healthz": _latency(_sequential(http + "/healthz", baseline_requests)),
            "/metrics/summary": _latency(_sequential(http + "/metrics/summary", baseline_requests)),
            "/metrics": _latency(_sequential(http + "/metrics", 20)),
        }
        progress(f"liveness: {seconds:.0f} s of saturated ingest")
        out["saturated"] = _saturated(daemon, seconds, rss_limit_mib << 20)
        daemon.close(kill=True)  # its backlog is not drained: the next phase has a fresh daemon

        progress("liveness: new-label burst (fresh daemon)")
        daemon = _Daemon(log_to_file=True)
        _preload(daemon)
        out["burst"] = _burst(daemon)
        daemon.close(kill=True)

        progress("liveness: SIGTERM while saturated (fresh daemon)")
        daemon = _Daemon(log_to_file=True)
        _preload(daemon)
        out["sigterm"] = _sigterm(daemon, settle=3.0)
    finally:
        if daemon is not None:
            daemon.close(kill=True)
    return out


def format_liveness(r: dict[str, Any]) -> str:
    width = 34
    header = _lat_header("phase / request", width)
    lines = [header, "-" * len(header)]
    idle, sat, burst, term = r["idle"], r["saturated"], r["burst"], r["sigterm"]
    for route in ("/healthz", "/metrics/summary", "/metrics"):
        lines.append(_lat_row(f"idle {route}", idle[route], width))
        lines.append(_lat_row(f"saturated {route}", sat[route], width))
    lines.append(_lat_row("burst: 1 s before, /healthz", burst["before"], width))
    lines.append(_lat_row("burst: 5 s after, /healthz", burst["after"], width))
    lines.append("")
    applied = sat["applied_events_per_second"]
    lines.append(
        f"saturated {sat['seconds']:.1f} s: daemon applied "
        + (
            "— (no answer)"
            if applied is None
            else f"{applied:,.0f} ev/s (read {sat['after_read_seconds']:.1f} s after the stop)"
        )
        + f"; ZeroMQ accepted {sat['sent_events_per_second']:,.0f} ev/s from the sender; "
        f"daemon CPU {sat['cpu_share'] * 100:.0f} % of a core; peak RSS "
        f"{_mib(sat['rss_peak_bytes'])}"
        + (" (RSS limit hit: sender stopped)" if sat["rss_limit_hit"] else "")
    )
    answered = burst["healthz_answered_seconds"]
    line = (
        f"burst: {burst['events']:,} new-label events sent in {burst['send_seconds']:.2f} s; "
        "first /healthz answer to a request sent after it: "
        + ("none within 60 s" if answered is None else f"{answered:.2f} s after")
    )
    if burst["applied_events"] is not None:
        line += (
            f"; {burst['applied_events']:,.0f} applied when read at "
            f"{burst['applied_within_seconds']:.1f} s"
        )
    if burst["series_overflow"] is not None:
        line += f"; series overflow {burst['series_overflow']:,.0f}"
    lines.append(line)
    lines.append(
        f"SIGTERM after {term['saturated_for_seconds']:.0f} s saturated: exited in "
        f"{term['exit_seconds']:.2f} s with code {term['exit_code']}"
        + (" (killed after 90 s)" if term["killed_after_90_s"] else "")
    )
    lines.extend(f"  daemon log: {line}" for line in term["log_tail"])
    lines.append("(fail = timeouts (10 s, counted in the percentiles at their wait) + errors)")
    return "\n".join(lines)


# --- scaling with --workers ----------------------------------------------------------------------


#: A scaling run sends this many times a shape's frames: a run lasts seconds, so neither the
#: tick (0.5 s, when the count is published) nor a worker's merge interval decides the rate.
SCALING_FRAMES = 8


def run_scaling(
    max_workers: int,
    shape_name: str = "emitter-mixed",
    scale: float = 1.0,
    repeats: int = 3,
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Events/s of one shape through a fresh daemon per ``--workers`` value, 1 … ``max_workers``
    (each the best of ``repeats`` runs, run in turn so a busy moment hits every count alike),
    with ``/healthz`` polled every 50 ms throughout.

    When there are more cores than ``max_workers``, the sender (this process) runs on a core of
    its own and every daemon on the others; with fewer, nothing is pinned (the same placement
    for every count, so the ratios compare like with like)."""
    if max_workers < 1:
        raise BenchError("--workers needs at least 1")
    shape = SHAPES[shape_name]
    rng = np.random.default_rng(0)
    count = max(10, int(shape.frames * scale * SCALING_FRAMES))
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) > max_workers
    sender, daemon_cpus = ({cpus[-1]}, set(cpus[:-1])) if pinned else (None, None)
    progress(f"scaling: building {count} {shape_name} frames")
    frames = shape.make(rng, count)
    events = count * shape.per_frame
    progress("scaling: transport ceiling")
    ceiling = _ceiling(frames, events)
    counts = list(range(1, max_workers + 1))
    rates: dict[int, list[float]] = {n: [] for n in counts}
    health: dict[int, list[_Probe]] = {n: [] for n in counts}
    for attempt in range(repeats):
        for n in counts:
            progress(f"scaling: --workers {n} (run {attempt + 1} of {repeats})")
            # Ticks of 0.1 s: the count is published once a tick, so the tick bounds how
            # precisely a run's end is seen (2–3 % of a run of seconds).
            daemon = _Daemon(["--workers", str(n), "--tick", "0.1"], cpus=daemon_cpus)
            poller = _Poller(daemon.http + "/healthz", 0.05)
            try:
                time.sleep(1.0 if n > 1 else 0.2)  # the workers start and connect
                poller.start()
                if sender is not None:
                    os.sched_setaffinity(0, sender)
                rates[n].append(
                    _through_daemon(daemon.http, daemon.ingest, shape, frames, None, poll=0.25)
                )
            finally:
                if sender is not None:
                    os.sched_setaffinity(0, set(cpus))
                poller.stop()
                daemon.close(kill=True)
            health[n].extend(poller.probes)
    one = max(rates[1])
    return {
        "shape": shape_name,
        "events": events,
        "cpus": len(cpus),
        "sender_pinned": pinned,
        "ceiling_events_per_second": ceiling,
        "rows": [
            {
                "workers": n,
                "events_per_second": max(rates[n]),
                "runs": rates[n],
                "vs_one_worker": max(rates[n]) / one,
                "healthz": _latency(health[n]),
            }
            for n in counts
        ],
    }


def format_scaling(r: dict[str, Any]) -> str:
    lines = [
        f"{r['shape']}: {r['events']:,} events per run, {r['cpus']} CPUs "
        f"({'the sender on a core of its own' if r['sender_pinned'] else 'nothing pinned'}), "
        f"ceiling {r['ceiling_events_per_second']:,.0f} ev/s",
        f"{'workers':>7} {'events/s':>12} {'× 1 worker':>11} {'healthz p99 ms':>15} {'max ms':>8}",
    ]
    for row in r["rows"]:
        h = row["healthz"]
        lines.append(
            f"{row['workers']:>7} {row['events_per_second']:>12,.0f} "
            f"{row['vs_one_worker']:>11.2f} {_ms(h['p99_ms']):>15} {_ms(h['max_ms']):>8}"
        )
    return "\n".join(lines)
