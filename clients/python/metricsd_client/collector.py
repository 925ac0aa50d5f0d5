"""The :class:`MetricsCollector`: applies a :class:`MetricsConfig` to records and fans them out
to sinks. Instrumentation (``instrument_openai``) and application code hand it one
:class:`~metricsd_client.RequestMetrics` per LLM call.

It never raises into the application: a sink that raises (or whose coroutine fails) is counted
in :attr:`MetricsCollector.stats` and logged. Synchronous sinks run inline; a sink whose methods
are coroutines runs on the caller's event loop when there is one, else on a background loop.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import Any

from metricsd_client._aio import Done, dispatch
from metricsd_client.config import MetricsConfig
from metricsd_client.records import RequestMetrics
from metricsd_client.sinks import DaemonSink

__all__ = ["MetricsCollector", "default_collector", "set_default_collector"]

log = logging.getLogger("metricsd_client")


class MetricsCollector:
    """``config`` (default: :meth:`MetricsConfig.from_env`) decides what is kept; ``sinks``
    (default: one :class:`DaemonSink`) receive it."""

    def __init__(
        self, config: MetricsConfig | None = None, sinks: Sequence[Any] | None = None
    ) -> None:
        self.config = config if config is not None else MetricsConfig.from_env()
        self.sinks: list[Any] = (
            list(sinks) if sinks is not None else [DaemonSink(config=self.config)]
        )
        for sink in self.sinks:
            if not callable(getattr(sink, "record", None)):
                raise TypeError(f"sink {sink!r} has no record(metrics) method")
        self._lock = threading.Lock()
        self._background: set[concurrent.futures.Future[Any]] = set()
        self._tasks: set[Any] = set()
        self.stats: dict[str, int] = {
            "offered": 0,
            "recorded": 0,
            "dropped": 0,
            "sink_errors": 0,
        }
        _COLLECTORS.add(self)

    def __repr__(self) -> str:
        return f"MetricsCollector(sinks={self.sinks!r}, stats={self.stats})"

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _sink_failed(self) -> None:
        self._count("sink_errors")

    def _track(self, pending: Any) -> None:
        if pending is None:
            return
        with self._lock:
            if isinstance(pending, concurrent.futures.Future):
                self._background.add(pending)
                pending.add_done_callback(self._background.discard)
            else:
                self._tasks.add(pending)
                pending.add_done_callback(self._tasks.discard)

    def _decide(self, metrics: RequestMetrics) -> RequestMetrics | None:
        self._count("offered")
        try:
            kept = self.config.decide(metrics)
        except Exception:
            log.warning("metricsd_client: MetricsConfig.decide failed", exc_info=True)
            kept = metrics
        self._count("recorded" if kept is not None else "dropped")
        return kept

    def record(self, metrics: RequestMetrics) -> None:
        """Offer one record (synchronous; asynchronous sinks are scheduled, not awaited)."""
        kept = self._decide(metrics)
        if kept is None:
            return
        for sink in self.sinks:
            try:
                self._track(dispatch(sink.record(kept), self._sink_failed))
            except Exception:
                self._count("sink_errors")
                log.debug("metricsd_client: sink %r failed", sink, exc_info=True)

    async def arecord(self, metrics: RequestMetrics) -> None:
        """Offer one record, awaiting asynchronous sinks."""
        kept = self._decide(metrics)
        if kept is None:
            return
        for sink in self.sinks:
            try:
                result = sink.record(kept)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                self._count("sink_errors")
                log.debug("metricsd_client: sink %r failed", sink, exc_info=True)

    def flush(self, timeout: float = 5.0) -> Done:
        """Flush every sink. Synchronous work is done before this returns; ``await`` the
        result to also wait for asynchronous sinks started on the running loop."""
        ok = True
        for sink in self.sinks:
            method = getattr(sink, "flush", None)
            if not callable(method):
                continue
            try:
                result = method()
                if isinstance(result, Done):
                    ok = ok and bool(result)
                else:
                    self._track(dispatch(result, self._sink_failed))
            except Exception:
                ok = False
                self._count("sink_errors")
        with self._lock:
            background = list(self._background)
            tasks = list(self._tasks)
        if background:
            _done, pending = concurrent.futures.wait(background, timeout=timeout)
            ok = ok and not pending
        return Done(ok, tasks, timeout)

    def close(self, timeout: float = 5.0) -> Done:
        return self.flush(timeout)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._background = set()
        self._tasks = set()


_COLLECTORS: weakref.WeakSet[MetricsCollector] = weakref.WeakSet()
_DEFAULT: MetricsCollector | None = None
_DEFAULT_LOCK = threading.Lock()


def default_collector() -> MetricsCollector:
    """The process-wide collector (created on first use: config from the environment, one
    :class:`DaemonSink`)."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = MetricsCollector()
        return _DEFAULT


def set_default_collector(collector: MetricsCollector | None) -> None:
    """Replace (or, with None, forget) the process-wide collector."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        _DEFAULT = collector


def _after_fork_in_child() -> None:
    global _DEFAULT_LOCK
    _DEFAULT_LOCK = threading.Lock()
    for collector in list(_COLLECTORS):
        collector._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
