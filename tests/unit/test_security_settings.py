"""Security settings without a running daemon: which endpoints need CURVE, key files, config."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner

from metricsd.app import check_exposure
from metricsd.cli import main
from metricsd.config import ConfigError, load_config
from metricsd.security import is_local_endpoint, keypair_text, load_curve_secret, write_keypair


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:5557", True),
        ("tcp://127.0.0.2:5557", True),
        ("tcp://localhost:5557", True),
        ("tcp://[::1]:5557", True),
        ("tcp://127.0.0.1:*", True),
        ("ipc:///run/metricsd/ingest.sock", True),
        ("inproc://metricsd", True),
        ("tcp://0.0.0.0:5557", False),
        ("tcp://*:5557", False),
        ("tcp://[::]:5557", False),
        ("tcp://10.1.2.3:5557", False),
        ("tcp://eth0:5557", False),
        ("tcp://metrics.example:5557", False),
    ],
)
def test_which_endpoints_are_local(endpoint: str, local: bool) -> None:
    assert is_local_endpoint(endpoint) is local


def test_public_ingest_without_curve_is_refused_and_says_why() -> None:
    result = CliRunner().invoke(main, ["serve", "--ingest", "tcp://0.0.0.0:5557"], env={})
    assert result.exit_code == 2
    assert result.output == (
        "metricsd: ingest.endpoints: tcp://0.0.0.0:5557 is reachable from other hosts, and "
        "ZeroMQ ingest without CURVE is neither encrypted nor authenticated (anyone who reaches "
        "it can forge metrics); set ingest.curve_secret_key_file (make a key with `metricsd "
        "keygen`), bind a loopback or ipc:// endpoint, or pass --insecure\n"
    )


def test_public_ingest_is_allowed_with_curve_or_insecure(tmp_path: Path) -> None:
    public = {"ingest": {"endpoints": ["tcp://127.0.0.1:5557", "tcp://*:5557"]}}
    with pytest.raises(ConfigError, match=r"^ingest.endpoints: tcp://\*:5557 is reachable"):
        check_exposure(load_config(environ={}, overrides=public))
    check_exposure(load_config(environ={}, overrides={**public, "auth": {"insecure": True}}))
    curve = {"ingest": {**public["ingest"], "curve_secret_key_file": str(tmp_path / "k")}}
    check_exposure(load_config(environ={}, overrides=curve))
    local = {"ingest": {"endpoints": ["ipc:///tmp/x.sock", "tcp://[::1]:5557"]}}
    check_exposure(load_config(environ={}, overrides=local))


def test_key_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "curve.key"
    public_text = write_keypair(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    public, secret = load_curve_secret(str(path))
    assert public.decode() == public_text and zmq.curve_public(secret) == public
    with pytest.raises(FileExistsError):
        write_keypair(str(path))  # never over an existing key

    bare = tmp_path / "bare.key"
    bare.write_text(secret.decode() + "\n")
    bare.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="metricsd.security"):
        assert load_curve_secret(str(bare)) == (public, secret)
    assert caplog.messages == [f"{bare} is readable by other users; chmod 600 it"]

    other_public = zmq.curve_keypair()[0].decode()
    mismatched = tmp_path / "mismatch.key"
    mismatched.write_text(keypair_text(other_public, secret.decode()))
    with pytest.raises(ConfigError, match="does not match its secret key"):
        load_curve_secret(str(mismatched))
    junk = tmp_path / "junk.key"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match=r"holds no Z85 secret key \(40 characters\)$"):
        load_curve_secret(str(junk))
    with pytest.raises(ConfigError, match=r"^ingest\.curve_secret_key_file: no such file: "):
        load_curve_secret(str(tmp_path / "missing.key"))


def test_keygen_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keygen"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[-2].startswith('public_key = "') and lines[-1].startswith('secret_key = "')
    key_file = tmp_path / "printed.key"
    key_file.write_text(result.output)
    public, _secret = load_curve_secret(str(key_file))
    assert lines[-2] == f'public_key = "{public.decode()}"'

    out = tmp_path / "written.key"
    result = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert result.exit_code == 0
    assert result.output == f'public_key = "{load_curve_secret(str(out))[0].decode()}"\n'
    result = CliRunner().invoke(main, ["keygen", "--out", str(out)])
    assert result.exit_code == 2
    assert result.output == f"metricsd: {out} exists; not overwriting a key\n"


def test_keygen_public_file_and_exist_ok(tmp_path: Path) -> None:
    out, pub = tmp_path / "curve.key", tmp_path / "curve.pub"
    args = ["keygen", "--out", str(out), "--public", str(pub), "--exist-ok"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    public = load_curve_secret(str(out))[0].decode()
    assert first.output == pub.read_text() == f'public_key = "{public}"\n'
    assert os.stat(out).st_mode & 0o777 == 0o600 and os.stat(pub).st_mode & 0o777 == 0o644
    # Again (a container's init step on every start): the key is kept, not replaced.
    pub.unlink()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0
    assert again.output == f'metricsd: {out} exists; keeping it\npublic_key = "{public}"\n'
    assert pub.read_text() == f'public_key = "{public}"\n'
    assert load_curve_secret(str(out))[0].decode() == public
    result = CliRunner().invoke(main, ["keygen", "--exist-ok"])
    assert (
        result.exit_code == 2 and result.output == "metricsd: --public and --exist-ok need --out\n"
    )


def test_security_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"^http\.tls_cert, http\.tls_key: set both"):
        load_config(environ={}, overrides={"http": {"tls_cert": "/x.pem"}})
    with pytest.raises(ConfigError, match=r"^ingest\.curve_client_keys: needs ingest"):
        load_config(environ={}, overrides={"ingest": {"curve_client_keys": ["a" * 40]}})
    bad = {"ingest": {"curve_secret_key_file": "/k", "curve_client_keys": ["a" * 40, "short"]}}
    with pytest.raises(ConfigError, match=r"^ingest.curve_client_keys\[1\]: not a Z85 public key"):
        load_config(environ={}, overrides=bad)
    config = load_config(
        environ={"METRICSD_HTTP_TLS_CERT": "/c.pem", "METRICSD_HTTP_TLS_KEY": "/k.pem"}
    )
    assert (config.http.tls_cert, config.http.tls_key) == ("/c.pem", "/k.pem")
