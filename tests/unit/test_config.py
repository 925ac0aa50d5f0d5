"""Config: precedence defaults < file < environment < flags; errors name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from metricsd.cli import main
from metricsd.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metricsd.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    config = load_config(environ={})
    assert config.http.listen == "127.0.0.1:9465"
    assert config.ingest.endpoints == ("tcp://127.0.0.1:5557",)
    assert config.engine.tick == 0.5
    assert config.limits.max_series == 10_000


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[engine]\ntick = 1.0\n[limits]\nmax_series = 50\n[http]\nlisten = "127.0.0.1:1"\n',
    )
    config = load_config(path, environ={})
    assert (config.engine.tick, config.limits.max_series) == (1.0, 50)
    env = {"METRICSD_ENGINE_TICK": "2.5", "METRICSD_HTTP_LISTEN": "127.0.0.1:2"}
    config = load_config(path, environ=env)
    assert (config.engine.tick, config.limits.max_series, config.http.listen) == (
        2.5,
        50,
        "127.0.0.1:2",
    )
    config = load_config(path, environ=env, overrides={"engine": {"tick": 0.25}})
    assert config.engine.tick == 0.25 and config.http.listen == "127.0.0.1:2"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[limits]\nmax_series = 7\n")
    assert load_config(environ={"METRICSD_CONFIG": str(path)}).limits.max_series == 7


def test_env_shortcuts_and_lists() -> None:
    env = {"METRICSD_INGEST": "tcp://127.0.0.1:1, ipc:///tmp/m.sock", "METRICSD_TOKEN": "t"}
    config = load_config(environ=env)
    assert config.ingest.endpoints == ("tcp://127.0.0.1:1", "ipc:///tmp/m.sock")
    assert config.auth.token == "t"
    assert load_config(environ={"METRICSD_AUTH_INSECURE": "yes"}).auth.insecure is True


@pytest.mark.parametrize(
    "text,message",
    [
        ("[ingest]\nendpoint = 'x'\n", "ingest.endpoint: unknown key"),
        ("[nope]\na = 1\n", "nope: unknown key"),
        ("[engine]\ntick = 'fast'\n", "engine.tick: expected a number"),
        ("[engine]\ntick = 0\n", "engine.tick: must be > 0"),
        ("[limits]\nmax_series = 1.5\n", "limits.max_series: expected an integer"),
        ("[http]\nlisten = 'nohost'\n", "http.listen: expected HOST:PORT"),
        ("[ingest]\nendpoints = ['udp://x:1']\n", "ingest.endpoints"),
        ("[prometheus]\nduration_buckets = [1, 0.5]\n", "prometheus.duration_buckets"),
        ("[engine\n", "invalid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_config(write(tmp_path, text), environ={})


def test_client_url_variable_is_ignored() -> None:
    # The clients' METRICSD_URL is not a daemon setting, and is not an error either.
    assert load_config(environ={"METRICSD_URL": "http://127.0.0.1:1"}) == load_config(environ={})


def test_unknown_environment_variable() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.rcv_hwm: unknown key"):
        load_config(environ={"METRICSD_INGEST_RCV_HWM": "5"})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config("/nonexistent/metricsd.toml", environ={})


def test_check_config_command(tmp_path: Path) -> None:
    runner = CliRunner()
    good = write(tmp_path, '[auth]\ntoken = "tok-s3cr3t-v4lue"\n[limits]\nmax_series = 9\n')
    result = runner.invoke(main, ["check-config", str(good)], env={})
    assert result.exit_code == 0, result.output
    assert '"max_series": 9' in result.output
    assert "tok-s3cr3t-v4lue" not in result.output and '"token": "***"' in result.output
    bad = write(tmp_path, "[limits]\nmax_serie = 9\n")
    result = runner.invoke(main, ["check-config", str(bad)], env={})
    assert result.exit_code == 2
    assert "limits.max_serie: unknown key" in result.output


def test_provider_prefix_table_replaces_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.prefixes]\n"gpt-" = "openai"\n"acme-" = "acme"\n')
    config = load_config(path, environ={})
    assert dict(config.providers.prefixes) == {"gpt-": "openai", "acme-": "acme"}
    result = CliRunner().invoke(main, ["check-config", str(path)], env={})
    assert result.exit_code == 0 and '"acme-": "acme"' in result.output
    bad = write(tmp_path, '[providers.prefixes]\n"x" = 1\n')
    with pytest.raises(ConfigError, match=r"providers\.prefixes\.x: expected a string"):
        load_config(bad, environ={})


def test_serve_refuses_exposed_address_without_token() -> None:
    result = CliRunner().invoke(main, ["serve", "--http", "0.0.0.0:0"], env={})
    assert result.exit_code == 2
    assert "no token is set" in result.output and "--insecure" in result.output
