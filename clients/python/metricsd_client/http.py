"""A small HTTP reader for the daemon's JSON and Prometheus routes (SPEC §2), stdlib only.

Every request has a timeout; nothing is retried. Network failures (refused, reset, timed out)
raise :class:`MetricsdUnavailable`; HTTP errors raise :class:`MetricsdHTTPError` with the
daemon's ``{"error": ...}`` message, except where a caller asks for a 404 to read as ``None``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "HttpReader",
    "MetricsdError",
    "MetricsdHTTPError",
    "MetricsdUnavailable",
    "parse_samples",
]

DEFAULT_URL: Final = "http://127.0.0.1:9465"
#: Seconds any one HTTP request may take.
DEFAULT_TIMEOUT: Final = 5.0
#: Larger bodies are refused (a /metrics exposition with 10 000 series is a few MB).
MAX_BODY: Final = 64 << 20


class MetricsdError(Exception):
    """Base class of the errors a read from the daemon can raise (writes never raise)."""


class MetricsdUnavailable(MetricsdError, ConnectionError):
    """The daemon could not be reached within the timeout."""


class MetricsdHTTPError(MetricsdError):
    """The daemon answered with an HTTP error; ``status`` and the daemon's ``message``."""

    def __init__(self, status: int, message: str, path: str) -> None:
        super().__init__(f"metricsd: {status} on {path}: {message}")
        self.status = status
        self.message = message
        self.path = path


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpReader:
    """GET/PUT/DELETE against one daemon, with a bearer token when one is set.

    ``url`` defaults to ``$METRICSD_URL``, else ``http://127.0.0.1:9465``; ``token`` to
    ``$METRICSD_TOKEN``. A loopback daemon is reached directly, never through a proxy from the
    environment.
    """

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        url = url or os.environ.get("METRICSD_URL") or DEFAULT_URL
        if "://" not in url:
            url = "http://" + url
        self.url: Final[str] = url.rstrip("/")
        self.token: Final[str] = (
            token if token is not None else os.environ.get("METRICSD_TOKEN", "")
        )
        self.timeout = float(timeout)
        host = urllib.parse.urlsplit(self.url).hostname or ""
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(host):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"HttpReader({self.url!r}, token={'***' if self.token else ''!r})"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        timeout: float | None = None,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """(status, body) of one request; raises :class:`MetricsdUnavailable` on network errors."""
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        wait = self.timeout if timeout is None else max(0.001, timeout)
        try:
            with self._opener.open(req, timeout=wait) as resp:
                return int(resp.status), resp.read(MAX_BODY)
        except urllib.error.HTTPError as exc:
            with exc:
                return int(exc.code), exc.read(MAX_BODY)
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise MetricsdUnavailable(
                f"metricsd: cannot reach {self.url} ({reason}); is the daemon running? "
                "(set METRICSD_URL to its HTTP address)"
            ) from None

    def _check(self, status: int, data: bytes, path: str) -> None:
        if status < 400:
            return
        try:
            message = str(json.loads(data).get("error", ""))
        except (ValueError, AttributeError):
            message = data[:200].decode("utf-8", "replace")
        if status == 401:
            message += " (set METRICSD_TOKEN or pass token=)"
        raise MetricsdHTTPError(status, message, path.split("?")[0])

    def get_json(self, path: str, *, timeout: float | None = None, missing_ok: bool = False) -> Any:
        """The JSON of a GET; with ``missing_ok``, ``None`` for a 404."""
        status, data = self.request("GET", path, timeout=timeout)
        if missing_ok and status == 404:
            return None
        self._check(status, data, path)
        return _loads(data, path)

    def send_json(
        self, method: str, path: str, body: Any = None, *, missing_ok: bool = False
    ) -> Any:
        """PUT/DELETE with a JSON body; the JSON answer (``None`` for a 404 with ``missing_ok``)."""
        raw = None if body is None else json.dumps(body).encode()
        status, data = self.request(method, path, raw)
        if missing_ok and status == 404:
            return None
        self._check(status, data, path)
        return _loads(data, path) if data else None

    def get_text(self, path: str, *, timeout: float | None = None) -> str:
        status, data = self.request("GET", path, timeout=timeout, accept="text/plain")
        self._check(status, data, path)
        return data.decode("utf-8", "replace")


def _loads(data: bytes, path: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise MetricsdError(f"metricsd: {path.split('?')[0]} did not return JSON") from None


def quote(segment: str) -> str:
    """A path segment, escaped (keys may hold any character)."""
    return urllib.parse.quote(segment, safe="")


def parse_samples(text: str, names: frozenset[str]) -> dict[str, list[tuple[str, float]]]:
    """Samples of the named families in a Prometheus text exposition: name → [(labels, value)].

    ``labels`` is the raw text between the braces (empty without labels). Enough for the
    client's own needs (self-metrics with simple label values); not a general parser.
    """
    out: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            end = line.rfind("}")
            labels, rest = line[brace + 1 : end], line[end + 1 :]
        else:
            name, _, rest = line.partition(" ")
            labels = ""
        if name not in names:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        out.setdefault(name, []).append((labels, value))
    return out
