"""Wiring: build the engine, bind ingest and HTTP, tick, and shut down cleanly (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from pathlib import Path

import zmq
import zmq.asyncio
from aiohttp import web

from metricsd.config import Config, ConfigError, split_host_port
from metricsd.engine import Engine
from metricsd.ingest import Ingest
from metricsd.trackers.cost import CostTracker
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.web.app import build_app
from metricsd.web.hub import Hub
from metricsd.webhook import WebhookSender
from metricsd.window import Geometry

__all__ = ["Daemon", "run"]

log = logging.getLogger("metricsd")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config) -> None:
    """Refuse a non-loopback HTTP address without a token unless ``--insecure`` (SPEC §2.1)."""
    host, _port = split_host_port(config.http.listen)
    if not is_loopback(host) and not config.auth.token and not config.auth.insecure:
        raise ConfigError(
            f"http.listen: {config.http.listen} is reachable from other hosts and no token is "
            "set; set auth.token (METRICSD_TOKEN / --token) or pass --insecure"
        )


class Daemon:
    """The running daemon: ``start()``, then ``stop()`` (also driven by signals in ``run``)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.geometry = Geometry(slot_seconds=config.engine.slot_seconds)
        start = time.monotonic()
        self.requests = RequestTracker(config, self.geometry, start)
        self.streaming = StreamingTracker(config, self.geometry, start)
        self.errors = ErrorTracker(config, self.geometry, start)
        self.slo = SloTracker(config, self.geometry, start, wall_offset=time.time() - start)
        self.cost = CostTracker(config, start, time.time())
        self.engine = Engine(
            config, [self.requests, self.streaming, self.errors, self.slo, self.cost]
        )
        self.webhook: WebhookSender | None = None
        if config.cost.webhook_url:
            cost = config.cost
            self.webhook = WebhookSender(cost.webhook_url, cost.webhook_timeout, cost.webhook_queue)
            self.cost.alert_sinks.append(self.webhook.submit)
            self.engine.extra_families.append(self.webhook.families)
        self.hub = Hub(
            self.engine,
            self.requests,
            [self.streaming, self.slo, self.cost],
            config.http,
            alert_sources=[self.slo, self.cost],
        )
        self.hub.slack = min(config.engine.tick / 2, 0.05)
        self.context = zmq.asyncio.Context()
        self.ingest = Ingest(config.ingest, self.engine, self.context)
        self.runner: web.AppRunner | None = None
        self.http_url = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        check_exposure(self.config)
        if self.config.state.path:
            log.warning(
                "state.path is set (%s) but this version does not persist state yet; "
                "counters start from zero after a restart",
                self.config.state.path,
            )
        endpoints = self.ingest.bind()
        host, port = split_host_port(self.config.http.listen)
        app = build_app(
            self.engine, self.requests, self.config.auth.token, self.config.http.max_body_bytes
        )
        app.router.add_get("/metrics/stream", self.hub.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        bound = self._bound_address(site, host, port)
        self.http_url = f"http://{bound}"
        self.engine.snapshot(time.monotonic(), time.time())
        self.engine.ready = True
        self.tasks.append(asyncio.create_task(self.ingest.run(), name="ingest"))
        self.tasks.append(asyncio.create_task(self._tick(), name="tick"))
        if self.webhook is not None:
            self.webhook.start()
        if self.config.demo.enabled:
            from metricsd.demo import run_demo

            self.tasks.append(
                asyncio.create_task(
                    run_demo(self.context, endpoints[0], self.config.demo.rate), name="demo"
                )
            )
        log.info("metricsd ready http=%s ingest=%s", self.http_url, ",".join(endpoints))
        if self.config.ready_file:
            path = Path(self.config.ready_file)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"http": self.http_url, "ingest": endpoints}))
            os.replace(tmp, path)

    @staticmethod
    def _bound_address(site: web.TCPSite, host: str, port: int) -> str:
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        for sock in sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                real = sock.getsockname()
                h = real[0]
                return f"[{h}]:{real[1]}" if ":" in h else f"{h}:{real[1]}"
        return f"{host}:{port}"

    async def _tick(self) -> None:
        interval = self.config.engine.tick
        deadline = time.monotonic()
        while True:
            # A fixed rate: the time a tick takes does not stretch the period.
            deadline = max(deadline + interval, time.monotonic())
            await asyncio.sleep(deadline - time.monotonic())
            try:
                now, wall = time.monotonic(), time.time()
                self.engine.snapshot(now, wall)
                self.hub.tick(now, wall)
            except Exception:
                log.exception("error building the snapshot")

    async def stop(self) -> None:
        """Stop taking work, apply what the socket still holds, close everything."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        drained = self.ingest.drain()
        if drained:
            log.info("applied %d frames left in the socket at shutdown", drained)
        self.engine.snapshot(time.monotonic(), time.time())
        await self.hub.close_all(1001)
        if self.webhook is not None:
            await self.webhook.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.ingest.close()
        self.context.term()
        self.stopped.set()


async def serve(config: Config) -> None:
    daemon = Daemon(config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    await stop.wait()
    log.info("stopping")
    await daemon.stop()
    log.info("stopped")


def run(config: Config) -> None:
    """Run the daemon until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(config))
