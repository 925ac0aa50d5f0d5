"""A decode worker process (``metricsd serve --workers N``): frames in, decoded batches out.

Started by :class:`metricsd.workers.WorkerPool` as ``python -m metricsd.worker SPEC`` where SPEC
is a JSON object: the pool's private directory, this worker's input endpoint and the ingest
limits. The worker reads chunks of frames ``[seq, frame, frame, …]`` from its input socket,
decodes each chunk as the engine thread would in one wake-up (one :class:`Decoder` pool), and
sends ``[seq, wall, result]`` (see :mod:`metricsd.handoff`) to the pool's result socket.

It holds no state between chunks, so a worker that dies loses only the chunks it had taken (the
pool counts them). It ignores SIGINT and SIGTERM: the serving process drains it and then tells it
to stop (an empty message), and it exits by itself if that process goes away.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
import time
from typing import Any

import zmq

from metricsd.decode import Decoder
from metricsd.handoff import pack_result
from metricsd.validate import Limits

__all__ = ["main"]

#: How often an idle worker checks that its parent is still there.
PARENT_CHECK_SECONDS = 1.0


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
    outbox.setsockopt(zmq.LINGER, -1)  # a result already decoded is delivered before exit
    outbox.setsockopt(zmq.SNDHWM, 4)
    outbox.connect(spec["results"])
    outbox.send_multipart([b"hello", str(spec["index"]).encode(), str(os.getpid()).encode()])
    try:
        while True:
            if not inbox.poll(int(PARENT_CHECK_SECONDS * 1000)):
                if os.getppid() != parent:
                    return 0
                continue
            message = inbox.recv_multipart()
            if len(message) < 2:
                return 0  # the stop message
            wall = time.time()
            decoder = Decoder(wall, limits)
            for frame in message[1:]:
                decoder.add(frame)
            outbox.send_multipart(
                [
                    message[0],
                    struct.pack("<d", wall),
                    pack_result(decoder.finish(), len(message) - 1),
                ]
            )
    finally:
        inbox.close()
        outbox.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
