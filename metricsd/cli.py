"""The ``metricsd`` command line (SPEC §6): a thin click layer over config and the daemon."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from metricsd import __version__
from metricsd.config import DEFAULT_INGEST, ConfigError, load_config

__all__ = ["main"]


def _fail(message: str) -> None:
    click.echo(f"metricsd: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="metricsd")
def main() -> None:
    """metricsd: a metrics daemon for LLM applications."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--http", "http", help="HTTP listen address HOST:PORT (port 0: any free port).")
@click.option("--ingest", "ingest", multiple=True, help="ZeroMQ endpoint to bind (repeatable).")
@click.option("--state", "state", help="State file for persistence.")
@click.option("--token", "token", help="Bearer token required on HTTP and WebSocket routes.")
@click.option(
    "--insecure", is_flag=True, default=None, help="Allow a non-loopback address without a token."
)
@click.option("--tick", "tick", type=float, help="Seconds between snapshots (default 0.5).")
@click.option(
    "--max-series", "max_series", type=int, help="Label sets per tracker (default 10000)."
)
@click.option("--log-level", "log_level", help="debug, info, warning, error.")
@click.option(
    "--demo", is_flag=True, default=None, help="Also send built-in synthetic LLM traffic."
)
@click.option("--ready-file", "ready_file", help="Write the bound addresses as JSON once ready.")
@click.option("--tls-cert", "tls_cert", help="PEM certificate chain: serve HTTPS.")
@click.option("--tls-key", "tls_key", help="PEM private key of --tls-cert.")
@click.option(
    "--workers",
    "workers",
    help="Decode processes: a count, or 'auto' for one per core (default 1: no extra process).",
)
def serve(
    config_path: str | None,
    http: str | None,
    ingest: tuple[str, ...],
    state: str | None,
    token: str | None,
    insecure: bool | None,
    tick: float | None,
    max_series: int | None,
    log_level: str | None,
    demo: bool | None,
    ready_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    workers: str | None,
) -> None:
    """Run the daemon until SIGTERM or SIGINT."""
    overrides: dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None and value != ():
            overrides.setdefault(section, {})[key] = value

    put("http", "listen", http)
    put("ingest", "endpoints", list(ingest) or None)
    put("state", "path", state)
    put("auth", "token", token)
    put("auth", "insecure", insecure)
    put("engine", "tick", tick)
    put("limits", "max_series", max_series)
    put("log", "level", log_level)
    put("demo", "enabled", demo)
    put("http", "tls_cert", tls_cert)
    put("http", "tls_key", tls_key)
    put("engine", "workers", workers)
    if ready_file is not None:
        overrides["ready_file"] = ready_file
    try:
        config = load_config(config_path, overrides=overrides)
        from metricsd.app import check_exposure, run

        check_exposure(config)
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        # SIGHUP re-reads the same sources: file, environment, and these flags.
        run(config, reload_config=lambda: load_config(config_path, overrides=overrides))
    except KeyboardInterrupt:
        pass
    except ConfigError as exc:  # found while starting (TLS files, CURVE key file)
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot start: {exc.strerror or exc}")
    except Exception as exc:
        if type(exc).__module__.startswith("zmq"):
            _fail(f"cannot bind ingest: {exc}")
        raise


@main.command()
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    help="Write the key file here (mode 0600, not over an existing file); print the public key.",
)
def keygen(out: str | None) -> None:
    """Make a CURVE keypair for encrypted ZeroMQ ingest (ingest.curve_secret_key_file)."""
    from metricsd.security import write_keypair

    try:
        text = write_keypair(out)
    except FileExistsError:
        _fail(f"{out} exists; not overwriting a key")
        return
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror}")
        return
    click.echo(text if out is None else f'public_key = "{text}"', nl=out is not None)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file and print the effective configuration as JSON."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        _fail(str(exc))
        return
    click.echo(json.dumps(config.to_dict(), indent=2, sort_keys=True))


def parse_value(text: str) -> Any:
    """``key=value`` values: JSON when they parse as JSON, else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@main.command()
@click.argument("event_type")
@click.argument("fields", nargs=-1)
@click.option("--ingest", "endpoint", help="Endpoint to send to (default: METRICSD_INGEST).")
def emit(event_type: str, fields: tuple[str, ...], endpoint: str | None) -> None:
    """Send one event: metricsd emit request duration_ms=120 model=gpt-4o."""
    import msgpack
    import zmq

    event: dict[str, Any] = {"v": 1, "type": event_type}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"expected key=value, got {item!r}")
        event[key] = parse_value(value)
    event.setdefault("ts", time.time())
    target = endpoint or os.environ.get("METRICSD_INGEST") or DEFAULT_INGEST
    target = target.split(",")[0].strip()
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    try:
        # IMMEDIATE: queue only on a completed connection, so a missing daemon is an error
        # after SNDTIMEO instead of a message silently waiting in a queue that will be dropped.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, 3000)
        sock.setsockopt(zmq.LINGER, 3000)
        sock.connect(target)
        sock.send(msgpack.packb(event))
    except zmq.Again:
        _fail(f"no daemon accepted the event at {target} within 3 s")
    except zmq.ZMQError as exc:
        _fail(f"cannot send to {target}: {exc}")
    finally:
        sock.close()
        context.term()
    click.echo(f"sent {event_type} to {target}")


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def pricing(config_path: str | None, as_json: bool) -> None:
    """Print the effective price table (built-in, merged with the config's)."""
    from metricsd.pricing import format_table, load_pricing

    try:
        table = load_pricing(load_config(config_path).cost)
    except ConfigError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps(table.describe(), indent=2))
    else:
        click.echo(format_table(table), nl=False)


@main.command()
@click.option(
    "--url",
    envvar="METRICSD_URL",
    default="http://127.0.0.1:9465",
    show_default=True,
    help="The daemon's HTTP address (env METRICSD_URL).",
)
@click.option("--token", envvar="METRICSD_TOKEN", help="Bearer token (env METRICSD_TOKEN).")
@click.option("--endpoint", help="Only this endpoint.")
@click.option("--model", help="Only this model.")
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between updates."
)
@click.option("--once", is_flag=True, help="Print one update and exit.")
@click.option("--json", "as_json", is_flag=True, help="Print raw JSON messages, one per line.")
def tail(
    url: str,
    token: str | None,
    endpoint: str | None,
    model: str | None,
    interval: float,
    once: bool,
    as_json: bool,
) -> None:
    """Live terminal view of the metrics stream."""
    from metricsd.tail import run_tail

    filters: dict[str, Any] = {"interval": interval}
    if endpoint:
        filters["endpoint"] = endpoint
    if model:
        filters["model"] = model
    sys.exit(run_tail(url, token, filters, once, as_json))


@main.command()
@click.option("--target", help="HTTP URL of a running daemon (default: start one for the run).")
@click.option("--target-ingest", help="Ingest endpoint of the --target daemon.")
@click.option("--token", envvar="METRICSD_TOKEN", help="Bearer token of the --target daemon.")
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    type=click.Choice(
        ["emitter-mixed", "cols-mixed", "columnar", "typed", "array64", "single", "tokens"]
    ),
    help="Frame shapes to run (repeatable; default: all).",
)
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiply the number of frames (0.1 for a quick run).",
)
@click.option(
    "--series",
    "series",
    type=click.IntRange(min=1),
    help="After the shapes, start a fresh daemon holding N series and measure scrape and JSON "
    "route latency, RSS and CPU (never on --target; with --json the output becomes "
    '{"shapes": [...], "series": {...}}).',
)
@click.option(
    "--liveness",
    is_flag=True,
    help="Instead of the shapes: /healthz and scrape latency with ingest saturated, a burst of "
    "new labels, SIGTERM under load (fresh daemons; as benchmarks/bench_liveness.py).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench(
    target: str | None,
    target_ingest: str | None,
    token: str | None,
    shapes: tuple[str, ...],
    scale: float,
    series: int | None,
    liveness: bool,
    as_json: bool,
) -> None:
    """Events/s per frame shape through the daemon, beside the transport ceiling."""
    from metricsd.bench import (
        SHAPES,
        BenchError,
        exit_on_sigterm,
        format_liveness,
        format_series,
        format_table,
        run_bench,
        run_liveness,
        run_series,
    )

    if (target is None) != (target_ingest is None):
        _fail("--target and --target-ingest go together")
    if liveness and (target or shapes or series):
        _fail("--liveness starts its own daemons: no --target, --shape or --series")

    def progress(message: str) -> None:
        click.echo(message, err=True)

    exit_on_sigterm()  # stop the run's daemons and helper processes on SIGTERM too

    try:
        if liveness:
            result = run_liveness(progress=progress)
            click.echo(json.dumps(result, indent=2) if as_json else format_liveness(result))
            return
        chosen = list(shapes) or list(SHAPES)
        rows = run_bench(
            chosen,
            scale=scale,
            target=(target.rstrip("/"), target_ingest) if target and target_ingest else None,
            token=token,
            progress=progress,
        )
        if not as_json:
            click.echo(format_table(rows))
        if series is None:
            if as_json:
                click.echo(json.dumps(rows, indent=2))
            return
        measured = run_series(series, progress=progress)
    except BenchError as exc:
        _fail(str(exc))
        return
    if as_json:
        click.echo(json.dumps({"shapes": rows, "series": measured}, indent=2))
    else:
        click.echo()
        click.echo(format_series(measured))
