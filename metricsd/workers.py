"""Use every core: the pool of worker processes behind ``--workers N``.

The engine thread (:mod:`metricsd.runner`) still owns the one socket emitters write to and the
one engine every reader's snapshot comes from. With a pool:

1. it reads what the ingest socket holds, a chunk at a time (up to :data:`CHUNK_FRAMES` frames
   or :data:`CHUNK_BYTES`), stamps it with its clock and hands it to the least busy worker
   (:mod:`metricsd.worker`) over a private ``ipc`` socket: ZeroMQ passes the frames without a
   copy;
2. each worker decodes the chunk as the engine thread would one wake-up, applies the *additive*
   part of the types in :data:`REMOTE` to trackers of its own (``apply_additive``), and sends
   the result back (:mod:`metricsd.handoff`) with only the rows the engine's *ordered* parts
   read; every ``engine.merge_interval`` it also sends a delta: what its trackers hold, in their
   persisted form;
3. the engine thread applies results **in chunk order** (holding any that overtake an earlier
   one): the ordered part of remote types (``apply_ordered``), everything else in full; and adds
   each delta into the engine's trackers (``absorb``) as it comes.

So there is one state: one snapshot per tick, budgets and alerts decided in one place, one state
file that a restart with another N restores. Counters, exact sums, bucket counts and time slots
(keyed by the engine's clock, which stamps every chunk) add up to exactly what one process
records; what depends on order (recent rings, error patterns, streams, gauges) is applied in the
order the frames were read. docs/decisions.md says why deltas and not merged snapshots.

What is shared and serialised: the socket reads, the ordered parts (a few rows per chunk for our
emitter's traffic) and the merges (a few ms plus about 10 µs per series a worker touched in one
interval) run on the engine thread; decode and the additive apply (about four fifths of the work
of a mixed frame) run on N processes. Backpressure is unchanged: when every worker has
:data:`IN_FLIGHT` chunks (or results wait on an earlier chunk), the engine thread stops reading
the socket, its queue fills to the high-water mark, and emitters count their own drops.

A worker that dies is restarted (``metricsd_worker_restarts_total``); the chunks it had taken and
the frames it applied since its last delta are the only loss, counted in
``metricsd_worker_lost_frames_total``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any, Final

import zmq

from metricsd.config import Config
from metricsd.decode import DecodeResult
from metricsd.engine import Engine
from metricsd.export.prometheus import Family
from metricsd.handoff import HandoffError, unpack_result
from metricsd.persist import Reader, StateError, unpack_state
from metricsd.schema import EVENT_TYPES
from metricsd.validate import Limits

__all__ = ["CHUNK_BYTES", "CHUNK_FRAMES", "IN_FLIGHT", "REMOTE", "WorkerPool", "worker_sections"]

log = logging.getLogger("metricsd.workers")

#: A chunk holds at most this many frames …
CHUNK_FRAMES: Final = 128
#: … or about this many bytes (whichever comes first).
CHUNK_BYTES: Final = 4 << 20
#: Chunks a worker may hold at once (one decoding, the next queued).
IN_FLIGHT: Final = 2
#: The longest frames wait to fill a chunk while workers are busy.
LINGER: Final = 0.02
#: A worker not connected this long after its start is restarted.
START_TIMEOUT: Final = 30.0


#: Tracker name → the event types whose additive part the workers apply (the serving process
#: applies the ordered rest, and adds up the workers' deltas).
REMOTE: Final = {
    "requests": frozenset({"request", "error", "cache"}),
    "errors": frozenset({"request", "error"}),
    "slo": frozenset({"request", "error"}),
    "cost": frozenset({"request", "usage"}),
    "streaming": frozenset({"request"}),
}
#: The config sections those trackers read.
_SECTIONS: Final = ("engine", "limits", "prometheus", "providers", "streaming", "slo", "cost")


def worker_sections(config: Config) -> dict[str, Any]:
    """The config sections a worker's trackers read, as plain data (what its spec carries)."""
    data = config.to_dict()
    return {section: data[section] for section in _SECTIONS}


@dataclasses.dataclass(slots=True)
class _Worker:
    index: int
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    socket: zmq.Socket[bytes] | None = None
    ready: bool = False
    started: float = 0.0
    load: int = 0
    #: Frames of chunks this worker applied whose delta has not been added up yet.
    unmerged: int = 0


class WorkerPool:
    """N decode processes and the ordering of their results; see the module docstring."""

    def __init__(
        self,
        count: int,
        limits: Limits,
        engine: Engine,
        clock: Callable[[], float],
        python: str = sys.executable,
        wall: Callable[[], float] | None = None,
    ) -> None:
        self.count = count
        self.limits = limits
        self.engine = engine
        self.now = clock
        #: Tests pin the wall clock results are applied at; otherwise each chunk's decode time.
        self.wall = wall
        self.python = python
        self.dir = tempfile.mkdtemp(prefix="metricsd-workers-")  # mode 0700: ours alone
        self.context: zmq.Context[Any] = zmq.Context(1)
        self.results: zmq.Socket[bytes] = self.context.socket(zmq.PULL)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.bind(self._endpoint("results"))
        self.workers = [_Worker(i) for i in range(count)]
        self._seq = 0
        self._next = 0
        #: chunk → (worker index, frames) while a worker holds it
        self._held: dict[int, tuple[int, int]] = {}
        #: chunk → (result, frames, wall) waiting for an earlier chunk; None: lost
        self._done: dict[int, tuple[DecodeResult, int, float] | None] = {}
        #: Frames read off the ingest socket for the next chunk, since when, their size.
        self._staged: list[Any] = []
        self._staged_since = 0.0
        self._staged_bytes = 0
        self.restarts = 0
        self.lost_frames = 0
        self.bad_results = 0
        self.chunks = 0
        self.deltas = 0
        self.merge_seconds = 0.0
        #: What the workers apply (see REMOTE), limited to the trackers the engine has.
        names = {t.name for t in engine.trackers}
        self.remote = {name: types for name, types in REMOTE.items() if name in names}
        self._config = worker_sections(engine.config)
        #: Types every tracker of the engine applies remotely: a worker sends back only the
        #: rows of their batches that the ordered parts read.
        self.elide = sorted(
            t
            for t in EVENT_TYPES
            if (routed := [k for k in engine.trackers if t in k.event_types])
            and all(t in self.remote.get(k.name, ()) for k in routed)
        )

    def _endpoint(self, name: str) -> str:
        return f"ipc://{os.path.join(self.dir, name)}"

    # --- processes ------------------------------------------------------------------------

    def start(self) -> None:
        self.engine.remote = dict(self.remote)
        for worker in self.workers:
            self._spawn(worker)

    def _spawn(self, worker: _Worker) -> None:
        worker.generation += 1
        if worker.socket is not None:
            worker.socket.close(linger=0)
        sock = self.context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, IN_FLIGHT + 1)
        # A new endpoint per generation: nothing sent to a dead worker reaches its successor,
        # so what was lost is exactly what it held.
        endpoint = self._endpoint(f"in-{worker.index}-{worker.generation}")
        sock.bind(endpoint)
        worker.socket = sock
        worker.ready = False
        worker.load = 0
        worker.unmerged = 0
        worker.started = time.monotonic()
        spec = {
            "index": worker.index,
            "generation": worker.generation,
            "input": endpoint,
            "results": self._endpoint("results"),
            "limits": dataclasses.asdict(self.limits),
            "apply": {name: sorted(types) for name, types in self.remote.items()},
            "elide": self.elide,
            "merge_interval": self.engine.config.engine.merge_interval,
            "config": self._config,
        }
        worker.proc = subprocess.Popen(
            [self.python, "-m", "metricsd.worker", json.dumps(spec)],
            stdin=subprocess.DEVNULL,
            close_fds=True,
        )

    def check(self) -> None:
        """Once a tick: restart workers that died (or never connected), counting their loss."""
        for worker in self.workers:
            proc = worker.proc
            dead = proc is not None and proc.poll() is not None
            late = not worker.ready and time.monotonic() - worker.started > START_TIMEOUT
            if not (dead or late):
                continue
            lost = [seq for seq, (w, _n) in self._held.items() if w == worker.index]
            # Its chunks, and what it applied of earlier ones since its last delta.
            frames = sum(self._held[seq][1] for seq in lost) + worker.unmerged
            for seq in lost:
                del self._held[seq]
                self._done[seq] = None
            self.lost_frames += frames
            self.restarts += 1
            code = proc.returncode if proc is not None else None
            log.error(
                "worker %d %s; restarting it (%d frames it held are lost)",
                worker.index,
                f"exited with status {code}" if dead else "did not start",
                frames,
            )
            if not dead and proc is not None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(1.0)
            self._spawn(worker)
        self._apply_ready(float("inf"))

    def _control(self, message: list[bytes], only_unmerged: bool = False) -> None:
        for worker in self.workers:
            if worker.socket is None or (only_unmerged and not worker.unmerged):
                continue
            with contextlib.suppress(zmq.ZMQError):
                worker.socket.send_multipart(message, zmq.NOBLOCK)

    def reload(self, config: Config) -> None:
        """SIGHUP (on the engine thread, after the engine's own reload): every worker sends
        what it added up with the old prices and SLOs, then takes the new ones."""
        self._config = worker_sections(config)
        self._control([b"reload", json.dumps(self._config).encode()])

    def flush(self) -> None:
        """Ask the workers holding unmerged work for their deltas now."""
        self._control([b"flush"], only_unmerged=True)

    def stop(self, timeout: float = 5.0) -> None:
        """Tell every worker to stop (after the drain), wait for them, remove the sockets."""
        for worker in self.workers:
            if worker.socket is not None:
                with contextlib.suppress(zmq.ZMQError):
                    worker.socket.send(b"", zmq.NOBLOCK)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            proc = worker.proc
            if proc is None:
                continue
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for worker in self.workers:
            if worker.socket is not None:
                worker.socket.close(linger=0)
        self.results.close(linger=0)
        self.context.term()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the engine thread's work ---------------------------------------------------------

    @property
    def backlog(self) -> bool:
        """Results that could be applied now (a wake-up ran out of time before them)."""
        return self._next in self._done

    @property
    def idle(self) -> bool:
        return (
            not self._held
            and not self._done
            and not self._staged
            and not any(w.unmerged for w in self.workers)
        )

    def has_room(self) -> bool:
        """Whether the next chunk has somewhere to go (else the ingest socket is left alone)."""
        if self._seq - self._next >= self.count * IN_FLIGHT * 2:
            return False  # results would pile up behind a slow chunk
        return any(w.ready and w.load < IN_FLIGHT for w in self.workers)

    def forward(self, sock: zmq.Socket[bytes], budget: float) -> int:
        """Read queued frames off the ingest socket into chunks for the workers; returns the
        frames taken. A chunk goes out when it is full, when it has waited :data:`LINGER`
        seconds, or at once when no worker has anything to do (so a light load is not
        delayed, and a heavy one is sent in chunks large enough to be cheap to apply)."""
        taken = 0
        deadline = time.monotonic() + budget
        staged = self._staged
        while self.has_room():
            while len(staged) < CHUNK_FRAMES and self._staged_bytes < CHUNK_BYTES:
                try:
                    frame = sock.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                taken += 1
                if sock.rcvmore:  # a multipart message is one invalid frame, as in Ingest
                    while sock.rcvmore:
                        sock.recv()
                    self.engine.reject_frame("shape")
                    continue
                if not staged:
                    self._staged_since = time.monotonic()
                staged.append(frame)
                self._staged_bytes += len(frame.buffer)
            if not staged:
                break
            full = len(staged) >= CHUNK_FRAMES or self._staged_bytes >= CHUNK_BYTES
            if not (full or self.flush_in() == 0.0):
                break
            self._dispatch()
            if time.monotonic() >= deadline:
                break
        return taken

    def flush_in(self) -> float | None:
        """Seconds until the frames read so far must go to a worker (None: none are read)."""
        if not self._staged:
            return None
        if not self._held:
            return 0.0  # every worker is idle: no reason to wait
        return max(0.0, self._staged_since + LINGER - time.monotonic())

    def wants_frames(self) -> bool:
        """Whether the engine thread should read the ingest socket now."""
        return len(self._staged) < CHUNK_FRAMES and self.has_room()

    def _dispatch(self) -> None:
        worker = min((w for w in self.workers if w.ready), key=lambda w: w.load)
        # The worker decodes and applies as of now: the clock and the arrival time (the
        # default ``ts``; ``wall`` pins only what the engine applies, for tests).
        clock = struct.pack("<dd", self.now(), time.time())
        chunk: list[Any] = [struct.pack("<Q", self._seq), clock, *self._staged]
        frames = len(self._staged)
        self._staged.clear()
        self._staged_bytes = 0
        assert worker.socket is not None
        try:
            worker.socket.send_multipart(chunk, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            # Its pipe is full although it holds fewer than IN_FLIGHT chunks (it is being
            # replaced): the frames are already ours, so they are counted as lost.
            self.lost_frames += frames
            self._done[self._seq] = None
        else:
            self._held[self._seq] = (worker.index, frames)
            worker.load += 1
            self.chunks += 1
        self._seq += 1

    def collect(self, budget: float) -> int:
        """Take the workers' results and apply those whose turn it is; returns chunks applied."""
        results = self.results
        while True:
            try:
                message = results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._receive(message)
        return self._apply_ready(time.monotonic() + budget)

    def _receive(self, message: list[bytes]) -> None:
        if len(message) == 3 and message[0] == b"hello":
            index = int(message[1])
            if 0 <= index < self.count:
                self.workers[index].ready = True
            return
        if len(message) == 4 and message[0] == b"delta":
            self._delta(message)
            return
        if len(message) != 3 or len(message[0]) != 8 or len(message[1]) != 8:
            self.bad_results += 1
            return
        (seq,) = struct.unpack("<Q", message[0])
        held = self._held.pop(seq, None)
        if held is None:
            return  # a chunk already counted as lost
        index, frames = held
        self.workers[index].load -= 1
        if self.remote:
            self.workers[index].unmerged += frames
        try:
            result, count = unpack_result(message[2])
            if count != frames:
                raise HandoffError(f"{count} frames, not {frames}")
        except HandoffError as exc:
            self.bad_results += 1
            self.lost_frames += frames
            self._done[seq] = None
            log.error("a worker sent an unreadable result (%s): %d frames lost", exc, frames)
            return
        (wall,) = struct.unpack("<d", message[1])
        self._done[seq] = (result, frames, wall)

    def _delta(self, message: list[bytes]) -> None:
        """Add a worker's delta to the engine's trackers (one from a worker since replaced
        was counted lost with it, and is dropped)."""
        if len(message[1]) != 16 or len(message[2]) != 8:
            self.bad_results += 1
            return
        index, generation = struct.unpack("<QQ", message[1])
        (frames,) = struct.unpack("<Q", message[2])
        if index >= self.count or self.workers[index].generation != generation:
            return
        worker = self.workers[index]
        frames = min(frames, worker.unmerged)
        worker.unmerged -= frames
        now = self.now()
        wall = self.wall() if self.wall is not None else time.time()
        started = time.perf_counter()
        try:
            state = Reader("delta").map(unpack_state(message[3]))
            for name, value in state.items():
                self.engine.absorb(name, value, now, wall)
        except Exception as exc:  # unreadable, or a bug: counted, and the engine thread goes on
            self.bad_results += 1
            self.lost_frames += frames
            if isinstance(exc, (StateError, ValueError)):
                log.error("a worker sent an unreadable delta (%s): %d frames lost", exc, frames)
            else:
                log.exception("a worker's delta could not be added: %d frames lost", frames)
            return
        finally:
            self.merge_seconds += time.perf_counter() - started
        self.deltas += 1

    def _apply_ready(self, deadline: float) -> int:
        applied = 0
        while self._next in self._done:
            item = self._done.pop(self._next)
            self._next += 1
            if item is not None:
                result, frames, wall = item
                if self.wall is not None:
                    wall = self.wall()
                self.engine.apply(result, self.now(), wall, frames=frames)
                applied += 1
            if time.monotonic() >= deadline:
                break
        return applied

    def drain(self, sock: zmq.Socket[bytes], seconds: float, quiet: float = 0.2) -> tuple[int, int]:
        """At shutdown, after the ingest socket is unbound: forward and apply everything until
        nothing has come for ``quiet`` seconds and no chunk is out (at most ``seconds``).
        Returns the frames taken and the frames left (still queued or held: counted lost)."""
        taken = 0
        deadline = time.monotonic() + seconds
        last = time.monotonic()
        asked = 0.0
        poller = zmq.Poller()
        poller.register(self.results, zmq.POLLIN)
        while (now := time.monotonic()) < deadline:
            n = self.forward(sock, 0.05)
            taken += n
            if n:
                last = now
            if not self.idle:  # chunks out, results to apply, or deltas to come
                if not (self._held or self._done or self._staged) and now - asked > 0.1:
                    self.flush()  # only deltas are missing: ask for them
                    asked = now
                poller.poll(5)
                self.collect(0.05)
                self.check()
                continue
            if now - last >= quiet:
                return taken, 0
            sock.poll(timeout=20)
        left = sum(frames for _w, frames in self._held.values()) + len(self._staged)
        left += sum(w.unmerged for w in self.workers)
        self._staged.clear()
        self.lost_frames += left
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return taken, left
            while sock.rcvmore:
                sock.recv()
            left += 1

    # --- self-metrics ---------------------------------------------------------------------

    def families(self) -> list[Family]:
        workers = Family("metricsd_workers", "gauge", "Worker processes (--workers).")
        workers.add(self.count)
        restarts = Family(
            "metricsd_worker_restarts", "counter", "Workers restarted after they died."
        )
        restarts.counter(self.restarts)
        lost = Family(
            "metricsd_worker_lost_frames",
            "counter",
            "Frames lost with a worker that died holding them or what it added up of them "
            "(or that sent an unreadable result or delta).",
        )
        lost.counter(self.lost_frames)
        merges = Family(
            "metricsd_worker_merges", "counter", "Workers' deltas added into the serving state."
        )
        merges.counter(self.deltas)
        merge_seconds = Family(
            "metricsd_worker_merge_seconds",
            "counter",
            "Time the serving process spent adding the workers' deltas.",
        )
        merge_seconds.counter(self.merge_seconds)
        return [workers, restarts, lost, merges, merge_seconds]
