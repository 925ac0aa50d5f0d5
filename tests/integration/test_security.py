"""TLS for HTTP and CURVE for ZeroMQ ingest, on the real daemon process."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq

from metricsd.security import load_curve_secret, write_keypair
from tests.conftest import Daemon

OPENSSL = shutil.which("openssl")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and localhost (openssl CLI)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    # fmt: off
    subprocess.run(
        [
            str(OPENSSL), "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=30,
    )
    # fmt: on
    return cert, key


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_https_with_a_self_signed_certificate(daemon_factory: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    d: Daemon = daemon_factory("--tls-cert", str(cert), "--tls-key", str(key), "--token", "t0k")
    assert d.http.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    req = urllib.request.Request(d.http + "/metrics/json", headers={"Authorization": "Bearer t0k"})
    with urllib.request.urlopen(req, timeout=5, context=context) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["requests"] == {}
    with urllib.request.urlopen(d.http + "/healthz", timeout=5, context=context) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    plain = "http://" + d.http.removeprefix("https://") + "/healthz"
    with pytest.raises(OSError):  # plain HTTP on the TLS port gets no answer
        urllib.request.urlopen(plain, timeout=5)
    untrusted = ssl.create_default_context()  # the system CAs do not know this certificate
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(d.http + "/healthz", timeout=5, context=untrusted)
    assert f"metricsd ready http={d.http} ingest=" in d.log_path.read_text()


def test_missing_certificate_file_fails_clearly(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    # fmt: off
    out = subprocess.run(
        [
            sys.executable, "-m", "metricsd", "serve", "--http", "127.0.0.1:0",
            "--ingest", "tcp://127.0.0.1:0", "--tls-cert", missing, "--tls-key", missing,
        ],
        capture_output=True, text=True, timeout=20,
    )
    # fmt: on
    assert out.returncode == 2
    assert out.stderr.endswith(f"metricsd: http.tls_cert/tls_key: no such file: {missing}\n")


# --- CURVE ------------------------------------------------------------------------------------


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def push(
    ctx: zmq.Context[Any],
    endpoint: str,
    server_key: bytes | None = None,
    keypair: tuple[bytes, bytes] | None = None,
    timeout_ms: int = 3000,
) -> zmq.Socket[Any]:
    """A PUSH socket that queues only on a completed (handshaken) connection, so a refused
    handshake shows as ``zmq.Again`` after ``timeout_ms`` instead of a silently queued frame."""
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    if server_key is not None:
        public, secret = keypair or zmq.curve_keypair()
        sock.curve_serverkey = server_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.connect(endpoint)
    return sock


def batch(n: int) -> bytes:
    return msgpack.packb(
        {"type": "request", "const": {"model": "gpt-4o"}, "cols": {"duration_ms": [5.0] * n}}
    )


def curve_daemon(factory: Any, tmp_path: Path, clients: list[str] | None = None) -> Daemon:
    key_file = tmp_path / "curve.key"
    write_keypair(str(key_file))
    config = tmp_path / "metricsd.toml"
    lines = ["[ingest]", f'curve_secret_key_file = "{key_file}"']
    if clients is not None:
        lines.append(f"curve_client_keys = {json.dumps(clients)}")
    config.write_text("\n".join(lines) + "\n")
    # conftest binds tcp://127.0.0.1:0 first; this adds an endpoint on every interface.
    d: Daemon = factory("--config", str(config), "--ingest", "tcp://0.0.0.0:0")
    assert d.ingest[1].startswith("tcp://0.0.0.0:")
    return d


def test_curve_ingest(daemon_factory: Any, tmp_path: Path, zctx: zmq.Context[Any]) -> None:
    d = curve_daemon(daemon_factory, tmp_path)
    server_public, _ = load_curve_secret(str(tmp_path / "curve.key"))
    public_port = "tcp://127.0.0.1:" + d.ingest[1].rsplit(":", 1)[1]

    keyed = push(zctx, public_port, server_public)
    keyed.send(batch(3))
    assert d.wait_for("metricsd_events_received_total", 3, type="request") == 3

    keyless = push(zctx, public_port, timeout_ms=500)
    with pytest.raises(zmq.Again):  # the CURVE endpoint never completes a plain handshake
        keyless.send(batch(100))
    impostor = push(zctx, public_port, zmq.curve_keypair()[0], timeout_ms=500)
    with pytest.raises(zmq.Again):  # a client that trusts another server key refuses this one
        impostor.send(batch(100))

    d.send_raw(batch(2))  # the loopback endpoint stays plain for emitters on this host
    assert d.wait_for("metricsd_events_received_total", 5, type="request") == 5
    assert d.value("metricsd_frames_received_total") == 2
    assert f"CURVE required on {d.ingest[1]}" in d.log_path.read_text()


def test_curve_client_allowlist(
    daemon_factory: Any, tmp_path: Path, zctx: zmq.Context[Any]
) -> None:
    allowed = zmq.curve_keypair()
    d = curve_daemon(daemon_factory, tmp_path, clients=[allowed[0].decode()])
    server_public, _ = load_curve_secret(str(tmp_path / "curve.key"))
    public_port = "tcp://127.0.0.1:" + d.ingest[1].rsplit(":", 1)[1]

    stranger = push(zctx, public_port, server_public, timeout_ms=500)
    with pytest.raises(zmq.Again):  # a valid CURVE client whose key is not on the list
        stranger.send(batch(100))
    member = push(zctx, public_port, server_public, keypair=allowed)
    member.send(batch(4))
    assert d.wait_for("metricsd_events_received_total", 4, type="request") == 4
    assert d.value("metricsd_frames_received_total") == 1
    assert "refused a CURVE emitter with an unknown key" in d.log_path.read_text()


def test_emit_with_the_server_key_reaches_a_curve_endpoint(
    daemon_factory: Any, tmp_path: Path
) -> None:
    d = curve_daemon(daemon_factory, tmp_path)
    public_port = "tcp://127.0.0.1:" + d.ingest[1].rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METRICSD_")}

    def emit(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metricsd", "emit", "--ingest", public_port, *args],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )

    out = emit("request", "duration_ms=5")  # no key: the handshake never completes
    assert out.returncode == 2 and "no daemon accepted the event" in out.stderr
    # The key file itself (public_key = "…"), as `keygen --out` writes it.
    out = emit("--server-key", str(tmp_path / "curve.key"), "request", "duration_ms=5")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"sent request to {public_port}\n"
    server_public = load_curve_secret(str(tmp_path / "curve.key"))[0].decode()
    out = emit("--server-key", server_public, "request", "duration_ms=6")  # the bare key
    assert out.returncode == 0, out.stderr
    assert d.wait_for("metricsd_events_received_total", 2, type="request") == 2
