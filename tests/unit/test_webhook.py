"""The budget-alert webhook sender against a real local HTTP server."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from metricsd.webhook import WebhookSender

ALERT = {"type": "budget_alert", "key_id": "k_0123456789ab", "level": "exceeded"}


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hook"


async def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_posts_alerts_as_json() -> None:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=204)

    runner, url = await serve(hook)
    sender = WebhookSender(url, timeout=2.0, queue_size=10)
    sender.start()
    sender.submit(ALERT)
    sender.submit({**ALERT, "level": "threshold"})
    await wait_until(lambda: sender.sent == 2)
    assert received == [ALERT, {**ALERT, "level": "threshold"}]
    await sender.close()
    await runner.cleanup()


async def test_failures_are_counted_never_raised() -> None:
    async def broken(_request: web.Request) -> web.Response:
        return web.Response(status=500)

    async def slow(_request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response()

    runner, url = await serve(broken)
    sender = WebhookSender(url, timeout=1.0, queue_size=10)
    sender.start()
    sender.submit(ALERT)
    await wait_until(lambda: sender.failures["status"] == 1)
    await sender.close()
    await runner.cleanup()

    runner, url = await serve(slow)
    sender = WebhookSender(url, timeout=0.1, queue_size=10)
    sender.start()
    sender.submit(ALERT)
    await wait_until(lambda: sender.failures["timeout"] == 1)
    await sender.close(flush_seconds=0.1)
    await runner.cleanup()

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sender = WebhookSender(f"http://127.0.0.1:{port}/", timeout=1.0, queue_size=10)
    sender.start()
    sender.submit(ALERT)
    await wait_until(lambda: sender.failures["error"] == 1)
    text = "\n".join(
        f"{f.name}{s[0]} {s[2]}" for f in sender.families(0.0) for s in f.samples if s[2]
    )
    assert "metricsd_webhook_failures_total 1" in text
    await sender.close()


async def test_a_full_queue_drops_and_counts() -> None:
    sender = WebhookSender("http://127.0.0.1:9/", timeout=1.0, queue_size=2)  # not started
    for _ in range(5):
        sender.submit(ALERT)  # never blocks
    assert sender.queue.qsize() == 2 and sender.failures["queue_full"] == 3
    await sender.close()  # never started: nothing to stop
