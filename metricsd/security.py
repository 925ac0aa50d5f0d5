"""Transport security beyond the bearer token (SPEC §2.1): TLS for HTTP, CURVE for ZeroMQ ingest.

ZeroMQ ingest without a security mechanism is plain text that anyone who can reach the port may
write to: they could forge requests, costs and errors. A loopback or ``ipc://`` endpoint is only
reachable from this host, so it stays plain; a ``tcp://`` endpoint on any other address needs CURVE
(encryption, and the server's identity proven to emitters) or an explicit ``--insecure``.

CURVE is applied per endpoint: ZeroMQ copies the socket's security options into each listener when
it binds, so :meth:`IngestCurve.before_bind` switches CURVE on before a non-loopback endpoint is
bound and off before a local one. Emitters on the same host keep working unchanged.

With ``ingest.curve_client_keys`` set, the ingest socket's ZAP handler
(:class:`metricsd.ingest.PeerGate`, which also caps connected peers) checks each emitter's public
key against that list with :meth:`IngestCurve.allows`; without it, any emitter that has the
server's public key may connect.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import ssl
import stat
import tomllib
from pathlib import Path
from typing import Any, Final

import zmq

from metricsd.config import Config, ConfigError, HttpConfig, IngestConfig

__all__ = [
    "IngestCurve",
    "check_ingest_exposure",
    "is_local_endpoint",
    "keypair_text",
    "load_curve_secret",
    "tls_context",
    "write_keypair",
]

log = logging.getLogger("metricsd.security")

#: ZeroMQ's Z85 encoding of a 32-byte CURVE key: 40 characters of this alphabet.
_Z85_KEY: Final = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}\Z")
ZAP_DOMAIN: Final = b"metricsd"


def is_z85_key(text: str) -> bool:
    return bool(_Z85_KEY.match(text))


# --- TLS --------------------------------------------------------------------------------------


def tls_context(http: HttpConfig) -> ssl.SSLContext | None:
    """The server TLS context for ``http.tls_cert``/``http.tls_key``, or None without them."""
    if not http.tls_cert:
        return None
    for path in (http.tls_cert, http.tls_key):
        if not os.path.isfile(path):
            raise ConfigError(f"http.tls_cert/tls_key: no such file: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(http.tls_cert, http.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"http.tls_cert/tls_key: cannot load the certificate and key "
            f"({getattr(exc, 'reason', None) or exc.strerror or exc})"
        ) from None
    return context


# --- which ingest endpoints need CURVE --------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """True for endpoints only this host can reach: ``ipc://``, ``inproc://``, loopback ``tcp://``."""
    if not endpoint.startswith("tcp://"):
        return endpoint.startswith(("ipc://", "inproc://"))
    address = endpoint[len("tcp://") :].split(";")[-1]
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from elsewhere


def check_ingest_exposure(config: Config) -> None:
    """Refuse a non-loopback ``tcp://`` ingest endpoint without CURVE unless ``--insecure``."""
    if config.auth.insecure or config.ingest.curve_secret_key_file:
        return
    for endpoint in config.ingest.endpoints:
        if not is_local_endpoint(endpoint):
            raise ConfigError(
                f"ingest.endpoints: {endpoint} is reachable from other hosts, and ZeroMQ ingest "
                "without CURVE is neither encrypted nor authenticated (anyone who reaches it can "
                "forge metrics); set ingest.curve_secret_key_file (make a key with `metricsd "
                "keygen`), bind a loopback or ipc:// endpoint, or pass --insecure"
            )


# --- CURVE keys -------------------------------------------------------------------------------


def keypair_text(public: str, secret: str) -> str:
    """A key file as ``metricsd keygen`` writes it: TOML that ``load_curve_secret`` reads."""
    return (
        "# metricsd CURVE keypair (Z85). The daemon reads this file\n"
        "# (ingest.curve_secret_key_file): keep it readable by the daemon only.\n"
        "# Emitters need only the public key.\n"
        f'public_key = "{public}"\n'
        f'secret_key = "{secret}"\n'
    )


def load_curve_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from ``path``: a ``metricsd keygen`` file or a bare secret key."""
    where = "ingest.curve_secret_key_file"
    try:
        file = Path(path)
        text = file.read_text()
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    named: dict[str, Any] = {}
    with contextlib.suppress(tomllib.TOMLDecodeError):
        named = tomllib.loads(text)
    secret = str(named["secret_key"]) if "secret_key" in named else text.strip()
    if not is_z85_key(secret):
        raise ConfigError(f"{where}: {path} holds no Z85 secret key (40 characters)")
    public = zmq.curve_public(secret.encode())
    given = named.get("public_key")
    if given is not None and str(given).encode() != public:
        raise ConfigError(f"{where}: the public key in {path} does not match its secret key")
    if stat.S_IMODE(mode) & 0o077:
        log.warning("%s is readable by other users; chmod 600 it", path)
    return public, secret.encode()


class IngestCurve:
    """CURVE for the non-loopback ingest endpoints, and the optional client-key check."""

    def __init__(self, public: bytes, secret: bytes, client_keys: tuple[str, ...] = ()) -> None:
        self.public = public
        self.secret = secret
        self.client_keys = frozenset(k.encode() for k in client_keys)

    @classmethod
    def from_config(cls, config: IngestConfig) -> IngestCurve | None:
        if not config.curve_secret_key_file:
            return None
        public, secret = load_curve_secret(config.curve_secret_key_file)
        return cls(public, secret, config.curve_client_keys)

    def allows(self, key: bytes) -> bool:
        """ZAP: is this emitter's public key (Z85) one of ``ingest.curve_client_keys``?"""
        allowed = key in self.client_keys
        if not allowed:
            log.warning("refused a CURVE emitter with an unknown key %s", key.decode())
        return allowed

    def before_bind(self, sock: zmq.Socket[Any], endpoint: str) -> None:
        if is_local_endpoint(endpoint):
            # Back to the NULL mechanism (the ZAP handler lets NULL peers in up to the cap).
            sock.setsockopt(zmq.CURVE_SERVER, 0)
            return
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)


def write_keypair(path: str | None) -> str:
    """Make a new keypair; write the key file to ``path`` (mode 0600, never over an existing
    file) when given, else return it as text. Returns the text, or the public key."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    text = keypair_text(public, secret)
    if path is None:
        return text
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return public
