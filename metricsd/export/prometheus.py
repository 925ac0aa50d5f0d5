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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "Family",
    "RenderCache",
    "SeriesSamples",
    "histogram_samples",
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


Sample = tuple[str, str, float]


@dataclass(frozen=True, slots=True)
class SeriesSamples:
    """Samples produced series by series, so a renderer can cache each series' lines.

    ``keys[i]`` names series i (stable across snapshots), ``versions[i]`` changes whenever its
    samples do, ``make(i)`` builds them. A renderer with a :class:`RenderCache` re-renders only
    the series whose version moved; everything else reads :meth:`expand`.
    """

    keys: Sequence[Any]
    versions: Sequence[int]
    make: Callable[[int], list[Sample]]

    def expand(self) -> list[Sample]:
        out: list[Sample] = []
        for i in range(len(self.keys)):
            out.extend(self.make(i))
        return out


@dataclass(slots=True)
class Family:
    """One metric family and its samples: (suffix, rendered labels, value) triples.

    ``suffix`` is appended to the base name: ``""`` for gauges, ``"_total"`` for counters,
    ``"_bucket"``/``"_sum"``/``"_count"`` for histograms and summaries. Labels may be given as
    ``(name, value)`` pairs or as a string from :func:`render_labels`. ``series`` holds samples
    made per series (rendered after ``samples``).
    """

    name: str
    type: str
    help: str
    samples: list[Sample] = field(default_factory=list)
    series: SeriesSamples | None = None

    def all_samples(self) -> list[Sample]:
        """Every sample, the per-series ones expanded."""
        if self.series is None:
            return self.samples
        return [*self.samples, *self.series.expand()]

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
        self.samples.extend(histogram_samples(render_labels(labels), bounds, cumulative, total))

    def per_series(
        self, keys: Sequence[Any], versions: Sequence[int], make: Callable[[int], list[Sample]]
    ) -> Family:
        self.series = SeriesSamples(keys, versions, make)
        return self


def histogram_samples(
    rendered: str, bounds: Sequence[float], cumulative: Sequence[int], total: float
) -> list[Sample]:
    """A histogram's samples: buckets at ``bounds`` from cumulative counts (+Inf last, equal to
    the count), ``_sum`` and ``_count``."""
    out: list[Sample] = [
        ("_bucket", with_label(rendered, "le", le), count)
        for le, count in zip(_le_strings(tuple(bounds)), cumulative, strict=False)
    ]
    count = cumulative[-1] if len(cumulative) else 0
    out.append(("_bucket", with_label(rendered, "le", "+Inf"), count))
    out.append(("_sum", rendered, total))
    out.append(("_count", rendered, count))
    return out


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


def _lines(name: str, samples: Iterable[Sample]) -> str:
    return "\n".join(
        f"{name}{suffix}{labels} {format_float(value)}" for suffix, labels, value in samples
    )


class RenderCache:
    """Rendered lines of each series of each family, with the version they were made at.

    Kept by whoever renders exposition snapshot after snapshot; a series whose version has not
    moved is not rendered again. Entries of series that went away are dropped once they make up
    half the cache.
    """

    __slots__ = ("_lines", "_live")

    def __init__(self) -> None:
        self._lines: dict[tuple[str, Any], tuple[int, str]] = {}
        self._live = 0

    def body(self, fam: Family) -> str:
        parts: list[str] = []
        if fam.samples:
            parts.append(_lines(fam.name, fam.samples))
        series = fam.series
        if series is not None:
            lines = self._lines
            name = fam.name
            make = series.make
            versions = series.versions
            for i, key in enumerate(series.keys):
                version = versions[i]
                hit = lines.get((name, key))
                if hit is None or hit[0] != version:
                    text = _lines(name, make(i))
                    lines[(name, key)] = (version, text)
                else:
                    text = hit[1]
                if text:
                    parts.append(text)
            self._live += len(series.keys)
        return "\n".join(parts)

    def prune(self) -> None:
        """After a render: forget series that no longer exist (when they are many)."""
        if len(self._lines) > 2 * self._live + 1024:
            self._lines.clear()
        self._live = 0


def render_both(
    families: Iterable[Family], cache: RenderCache | None = None
) -> tuple[bytes, bytes]:
    """(text 0.0.4, OpenMetrics 1.0.0): the sample lines are built once and shared."""
    cache = cache or RenderCache()
    text: list[str] = []
    om: list[str] = []
    for fam in families:
        declared = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type != "unknown" else "untyped"
        help_text = escape_help(fam.help)
        text.append(f"# HELP {declared} {help_text}\n# TYPE {declared} {kind}")
        om.append(f"# TYPE {fam.name} {fam.type}\n# HELP {fam.name} {help_text}")
        body = cache.body(fam)
        if body:
            text.append(body)
            om.append(body)
    cache.prune()
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
