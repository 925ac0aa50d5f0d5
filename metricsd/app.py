"""Wiring: build the engine, bind ingest and HTTP, tick, and shut down cleanly (SPEC §6)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from aiohttp import web

from metricsd import persist
from metricsd.config import Config, ConfigError, split_host_port
from metricsd.engine import Engine
from metricsd.export.otlp import OtlpPush, require_sdk
from metricsd.ingest import Ingest
from metricsd.persist import Clock
from metricsd.security import IngestCurve, check_ingest_exposure, is_local_endpoint, tls_context
from metricsd.systemd import Notifier, watchdog, watchdog_interval
from metricsd.trackers.cost import CostTracker
from metricsd.trackers.custom import CustomTracker
from metricsd.trackers.errors import ErrorTracker
from metricsd.trackers.requests import RequestTracker
from metricsd.trackers.slo import SloTracker
from metricsd.trackers.streaming import StreamingTracker
from metricsd.web.app import build_app
from metricsd.web.hub import Hub
from metricsd.webhook import WebhookSender
from metricsd.window import Geometry

__all__ = ["Daemon", "preflight", "run"]

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
    check_ingest_exposure(config)


def check_ipc_paths(config: Config) -> None:
    """An ``ipc://`` endpoint's directory must exist (ZeroMQ does not create it), and the path
    must fit in a Unix socket address."""
    for endpoint in config.ingest.endpoints:
        if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):
            continue  # ``@name``: Linux's abstract namespace, no file
        path = Path(endpoint[len("ipc://") :])
        if len(os.fsencode(path)) > 107:
            raise ConfigError(f"ingest.endpoints: {endpoint}: the path is longer than 107 bytes")
        if not path.parent.is_dir():
            raise ConfigError(
                f"ingest.endpoints: {endpoint}: the directory {path.parent} does not exist "
                "(create it first; under systemd, RuntimeDirectory=metricsd makes /run/metricsd)"
            )


def preflight(config: Config) -> None:
    """Every check ``serve`` makes before it binds anything; ``metricsd check-config`` runs the
    same, so a config it passes is one ``serve`` starts with. Raises :class:`ConfigError`."""
    check_exposure(config)
    check_ipc_paths(config)
    if config.otlp.endpoint:
        require_sdk()  # refuse to start without the extra rather than drop the push
    tls_context(config.http)  # the certificate and key load
    IngestCurve.from_config(config.ingest)  # the CURVE key file reads and matches


class Daemon:
    """The running daemon: ``start()``, then ``stop()`` (also driven by signals in ``run``)."""

    def __init__(self, config: Config, reload_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.reload_config = reload_config
        self.geometry = Geometry(slot_seconds=config.engine.slot_seconds)
        self.clock = Clock()
        start = self.clock()
        self.requests = RequestTracker(config, self.geometry, start)
        self.streaming = StreamingTracker(config, self.geometry, start)
        self.errors = ErrorTracker(config, self.geometry, start)
        self.slo = SloTracker(config, self.geometry, start, wall_offset=time.time() - start)
        self.cost = CostTracker(config, start, time.time())
        self.custom = CustomTracker(config)
        self.engine = Engine(
            config, [self.requests, self.streaming, self.errors, self.slo, self.cost, self.custom]
        )
        # A custom metric may not take the name of a built-in family.
        self.custom.reserved = frozenset(
            f.name for f in self.engine.families(start) if f.name != "metricsd_custom_refused"
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
            clock=self.clock,
        )
        self.hub.slack = min(config.engine.tick / 2, 0.05)
        self.context = zmq.asyncio.Context()
        self.ingest = Ingest(config.ingest, self.engine, self.context, clock=self.clock)
        self.engine.clock = self.clock
        self.cost.on_budget_change = self._save_soon
        self._save_pending = False
        self.saves = 0
        self.runner: web.AppRunner | None = None
        self.http_url = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        self.notifier = Notifier()
        self.curve: IngestCurve | None = None
        self.otlp: OtlpPush | None = None

    async def start(self) -> None:
        preflight(self.config)
        if self.config.state.path:
            self._restore(self.config.state.path)
        ssl_context = tls_context(self.config.http)
        self.curve = IngestCurve.from_config(self.config.ingest)
        before_bind = None
        if self.curve is not None:
            self.curve.start(self.context)
            before_bind = partial(self.curve.before_bind, self.ingest.socket)
        endpoints = self.ingest.bind(before_bind)
        secured = [e for e in endpoints if not is_local_endpoint(e)] if self.curve else []
        if secured:
            log.info("CURVE required on %s", ",".join(secured))
        host, port = split_host_port(self.config.http.listen)
        if self.config.auth.token and ssl_context is None and not is_loopback(host):
            log.warning("the bearer token crosses the network in clear text: serve TLS")
        app = build_app(
            self.engine, self.requests, self.config.auth.token, self.config.http.max_body_bytes
        )
        app.router.add_get("/metrics/stream", self.hub.handle)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        bound = self._bound_address(site, host, port)
        self.http_url = f"{'https' if ssl_context else 'http'}://{bound}"
        self.engine.snapshot(self.clock(), time.time())
        self.engine.ready = True
        self.tasks.append(asyncio.create_task(self.ingest.run(), name="ingest"))
        self.tasks.append(asyncio.create_task(self._tick(), name="tick"))
        if self.config.state.path:
            self.tasks.append(asyncio.create_task(self._save_loop(), name="save"))
        if self.webhook is not None:
            self.webhook.start()
        if self.config.demo.enabled:
            from metricsd.demo import run_demo

            self.tasks.append(
                asyncio.create_task(
                    run_demo(
                        self.context,
                        endpoints,
                        self.config.demo,
                        self.curve.public if self.curve else None,
                    ),
                    name="demo",
                )
            )
        if self.config.otlp.endpoint:
            self.otlp = OtlpPush(
                self.config.otlp,
                lambda: self.engine.families(self.clock(), canonical=True),
                start_wall=self.engine.started_wall,
                max_points=64 * self.config.limits.max_series,
            )
            self.otlp.start()
        log.info("metricsd ready http=%s ingest=%s", self.http_url, ",".join(endpoints))
        if self.config.ready_file:
            path = Path(self.config.ready_file)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"http": self.http_url, "ingest": endpoints}))
            os.replace(tmp, path)
        self.notifier.ready(f"ready http={self.http_url} ingest={','.join(endpoints)}")
        interval = watchdog_interval()
        if interval is not None and self.notifier.enabled:
            self.tasks.append(
                asyncio.create_task(
                    watchdog(self.notifier, interval, healthy=self._healthy), name="watchdog"
                )
            )

    def _healthy(self) -> bool:
        """For the watchdog: the tasks that do the work are still running."""
        return not any(t.done() for t in self.tasks if t.get_name() in ("ingest", "tick"))

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
                now, wall = self.clock(), time.time()
                self.engine.snapshot(now, wall)
                self.hub.tick(now, wall)
            except Exception:
                log.exception("error building the snapshot")

    # --- state ----------------------------------------------------------------------------

    def _stateful(self) -> dict[str, Any]:
        return {t.name: t for t in self.engine.trackers} | {"engine": self.engine}

    def _restore(self, path: str) -> None:
        """Load the state file if there is one; an unusable one is moved aside (SPEC §7)."""
        if not Path(path).exists():
            log.info("no state file at %s yet; starting empty", path)
            return
        try:
            loaded = persist.load(path, self.config, self.geometry)
        except (persist.StateError, OSError) as exc:
            persist.move_aside(path, str(exc))
            return
        targets = self._stateful()
        for name, state in loaded.trackers.items():
            target = targets.get(name)
            if target is None:
                log.warning("state for unknown tracker %r ignored", name)
                continue
            target.restore(state)
        gap = self.clock.continue_from(loaded.saved_now, loaded.saved_wall)
        log.info("state restored from %s (saved %.1f s ago)", path, gap)

    def save_state(self) -> int:
        """Save now, on the event loop (the state is consistent between two frames)."""
        states = {name: t.state() for name, t in self._stateful().items()}
        data = persist.encode(states, self.config, self.clock(), time.time())
        written = persist.write_atomic(Path(self.config.state.path), data)
        self.saves += 1
        return written

    async def _save_loop(self) -> None:
        interval = self.config.state.interval
        while True:
            await asyncio.sleep(interval)
            self._save_now()

    def _save_soon(self) -> None:
        """Budget changes are saved at once, but a burst of PUTs costs one save."""
        if self.config.state.path and not self._save_pending:
            self._save_pending = True
            asyncio.get_running_loop().call_soon(self._save_now)

    def _save_now(self) -> None:
        self._save_pending = False
        try:
            started = time.perf_counter()
            size = self.save_state()
            log.debug("state saved: %d bytes in %.3f s", size, time.perf_counter() - started)
        except Exception:
            log.exception("could not save the state to %s", self.config.state.path)

    def reload(self) -> None:
        """SIGHUP: pricing, budgets and SLOs from the config file (SPEC §6)."""
        if self.reload_config is None:
            log.warning("SIGHUP: nothing to reload from")
            return
        try:
            config = self.reload_config()
        except ConfigError as exc:
            log.error("SIGHUP: the config is invalid, keeping the running one: %s", exc)
            return
        self.slo.reload(config)
        self.cost.reload(config)
        self.config = dataclasses.replace(self.config, slo=config.slo, cost=config.cost)
        log.info("SIGHUP: reloaded pricing, budgets and SLOs")

    async def stop(self) -> None:
        """Stop taking work, apply what the socket still holds, close everything."""
        self.notifier.stopping()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        drained, left = self.ingest.drain()
        if drained:
            log.info("applied %d frames left in the socket at shutdown", drained)
        if left:
            log.warning(
                "discarded %d frames still queued after ingest.drain_timeout (%g s) at shutdown",
                left,
                self.config.ingest.drain_timeout,
            )
        self.engine.snapshot(self.clock(), time.time())
        if self.config.state.path:
            try:
                self.save_state()
            except Exception:  # a failed save must not stop the shutdown; it is loud
                log.exception("could not save the state at shutdown")
        if self.otlp is not None:
            await self.otlp.stop()  # one last push of the final numbers, bounded
        await self.hub.close_all(1001)
        if self.webhook is not None:
            await self.webhook.close()
        if self.runner is not None:
            await self.runner.cleanup()
        self.ingest.close()
        if self.curve is not None:
            self.curve.stop()
        self.context.term()
        self.notifier.close()
        self.stopped.set()


async def serve(config: Config, reload_config: Callable[[], Config] | None = None) -> None:
    daemon = Daemon(config, reload_config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, daemon.reload)
    try:
        await daemon.start()
    except BaseException:
        await daemon.stop()
        raise
    await stop.wait()
    log.info("stopping")
    await daemon.stop()
    log.info("stopped")


def run(config: Config, reload_config: Callable[[], Config] | None = None) -> None:
    """Run the daemon until SIGTERM/SIGINT; SIGHUP calls ``reload_config`` (SPEC §6)."""
    logging.basicConfig(
        level=config.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(config, reload_config))
