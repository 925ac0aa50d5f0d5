"""The ``metricsd`` command line (SPEC §6): a thin click layer over config and the daemon."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from metricsd import __version__
from metricsd.config import DEFAULT_INGEST, Config, ConfigError, load_config

__all__ = ["main"]


def _fail(message: str) -> NoReturn:
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
@click.option(
    "--demo-incident",
    "demo_incident",
    is_flag=True,
    default=None,
    help="With the demo traffic: an incident that pages within a minute, then recovers.",
)
@click.option("--ready-file", "ready_file", help="Write the bound addresses as JSON once ready.")
@click.option("--tls-cert", "tls_cert", help="PEM certificate chain: serve HTTPS.")
@click.option("--tls-key", "tls_key", help="PEM private key of --tls-cert.")
@click.option(
    "--workers",
    "workers",
    help="Worker processes that decode and add up counters and histograms: a count, or 'auto' "
    "for one per core (default 1: no extra process).",
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
    demo_incident: bool | None,
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
    put("demo", "enabled", demo or demo_incident or None)
    put("demo", "incident", demo_incident)
    put("http", "tls_cert", tls_cert)
    put("http", "tls_key", tls_key)
    put("engine", "workers", workers)
    if ready_file is not None:
        overrides["ready_file"] = ready_file
    from metricsd.demo import with_demo_budget

    def configure() -> Config:
        return with_demo_budget(load_config(config_path, overrides=overrides))

    try:
        config = configure()
        from metricsd.app import preflight, run

        preflight(config)
    except ConfigError as exc:
        _fail(str(exc))
        return
    try:
        # SIGHUP re-reads the same sources: file, environment, and these flags.
        run(config, reload_config=configure)
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
@click.option(
    "--public",
    "public_out",
    type=click.Path(dir_okay=False),
    help="With --out: also write the public key here (mode 0644), for emitters.",
)
@click.option(
    "--exist-ok",
    is_flag=True,
    help="With --out: an existing key file is kept (and its public key printed), not an error.",
)
def keygen(out: str | None, public_out: str | None, exist_ok: bool) -> None:
    """Make a CURVE keypair for encrypted ZeroMQ ingest (ingest.curve_secret_key_file)."""
    from metricsd.security import load_curve_secret, write_keypair

    if out is None and (public_out or exist_ok):
        _fail("--public and --exist-ok need --out")
    try:
        text = write_keypair(out)
        made = True
    except FileExistsError:
        if not exist_ok:
            _fail(f"{out} exists; not overwriting a key")
            return
        try:
            text = load_curve_secret(str(out))[0].decode()
        except ConfigError as exc:
            _fail(str(exc))
            return
        made = False
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror}")
        return
    if out is None:
        click.echo(text, nl=False)
        return
    line = f'public_key = "{text}"\n'
    if public_out is not None:
        try:
            Path(public_out).write_text(line)
            os.chmod(public_out, 0o644)
        except OSError as exc:
            _fail(f"cannot write {public_out}: {exc.strerror}")
    if not made:
        click.echo(f"metricsd: {out} exists; keeping it", err=True)
    click.echo(line, nl=False)


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file and print the effective configuration as JSON.

    Runs every check ``serve`` runs before binding: the values, the exposure rules (a token for
    HTTP beyond loopback, CURVE for ingest beyond it), ipc:// directories, and the files the
    daemon reads (TLS certificate and key, CURVE key, pricing file). The environment applies as
    it would for ``serve``.
    """
    try:
        config = load_config(path)
        from metricsd.app import preflight

        preflight(config)
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


#: What a value of each schema kind must be, for ``emit``'s error messages.
_KIND_TEXT: dict[str, str] = {
    "float": "a finite number",
    "nnfloat": "a finite number ≥ 0",
    "count": "an integer ≥ 0",
    "int": "an integer",
    "bool": "true or false",
    "str": "a string",
    "longstr": "a string",
    "text": "a string",
    "enum": "one of {choices}",
    "name": "a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)",
    "labels": 'a JSON object of at most 8 string labels, e.g. \'labels={"k":"v"}\'',
    "images": 'a JSON object {"size", "quality", "n"}',
}
_PLACEHOLDER: dict[str, Any] = {
    "float": 0.0,
    "nnfloat": 0.0,
    "count": 0,
    "int": 0,
    "bool": False,
    "str": "x",
    "longstr": "x",
    "text": "x",
    "name": "x",
}


def check_event(event: dict[str, Any]) -> tuple[str | None, list[str]]:
    """Validate ``event`` with the daemon's own decoder (:func:`metricsd.protocol.decode`).

    Returns (the reason the daemon would reject it, e.g. ``missing_field duration_ms``, or None)
    and warnings (fields the daemon ignores, strings it would truncate). The decoder counts a
    reason only; the field is found here by checking the event against the schema."""
    import msgpack

    from metricsd.protocol import decode
    from metricsd.schema import EVENT_TYPES

    def rejected(candidate: dict[str, Any]) -> tuple[str | None, int]:
        result = decode(msgpack.packb(candidate), time.time())
        reasons = sorted(result.rejected)
        return (reasons[0] if reasons else None), result.truncated

    type_name = event.get("type")
    fields = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    warnings: list[str] = []
    if fields is not None:
        unknown = sorted(k for k in event if k not in fields and k not in ("type", "v"))
        warnings += [
            f"{k}: not a field of {type_name} events; the daemon ignores it" for k in unknown
        ]
    try:
        reason, truncated = rejected(event)
    except (TypeError, ValueError) as exc:  # not representable in msgpack
        return f"shape ({exc})", warnings
    if truncated:
        warnings.append(f"{truncated} string field(s) over the length limit would be truncated")
    if reason is None:
        return None, warnings
    if reason == "unknown_type" or fields is None:
        known = ", ".join(sorted(EVENT_TYPES))
        return f"unknown_type {type_name} (known types: {known})", warnings
    if reason == "missing_field":
        missing = [f.name for f in fields.values() if f.required and event.get(f.name) is None]
        if missing:
            return f"missing_field {' '.join(missing)}", warnings
    if reason == "bad_value":
        # A valid event of this type with placeholders for the required fields; each field of
        # the user's event is tried on it alone, so every bad one is named.
        base: dict[str, Any] = {"v": 1, "type": type_name}
        for required in fields.values():
            if required.required:
                base[required.name] = (
                    sorted(required.choices)[0] if required.choices else _PLACEHOLDER[required.kind]
                )
        bad: list[str] = []
        for name, value in event.items():
            fdef = fields.get(name)
            if fdef is None:
                continue
            if rejected({**base, name: value})[0] == "bad_value":
                expected = _KIND_TEXT[fdef.kind].replace(
                    "{choices}", ", ".join(sorted(fdef.choices))
                )
                bad.append(f"{name}={json.dumps(value)} (expected {expected})")
        if bad:
            return "bad_value " + "; ".join(bad), warnings
    if reason == "version":
        return f"version (v={json.dumps(event.get('v'))}; this daemon speaks v=1)", warnings
    return reason, warnings


def _server_key(value: str) -> bytes:
    """``--server-key``: a Z85 public key, or a file with ``public_key = "…"`` or a bare key."""
    import tomllib

    from metricsd.security import is_z85_key

    if is_z85_key(value):
        return value.encode()
    try:
        text = Path(value).read_text()
    except OSError as exc:
        _fail(f"--server-key: neither a Z85 key nor a readable file: {value} ({exc.strerror})")
    named: dict[str, Any] = {}
    with contextlib.suppress(tomllib.TOMLDecodeError):
        named = tomllib.loads(text)
    key = str(named.get("public_key", text.strip()))
    if not is_z85_key(key):
        _fail(f"--server-key: {value} holds no Z85 public key (40 characters)")
    return key.encode()


@main.command()
@click.argument("event_type")
@click.argument("fields", nargs=-1)
@click.option("--ingest", "endpoint", help="Endpoint to send to (default: METRICSD_INGEST).")
@click.option(
    "--no-check",
    "no_check",
    is_flag=True,
    help="Send the event as is, without validating it first.",
)
@click.option(
    "--server-key",
    "server_key",
    help="Connect with CURVE: the daemon's public key (Z85), or a file holding it "
    "(keygen --public / --out).",
)
def emit(
    event_type: str,
    fields: tuple[str, ...],
    endpoint: str | None,
    no_check: bool,
    server_key: str | None,
) -> None:
    """Send one event: metricsd emit request duration_ms=120 model=gpt-4o.

    The event is checked first with the daemon's own decoder: one the daemon would reject is not
    sent, and the command exits 2 with the reason (missing_field duration_ms, unknown_type …).
    """
    import msgpack
    import zmq

    event: dict[str, Any] = {"v": 1, "type": event_type}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"expected key=value, got {item!r}")
        event[key] = parse_value(value)
    event.setdefault("ts", time.time())
    if not no_check:
        reason, warnings = check_event(event)
        for warning in warnings:
            click.echo(f"metricsd: warning: {warning}", err=True)
        if reason is not None:
            _fail(f"not sent, the daemon would reject it: {reason}; --no-check sends it anyway")
    target = endpoint or os.environ.get("METRICSD_INGEST") or DEFAULT_INGEST
    target = target.split(",")[0].strip()
    try:
        frame = msgpack.packb(event)
    except (TypeError, ValueError) as exc:
        _fail(f"cannot encode the event: {exc}")
        return
    curve = _server_key(server_key) if server_key else None
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    if curve is not None:
        public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    try:
        # IMMEDIATE: queue only on a completed connection, so a missing daemon is an error
        # after SNDTIMEO instead of a message silently waiting in a queue that will be dropped.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDTIMEO, 3000)
        sock.setsockopt(zmq.LINGER, 3000)
        sock.connect(target)
        sock.send(frame)
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
@click.option(
    "--workers",
    "workers",
    type=click.IntRange(min=1),
    help="Instead of the shapes: the scaling table of --workers 1 … N on one shape (--shape, "
    "default emitter-mixed; a fresh daemon per count, /healthz polled throughout).",
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
    workers: int | None,
    as_json: bool,
) -> None:
    """Events/s per frame shape through the daemon, beside the transport ceiling."""
    from metricsd.bench import (
        SHAPES,
        BenchError,
        exit_on_sigterm,
        format_liveness,
        format_scaling,
        format_series,
        format_table,
        run_bench,
        run_liveness,
        run_scaling,
        run_series,
    )

    if (target is None) != (target_ingest is None):
        _fail("--target and --target-ingest go together")
    if liveness and (target or shapes or series):
        _fail("--liveness starts its own daemons: no --target, --shape or --series")
    if workers is not None and (target or len(shapes) > 1 or series or liveness):
        _fail(
            "--workers starts its own daemons: one --shape at most, no --target, --series or "
            "--liveness"
        )

    def progress(message: str) -> None:
        click.echo(message, err=True)

    exit_on_sigterm()  # stop the run's daemons and helper processes on SIGTERM too

    try:
        if workers is not None:
            shape = shapes[0] if shapes else "emitter-mixed"
            scaling = run_scaling(workers, shape, scale=scale, progress=progress)
            click.echo(json.dumps(scaling, indent=2) if as_json else format_scaling(scaling))
            return
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
