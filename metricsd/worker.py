"""A worker process (``metricsd serve --workers N``): frames in; decoded batches and deltas out.

Started by :class:`metricsd.workers.WorkerPool` as ``python -m metricsd.worker SPEC`` where SPEC
is a JSON object: this worker's index and generation, its input endpoint, the pool's result
endpoint, the ingest limits, and the trackers it applies (with the config sections they read).
The worker reads chunks ``[seq, clock, frame, frame, …]`` from its input socket (``clock``: the
serving process's monotonic and wall clock when it read them), decodes each chunk as the engine
thread would one wake-up (one :class:`Decoder` pool), and sends ``[seq, wall, result]`` (see
:mod:`metricsd.handoff`) to the pool's result socket.

It also applies the additive part of its trackers (``apply_additive``: counters, sums and
histograms, which add up whatever process records them) to trackers of its own, and every
``engine.merge_interval`` seconds (or when idle, or asked to) sends what they hold as a delta
``[b"delta", header, state]`` (the trackers' own persisted form, see :mod:`metricsd.persist`)
and starts them afresh.
The serving process adds the delta to its trackers (``absorb``). So a worker holds at most one
delta's worth: if it dies, that and the chunks it had taken are the loss, and the pool counts
both. Control messages: ``[b"flush"]`` (send the delta now), ``[b"reload", config]`` (send the
delta, then take the new config sections), ``[b""]`` (send the delta and exit). It ignores SIGINT
and SIGTERM: the serving process drains it and then tells it to stop, and it exits by itself if
that process goes away.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from typing import Any

import numpy as np
import zmq

from metricsd.batch import Batch
from metricsd.config import load_config
from metricsd.decode import Decoder, DecodeResult
from metricsd.engine import PRIMED as _PRIMED
from metricsd.handoff import pack_result
from metricsd.persist import pack_state
from metricsd.pricing import load_pricing
from metricsd.trackers.base import Ctx, Providers
from metricsd.validate import Limits
from metricsd.wiring import build_trackers

__all__ = ["main"]

#: How often an idle (or blocked) worker checks that its parent is still there.
PARENT_CHECK_SECONDS = 1.0
#: The longest the last messages wait to be delivered at exit.
LINGER_MS = 5000


class Applier:
    """The trackers a worker applies the additive part of, and their deltas."""

    def __init__(
        self, names: dict[str, list[str]], elide: list[str], config: dict[str, Any]
    ) -> None:
        self.types = {name: frozenset(types) for name, types in names.items()}
        #: Types no tracker of the serving process applies in full: their batches go back
        #: with only the rows some tracker's ordered part reads (the rest are counted).
        self.elide = frozenset(elide)
        self.trackers: dict[str, Any] = {}
        self.frames = 0
        self.version = 0
        self.now = 0.0
        self.flushed = time.monotonic()
        self.configure(config)

    def configure(self, config: dict[str, Any]) -> None:
        """Take the config sections the trackers read (at start, and after a reload: the
        caller sends the delta of the old settings first) and start the trackers afresh."""
        self.config = load_config(environ={}, overrides=config)
        self.providers = Providers(self.config.providers.prefixes)
        self.pricing = load_pricing(self.config.cost)
        self._fresh()

    def _fresh(self) -> None:
        trackers = build_trackers(
            self.config, self.now, time.time(), frozenset(self.types), self.pricing
        )
        self.trackers = {t.name: t for t in trackers}
        self.frames = 0

    def apply(self, result: DecodeResult, now: float, wall: float, frames: int) -> None:
        """Apply the additive part of every batch; trim the batches of elided types."""
        kept = []
        for batch in result.batches:
            if batch.type in _PRIMED:
                self.providers.resolve(batch)
            for name, tracker in self.trackers.items():
                if batch.type in self.types[name]:
                    self.version += 1
                    tracker.apply_additive(batch, Ctx(now, wall, self.version))
            trimmed = self._trim(batch, result) if batch.type in self.elide else batch
            if trimmed is not None:
                kept.append(trimmed)
        result.batches = kept
        self.frames += frames
        self.now = now

    def _trim(self, batch: Batch, result: DecodeResult) -> Batch | None:
        """The rows of ``batch`` the serving process still reads; the others are counted in
        ``result.elided`` (accepted and applied here)."""
        keep = np.zeros(batch.n, dtype=bool)
        for name, tracker in self.trackers.items():
            if batch.type in self.types[name] and hasattr(tracker, "ordered_rows"):
                keep |= tracker.ordered_rows(batch)
        kept = int(np.count_nonzero(keep))
        if kept < batch.n:
            result.elided[batch.type] += batch.n - kept
        if kept == 0:
            return None
        return batch if kept == batch.n else batch.take(keep)

    def delta(self) -> list[bytes]:
        """``[header, state]`` of what the trackers hold, and fresh trackers."""
        state = {name: t.state(self.now) for name, t in self.trackers.items()}
        header = struct.pack("<Q", self.frames)
        body = pack_state(state)
        self._fresh()
        self.flushed = time.monotonic()
        return [header, body]


def main(argv: list[str]) -> int:
    spec: dict[str, Any] = json.loads(argv[0])
    limits = Limits(**spec["limits"])
    parent = os.getppid()
    # The serving process decides when a worker stops (after the drain); a terminal's Ctrl-C or
    # the service manager's SIGTERM to the whole group must not cut a chunk in half.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    context = zmq.Context(1)
    inbox = context.socket(zmq.PULL)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.setsockopt(zmq.RCVHWM, 4)
    inbox.connect(spec["input"])
    outbox = context.socket(zmq.PUSH)
    outbox.setsockopt(zmq.SNDHWM, 4)
    # A send waits while the serving process is busy (that is backpressure, nothing is
    # dropped), but not for a serving process that is gone: every second it looks.
    outbox.setsockopt(zmq.SNDTIMEO, int(PARENT_CHECK_SECONDS * 1000))
    outbox.connect(spec["results"])
    orphaned = False

    def send(parts: list[bytes]) -> None:
        nonlocal orphaned
        while True:
            try:
                outbox.send_multipart(parts)
                return
            except zmq.Again:
                if os.getppid() != parent:
                    orphaned = True
                    raise SystemExit(0) from None

    send([b"hello", str(spec["index"]).encode(), str(os.getpid()).encode()])
    applier = (
        Applier(spec["apply"], spec.get("elide", []), spec["config"]) if spec.get("apply") else None
    )
    header = struct.pack("<QQ", spec["index"], spec.get("generation", 0))
    interval = float(spec.get("merge_interval", 0.25))

    def flush() -> None:
        if applier is not None and applier.frames:
            send([b"delta", header, *applier.delta()])

    try:
        while True:
            busy = applier is not None and applier.frames > 0
            wait = min(interval, PARENT_CHECK_SECONDS) if busy else PARENT_CHECK_SECONDS
            if not inbox.poll(int(wait * 1000)):
                if os.getppid() != parent:
                    orphaned = True
                    return 0
                if applier is not None and busy and time.monotonic() - applier.flushed >= interval:
                    flush()
                continue
            message = inbox.recv_multipart()
            if len(message) < 3:  # a control message: stop (empty), flush, or reload
                flush()
                if message[0] == b"reload" and len(message) == 2 and applier is not None:
                    applier.configure(json.loads(message[1]))
                    continue
                if message[0] == b"flush":
                    continue
                return 0
            now, wall = struct.unpack("<dd", message[1])
            decoder = Decoder(wall, limits)
            for frame in message[2:]:
                decoder.add(frame)
            result = decoder.finish()
            if applier is not None:
                applier.apply(result, now, wall, len(message) - 2)
            send([message[0], struct.pack("<d", wall), pack_result(result, len(message) - 2)])
            if applier is not None and time.monotonic() - applier.flushed >= interval:
                flush()
    finally:
        inbox.close()
        # What is sent is delivered before exit (the serving process is reading: it is
        # draining), unless that process is gone.
        outbox.close(linger=0 if orphaned or os.getppid() != parent else LINGER_MS)
        context.term()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
