"""``metricsd check-config`` runs every check ``serve`` runs before binding, and names the
environment variable behind a bad value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from metricsd.cli import main
from metricsd.config import ConfigError, load_config
from metricsd.security import write_keypair


def check(path: Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["check-config", str(path)], env=env or {})


def serve(path: Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main, ["serve", "--config", str(path)], env=env or {})


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metricsd.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[http]\nlisten = "0.0.0.0:9465"\n',
            "http.listen: 0.0.0.0:9465 is reachable from other hosts and no token is set; set "
            "auth.token (METRICSD_TOKEN / --token) or pass --insecure",
        ),
        (
            '[ingest]\nendpoints = ["tcp://0.0.0.0:5557"]\n',
            "ingest.endpoints: tcp://0.0.0.0:5557 is reachable from other hosts, and ZeroMQ "
            "ingest without CURVE is neither encrypted nor authenticated (anyone who reaches it "
            "can forge metrics); set ingest.curve_secret_key_file (make a key with `metricsd "
            "keygen`), bind a loopback or ipc:// endpoint, or pass --insecure",
        ),
        (
            '[ingest]\nendpoints = ["ipc:///nonexistent-dir/ingest.sock"]\n',
            "ingest.endpoints: ipc:///nonexistent-dir/ingest.sock: the directory "
            "/nonexistent-dir does not exist (create it first; under systemd, "
            "RuntimeDirectory=metricsd makes /run/metricsd)",
        ),
        (
            f'[ingest]\nendpoints = ["ipc:///tmp/{"x" * 120}.sock"]\n',
            f"ingest.endpoints: ipc:///tmp/{'x' * 120}.sock: the path is longer than 107 bytes",
        ),
        (
            '[http]\ntls_cert = "/nonexistent/tls.crt"\ntls_key = "/nonexistent/tls.key"\n',
            "http.tls_cert/tls_key: no such file: /nonexistent/tls.crt",
        ),
        (
            '[ingest]\ncurve_secret_key_file = "/nonexistent/curve.key"\n',
            "ingest.curve_secret_key_file: no such file: /nonexistent/curve.key",
        ),
        (
            '[cost]\npricing_file = "/nonexistent/prices.toml"\n',
            "cost.pricing_file: /nonexistent/prices.toml: no such file",
        ),
        ('[ingest]\nipc_mode = "999"\n', 'ingest.ipc_mode: expected an octal mode such as "0660"'),
    ],
)
def test_check_config_refuses_what_serve_refuses(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    checked = check(path)
    assert checked.exit_code == 2
    assert checked.output.startswith(f"metricsd: {message}")
    served = serve(path)  # refused before anything is bound or started
    assert served.exit_code == 2
    assert served.output == checked.output


def test_tls_files_that_do_not_load_are_refused(tmp_path: Path) -> None:
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    path = write(
        tmp_path, f'[http]\ntls_cert = "{tmp_path}/tls.crt"\ntls_key = "{tmp_path}/tls.key"\n'
    )
    result = check(path)
    assert result.exit_code == 2
    assert result.output.startswith(
        "metricsd: http.tls_cert/tls_key: cannot load the certificate and key"
    )


def test_a_complete_exposed_setup_passes(tmp_path: Path) -> None:
    key = tmp_path / "curve.key"
    write_keypair(str(key))
    (tmp_path / "run").mkdir()
    path = write(
        tmp_path,
        '[http]\nlisten = "0.0.0.0:9465"\n'
        f'[ingest]\nendpoints = ["tcp://0.0.0.0:5557", "ipc://{tmp_path}/run/ingest.sock"]\n'
        f'curve_secret_key_file = "{key}"\nipc_mode = "0666"\n',
    )
    result = check(path, env={"METRICSD_TOKEN": "s3cret"})
    assert result.exit_code == 0, result.output
    effective = json.loads(result.output)
    assert effective["auth"]["token"] == "***"
    assert effective["ingest"]["ipc_mode"] == "0666"
    assert check(path).exit_code == 2  # the same file without the token


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICSD_HTTP_LISTEN": "nohost"}, "METRICSD_HTTP_LISTEN: http.listen: expected "),
        ({"METRICSD_HTTP": "nohost"}, "METRICSD_HTTP: http.listen: expected HOST:PORT"),
        ({"METRICSD_ENGINE_TICK": "abc"}, "METRICSD_ENGINE_TICK: engine.tick: cannot parse 'abc'"),
        ({"METRICSD_ENGINE_TICK": "0"}, "METRICSD_ENGINE_TICK: engine.tick: must be > 0, got 0.0"),
        (
            {"METRICSD_INGEST": "udp://x:1"},
            "METRICSD_INGEST: ingest.endpoints: 'udp://x:1' is not a tcp://, ipc:// endpoint",
        ),
        (
            {"METRICSD_HTTP_TLS_CERT": "/x.crt"},
            "METRICSD_HTTP_TLS_CERT: http.tls_cert, http.tls_key: set both",
        ),
        ({"METRICSD_AUTH_INSECURE": "maybe"}, "METRICSD_AUTH_INSECURE: auth.insecure: expected "),
        ({"METRICSD_NOPE_X": "1"}, "METRICSD_NOPE_X: unknown setting (no section 'nope')"),
    ],
)
def test_errors_name_the_environment_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    result = check(write(tmp_path, ""), env=env)
    assert result.exit_code == 2
    assert result.output.startswith(f"metricsd: {message}")


def test_a_flag_over_a_variable_owns_the_error() -> None:
    env = {"METRICSD_HTTP_LISTEN": "127.0.0.1:1"}
    with pytest.raises(ConfigError) as info:
        load_config(environ=env, overrides={"http": {"listen": "bad"}})
    assert str(info.value) == "http.listen: expected HOST:PORT, got 'bad'"
    with pytest.raises(ConfigError) as info:
        load_config(environ={"METRICSD_LIMITS_MAX_SERIES": "0"})
    assert str(info.value) == "METRICSD_LIMITS_MAX_SERIES: limits.max_series: must be ≥ 1, got 0"
