"""Configuration: frozen dataclasses built from defaults, a TOML file, the environment and flags.

Precedence, lowest to highest (SPEC §6): built-in defaults, the TOML file (``--config`` or
``METRICSD_CONFIG``), environment variables ``METRICSD_<SECTION>_<KEY>``, command-line flags.
Unknown keys are errors that name the key's path (``ingest.endpoint: unknown key``), so a typo in
a config file never silently leaves a default in force.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = ["Config", "ConfigError", "load_config", "worker_count"]

DEFAULT_HTTP: Final = "127.0.0.1:9465"
DEFAULT_INGEST: Final = "tcp://127.0.0.1:5557"

#: OpenTelemetry GenAI semantic-convention bucket bounds (SPEC §3.1), in seconds / tokens / USD.
DURATION_BUCKETS: Final = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
TTFT_BUCKETS: Final = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
ITL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS: Final = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
COST_BUCKETS: Final = (0.000001, 0.00001, 0.0001, 0.001, 0.01, 0.1, 1, 10)
#: Output tokens per second of a stream (decode rate); not an OpenTelemetry convention.
TPS_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key path and what is wrong."""


@dataclass(frozen=True)
class HttpConfig:
    listen: str = DEFAULT_HTTP
    max_body_bytes: int = 65536
    #: Browser origins allowed to open the WebSocket besides the daemon's own host.
    allowed_origins: tuple[str, ...] = ()
    max_ws_clients: int = 1000
    #: Open HTTP connections (WebSocket included) beyond which a new one is closed at once.
    max_connections: int = 2000
    #: A connection must complete a request within this many seconds (and an idle kept-alive
    #: one is closed after it): slow or partial requests cannot hold sockets.
    request_timeout: float = 15.0
    #: A WebSocket client that cannot take updates for this long is closed with 1008.
    ws_slow_grace: float = 10.0
    #: Protocol-level ping interval; a peer that does not answer is closed.
    ws_heartbeat: float = 20.0
    #: Inbound WebSocket messages per second (and burst) before the client is closed with 1008.
    ws_message_rate: float = 20.0
    ws_message_burst: float = 40.0
    #: PEM certificate chain and private key: serve HTTPS (and wss://) instead of HTTP.
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class IngestConfig:
    endpoints: tuple[str, ...] = (DEFAULT_INGEST,)
    rcvhwm: int = 1000
    max_frame_bytes: int = 1 << 20
    max_events_per_frame: int = 10_000
    max_string_length: int = 256
    max_error_message_length: int = 2048
    max_frames_per_wakeup: int = 256
    #: At shutdown, how long applying the frames still queued may take (well below systemd's
    #: TimeoutStopSec=30, leaving time to save); frames left after it are counted in the log.
    drain_timeout: float = 5.0
    #: A peer that has not finished the ZeroMQ handshake after this many seconds is dropped.
    handshake_timeout: float = 5.0
    #: ZeroMQ heartbeat interval (0: off); a peer silent for three intervals is dropped.
    heartbeat: float = 10.0
    #: ZeroMQ connections (all endpoints together) beyond which a new peer is refused; 0: no cap.
    max_peers: int = 1024
    #: CURVE secret key file (``metricsd keygen``): encrypts the non-loopback tcp:// endpoints.
    curve_secret_key_file: str = ""
    #: Emitters' CURVE public keys (Z85) allowed to connect; empty: any that has the server key.
    curve_client_keys: tuple[str, ...] = ()
    #: Permissions of the ``ipc://`` socket files, set after binding whatever the umask: an
    #: octal string. 0660 lets applications in the daemon's group connect.
    ipc_mode: str = "0660"


@dataclass(frozen=True)
class AuthConfig:
    token: str = ""
    insecure: bool = False


@dataclass(frozen=True)
class StateConfig:
    path: str = ""
    interval: float = 60.0


@dataclass(frozen=True)
class EngineConfig:
    tick: float = 0.5
    #: Decode processes (``--workers``): 1 decodes on the engine thread, N > 1 in N worker
    #: processes, ``"auto"`` one per core the daemon may use.
    workers: int | str = 1
    #: With workers: how often each hands what it added up to the serving process (seconds).
    merge_interval: float = 0.25
    slot_seconds: float = 10.0
    significant_figures: int = 2
    recent_size: int = 1000


@dataclass(frozen=True)
class LimitsConfig:
    max_series: int = 10_000
    series_ttl: float = 3600.0
    max_active_streams: int = 100_000
    max_patterns: int = 1000
    #: An event whose ``ts`` is further than this from its arrival is a ``bad_value``.
    max_clock_skew: float = 86_400.0


@dataclass(frozen=True)
class PrometheusConfig:
    compat: bool = True
    sloth: bool = True
    naming: str = "llm"
    duration_buckets: tuple[float, ...] = DURATION_BUCKETS
    ttft_buckets: tuple[float, ...] = TTFT_BUCKETS
    itl_buckets: tuple[float, ...] = ITL_BUCKETS
    token_buckets: tuple[float, ...] = TOKEN_BUCKETS
    cost_buckets: tuple[float, ...] = COST_BUCKETS
    tps_buckets: tuple[float, ...] = TPS_BUCKETS
    #: Buckets of histograms sent as ``metric`` events (Prometheus' default buckets).
    custom_buckets: tuple[float, ...] = (
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
    )


@dataclass(frozen=True)
class ProvidersConfig:
    """Model-name prefix → provider, for ``request`` events that do not name their provider."""

    prefixes: Mapping[str, str] = field(
        default_factory=lambda: {
            "gpt-": "openai",
            "o1": "openai",
            "o3": "openai",
            "o4": "openai",
            "ft:gpt-": "openai",
            "text-embedding-": "openai",
            "dall-e": "openai",
            "tts-": "openai",
            "whisper": "openai",
            "claude": "anthropic",
            "gemini": "google",
            "mistral": "mistral",
            "mixtral": "mistral",
            "llama": "meta",
            "meta-llama/": "meta",
            "command": "cohere",
            "deepseek": "deepseek",
        }
    )


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


@dataclass(frozen=True)
class StreamingConfig:
    """Stream lifecycle: idle streams end as ``abandoned``; an ITL above ``stall_ms`` is a stall."""

    idle_timeout: float = 600.0
    stall_ms: float = 500.0


@dataclass(frozen=True)
class DemoConfig:
    enabled: bool = False
    rate: float = 50.0
    #: One incident (failures that page) 10 s after the start, then recovery; see metricsd.demo.
    incident: bool = False


@dataclass(frozen=True)
class OtlpConfig:
    """``[otlp]``: periodic OTLP/HTTP push (the ``otlp`` extra); see docs/otel.md.

    ``endpoint``: the collector's base URL (``http://host:4318``; ``/v1/metrics`` is appended
    unless the URL already ends with it); empty = off. ``timeout``: seconds per export request,
    and the bound on the final flush at shutdown.
    """

    endpoint: str = ""
    interval: float = 15.0
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = 10.0


_KEY_ID: Final = re.compile(r"k_[0-9a-f]{12}\Z")


@dataclass(frozen=True)
class BudgetConfig:
    """One ``[[cost.budgets]]`` table. ``key``: a key_id, ``*`` (all keys) or a raw API key,
    which is hashed here so the raw key never stays in the configuration."""

    key: str = ""
    limit_usd: float = -1.0
    period: str = "monthly"
    limit_type: str = "soft"
    alert_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.key and self.key != "*" and not _KEY_ID.match(self.key):
            from metricsd.protocol import hash_key

            object.__setattr__(self, "key", hash_key(self.key))


@dataclass(frozen=True)
class CostConfig:
    """Prices, budgets, alerts and suggestions (SPEC §4.6); see docs/cost-and-budgets.md."""

    pricing_file: str = ""
    prices: Mapping[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    budgets: tuple[BudgetConfig, ...] = ()
    max_keys: int = 10_000
    max_budgets: int = 10_000
    webhook_url: str = ""
    webhook_timeout: float = 5.0
    webhook_queue: int = 1000
    alerts_size: int = 1000
    suggestion_interval: float = 60.0
    suggestion_min_savings_usd: float = 1.0
    suggestion_min_requests: int = 10
    long_prompt_tokens: int = 1024
    projection_min_seconds: float = 3600.0
    #: Fleet budgets: ``redis://HOST:PORT/DB`` (``rediss://`` for TLS) shared by every daemon
    #: of a fleet; empty: budgets count this daemon's spend only. See docs/operations.md.
    budget_store: str = ""
    #: A file holding the Redis password (never in the URL, never on the command line).
    budget_store_password_file: str = ""
    #: Seconds any one Redis socket operation may take (connect, send, read).
    budget_store_timeout: float = 0.5
    #: Prefix of every Redis key metricsd uses (several fleets can share one Redis).
    budget_store_prefix: str = "metricsd:"


@dataclass(frozen=True)
class SloConfig:
    """One ``[[slo]]`` table (SPEC §4.5). Empty selectors select everything."""

    name: str = "availability"
    objective: float = 0.999
    endpoints: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    budget_window: float = 30 * 86400.0
    bad_statuses: tuple[int, ...] = (429,)
    bad_min_status: int = 500
    service: str = "metricsd"


MAX_SLOS: Final = 32
MAX_BUDGET_WINDOW: Final = 90 * 86400.0


def _check_slos(slos: tuple[SloConfig, ...]) -> None:
    if len(slos) > MAX_SLOS:
        raise ConfigError(f"slo: at most {MAX_SLOS} SLOs, got {len(slos)}")
    names: set[str] = set()
    for i, slo in enumerate(slos):
        path = f"slo[{i}]"
        if not slo.name or slo.name in names:
            raise ConfigError(f"{path}.name: must be non-empty and unique, got {slo.name!r}")
        names.add(slo.name)
        if not 0.0 < slo.objective < 1.0:
            raise ConfigError(f"{path}.objective: must be between 0 and 1, got {slo.objective!r}")
        if not 3600.0 <= slo.budget_window <= MAX_BUDGET_WINDOW:
            raise ConfigError(f"{path}.budget_window: must be 3600 to {MAX_BUDGET_WINDOW:.0f} s")
        if not 100 <= slo.bad_min_status <= 1000:
            raise ConfigError(f"{path}.bad_min_status: must be 100 to 1000")
        if any(not 100 <= s <= 599 for s in slo.bad_statuses):
            raise ConfigError(f"{path}.bad_statuses: HTTP statuses are 100 to 599")


@dataclass(frozen=True)
class Config:
    http: HttpConfig = field(default_factory=HttpConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    state: StateConfig = field(default_factory=StateConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    prometheus: PrometheusConfig = field(default_factory=PrometheusConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)
    log: LogConfig = field(default_factory=LogConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    slo: tuple[SloConfig, ...] = (SloConfig(),)
    cost: CostConfig = field(default_factory=CostConfig)
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    ready_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (for ``check-config``); the token is masked."""
        data = _plain(dataclasses.asdict(self))
        if data["auth"]["token"]:
            data["auth"]["token"] = "***"
        data["otlp"]["headers"] = dict.fromkeys(data["otlp"]["headers"], "***")
        return typing.cast(dict[str, Any], data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def _check(config: Config) -> None:
    """Cross-field checks a type cannot express."""
    _check_slos(config.slo)
    from metricsd.budgets import check_cost_config

    check_cost_config(config.cost)
    from metricsd.fleet import check_budget_store

    check_budget_store(config.cost)
    positive = {
        "engine.tick": config.engine.tick,
        "engine.merge_interval": config.engine.merge_interval,
        "engine.slot_seconds": config.engine.slot_seconds,
        "state.interval": config.state.interval,
        "limits.series_ttl": config.limits.series_ttl,
        "demo.rate": config.demo.rate,
        "http.ws_slow_grace": config.http.ws_slow_grace,
        "http.ws_heartbeat": config.http.ws_heartbeat,
        "http.ws_message_rate": config.http.ws_message_rate,
        "http.ws_message_burst": config.http.ws_message_burst,
        "http.request_timeout": config.http.request_timeout,
        "streaming.idle_timeout": config.streaming.idle_timeout,
        "streaming.stall_ms": config.streaming.stall_ms,
        "ingest.drain_timeout": config.ingest.drain_timeout,
        "ingest.handshake_timeout": config.ingest.handshake_timeout,
        "limits.max_clock_skew": config.limits.max_clock_skew,
    }
    for path, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{path}: must be > 0, got {value!r}")
    for path, ivalue in {
        "limits.max_series": config.limits.max_series,
        "limits.max_active_streams": config.limits.max_active_streams,
        "limits.max_patterns": config.limits.max_patterns,
        "http.max_body_bytes": config.http.max_body_bytes,
        "http.max_ws_clients": config.http.max_ws_clients,
        "http.max_connections": config.http.max_connections,
        "ingest.rcvhwm": config.ingest.rcvhwm,
        "ingest.max_frame_bytes": config.ingest.max_frame_bytes,
        "ingest.max_events_per_frame": config.ingest.max_events_per_frame,
        "engine.recent_size": config.engine.recent_size,
        "ingest.max_frames_per_wakeup": config.ingest.max_frames_per_wakeup,
    }.items():
        if ivalue < 1:
            raise ConfigError(f"{path}: must be ≥ 1, got {ivalue!r}")
    if config.ingest.heartbeat < 0:
        raise ConfigError(f"ingest.heartbeat: must be ≥ 0, got {config.ingest.heartbeat!r}")
    if config.ingest.max_peers < 0:
        raise ConfigError(
            f"ingest.max_peers: must be ≥ 0 (0: no cap), got {config.ingest.max_peers!r}"
        )
    worker_count(config.engine)  # raises on a bad value
    if config.engine.significant_figures not in (1, 2, 3):
        raise ConfigError("engine.significant_figures: must be 1, 2 or 3")
    if config.log.level.lower() not in _LEVELS:
        raise ConfigError(f"log.level: must be one of {', '.join(_LEVELS)}")
    if config.prometheus.naming not in ("llm", "otel"):
        raise ConfigError(
            f"prometheus.naming: must be 'llm' or 'otel', got {config.prometheus.naming!r}"
        )
    _check_otlp(config.otlp)
    if not config.ingest.endpoints:
        raise ConfigError("ingest.endpoints: at least one endpoint is needed")
    for endpoint in config.ingest.endpoints:
        if not endpoint.startswith(("tcp://", "ipc://", "inproc://")):
            raise ConfigError(f"ingest.endpoints: {endpoint!r} is not a tcp://, ipc:// endpoint")
    if not re.fullmatch(r"0?[0-7]{3}", config.ingest.ipc_mode):
        raise ConfigError(
            'ingest.ipc_mode: expected an octal mode such as "0660", '
            f"got {config.ingest.ipc_mode!r}"
        )
    if bool(config.http.tls_cert) != bool(config.http.tls_key):
        raise ConfigError("http.tls_cert, http.tls_key: set both (certificate and key) or neither")
    if config.ingest.curve_client_keys and not config.ingest.curve_secret_key_file:
        raise ConfigError("ingest.curve_client_keys: needs ingest.curve_secret_key_file")
    for i, key in enumerate(config.ingest.curve_client_keys):
        if not re.fullmatch(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}", key):
            raise ConfigError(f"ingest.curve_client_keys[{i}]: not a Z85 public key (40 chars)")
    split_host_port(config.http.listen, "http.listen")
    for path, bounds in {
        "prometheus.duration_buckets": config.prometheus.duration_buckets,
        "prometheus.ttft_buckets": config.prometheus.ttft_buckets,
        "prometheus.itl_buckets": config.prometheus.itl_buckets,
        "prometheus.token_buckets": config.prometheus.token_buckets,
        "prometheus.custom_buckets": config.prometheus.custom_buckets,
        "prometheus.cost_buckets": config.prometheus.cost_buckets,
        "prometheus.tps_buckets": config.prometheus.tps_buckets,
    }.items():
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise ConfigError(f"{path}: must be a non-empty, strictly increasing list")


def _check_otlp(otlp: OtlpConfig) -> None:
    if otlp.endpoint and not re.match(r"https?://[^/\s]+", otlp.endpoint):
        raise ConfigError(f"otlp.endpoint: expected an http(s):// URL, got {otlp.endpoint!r}")
    if not 0.1 <= otlp.interval <= 86400.0:
        raise ConfigError(f"otlp.interval: must be 0.1 to 86400 s, got {otlp.interval!r}")
    if not 0.0 < otlp.timeout <= 300.0:
        raise ConfigError(f"otlp.timeout: must be > 0 and at most 300 s, got {otlp.timeout!r}")


def split_host_port(value: str, path: str = "http.listen") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{path}: expected HOST:PORT, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{path}: port must be a number, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{path}: port must be 0-65535, got {number}")
    return host.strip("[]"), number


# --- building a Config from layers of plain data ----------------------------------------------


def worker_count(engine: EngineConfig) -> int:
    """The decode processes ``engine.workers`` asks for (``auto``: the cores this process may
    run on); raises :class:`ConfigError` for anything but a positive count or ``auto``."""
    value = engine.workers
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        if not text.isdigit():
            raise ConfigError(f"engine.workers: must be a count or 'auto', got {value!r}")
        value = int(text)
    if isinstance(value, bool) or not 1 <= value <= 256:
        raise ConfigError(f"engine.workers: must be 1 to 256 or 'auto', got {value!r}")
    return value


def _coerce(path: str, tp: Any, value: Any, from_text: bool) -> Any:
    """Convert ``value`` to the field type ``tp``; raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    textual = tp is str or set(typing.get_args(tp)) == {int, str}
    if from_text and isinstance(value, str) and not textual:
        # Environment variables are text: lists, maps, numbers and booleans come as JSON.
        if tp is bool:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ConfigError(f"{path}: expected a boolean, got {value!r}")
        if origin is tuple and not value.lstrip().startswith("["):
            value = [v.strip() for v in value.split(",") if v.strip()]
        else:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{path}: cannot parse {value!r}") from None
        from_text = False
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected a boolean, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if set(typing.get_args(tp)) == {int, str}:  # a count or a word (``workers = "auto"``)
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{path}: expected an integer or a string, got {value!r}")
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        # An element of an array of tables (``[[slo]]``): a table merged onto the defaults.
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        return _merge(tp(), value, f"{path}.", from_text)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return tuple(_coerce(f"{path}[{i}]", item_tp, v, False) for i, v in enumerate(value))
    if origin is not None and origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table, got {value!r}")
        if typing.get_args(tp)[1:] == (Any,):
            return dict(value)  # free-form data, validated by its owner (``cost.prices``)
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ConfigError(f"{path}.{k}: expected a string")
        return dict(value)
    raise ConfigError(f"{path}: unsupported type")  # pragma: no cover


def _merge(base: Any, layer: Mapping[str, Any], prefix: str, from_text: bool) -> Any:
    """A copy of dataclass ``base`` with ``layer`` applied; unknown keys raise."""
    hints = typing.get_type_hints(type(base))
    known = {f.name for f in dataclasses.fields(base)}
    changes: dict[str, Any] = {}
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{path}: unknown key")
        current = getattr(base, key)
        tp = hints[key]
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a table, got {value!r}")
            changes[key] = _merge(current, value, f"{path}.", from_text)
        else:
            changes[key] = _coerce(path, tp, value, from_text)
    return dataclasses.replace(base, **changes)


def _env_layer(environ: Mapping[str, str], names: dict[str, str] | None = None) -> dict[str, Any]:
    """``METRICSD_<SECTION>_<KEY>`` → ``{section: {key: text}}``; unknown names are errors.
    ``names`` receives each setting's path → the variable it came from."""
    layer: dict[str, Any] = {}
    names = {} if names is None else names
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for name, value in environ.items():
        if not name.startswith("METRICSD_") or name in _ENV_IGNORED:
            continue
        rest = name[len("METRICSD_") :].lower()
        if rest in _ENV_SHORTCUTS:
            section, key = _ENV_SHORTCUTS[rest]
        else:
            section, _, key = rest.partition("_")
            if section == "ready" and key == "file":
                layer["ready_file"] = value
                names["ready_file"] = name
                continue
            if section not in sections or not key:
                raise ConfigError(f"{name}: unknown setting (no section {section!r})")
        layer.setdefault(section, {})[key] = value
        names[f"{section}.{key}"] = name
    return layer


def _name_variable(exc: ConfigError, names: Mapping[str, str]) -> ConfigError:
    """The error with the environment variable that set its key in front (``METRICSD_HTTP_LISTEN:
    http.listen: …``), so a bad value in the environment is not looked for in the file."""
    message = str(exc)
    path = message.partition(": ")[0]
    for key in path.split(", "):
        for setting, variable in names.items():
            if key == setting or key.startswith((setting + ".", setting + "[")):
                return ConfigError(f"{variable}: {message}")
    return exc


#: Environment names that clients also read, or that the spec names directly.
_ENV_SHORTCUTS: Final = {
    "token": ("auth", "token"),
    "ingest": ("ingest", "endpoints"),
    "http": ("http", "listen"),
    "budget_store": ("cost", "budget_store"),
}
#: Read elsewhere: the config file's path (above), and the clients' daemon URL, which a sidecar
#: often shares its environment with.
_ENV_IGNORED: Final = frozenset({"METRICSD_CONFIG", "METRICSD_URL"})


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the effective config: defaults < file < environment < ``overrides`` (the flags)."""
    environ = os.environ if environ is None else environ
    config = Config()
    path = path or environ.get("METRICSD_CONFIG") or None
    if path:
        try:
            with Path(path).open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        config = _merge(config, data, "", from_text=False)
    names: dict[str, str] = {}
    try:
        config = _merge(config, _env_layer(environ, names), "", from_text=True)
        if overrides:
            # A flag wins over the variable: an error in that setting is the flag's.
            for section, values in overrides.items():
                for key in values if isinstance(values, Mapping) else ():
                    names.pop(f"{section}.{key}", None)
                names.pop(section, None)
            config = _merge(config, overrides, "", from_text=False)
        _check(config)
    except ConfigError as exc:
        raise _name_variable(exc, names) from None
    return typing.cast(Config, config)
