"""What the three drop-in trackers share: choosing a backend, reads with read-your-writes."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Self

from metricsd_client.backend import Backend, make_backend
from metricsd_client.http import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from metricsd_client._emitter import Emitter
    from metricsd_client.config import MetricsConfig

__all__ = ["TrackerBase"]


class TrackerBase:
    """Backend selection and the consistency rule of reads (``consistent``).

    Keyword arguments every tracker takes:

    - ``url``, ``token``: the daemon's HTTP address and bearer token (default
      ``$METRICSD_URL`` or ``http://127.0.0.1:9465``, and ``$METRICSD_TOKEN``);
    - ``ingest``: its ZeroMQ ingest endpoint (default ``$METRICSD_INGEST`` or
      ``tcp://127.0.0.1:5557``); ``emitter``: an :class:`~metricsd_client.Emitter` to share;
    - ``embedded=True``: run the daemon's trackers in this process instead (needs the
      ``metricsd`` package); ``backend``: share one backend between trackers;
    - ``consistent`` (default True): each read first waits until the daemon has applied every
      event this process sent (``backend.sync``), so a read sees the writes made before it;
      False reads whatever the daemon shows now (eventually consistent, no wait);
    - ``timeout``: seconds for each HTTP request and for that wait;
    - ``config``: a :class:`~metricsd_client.MetricsConfig` whose ``enabled`` and per-kind
      enable flags turn this tracker's writes off (trackers never sample: their numbers are
      read back, so they record everything they are given).
    """

    _kind_flag = ""

    def __init__(
        self,
        *,
        url: str | None = None,
        token: str | None = None,
        ingest: str | None = None,
        emitter: Emitter | None = None,
        embedded: bool = False,
        backend: Backend | None = None,
        consistent: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        config: MetricsConfig | None = None,
        slo_objective: float | None = None,
    ) -> None:
        self._backend = make_backend(
            embedded=embedded,
            backend=backend,
            url=url,
            token=token,
            endpoint=ingest,
            emitter=emitter,
            timeout=timeout,
            slo_objective=slo_objective,
        )
        self._emit = self._backend.emitter
        self.consistent = consistent
        self.timeout = timeout
        self.config = config
        self._on = config is None or (
            config.enabled and bool(getattr(config, self._kind_flag, True))
        )

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def emitter(self) -> Emitter:
        return self._emit

    @property
    def embedded(self) -> bool:
        return self._backend.url == "embedded"

    def _sync(self, consistent: bool | None) -> None:
        if self.consistent if consistent is None else consistent:
            self._backend.sync(self.timeout)

    def flush(self, timeout: float = 5.0) -> bool:
        """Hand everything recorded so far to the transport (see Emitter.flush)."""
        return self._backend.flush(timeout)

    def get_prometheus_metrics(self, *, consistent: bool | None = None) -> str:
        """The daemon's Prometheus exposition (all families, not only this tracker's)."""
        self._sync(consistent)
        return self._backend.prometheus()

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
