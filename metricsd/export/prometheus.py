"""Prometheus exposition: metric families → text format 0.0.4 or OpenMetrics 1.0.0 bytes.

Pure functions over plain data, in the style of prometheus/client_python's exposition module:
the trackers describe their families once per tick, these functions render them, and the HTTP
handler serves the cached bytes. A family's ``name`` is its base name; counters get ``_total`` on
their samples in both formats (and on the TYPE line of the text format, where that is how
``prometheus_client`` and Prometheus expect a counter to be declared).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "Family",
    "render_both",
    "render_labels",
    "render_openmetrics",
    "render_text",
    "wants_openmetrics",
    "with_label",
]

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


def render_labels(labels: Labels | str) -> str:
    """``{a="x",b="y"}`` with escaped values; a string is taken as already rendered.

    Trackers render a series' labels once, when the series is created, and pass the string on
    every tick: escaping 10 000 series' labels per tick would dominate the render.
    """
    if isinstance(labels, str):
        return labels
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels) + "}"


def with_label(rendered: str, name: str, value: str) -> str:
    """Add one (already escaped) label to a rendered label string."""
    if not rendered:
        return f'{{{name}="{value}"}}'
    return f'{rendered[:-1]},{name}="{value}"}}'


@dataclass(slots=True)
class Family:
    """One metric family and its samples: (suffix, rendered labels, value) triples.

    ``suffix`` is appended to the base name: ``""`` for gauges, ``"_total"`` for counters,
    ``"_bucket"``/``"_sum"``/``"_count"`` for histograms and summaries. Labels may be given as
    ``(name, value)`` pairs or as a string from :func:`render_labels`.
    """

    name: str
    type: str
    help: str
    samples: list[tuple[str, str, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | str = (), suffix: str = "") -> None:
        self.samples.append((suffix, render_labels(labels), value))

    def counter(self, value: float, labels: Labels | str = ()) -> None:
        self.samples.append(("_total", render_labels(labels), value))

    def histogram(
        self,
        labels: Labels | str,
        bounds: Sequence[float],
        cumulative: Sequence[int],
        total: float,
    ) -> None:
        """Buckets from cumulative counts at ``bounds`` (+Inf last), ``_sum``, ``_count``."""
        rendered = render_labels(labels)
        append = self.samples.append
        for le, count in zip(_le_strings(tuple(bounds)), cumulative, strict=False):
            append(("_bucket", with_label(rendered, "le", le), count))
        count = cumulative[-1] if cumulative else 0
        append(("_bucket", with_label(rendered, "le", "+Inf"), count))
        append(("_sum", rendered, total))
        append(("_count", rendered, count))


@functools.lru_cache(maxsize=64)
def _le_strings(bounds: tuple[float, ...]) -> tuple[str, ...]:
    return tuple(format_float(b) for b in bounds)


def escape_label(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def format_float(value: float) -> str:
    """Prometheus number formatting: integers without a fraction, ±Inf and NaN spelled out."""
    if type(value) is int:
        return str(value)
    if math.isfinite(value):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(float(value))
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _body(fam: Family) -> str:
    name = fam.name
    return "\n".join(
        f"{name}{suffix}{labels} {format_float(value)}" for suffix, labels, value in fam.samples
    )


def render_both(families: Iterable[Family]) -> tuple[bytes, bytes]:
    """(text 0.0.4, OpenMetrics 1.0.0): the sample lines are built once and shared."""
    text: list[str] = []
    om: list[str] = []
    for fam in families:
        declared = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type != "unknown" else "untyped"
        help_text = escape_help(fam.help)
        text.append(f"# HELP {declared} {help_text}\n# TYPE {declared} {kind}")
        om.append(f"# TYPE {fam.name} {fam.type}\n# HELP {fam.name} {help_text}")
        if fam.samples:
            body = _body(fam)
            text.append(body)
            om.append(body)
    om.append("# EOF")
    text_bytes = ("\n".join(text) + "\n").encode("utf-8") if text else b""
    return text_bytes, ("\n".join(om) + "\n").encode("utf-8")


def render_text(families: Iterable[Family]) -> bytes:
    """Text format 0.0.4."""
    return render_both(families)[0]


def render_openmetrics(families: Iterable[Family]) -> bytes:
    """OpenMetrics 1.0.0 (ends with ``# EOF``)."""
    return render_both(families)[1]


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics (as Prometheus does when enabled)."""
    return "application/openmetrics-text" in accept
