"""Results that work the same called from synchronous code and awaited from asyncio code.

The sinks' query methods (``get_metrics``, ``get_summary``, ``clear``) and the collector's
``flush`` do their work at once and return a value that is also awaitable, so both
``sink.get_metrics(10)`` and ``await sink.get_metrics(10)`` work. Coroutines returned by custom
asynchronous sinks run on the caller's running loop, or, from synchronous code, on one background
loop thread per process (started on first use, and afresh in a forked child).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from typing import Any, TypeVar

__all__ = ["AwaitableList", "Done", "dispatch", "ready"]

log = logging.getLogger("metricsd_client")

T = TypeVar("T")


def ready(value: T) -> Generator[Any, None, T]:
    """An ``__await__`` iterator that returns ``value`` without suspending."""
    return value
    yield  # a generator function: the line above ends it at once


class AwaitableList(list[T]):
    """A list that can also be awaited (``await x`` is ``x``)."""

    def __await__(self) -> Generator[Any, None, AwaitableList[T]]:
        return ready(self)


class Done:
    """The outcome of an action done at once; awaiting it also waits for the asynchronous
    parts started on the caller's loop (custom async sinks), for at most ``timeout`` seconds."""

    def __init__(
        self, ok: bool = True, tasks: Iterable[Awaitable[Any]] = (), timeout: float = 5.0
    ) -> None:
        self.ok = ok
        self._tasks = list(tasks)
        self._timeout = timeout

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        return f"Done(ok={self.ok}, pending={len(self._tasks)})"

    def __await__(self) -> Generator[Any, None, bool]:
        return self._wait().__await__()

    async def _wait(self) -> bool:
        if self._tasks:
            done, pending = await asyncio.wait(
                [asyncio.ensure_future(t) for t in self._tasks], timeout=self._timeout
            )
            if pending:
                self.ok = False
            if any(not t.cancelled() and t.exception() is not None for t in done):
                self.ok = False
        return self.ok


async def _await(aw: Awaitable[T]) -> T:
    return await aw


class _BackgroundLoop:
    """One event loop in a daemon thread, for coroutines started from synchronous code."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()

    def _get(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="metricsd-client-async", daemon=True
                )
                thread.start()
                self._loop, self._pid = loop, os.getpid()
            return self._loop

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self._get())

    def reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._loop = None


BACKGROUND = _BackgroundLoop()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=BACKGROUND.reset_after_fork)


def _log_failure(fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is not None:
        log.warning("metricsd_client: an asynchronous sink failed: %r", exc)


def dispatch(
    result: object, on_error: Callable[[], None] | None = None
) -> asyncio.Task[Any] | concurrent.futures.Future[Any] | None:
    """Run ``result`` if it is awaitable: as a task on the running loop, else in the background.

    Returns the task or future (None for a plain value). Failures are logged, never raised.
    """
    if not inspect.isawaitable(result):
        return None

    def failed(fut: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is not None and on_error is not None:
            on_error()
        _log_failure(fut)

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        task = loop.create_task(_await(result))
        task.add_done_callback(failed)
        return task
    future = BACKGROUND.submit(_await(result))
    future.add_done_callback(failed)
    return future
