"""The engine's own thread: ingest, ticks and commands, away from the serving event loop.

Everything that mutates tracker state runs here, in one thread, in this order each turn: the
commands readers queued (budget changes, a reload, a state capture), the tick when it is due
(expire, freeze, publish the snapshot to the event loop), then one ingest wake-up: the queued
frames, up to ``ingest.max_frames_per_wakeup`` or a few milliseconds of decoding, decoded as one
pool and applied. When nothing is queued the thread sleeps in ``poll`` until a frame, a command
or the next tick.

The serving loop (HTTP, WebSocket, the watchdog) never waits for any of it: it reads the latest
published snapshot, and a command is a future it awaits. While ingest is saturated the two
threads share the interpreter lock, which changes hands every few milliseconds, so a request is
answered within a few of them whatever this thread is doing (SPEC §8).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

from metricsd.engine import Engine
from metricsd.ingest import Ingest
from metricsd.snapshot import Snapshot
from metricsd.workers import WorkerPool

__all__ = ["EngineThread"]

log = logging.getLogger("metricsd.engine")

#: How long one ingest wake-up may spend receiving and decoding before it applies what it has.
WAKEUP_BUDGET = 0.02


class EngineThread:
    """Runs an :class:`Engine` and its :class:`Ingest` on a thread of their own."""

    def __init__(
        self,
        engine: Engine,
        ingest: Ingest | None,
        clock: Callable[[], float],
        tick: float,
        publish: Callable[[Snapshot], None],
        extra: Callable[[], dict[str, Any]] | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self.engine = engine
        self.ingest = ingest
        #: Worker processes (``--workers N``), or None to decode and apply on this thread.
        self.pool = pool
        self.clock = clock
        self.tick_interval = tick
        self.publish = publish
        self.extra = extra
        self._commands: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]]
        ] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_turn = time.monotonic()
        self.drained: tuple[int, int] = (0, 0)
        self.failed: BaseException | None = None

    # --- control (any thread) -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name="metricsd-engine", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the engine thread (between two batches); its result or exception
        comes back in the future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if self._thread is None or not self._thread.is_alive():
            # Not running (tests, or after the stop): run it here, there is no other writer.
            try:
                future.set_result(self.engine.command(fn))
            except BaseException as exc:
                future.set_exception(exc)
            return future
        self._commands.put((fn, future))
        self._wake()
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to drain ingest and finish; wait for it."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # --- the thread -----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the watchdog sees a dead thread; the log says why
            self.failed = exc
            log.exception("the engine thread stopped")
        finally:
            self._run_commands()
            with contextlib.suppress(OSError):
                os.close(self._wake_r)
            with contextlib.suppress(OSError):
                os.close(self._wake_w)

    def _loop(self) -> None:
        poller = zmq.Poller()
        ingest = self.ingest
        if ingest is not None:
            poller.register(ingest.sync, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        pool = self.pool
        if pool is not None:
            poller.register(pool.results, zmq.POLLIN)
        limit = ingest.config.max_frames_per_wakeup if ingest is not None else 0
        next_tick = time.monotonic() + self.tick_interval
        while not self._stopping.is_set():
            self.last_turn = time.monotonic()
            self._run_commands()
            if time.monotonic() >= next_tick:
                self._tick()
                # A fixed rate: the time a tick takes does not stretch the period.
                next_tick = max(next_tick + self.tick_interval, time.monotonic())
            wait = max(0.0, next_tick - time.monotonic())
            if pool is not None:
                if ingest is not None:  # read the socket only while a worker can take a chunk
                    poller.modify(ingest.sync, zmq.POLLIN if pool.wants_frames() else 0)
                flush = pool.flush_in()
                if pool.backlog:
                    wait = 0.0
                elif flush is not None:
                    wait = min(wait, flush)
            events = dict(poller.poll(math.ceil(wait * 1000)))
            if self._wake_r in events:
                with contextlib.suppress(BlockingIOError, OSError):
                    os.read(self._wake_r, 4096)
            try:
                if pool is not None:
                    if pool.results in events or pool.backlog:
                        pool.collect(WAKEUP_BUDGET)
                    if ingest is not None and (ingest.sync in events or pool.flush_in() == 0.0):
                        pool.forward(ingest.sync, WAKEUP_BUDGET)
                elif ingest is not None and ingest.sync in events:
                    ingest.receive(limit, WAKEUP_BUDGET)
            except Exception:  # a tracker bug must not stop ingest; it is logged
                log.exception("error applying a frame")
        if ingest is not None:
            if pool is not None:
                ingest.unbind_all()
                self.drained = pool.drain(ingest.sync, ingest.config.drain_timeout)
            else:
                self.drained = ingest.drain()
        self._run_commands()
        self._tick()

    def _run_commands(self) -> None:
        while True:
            try:
                fn, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(self.engine.command(fn))
            except BaseException as exc:
                future.set_exception(exc)

    def _tick(self) -> None:
        if self.pool is not None:
            try:
                self.pool.check()
            except Exception:
                log.exception("error checking the workers")
        try:
            snap = self.engine.snapshot(
                self.clock(), time.time(), self.extra() if self.extra else None
            )
        except Exception:
            log.exception("error building the snapshot")
            return
        self.publish(snap)

    def tick_now(self) -> concurrent.futures.Future[Any]:
        """Build and publish a snapshot as soon as possible (after a command that readers must
        see at once, like a budget change)."""

        def fresh() -> Snapshot:
            snap = self.engine.snapshot(
                self.clock(), time.time(), self.extra() if self.extra else None
            )
            self.publish(snap)
            return snap

        return self.submit(fresh)
