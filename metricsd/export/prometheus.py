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

import numpy as np
import numpy.typing as npt

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
#: Per-series versions: a list or an integer array.
Versions = Sequence[int] | npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class SeriesSamples:
    """Samples produced series by series, so a renderer can cache each series' lines.

    ``keys[i]`` names series i (stable across snapshots), ``versions[i]`` changes whenever its
    samples do, ``make(i)`` builds them. A renderer with a :class:`RenderCache` re-renders only
    the series whose version moved; everything else reads :meth:`expand`.
    """

    keys: Sequence[Any]
    versions: Versions
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
        self, keys: Sequence[Any], versions: Versions, make: Callable[[int], list[Sample]]
    ) -> Family:
        self.series = SeriesSamples(keys, versions, make)
        return self

    def per_label(
        self, label: str, counts: dict[str, int], suffix: str = "", scale: float = 1.0
    ) -> Family:
        """One sample per entry of ``counts`` (an integer per label value, shown divided by
        ``scale``): the integer itself is the entry's version, so a renderer with a cache only
        renders the entries that moved, however many thousands there are."""
        names = sorted(counts)
        values = [counts[n] for n in names]

        def make(i: int) -> list[Sample]:
            value = values[i] / scale if scale != 1.0 else values[i]
            return [(suffix, render_labels(((label, names[i]),)), value)]

        return self.per_series(names, values, make)


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
    """Rendered lines of each series of each family, kept from one render to the next.

    Kept by whoever renders exposition snapshot after snapshot. A series whose version has not
    moved is not rendered again; when a family's series are the same as last time (the same
    key list, which a table shares between snapshots until a series is added or dropped), the
    changed ones are found with one array comparison, so an unchanged family of 10 000 series
    costs a comparison and a join, not 10 000 lookups. Entries of series that went away are
    dropped once they make up half the cache.
    """

    __slots__ = ("_chunks", "_fast", "_live")

    def __init__(self) -> None:
        #: (family, series key) → (version, rendered lines)
        self._chunks: dict[tuple[str, Any], tuple[int, bytes]] = {}
        #: family → (key list, versions, rendered lines per series, joined body)
        self._fast: dict[str, tuple[Sequence[Any], np.ndarray[Any, Any], list[bytes], bytes]] = {}
        self._live = 0

    def body(self, fam: Family) -> bytes:
        parts: list[bytes] = []
        if fam.samples:
            parts.append(_lines(fam.name, fam.samples).encode("utf-8"))
        series = fam.series
        if series is not None:
            body = self._series_body(fam.name, series)
            if body:
                parts.append(body)
            self._live += len(series.keys)
        return b"\n".join(parts)

    def _series_body(self, name: str, series: SeriesSamples) -> bytes:
        keys = series.keys
        versions = np.asarray(series.versions)
        make = series.make
        chunks_cache = self._chunks
        fast = self._fast.get(name)
        if fast is not None and fast[0] is keys and len(fast[1]) == len(versions):
            changed = np.flatnonzero(versions != fast[1])
            if changed.size == 0:
                return fast[3]
            chunks = fast[2]
            for i in changed.tolist():
                text = _lines(name, make(i)).encode("utf-8")
                chunks[i] = text
                chunks_cache[(name, keys[i])] = (int(versions[i]), text)
        else:
            chunks = []
            for i, key in enumerate(keys):
                version = int(versions[i])
                hit = chunks_cache.get((name, key))
                if hit is None or hit[0] != version:
                    text = _lines(name, make(i)).encode("utf-8")
                    chunks_cache[(name, key)] = (version, text)
                else:
                    text = hit[1]
                chunks.append(text)
        body = b"\n".join(c for c in chunks if c)
        self._fast[name] = (keys, versions, chunks, body)
        return body

    def prune(self) -> None:
        """After a render: forget series that no longer exist (when they are many)."""
        if len(self._chunks) > 2 * self._live + 1024:
            self._chunks.clear()
            self._fast.clear()
        self._live = 0


def render_both(
    families: Iterable[Family], cache: RenderCache | None = None
) -> tuple[bytes, bytes]:
    """(text 0.0.4, OpenMetrics 1.0.0): the sample lines are built once and shared."""
    cache = cache or RenderCache()
    text: list[bytes] = []
    om: list[bytes] = []
    for fam in families:
        declared = fam.name + "_total" if fam.type == "counter" else fam.name
        kind = fam.type if fam.type != "unknown" else "untyped"
        help_text = escape_help(fam.help)
        text.append(f"# HELP {declared} {help_text}\n# TYPE {declared} {kind}".encode())
        om.append(f"# TYPE {fam.name} {fam.type}\n# HELP {fam.name} {help_text}".encode())
        body = cache.body(fam)
        if body:
            text.append(body)
            om.append(body)
    cache.prune()
    om.append(b"# EOF\n")
    if text:
        text.append(b"")  # the trailing newline, without copying the body once more
    return b"\n".join(text), b"\n".join(om)


def render_text(families: Iterable[Family]) -> bytes:
    """Text format 0.0.4."""
    return render_both(families)[0]


def render_openmetrics(families: Iterable[Family]) -> bytes:
    """OpenMetrics 1.0.0 (ends with ``# EOF``)."""
    return render_both(families)[1]


def wants_openmetrics(accept: str) -> bool:
    """True when the Accept header asks for OpenMetrics (as Prometheus does when enabled)."""
    return "application/openmetrics-text" in accept
