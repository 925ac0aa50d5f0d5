"""Wiring: the engine on its own thread, HTTP and WebSocket on the event loop (SPEC §6).

Two threads share the work. The engine thread (:mod:`metricsd.runner`) owns every tracker: it
reads ingest, applies batches, runs commands and publishes a frozen snapshot each tick. The
event loop serves HTTP, the WebSocket stream and the systemd watchdog from the latest snapshot;
views and renders of a snapshot run on worker threads, so the loop itself only moves bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from typing import Any, TypeVar

import zmq
import zmq.asyncio
from aiohttp import web

from metricsd import persist
from metricsd.config import Config, ConfigError, split_host_port, worker_count
from metricsd.export.otlp import OtlpPush, require_sdk
from metricsd.export.prometheus import RenderCache, render_both
from metricsd.export.selfmetrics import ingest_peer_families
from metricsd.fleet_store import FleetBudgets
from metricsd.ingest import Ingest
from metricsd.persist import Clock
from metricsd.runner import EngineThread
from metricsd.security import IngestCurve, check_ingest_exposure, is_local_endpoint, tls_context
from metricsd.snapshot import Snapshot
from metricsd.systemd import Notifier, watchdog, watchdog_interval
from metricsd.web.app import build_app
from metricsd.web.hub import Hub
from metricsd.web.server import (
    ACCEPT_BATCH,
    LimitedRunner,
    descriptor_budget,
    install_accept_guard,
    raise_fd_limit,
    widen_backlog,
)
from metricsd.webhook import WebhookSender
from metricsd.wiring import build_engine
from metricsd.workers import WorkerPool

__all__ = ["Daemon", "check_exposure", "preflight", "run"]

log = logging.getLogger("metricsd")
T = TypeVar("T")

#: The engine thread is unhealthy (for the watchdog) when a turn of its loop has not started
#: for this long: a wake-up is bounded to a fraction of a second, a tick to about one.
STUCK_SECONDS = 30.0


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
        self.clock = Clock()
        self.engine = build_engine(config, self.clock(), time.time())
        self.trackers: dict[str, Any] = {t.name: t for t in self.engine.trackers}
        self.context = zmq.asyncio.Context()
        self.ingest = Ingest(config.ingest, self.engine, self.context, clock=self.clock)
        self.hub = Hub(config.http, self.run_read, self.latest, clock=self.clock)
        self.hub.slack = min(config.engine.tick / 2, 0.05)
        self.webhook: WebhookSender | None = None
        if config.cost.webhook_url:
            cost = config.cost
            self.webhook = WebhookSender(cost.webhook_url, cost.webhook_timeout, cost.webhook_queue)
        self.runner = EngineThread(
            self.engine, self.ingest, self.clock, config.engine.tick, self._publish_threadsafe
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reads = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="metricsd-read")
        self._render = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="metricsd-render"
        )
        self._render_cache = RenderCache()
        self._latest: Snapshot | None = None
        self._waiters: list[tuple[int, asyncio.Future[Snapshot]]] = []
        self.ready = False
        self._save_pending = False
        self._saving = False
        self.saves = 0
        self.app_runner: LimitedRunner | None = None
        self.http_url = ""
        self.tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        self.notifier = Notifier()
        self.curve: IngestCurve | None = None
        self.pool: WorkerPool | None = None
        self.otlp: OtlpPush | None = None
        cost_tracker = self.trackers.get("cost")
        if cost_tracker is not None:
            cost_tracker.on_budget_change = self._budget_changed
        self.fleet: FleetBudgets | None = None
        if config.cost.budget_store and cost_tracker is not None:
            self.fleet = FleetBudgets(config)
            self.fleet.attach(cost_tracker)

    # --- the Source of the web layer ------------------------------------------------------

    def latest(self) -> Snapshot | None:
        return self._latest

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reads, fn)

    async def run_read(self, fn: Callable[[], Any]) -> Any:
        return await self.run(fn)

    async def exposition(self, snap: Snapshot, openmetrics: bool) -> bytes:
        text, om = await asyncio.get_running_loop().run_in_executor(
            self._render, self._render_snapshot, snap
        )
        return om if openmetrics else text

    def _render_snapshot(self, snap: Snapshot) -> tuple[bytes, bytes]:
        """Text and OpenMetrics of a snapshot, rendered once (series lines cached across
        snapshots: only the series that changed are rendered again). A scrape that waited
        behind another render gets the newest snapshot, so a backlog never renders stale ones."""
        latest = self._latest
        if latest is not None and latest.tick > snap.tick:
            snap = latest
        found = snap._exposition.get("both")
        if found is None:
            found = render_both(snap.families(extra=self._extra_families()), self._render_cache)
            snap._exposition["both"] = found
        return found

    def _extra_families(self) -> list[Any]:
        out = self.hub.families()
        if self.pool is not None:
            out.extend(self.pool.families())
        gate = self.ingest.gate
        if gate is not None:
            out.extend(ingest_peer_families(gate.peers, gate.connections, gate.refused))
        if self.webhook is not None:
            out.extend(self.webhook.families(0.0))
        if self.fleet is not None:
            out.extend(self.fleet.families())
        return out

    async def command(self, name: str, *args: Any) -> Any:
        """Run a change on the engine thread, then wait for a snapshot that shows it."""
        fn = self._commands()[name]
        result = await asyncio.wrap_future(self.runner.submit(lambda: fn(*args)))
        await asyncio.wrap_future(self.runner.tick_now())
        return result

    def _commands(self) -> dict[str, Callable[..., Any]]:
        cost = self.trackers["cost"]

        def put_budget(key_id: str, body: Any, wall: float) -> tuple[bool, Any]:
            created = key_id not in cost.budgets
            return created, cost.put_budget(key_id, body, wall)

        return {"put_budget": put_budget, "delete_budget": cost.delete_budget}

    # --- snapshots ------------------------------------------------------------------------

    def _publish_threadsafe(self, snap: Snapshot) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self._latest = snap
            return
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(self._publish, snap)

    def _publish(self, snap: Snapshot) -> None:
        self._latest = snap
        self.hub.publish(snap)
        if self.webhook is not None:
            for alert in snap.alerts:
                if alert.get("type") == "budget_alert":
                    self.webhook.submit(alert)
        # The exposition is rendered when a scrape asks for it, not here: a snapshot nobody
        # scrapes costs nothing to render, and the series cache keeps a scrape's render to the
        # series that changed since the last one.

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        preflight(self.config)
        http, ingest = self.config.http, self.config.ingest
        fd_limit = raise_fd_limit()
        max_connections, max_peers = descriptor_budget(
            fd_limit, http.max_connections, ingest.max_peers
        )
        if (max_connections, max_peers) != (http.max_connections, ingest.max_peers):
            log.warning(
                "the descriptor limit (%d) is too low for http.max_connections (%d) and "
                "ingest.max_peers (%d): serving at most %d HTTP connections and %d peers",
                fd_limit,
                http.max_connections,
                ingest.max_peers,
                max_connections,
                max_peers,
            )
        if self.fleet is not None:
            self.fleet.load_password()  # a missing file stops the start, before binding
        if self.config.state.path:
            self._restore(self.config.state.path)
        ssl_context = tls_context(self.config.http)
        self.curve = IngestCurve.from_config(self.config.ingest)
        before_bind = None
        key_check = None
        if self.curve is not None:
            before_bind = partial(self.curve.before_bind, self.ingest.socket)
            if self.curve.client_keys:
                key_check = self.curve.allows
        self.ingest.guard(max_peers, key_check)
        endpoints = self.ingest.bind(before_bind)
        secured = [e for e in endpoints if not is_local_endpoint(e)] if self.curve else []
        if secured:
            log.info("CURVE required on %s", ",".join(secured))
        host, port = split_host_port(self.config.http.listen)
        if self.config.auth.token and ssl_context is None and not is_loopback(host):
            log.warning("the bearer token crosses the network in clear text: serve TLS")
        app = build_app(
            self,
            self.config.auth.token,
            http.max_body_bytes,
            host_check=is_loopback(host) and not self.config.auth.token,
            request_timeout=http.request_timeout,
        )
        app.router.add_get("/metrics/stream", self.hub.handle)
        install_accept_guard(asyncio.get_running_loop())
        self.app_runner = LimitedRunner(
            app,
            max_connections=max_connections,
            request_timeout=http.request_timeout,
            access_log=None,
            handle_signals=False,
        )
        await self.app_runner.setup()
        site = web.TCPSite(
            self.app_runner,
            host,
            port,
            reuse_address=True,
            ssl_context=ssl_context,
            backlog=ACCEPT_BATCH,
        )
        await site.start()
        widen_backlog(getattr(site._server, "sockets", None) or [], self.app_runner.backlog)
        bound = self._bound_address(site, host, port)
        self.http_url = f"{'https' if ssl_context else 'http'}://{bound}"
        self._latest = self.engine.snapshot(self.clock(), time.time())
        workers = worker_count(self.config.engine)
        if workers > 1:
            self.pool = WorkerPool(workers, self.engine.limits, self.engine, self.clock)
            self.pool.start()
            self.runner.pool = self.pool
            log.info("decoding in %d worker processes", workers)
        self.runner.start()
        if self.fleet is not None:
            self.fleet.start(lambda fn: self.runner.submit(fn), lambda: self.runner.tick_now())
        self.ready = True
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
                self._otlp_families,
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

    def _otlp_families(self) -> list[Any]:
        snap = self._latest
        return [] if snap is None else snap.families(canonical=True)

    def _healthy(self) -> bool:
        """For the watchdog: the engine thread runs and is not stuck."""
        return self.runner.alive() and time.monotonic() - self.runner.last_turn < STUCK_SECONDS

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

    # --- state ----------------------------------------------------------------------------

    def _stateful(self) -> dict[str, Any]:
        fleet = {} if self.fleet is None else {"fleet": self.fleet.ledger}
        return {**self.trackers, "engine": self.engine, **fleet}

    def _restore(self, path: str) -> None:
        """Load the state file if there is one; an unusable one is moved aside (SPEC §8)."""
        persist.remove_stale_temps(path)
        if not Path(path).exists():
            log.info("no state file at %s yet; starting empty", path)
            return
        try:
            loaded = persist.load(path, self.config)
        except (persist.StateError, OSError) as exc:
            persist.move_aside(path, str(exc))
            return
        gap = self.clock.continue_from(loaded.saved_now, loaded.saved_wall)
        now = self.clock()
        targets = self._stateful()
        try:
            for name, state in loaded.trackers.items():
                target = targets.get(name)
                if target is None:
                    log.warning("state for unknown tracker %r ignored", name)
                    continue
                target.restore(state, now)
            self._trial()
        except persist.StateError as exc:
            self._reset()
            persist.move_aside(path, str(exc))
            return
        except Exception as exc:  # values every check let through, yet unusable: never serve them
            self._reset()
            persist.move_aside(path, f"the restored state cannot be served ({type(exc).__name__})")
            return
        log.info("state restored from %s (saved %.1f s ago)", path, gap)

    def _trial(self) -> None:
        """Build, render and read everything a restored state serves once, before serving it:
        a value the typed reader accepted but that breaks a view would otherwise fail every
        scrape until the file is removed by hand."""
        wall = time.time()
        snap = self.engine.snapshot(self.clock(), wall)
        render_both(snap.families(), RenderCache())
        # Every view the routes serve but /metrics/histograms, whose encoder is native code: a
        # failure there must cost that route, not every start.
        views: tuple[tuple[str, str, tuple[Any, ...]], ...] = (
            ("requests", "json", ()),
            ("requests", "summary", (300.0,)),
            ("requests", "recent", (1000,)),
            ("streaming", "streaming", (None,)),
            ("errors", "errors", ()),
            ("errors", "error_patterns", (0, False, None)),
            ("slo", "slo", ()),
            ("cost", "costs", ()),
            ("cost", "budgets", (wall,)),
            ("cost", "suggestions", (None,)),
        )
        for part, view, args in views:
            if snap.part(part) is not None:
                snap.compute(view, *args)

    def _reset(self) -> None:
        """After a state that could not be applied: start empty again."""
        self.clock = Clock()
        self.engine = build_engine(self.config, self.clock(), time.time())
        self.trackers = {t.name: t for t in self.engine.trackers}
        self.ingest.engine = self.engine
        self.ingest.now = self.clock
        self.runner = EngineThread(
            self.engine,
            self.ingest,
            self.clock,
            self.config.engine.tick,
            self._publish_threadsafe,
        )
        cost = self.trackers.get("cost")
        if cost is not None:
            cost.on_budget_change = self._budget_changed
            if self.fleet is not None:
                self.fleet.attach(cost)

    def _states(self) -> dict[str, Any]:
        """Every tracker's state (on the engine thread, or when it is stopped)."""
        now = self.clock()
        return {name: t.state(now) for name, t in self._stateful().items()}

    def capture(self) -> bytes:
        """The state file's bytes (on the engine thread, or when it is stopped)."""
        return persist.encode(self._states(), self.config, self.clock(), time.time())

    async def save_state(self) -> int:
        """Save: capture on the engine thread, encode and write on a worker (SPEC §8: the
        serving loop never waits for it)."""
        captured = await asyncio.wrap_future(self.runner.submit(self._states))
        now, wall = self.clock(), time.time()

        def write() -> int:
            data = persist.encode(captured, self.config, now, wall)
            return persist.write_atomic(Path(self.config.state.path), data)

        written = await self.run(write)
        self.saves += 1
        return written

    async def _save_loop(self) -> None:
        interval = self.config.state.interval
        while True:
            await asyncio.sleep(interval)
            await self._save_now()

    def _budget_changed(self) -> None:
        """On the engine thread: a budget change schedules a save (SPEC §8)."""
        loop = self._loop
        if loop is not None and self.config.state.path:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._save_soon)

    def _save_soon(self) -> None:
        """A burst of budget changes costs one save."""
        if not self._save_pending:
            self._save_pending = True
            self.tasks.append(asyncio.get_running_loop().create_task(self._save_now()))

    async def _save_now(self) -> None:
        self._save_pending = False
        if self._saving:
            return
        self._saving = True
        try:
            started = time.perf_counter()
            size = await self.save_state()
            log.debug("state saved: %d bytes in %.3f s", size, time.perf_counter() - started)
        except Exception:
            log.exception("could not save the state to %s", self.config.state.path)
        finally:
            self._saving = False

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

        def apply() -> None:
            self.trackers["slo"].reload(config)
            self.trackers["cost"].reload(config)
            if self.pool is not None:
                self.pool.reload(config)

        self.runner.submit(apply)
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
        if self.runner.alive():
            await asyncio.get_running_loop().run_in_executor(None, self.runner.stop)
        else:
            self.runner.stop()
        if self.pool is not None:
            self.pool.stop()
        if self.fleet is not None:  # after the engine's last tick: its last values go out
            await asyncio.get_running_loop().run_in_executor(None, self.fleet.stop)
        drained, left = self.runner.drained
        if drained:
            log.info("applied %d frames left in the socket at shutdown", drained)
        if left:
            log.warning(
                "discarded %d frames still queued after ingest.drain_timeout (%g s) at shutdown",
                left,
                self.config.ingest.drain_timeout,
            )
        if self.config.state.path:
            try:
                data = self.capture()
                persist.write_atomic(Path(self.config.state.path), data)
            except Exception:  # a failed save must not stop the shutdown; it is loud
                log.exception("could not save the state at shutdown")
        if self.otlp is not None:
            await self.otlp.stop()  # one last push of the final numbers, bounded
        await self.hub.close_all(1001)
        if self.webhook is not None:
            await self.webhook.close()
        if self.app_runner is not None:
            await self.app_runner.cleanup()
        self.ingest.close()  # and its ZAP handler
        self.context.term()
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._render.shutdown(wait=False, cancel_futures=True)
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
