"""Where the drop-in trackers write and read: a running daemon, or the daemon's trackers embedded.

:class:`DaemonBackend` writes through an :class:`~metricsd_client.Emitter` (ZeroMQ, never
blocking, never raising) and reads the daemon's HTTP API with a timeout. The daemon applies
events as they arrive and serves views built once per tick (SPEC §3, §4), so a read right after
a write may not see it yet. :meth:`DaemonBackend.sync` closes that gap ("read your writes"):

1. flush the emitter: every event recorded so far is handed to ZeroMQ (and, on a local
   connection, reaches the daemon's socket within a millisecond);
2. poll ``/metrics`` until (a) the exposition is a newer tick's than the one current when the
   flush ended, and (b) the daemon has seen (accepted plus rejected, ``client`` drop reports
   excepted) at least as many events as this backend's emitter has sent since the daemon
   started. Views are built per tick from the trackers' state, so the views of that newer
   tick include the flushed events.

(b) makes the wait exact when this process is the daemon's only emitter, whatever the daemon's
backlog. With other emitters their events count too, so (b) may hold early and the guarantee
rests on (a): events that reached the daemon before a tick are applied by then unless its
ingest is backlogged. (A daemon-side per-emitter sync marker would make it exact in every case:
see docs/client.md.) A restart of the daemon (a new ``process_start_time_seconds``) restarts
the count. When the conditions are not met within the timeout, the read goes ahead and a
warning is logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Final, Protocol

from metricsd_client._emitter import Emitter
from metricsd_client.http import (
    DEFAULT_TIMEOUT,
    HttpReader,
    MetricsdHTTPError,
    parse_samples,
    quote,
)

__all__ = ["Backend", "DaemonBackend", "make_backend", "shared_emitter"]

log = logging.getLogger("metricsd_client")

_SELF_METRICS: Final = frozenset(
    {
        "metricsd_events_received_total",
        "metricsd_events_invalid_total",
        "process_start_time_seconds",
    }
)
_POLL_SECONDS: Final = 0.025


class Backend(Protocol):
    """What the trackers need: an emitter to write to, and the daemon's views to read."""

    emitter: Emitter
    url: str

    def sync(self, timeout: float | None = None) -> bool: ...

    def flush(self, timeout: float = 5.0) -> bool: ...

    def close(self) -> None: ...

    def streaming(self, model: str | None = None) -> dict[str, Any]: ...

    def errors(self) -> dict[str, Any]: ...

    def slo(self) -> dict[str, Any]: ...

    def error_patterns(
        self, min_count: int, recent_only: bool, limit: int | None
    ) -> list[dict[str, Any]]: ...

    def costs(self) -> dict[str, Any]: ...

    def key_costs(self, key_id: str) -> dict[str, Any] | None: ...

    def budgets(self) -> dict[str, Any]: ...

    def budget(self, key_id: str) -> dict[str, Any] | None: ...

    def put_budget(self, key_id: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def delete_budget(self, key_id: str) -> bool: ...

    def suggestions(self, key_id: str | None) -> list[dict[str, Any]]: ...

    def summary(self, window_seconds: float) -> dict[str, Any]: ...

    def recent(self, limit: int) -> list[dict[str, Any]]: ...

    def prometheus(self) -> str: ...


_SHARED: dict[tuple[str, str, int, float], Emitter] = {}
_SHARED_LOCK = threading.Lock()


def shared_emitter(
    endpoint: str | None = None,
    *,
    source: str = "default",
    batch_size: int = 1000,
    batch_timeout_seconds: float = 0.05,
) -> Emitter:
    """One emitter per (endpoint, source, batch settings) in this process, created on first use.

    ``endpoint`` defaults to ``$METRICSD_INGEST``, else ``tcp://127.0.0.1:5557``.
    """
    from metricsd_client._emitter import DEFAULT_ENDPOINT

    endpoint = endpoint or os.environ.get("METRICSD_INGEST") or DEFAULT_ENDPOINT
    key = (endpoint, source, int(batch_size), float(batch_timeout_seconds))
    with _SHARED_LOCK:
        emitter = _SHARED.get(key)
        if emitter is None or emitter._closed:
            emitter = _SHARED[key] = Emitter(
                endpoint,
                source=source,
                batch_size=batch_size,
                batch_timeout_seconds=batch_timeout_seconds,
            )
        return emitter


_BACKENDS: weakref.WeakSet[DaemonBackend] = weakref.WeakSet()


def _reset_lock_after_fork() -> None:
    global _SHARED_LOCK
    _SHARED_LOCK = threading.Lock()
    for backend in list(_BACKENDS):
        backend._sync_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


class DaemonBackend:
    """A running daemon: events over ZeroMQ, views over HTTP (see the module docstring).

    ``url``/``token`` default to ``$METRICSD_URL`` / ``$METRICSD_TOKEN``; ``endpoint`` (the
    ZeroMQ ingest) to ``$METRICSD_INGEST``. ``emitter`` shares an existing emitter; by default
    one emitter per endpoint is shared by every backend of the process. ``timeout`` bounds each
    HTTP request and each :meth:`sync`.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        endpoint: str | None = None,
        emitter: Emitter | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        source: str = "default",
    ) -> None:
        self.http = HttpReader(url, token, timeout)
        self.url = self.http.url
        self.timeout = timeout
        self.emitter = emitter if emitter is not None else shared_emitter(endpoint, source=source)
        self._sync_lock = threading.Lock()
        self._daemon_start: float | None = None
        self._base_sent = 0
        _BACKENDS.add(self)

    def __repr__(self) -> str:
        return f"DaemonBackend({self.url!r}, ingest={self.emitter.endpoint!r})"

    # --- consistency --------------------------------------------------------------------------

    def _seen(self, text: str) -> tuple[float | None, int]:
        samples = parse_samples(text, _SELF_METRICS)
        received = sum(
            v
            for labels, v in samples.get("metricsd_events_received_total", [])
            if labels != 'type="client"'
        )
        invalid = sum(v for _l, v in samples.get("metricsd_events_invalid_total", []))
        start = samples.get("process_start_time_seconds")
        return (start[0][1] if start else None), int(received + invalid)

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until the daemon's views include every event recorded before this call.

        Returns False (after logging a warning) if that could not be confirmed within
        ``timeout`` seconds; raises :class:`~metricsd_client.http.MetricsdUnavailable` if the
        daemon cannot be reached at all.
        """
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        self.emitter.flush(wait)
        with self._sync_lock:
            target = self.emitter.sent
            first: str | None = None
            seen = 0
            while True:
                remaining = deadline - time.monotonic()
                body = self.http.get_text("/metrics", timeout=max(remaining, 0.5))
                start, seen = self._seen(body)
                if start != self._daemon_start:
                    if self._daemon_start is not None:
                        self._base_sent = target  # a new daemon: it counts from zero
                    self._daemon_start = start
                if first is None:
                    first = body  # the tick current when the flush ended
                elif body != first and seen >= target - self._base_sent:
                    return True
                if time.monotonic() >= deadline:
                    log.warning(
                        "metricsd_client: the daemon at %s did not confirm %d events within "
                        "%.1f s (it reports %d); reading anyway",
                        self.url,
                        target - self._base_sent,
                        wait,
                        seen,
                    )
                    return False
                time.sleep(_POLL_SECONDS)

    def flush(self, timeout: float = 5.0) -> bool:
        return self.emitter.flush(timeout)

    def close(self) -> None:
        """Flush (the shared emitter stays open for the other users; it closes at exit)."""
        self.emitter.flush(self.timeout)

    # --- reads ------------------------------------------------------------------------------

    def streaming(self, model: str | None = None) -> dict[str, Any]:
        path = "/metrics/streaming" + (f"?model={quote(model)}" if model else "")
        return dict(self.http.get_json(path))

    def errors(self) -> dict[str, Any]:
        return dict(self.http.get_json("/metrics/errors"))

    def slo(self) -> dict[str, Any]:
        return dict(self.http.get_json("/metrics/slo"))

    def error_patterns(
        self, min_count: int, recent_only: bool, limit: int | None
    ) -> list[dict[str, Any]]:
        query = f"?min_count={int(min_count)}&recent_only={'true' if recent_only else 'false'}"
        if limit is not None:
            query += f"&limit={int(limit)}"
        return list(self.http.get_json("/metrics/error-patterns" + query))

    def costs(self) -> dict[str, Any]:
        return dict(self.http.get_json("/metrics/costs"))

    def key_costs(self, key_id: str) -> dict[str, Any] | None:
        found = self.http.get_json(f"/metrics/costs/keys/{quote(key_id)}", missing_ok=True)
        return None if found is None else dict(found)

    def budgets(self) -> dict[str, Any]:
        return dict(self.http.get_json("/metrics/budgets"))

    def budget(self, key_id: str) -> dict[str, Any] | None:
        found = self.http.get_json(f"/metrics/budgets/{quote(key_id)}", missing_ok=True)
        return None if found is None else dict(found)

    def put_budget(self, key_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.http.send_json("PUT", f"/metrics/budgets/{quote(key_id)}", body))

    def delete_budget(self, key_id: str) -> bool:
        path = f"/metrics/budgets/{quote(key_id)}"
        return self.http.send_json("DELETE", path, missing_ok=True) is not None

    def suggestions(self, key_id: str | None) -> list[dict[str, Any]]:
        query = f"?key={quote(key_id)}" if key_id else ""
        return list(self.http.get_json("/metrics/costs/suggestions" + query))

    def summary(self, window_seconds: float) -> dict[str, Any]:
        return dict(self.http.get_json(f"/metrics/summary?window_seconds={window_seconds:g}"))

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self.http.get_json(f"/metrics/recent?limit={int(limit)}"))

    def prometheus(self) -> str:
        return self.http.get_text("/metrics")


def make_backend(
    *,
    embedded: bool = False,
    backend: Backend | None = None,
    url: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    emitter: Emitter | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    slo_objective: float | None = None,
) -> Backend:
    """The backend a tracker was asked for: given, embedded, or a daemon (the default)."""
    if backend is not None:
        return backend
    if embedded:
        from metricsd_client._embedded import EmbeddedBackend

        return EmbeddedBackend(slo_objective=slo_objective)
    return DaemonBackend(url, token, endpoint=endpoint, emitter=emitter, timeout=timeout)


def bad_request(exc: MetricsdHTTPError) -> ValueError:
    """A 400 from the daemon as the ValueError a local tracker would raise."""
    return ValueError(exc.message)
