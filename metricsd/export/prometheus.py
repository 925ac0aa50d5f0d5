"""Prometheus exposition: metric families → text format 0.0.4 or OpenMetrics 1.0.0 bytes.

Pure functions over plain data, in the style of prometheus/client_python's exposition module:
the trackers describe their families once per tick, these functions render them, and the HTTP
handler serves the cached bytes. A family's ``name`` is its base name; counters get ``_total`` on
their samples in both formats (and on the TYPE line of the text format, where that is how
``prometheus_client`` and Prometheus expect a counter to be declared).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "Family",
    "render_openmetrics",
    "render_text",
    "wants_openmetrics",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


@dataclass(slots=True)
class Family:
    """One metric family and its samples: (suffix, labels, value) triples.

    ``suffix`` is appended to the base name: ``""`` for gauges, ``"_total"`` for counters,
    ``"_bucket"``/``"_sum"``/``"_count"`` for histograms and summaries.
    """

    name: str
    type: str
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels = (), suffix: str = "") -> None:
        self.samples.append((suffix, labels, value))

    def counter(self, value: float, labels: Labels = ()) -> None:
        self.samples.append(("_total", labels, value))

    def histogram(
        self, labels: Labels, bounds: Sequence[float], cumulative: Sequence[int], total: float
    ) -> None:
        """Buckets from cumulative counts at ``bounds`` (+Inf last), ``_sum``, ``_count``."""
        for bound, count in zip(bounds, cumulative, strict=False):
            self.samples.append(("_bucket", (*labels, ("le", format_float(bound))), count))
        count = cumulative[-1] if cumulative else 0
        self.samples.append(("_bucket", (*labels, ("le", "+Inf")), count))
        self.samples.append(("_sum", labels, total))
        self.samples.append(("_count", labels, count))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def format_float(value: float) -> str:
    """Prometheus number formatting: integers without a fraction, ±Inf and NaN spelled out."""
    if isinstance(value, int) or (
        math.isfinite(value) and value == int(value) and abs(value) < 1e15
    ):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def render_text(families: Iterable[Family]) -> bytes:
    """Text format 0.0.4."""
    lines: list[str] = []
    for fam in families:
        declared = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type != "unknown" else "untyped"
        lines.append(f"# HELP {declared} {escape_help(fam.help)}")
        lines.append(f"# TYPE {declared} {kind}")
        for suffix, labels, value in fam.samples:
            lines.append(f"{fam.name}{suffix}{_labels(labels)} {format_float(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def render_openmetrics(families: Iterable[Family]) -> bytes:
    """OpenMetrics 1.0.0 (ends with ``# EOF``)."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# TYPE {fam.name} {fam.type}")
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        for suffix, labels, value in fam.samples:
            lines.append(f"{fam.name}{suffix}{_labels(labels)} {format_float(value)}")
    lines.append("# EOF")
    return ("\n".join(lines) + "\n").encode("utf-8")


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics (as Prometheus does when enabled)."""
    return "application/openmetrics-text" in accept
