"""What the HTTP and WebSocket layer needs of the daemon: snapshots, a worker, commands.

The web modules import nothing from the engine or the trackers. They read the latest frozen
:class:`~metricsd.snapshot.Snapshot`, compute its views on a worker thread (never on the event
loop, so a large view cannot hold up ``/healthz``), and hand changes to the engine as commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from metricsd.snapshot import Snapshot

__all__ = ["Source"]

T = TypeVar("T")


class Source(Protocol):
    #: True once ingest is bound and state restored (``/readyz``).
    ready: bool

    def latest(self) -> Snapshot | None:
        """The newest published snapshot (None before the first)."""
        ...

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a pure read of a snapshot) on a worker thread."""
        ...

    async def exposition(self, snap: Snapshot, openmetrics: bool) -> bytes:
        """The snapshot's Prometheus text (or OpenMetrics), rendered once."""
        ...

    async def command(self, name: str, *args: Any) -> Any:
        """Apply a change on the engine (``put_budget``, ``delete_budget``) and wait until a
        snapshot that shows it is published; returns the command's result."""
        ...
