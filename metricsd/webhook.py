"""Budget alerts to a webhook (SPEC §4.6): POST of each ``budget_alert`` as JSON.

Ingest never waits for it: the cost tracker calls :meth:`WebhookSender.submit`, which only puts
the alert on a bounded queue (a full queue drops the alert and counts it). One task posts the
queue in order with an aiohttp session and a per-request timeout; each failure (timeout,
connection error, non-2xx status, full queue) is counted in
``metricsd_webhook_failures_total{reason}`` and never retried, so a dead endpoint costs one
timeout per alert and nothing else. The URL is never logged (webhook URLs often carry a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from typing import Any, Final

import aiohttp

from metricsd.export.prometheus import Family

__all__ = ["WebhookSender"]

log = logging.getLogger("metricsd.webhook")
REASONS: Final = ("timeout", "error", "status", "queue_full")


class WebhookSender:
    """See the module docstring. ``run`` is the task; ``close`` flushes briefly and stops it."""

    def __init__(self, url: str, timeout: float, queue_size: int) -> None:
        self.url = url
        self.timeout = timeout
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=queue_size)
        self.sent = 0
        self.failures: Counter[str] = Counter()
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def submit(self, alert: dict[str, Any]) -> None:
        """Queue an alert for delivery; never blocks."""
        try:
            self.queue.put_nowait(alert)
        except asyncio.QueueFull:
            self._fail("queue_full")

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name="webhook")
        return self._task

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                alert = await self.queue.get()
                try:
                    await self._post(session, alert)
                finally:
                    self.queue.task_done()

    async def _post(self, session: aiohttp.ClientSession, alert: dict[str, Any]) -> None:
        try:
            async with session.post(self.url, json=alert) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    self.sent += 1
                    self._failing = False
                else:
                    self._fail("status", f"HTTP {resp.status}")
        except TimeoutError:
            self._fail("timeout")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._fail("error", type(exc).__name__)

    def _fail(self, reason: str, detail: str = "") -> None:
        self.failures[reason] += 1
        if not self._failing:  # one line per run of failures, not one per alert
            self._failing = True
            log.warning(
                "budget alert webhook failed (%s%s)", reason, f": {detail}" if detail else ""
            )

    async def close(self, flush_seconds: float = 2.0) -> None:
        """Give queued alerts up to ``flush_seconds`` to go out, then stop the task."""
        if self._task is None:
            return
        if not self._task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), flush_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        self._task = None

    def families(self, _now: float) -> list[Family]:
        sent = Family("metricsd_webhook_sent", "counter", "Budget alerts delivered to the webhook.")
        sent.counter(self.sent)
        failures = Family(
            "metricsd_webhook_failures",
            "counter",
            "Budget alerts not delivered to the webhook, by reason.",
        )
        for reason in REASONS:
            failures.counter(self.failures[reason], (("reason", reason),))
        return [sent, failures]
