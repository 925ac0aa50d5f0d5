"""systemd integration (SPEC §6): ``Type=notify`` readiness, ``STOPPING=1`` and the watchdog.

The notify protocol is one datagram per message to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names the abstract namespace). It needs no library: the
write is a few lines, never blocks (``MSG_DONTWAIT``) and never raises into the daemon, because
a supervisor that cannot be told something must not take the service down with it.

The watchdog is the part that needs care. systemd restarts the unit when ``WATCHDOG=1`` stops
arriving for ``WatchdogSec``; the point is to restart a daemon whose event loop is stuck. So the
pings come from :func:`watchdog`, a task *on* the event loop: a blocked loop runs no task and sends
nothing. A loop that is not blocked for good but stalls again and again would still squeeze pings
through, so the task also measures its own wake-up lag several times per ping period and skips the
ping when the worst lag since the last ping exceeded ``max_lag`` (default: the ping period, half
the watchdog interval). A ``healthy`` callback lets the daemon withhold pings for other reasons
(its ingest or tick task died).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog", "watchdog_interval"]

log = logging.getLogger("metricsd.systemd")


class Notifier:
    """Sends ``sd_notify`` messages to ``$NOTIFY_SOCKET``; does nothing when it is not set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        elif address and not address.startswith("/"):
            log.warning("NOTIFY_SOCKET=%r is not a socket path; not notifying systemd", address)
            address = ""
        self.address = address
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``KEY=value``) as one datagram; True when it was sent."""
        if not self.address:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._failed:  # say it once, not every ping
                log.warning("cannot notify systemd at %r: %s", self.address, exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> bool:
        """Before a reload (SIGHUP); send :meth:`ready` when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """The watchdog interval in seconds from ``$WATCHDOG_USEC``, or None when there is none
    for this process (unset, invalid, or ``$WATCHDOG_PID`` names another process)."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; no watchdog pings", usec)
        return None
    return value / 1e6 if value > 0 else None


async def watchdog(
    notifier: Notifier,
    interval: float,
    *,
    healthy: Callable[[], bool] | None = None,
    max_lag: float | None = None,
    checks_per_ping: int = 5,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Send ``WATCHDOG=1`` every ``interval / 2`` seconds while the loop is healthy; runs until
    cancelled. ``interval`` is the unit's ``WatchdogSec`` (see :func:`watchdog_interval`)."""
    period = interval / 2
    limit = period if max_lag is None else max_lag
    step = period / checks_per_ping
    worst = 0.0
    wake = clock()
    next_ping = wake + period
    skipped = False
    while True:
        wake += step
        await asyncio.sleep(max(0.0, wake - clock()))
        now = clock()
        worst = max(worst, now - wake)
        if now + step / 2 < next_ping:
            continue
        ok = worst <= limit and (healthy is None or healthy())
        if ok:
            notifier.notify("WATCHDOG=1")
            if skipped:
                log.warning("event loop healthy again; watchdog pings resumed")
        elif not skipped:
            why = f"the event loop stalled for {worst:.3f} s" if worst > limit else "unhealthy"
            log.error("watchdog ping withheld: %s", why)
        skipped = not ok
        worst = 0.0
        if now - next_ping > step:
            # Behind schedule (a stall): start afresh rather than fire the missed checks at once.
            wake = now
            next_ping = now + period
        else:
            next_ping += period
