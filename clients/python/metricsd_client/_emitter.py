"""The :class:`Emitter`: a lock-free hot path in front of a background flusher thread.

See the package docstring for the design. Invariants the code below relies on:

- Only the application's threads append to ``_buf``; only the flusher thread swaps it and owns
  the ZeroMQ context and socket (created, used and closed in that thread).
- The hot path reads ``self._buf`` in the same expression as the ``append`` call, after the
  clock is read, so on CPython another thread almost never runs between the two (the GIL is
  only handed over at a few points: calls, backward jumps, or a garbage collection triggered by
  the tuple's allocation running a finaliser). For those rare cases the flusher re-reads the
  previously swapped deque on its next cycle, so an append that raced the swap is sent one
  cycle late instead of being lost. No lock is taken on the application's threads, except once
  per process to start the flusher thread.
- Counters written by the application's threads (``_nbufdrop``) and by the flusher
  (``_fdropped``, ``_sent``, ``_reported``) are distinct attributes: each has one kind of
  writer, so no update is lost to a read-modify-write race between the two sides.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

import msgpack
import zmq

from metricsd_client import _wire

__all__ = ["DEFAULT_ENDPOINT", "Emitter"]

log = logging.getLogger("metricsd_client")

DEFAULT_ENDPOINT: Final = "tcp://127.0.0.1:5557"
#: At close, how long ZeroMQ may keep trying to deliver what was handed to it.
_MAX_CLOSE_LINGER_S: Final = 0.5
#: After a socket cannot be created or connected (a bad endpoint), wait this long to retry.
_RETRY_S: Final = 1.0

#: The flusher is behind when this many batches wait: calls then yield the GIL (see _yield).
_BEHIND_BATCHES: Final = 4

_time = time.time
_Row = tuple[Any, ...]


def _yield() -> None:
    """Release the GIL once so a waiting thread (the flusher) runs: what a call does when the
    flusher is behind. The caller slows to the rate the flusher packs instead of losing events;
    below that rate nothing changes."""
    time.sleep(0)


#: Every live emitter, for the fork and exit hooks (weak: an emitter may be garbage-collected).
_EMITTERS: weakref.WeakSet[Emitter] = weakref.WeakSet()
#: The parent's ZeroMQ objects, kept alive (and untouched) in a forked child: closing or
#: collecting them there would act on the parent's context, whose I/O thread the child lacks.
_FORK_ORPHANS: list[object] = []


class Emitter:
    """Send metricsd events (SPEC §1.3) to a daemon without ever blocking or raising.

    Every event method appends one tuple to an in-memory buffer and returns; a daemon thread
    packs the buffer into columnar msgpack frames and hands them to a non-blocking ZeroMQ PUSH
    socket every ``batch_timeout_seconds``, or as soon as ``batch_size`` events are waiting.
    Events that cannot be buffered (more than ``max_buffer`` waiting) or sent (the socket's
    high-water mark of ``sndhwm`` frames is reached) are dropped and counted in
    :attr:`dropped`, and reported to the daemon in the next frame that goes through.

    Arguments left as ``None`` are not sent (the daemon applies the spec's default).

    Create one emitter per process (per daemon endpoint) and share it between threads: each
    one owns a thread and a ZeroMQ context until :meth:`close` (or exit).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        source: str = "default",
        batch_size: int = 1000,
        batch_timeout_seconds: float = 0.05,
        sndhwm: int = 1000,
        max_buffer: int = 100_000,
    ) -> None:
        if endpoint is None:
            endpoint = os.environ.get("METRICSD_INGEST") or DEFAULT_ENDPOINT
        self.endpoint: Final[str] = endpoint
        self.source: Final[str] = source
        self._batch_size = max(1, int(batch_size))
        self._timeout = max(0.001, float(batch_timeout_seconds))
        self._sndhwm = max(0, int(sndhwm))
        self._max_buffer_cfg = max(0, int(max_buffer))
        self._closed = False
        self._init_process_state()
        _EMITTERS.add(self)

    def _init_process_state(self) -> None:
        """Everything that belongs to one process: run at construction and in a forked child."""
        self._buf: deque[_Row] = deque()
        #: Hot-path bound: 0 once closed, so every later event counts as a drop.
        self._max_buffer = 0 if self._closed else self._max_buffer_cfg
        #: Past this many waiting rows the flusher is behind: each call yields the GIL once (see
        #: :func:`_yield`) before appending, so a caller in a tight loop cannot starve it.
        self._soft_limit = min(self._max_buffer, _BEHIND_BATCHES * self._batch_size)
        #: The hot path calls ``_wake()`` when it appends to a buffer holding ``_wake_at`` rows.
        #: Until the flusher runs, that is the first append (0) and ``_wake`` starts the thread.
        self._wake_at = 0
        self._wake: Callable[[], object] = self._start
        self._event = threading.Event()
        self._cond = threading.Condition(threading.Lock())
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline = 0.0
        self._flush_gen = 0
        self._done_gen = 0
        self._retired: deque[_Row] | None = None
        self._retired_n = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._packer: msgpack.Packer | None = None
        self._warned = False
        self._retry_at = 0.0
        # Counters: _nbufdrop is written by the application's threads, the others by the flusher.
        self._nbufdrop = 0
        self._fdropped = 0
        self._sent = 0
        self._reported = 0

    # ------------------------------------------------------------------ accounting

    @property
    def dropped(self) -> int:
        """Events dropped so far (buffer full, send refused, unencodable), over this process."""
        return self._nbufdrop + self._fdropped

    @property
    def sent(self) -> int:
        """Events handed to ZeroMQ so far (drop reports not included)."""
        return self._sent

    @property
    def buffered(self) -> int:
        """Events waiting in the buffer for the flusher."""
        return len(self._buf)

    # ------------------------------------------------------------------ event methods (hot path)
    #
    # Each method: one len(), one clock read when ts is not given, one tuple appended, one
    # comparison. The tuple layout is _wire.SPECS[code]: (code, ts, own fields…, endpoint, model,
    # api_key, key_id, user_id, request_id). Any exception (there should be none) is a drop.

    def request(
        self,
        duration_ms: float,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        status: int | None = 200,
        input_tokens: int | None = 0,
        output_tokens: int | None = 0,
        cached_tokens: int | None = 0,
        cache_write_tokens: int | None = 0,
        reasoning_tokens: int | None = 0,
        streaming: bool | None = None,
        ttft_ms: float | None = None,
        queue_ms: float | None = None,
        finish_reason: str | None = None,
        provider: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        batch: bool | None = None,
        cost_usd: float | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A completed request (SPEC ``request``): latency, tokens, outcome."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (0, t, duration_ms, status, input_tokens, output_tokens, cached_tokens,
                 cache_write_tokens, reasoning_tokens, streaming, ttft_ms, queue_ms,
                 finish_reason, provider, error_type, error_message, batch, cost_usd,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def error(
        self,
        error_type: str,
        *,
        status: int | None = None,
        error_message: str | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A failed request with no latency (SPEC ``error``); the daemon's default status: 500."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (1, t, error_type, status, error_message, provider,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def stream_start(
        self,
        stream_id: str,
        *,
        prompt_tokens: int | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        client_id: str | None = None,
        provider: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A stream began (SPEC ``stream.start``)."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (2, t, stream_id, prompt_tokens, temperature, max_tokens, client_id, provider,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def stream_token(
        self,
        stream_id: str,
        *,
        n: int | None = 1,
        bytes: int | None = None,  # the spec's field name (shadows the builtin here)
        text: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A chunk of ``n`` tokens arrived on a stream (SPEC ``stream.token``)."""
        try:
            k = len(self._buf)
            if k >= self._soft_limit:
                if k >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (3, t, stream_id, n, bytes, text,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if k == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def stream_end(
        self,
        stream_id: str,
        *,
        status: str | None = "completed",
        finish_reason: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A stream ended: ``completed``, ``failed`` or ``cancelled`` (SPEC ``stream.end``)."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (4, t, stream_id, status, finish_reason, error_type, error_message,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def stream_backpressure(
        self,
        stream_id: str,
        *,
        buffer_size: int | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """The consumer of a stream fell behind (SPEC ``stream.backpressure``)."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (5, t, stream_id, buffer_size,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def cache(
        self,
        hit: bool,
        *,
        total_tokens: int | None = None,
        matched_tokens: int | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A prompt-cache lookup (SPEC ``cache``)."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (6, t, hit, total_tokens, matched_tokens,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def queue(
        self,
        depth: int,
        *,
        queue: str | None = "default",
        capacity: int | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """The current depth of a named queue (SPEC ``queue``)."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (7, t, depth, queue, capacity,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def usage(
        self,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_tokens: int | None = None,
        images: Mapping[str, Any] | None = None,
        characters: int | None = None,
        batch: bool | None = None,
        cost_usd: float | None = None,
        model: str | None = None,
        endpoint: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """Billable usage that is not a tracked request (SPEC ``usage``): cost only."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (8, t, prompt_tokens, completion_tokens, cached_tokens, images, characters,
                 batch, cost_usd, endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    def metric(
        self,
        name: str,
        kind: str,
        value: float,
        *,
        labels: Mapping[str, str] | None = None,
        endpoint: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        key_id: str | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        ts: float | None = None,
    ) -> None:
        """A custom metric sample: ``kind`` is ``counter``, ``gauge`` or ``histogram``."""
        try:
            n = len(self._buf)
            if n >= self._soft_limit:
                if n >= self._max_buffer:
                    self._nbufdrop += 1
                    return
                _yield()
            t = _time() if ts is None else ts
            self._buf.append(
                (9, t, name, kind, value, labels,
                 endpoint, model, api_key, key_id, user_id, request_id)
            )  # fmt: skip
            if n == self._wake_at:
                self._wake()
        except Exception:
            self._nbufdrop += 1

    # ------------------------------------------------------------------ lifecycle

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every event buffered before this call is handed to ZeroMQ or dropped.

        Returns False if that did not happen within ``timeout`` seconds. Never raises.
        """
        try:
            if self._closed:
                return True
            return self._flush(time.monotonic() + max(0.0, timeout), stop=False)
        except Exception:
            log.debug("metricsd_client: flush failed", exc_info=True)
            return False

    def close(self, timeout: float = 5.0) -> bool:
        """Flush, stop the flusher thread and close the socket. Idempotent; never raises.

        Events recorded after ``close`` are counted as dropped. Returns False if the flush or
        the thread's exit did not complete within ``timeout`` seconds.
        """
        try:
            with self._start_lock:
                if self._closed:
                    return True
                self._closed = True
                self._max_buffer = 0
                self._soft_limit = 0
            _EMITTERS.discard(self)
            return self._flush(time.monotonic() + max(0.0, timeout), stop=True)
        except Exception:
            log.debug("metricsd_client: close failed", exc_info=True)
            return False

    def __enter__(self) -> Emitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Emitter({self.endpoint!r}, source={self.source!r}, sent={self.sent}, "
            f"dropped={self.dropped}, buffered={self.buffered})"
        )

    def _start(self) -> None:
        """Start the flusher thread (lazily, from the first event or flush of this process)."""
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(
                target=self._run, name=f"metricsd-emitter[{self.source}]", daemon=True
            )
            self._wake_at = self._batch_size - 1
            self._wake = self._event.set
            try:
                thread.start()
            except Exception:  # e.g. at interpreter shutdown: flush() falls back to inline
                self._wake_at = 0
                self._wake = self._start
                log.debug("metricsd_client: cannot start the flusher thread", exc_info=True)
                return
            self._thread = thread
        if len(self._buf) >= self._batch_size:
            self._event.set()

    def _flush(self, deadline: float, *, stop: bool) -> bool:
        thread = self._thread
        if thread is None and len(self._buf) and not stop:
            self._start()
            thread = self._thread
        if thread is None or not thread.is_alive():
            # No flusher (never started, or cannot start): do its work on this thread.
            with self._cond:
                self._deadline = deadline
                self._cycle()
                if stop:
                    self._close_socket()
            return True
        with self._cond:
            self._flush_gen += 1
            gen = self._flush_gen
            if stop:
                self._deadline = deadline
                self._stopping = True
        self._event.set()
        with self._cond:
            while self._done_gen < gen:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not thread.is_alive():
                    return False
                self._cond.wait(remaining)
        if stop:
            thread.join(max(0.0, deadline - time.monotonic()) + _MAX_CLOSE_LINGER_S)
            if thread.is_alive():
                return False
            late = len(self._buf)  # appends that raced close(): never sent
            if late:
                self._fdropped += late  # the flusher is gone: this thread is the only writer
                self._buf.clear()
        return True

    # ------------------------------------------------------------------ flusher thread

    def _run(self) -> None:
        try:
            while True:
                self._event.wait(self._timeout)
                self._event.clear()
                with self._cond:
                    stopping = self._stopping
                    gen = self._flush_gen
                try:
                    self._cycle()
                except Exception:  # a bug here must not kill the thread
                    log.warning("metricsd_client: flush cycle failed", exc_info=True)
                with self._cond:
                    self._done_gen = gen
                    self._cond.notify_all()
                if stopping:
                    return
        finally:
            self._close_socket()

    def _take(self) -> list[_Row]:
        """Swap the buffer out and return its rows, plus any that raced the previous swap."""
        rows: list[_Row] = []
        retired = self._retired
        if retired is not None and len(retired) > self._retired_n:
            rows = list(retired)[self._retired_n :]
            self._retired_n += len(rows)
        if self._buf:
            current = self._buf
            self._buf = deque()
            taken = list(current)
            self._retired = current
            self._retired_n = len(taken)
            rows.extend(taken)
        return rows

    def _cycle(self) -> None:
        """One flush: encode everything buffered, send it, account for it."""
        rows = self._take()
        if not rows and self.dropped == self._reported:
            return
        sock = self._socket()
        if sock is None:
            self._fdropped += len(rows)
            return
        packer = self._packer
        if packer is None:
            packer = self._packer = _wire.new_packer()
        packed, bad = _wire.encode(rows, self.source, packer)
        if bad:
            self._fdropped += bad
        frames = _wire.assemble(packed)
        if not frames:
            frames = [(0, [])]  # nothing to send but a drop report
        for i, (n, parts) in enumerate(frames):
            pending = self.dropped - self._reported
            if n == 0 and pending <= 0:
                continue
            client = _wire.client_event(pending, self.source, packer) if pending > 0 else None
            data = _wire.frame(parts, client, packer)
            try:
                sock.send(data, zmq.NOBLOCK)
            except zmq.Again:  # high-water mark reached (or no peer to queue for)
                self._fdropped += n
                continue
            except Exception:
                self._fdropped += n
                log.debug("metricsd_client: send failed", exc_info=True)
                self._reset_socket()
                new_sock = self._socket()
                if new_sock is None:
                    self._fdropped += sum(m for m, _ in frames[i + 1 :])
                    return
                sock = new_sock
                continue
            self._sent += n
            if pending > 0:
                self._reported += pending

    def _socket(self) -> zmq.Socket[bytes] | None:
        """The PUSH socket, connected on first use (in the flusher thread); None if impossible.

        After a failure, a new socket is tried at most once per :data:`_RETRY_S`.
        """
        if self._sock is not None:
            return self._sock
        now = time.monotonic()
        if now < self._retry_at:
            return None
        sock: zmq.Socket[bytes] | None = None
        try:
            if self._ctx is None:
                self._ctx = zmq.Context(io_threads=1)
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, self._sndhwm)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.endpoint)
        except Exception as exc:
            self._retry_at = now + _RETRY_S
            if sock is not None:
                with contextlib.suppress(Exception):
                    sock.close(linger=0)
            if not self._warned:
                self._warned = True
                log.warning(
                    "metricsd_client: cannot connect to %r (%s); events are dropped and counted",
                    self.endpoint,
                    exc,
                )
            return None
        self._sock = sock
        return sock

    def _reset_socket(self) -> None:
        """Discard a socket that failed (not for Again); the next send makes a new one."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close(linger=0)

    def _close_socket(self) -> None:
        """Close the socket and context, letting queued frames leave for a bounded time."""
        sock, self._sock = self._sock, None
        ctx, self._ctx = self._ctx, None
        linger_s = min(_MAX_CLOSE_LINGER_S, max(0.0, self._deadline - time.monotonic()))
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close(linger=int(linger_s * 1000))
        if ctx is not None:
            with contextlib.suppress(Exception):
                ctx.term()

    # ------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's thread, socket and buffer; start afresh lazily."""
        _FORK_ORPHANS.extend(o for o in (self._ctx, self._sock) if o is not None)
        self._init_process_state()


def _after_fork_in_child() -> None:
    for em in list(_EMITTERS):
        try:
            em._after_fork_in_child()
        except Exception:
            log.debug("metricsd_client: after-fork reset failed", exc_info=True)


def _at_exit() -> None:
    for em in list(_EMITTERS):
        em.close()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
