"""What the collector records: :class:`MetricsConfig` and the :class:`MetricsFilter` interface.

The names follow the steer_llm_sdk metrics guide (``enabled``, ``enable_streaming_metrics``,
``request_sampling_rate``, ``filters``, ``batch_size``, ``from_env()``…) so an existing
configuration carries over. Rules, applied to each :class:`~metricsd_client.RequestMetrics`
record in this order (see :meth:`MetricsConfig.decide`):

1. ``enabled`` off: nothing is recorded.
2. The record's kind: an **error** (``error_class`` set or ``status`` ≥ 400), else a **streamed**
   call, else a plain **request**. Its enable flag off: dropped (``enable_streaming_metrics``
   off keeps a streamed call as a plain request, without its stream timings).
3. Sampling by kind: ``error_sampling_rate`` (1.0 by default: errors are never sampled away
   unless that rate is lowered explicitly), ``streaming_sampling_rate``, ``request_sampling_rate``.
4. Every filter's ``should_collect(record)`` must be true (a filter that raises keeps the
   record: a broken filter must not silently hide traffic).

``enable_cost_tracking`` off sends ``cost_usd = 0`` with each record, so the daemon bills
nothing for it. ``batch_size`` and ``batch_timeout_seconds`` configure the emitter that the
daemon sink creates.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from metricsd_client.records import RequestMetrics

__all__ = ["ENV_NAMES", "MetricsConfig", "MetricsFilter"]


class MetricsFilter:
    """Decides whether a record is collected. Subclass it and override :meth:`should_collect`;
    any object with a ``should_collect(metric) -> bool`` method works as well."""

    def should_collect(self, metric: RequestMetrics) -> bool:
        return True


#: Environment variable read by :meth:`MetricsConfig.from_env` for each field.
ENV_NAMES: Final = {
    "enabled": "METRICS_ENABLED",
    "batch_size": "METRICS_BATCH_SIZE",
    "batch_timeout_seconds": "METRICS_BATCH_TIMEOUT",
    "enable_request_metrics": "ENABLE_REQUEST_METRICS",
    "enable_streaming_metrics": "ENABLE_STREAMING_METRICS",
    "enable_reliability_metrics": "ENABLE_RELIABILITY_METRICS",
    "enable_cost_tracking": "ENABLE_COST_TRACKING",
    "request_sampling_rate": "REQUEST_SAMPLING_RATE",
    "streaming_sampling_rate": "STREAMING_SAMPLING_RATE",
    "error_sampling_rate": "ERROR_SAMPLING_RATE",
}
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0.0 and 1.0, got {value!r}")
    return value


@dataclass(frozen=True)
class MetricsConfig:
    """What to collect and how to batch it (see the module docstring for the rules)."""

    enabled: bool = True
    enable_request_metrics: bool = True
    enable_streaming_metrics: bool = True
    enable_reliability_metrics: bool = True
    enable_cost_tracking: bool = True
    request_sampling_rate: float = 1.0
    streaming_sampling_rate: float = 1.0
    error_sampling_rate: float = 1.0
    filters: tuple[Any, ...] = ()
    batch_size: int = 100
    batch_timeout_seconds: float = 1.0
    #: The random source for sampling (``random.random`` by default; reseeded after fork).
    rng: Callable[[], float] = field(default=random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("request_sampling_rate", "streaming_sampling_rate", "error_sampling_rate"):
            object.__setattr__(self, name, _rate(name, getattr(self, name)))
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not float(self.batch_timeout_seconds) > 0:
            raise ValueError(
                f"batch_timeout_seconds must be > 0, got {self.batch_timeout_seconds!r}"
            )
        object.__setattr__(self, "filters", tuple(self.filters))
        for f in self.filters:
            if not callable(getattr(f, "should_collect", None)):
                raise TypeError(f"filter {f!r} has no should_collect(metric) method")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MetricsConfig:
        """A config from the environment (names in :data:`ENV_NAMES`); unset names keep the
        defaults, keyword arguments win over both. Bad values raise ValueError naming the
        variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in ENV_NAMES.items():
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            text = raw.strip().lower()
            try:
                if name == "batch_size":
                    values[name] = int(text)
                elif name.startswith("enable"):
                    if text not in _TRUE | _FALSE:
                        raise ValueError("expected true or false")
                    values[name] = text in _TRUE
                else:
                    values[name] = float(text)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r}: {exc}") from None
        values.update(overrides)
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"metrics configuration from the environment: {exc}") from None

    def with_filters(self, *filters: Any) -> MetricsConfig:
        return replace(self, filters=(*self.filters, *filters))

    def decide(self, metric: RequestMetrics) -> RequestMetrics | None:
        """The record to collect (possibly without its stream timings), or None to drop it."""
        if not self.enabled:
            return None
        if metric.is_error:
            if not self.enable_reliability_metrics:
                return None
            rate = self.error_sampling_rate
        elif metric.streaming:
            if not self.enable_streaming_metrics:
                if not self.enable_request_metrics:
                    return None
                metric = metric.without_stream_details()
                rate = self.request_sampling_rate
            else:
                rate = self.streaming_sampling_rate
        else:
            if not self.enable_request_metrics:
                return None
            rate = self.request_sampling_rate
        if rate < 1.0 and not self.rng() < rate:
            return None
        for f in self.filters:
            try:
                if not f.should_collect(metric):
                    return None
            except Exception:
                continue
        if not self.enable_cost_tracking and metric.cost_usd is None:
            metric = replace(metric, cost_usd=0.0)
        return metric
