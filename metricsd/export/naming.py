"""OpenTelemetry names for metricsd's families, and their Prometheus translation.

metricsd's canonical families (SPEC §3.1, ``llm_*`` with labels ``provider``, ``endpoint``,
``model``) map onto OpenTelemetry instruments: the GenAI semantic-convention instrument where one
measures the same thing, a ``metricsd.``-prefixed name otherwise. The OTLP exporter
(:mod:`metricsd.export.otlp`) pushes those names; with ``prometheus.naming = "otel"`` the text
exposition serves their Prometheus translation instead of the canonical names.

Semantic-convention version: the GenAI conventions as of semantic-conventions v1.37.0 and later
(``gen_ai.provider.name``, which replaced ``gen_ai.system`` in v1.37.0), since maintained in the
separate GenAI conventions repository. See docs/otel.md for the table and the reasons.

The Prometheus translation follows the OpenTelemetry "Prometheus and OpenMetrics compatibility"
rules as the OpenTelemetry Collector's Prometheus exporter applies them: characters outside
``[a-zA-Z0-9_:]`` become ``_`` (label names: outside ``[a-zA-Z0-9_]``), the unit adds a suffix
(``s`` → ``_seconds``, ``By`` → ``_bytes``, ``1`` on a gauge → ``_ratio``, ``X/Y`` → ``_X_per_Y``,
annotations in braces add nothing) unless the name already ends with it, and counters end in
``_total`` (added, as for every counter, by the renderer).

Everything here is pure: no OpenTelemetry import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from metricsd.export.prometheus import Family

__all__ = [
    "GENAI_SEMCONV_VERSION",
    "MAPPING",
    "Instrument",
    "attribute_pairs",
    "instrument_for",
    "parse_labels",
    "prometheus_label",
    "prometheus_name",
    "translate_families",
]

#: The semantic-conventions release whose GenAI names metricsd follows (earliest that fits).
GENAI_SEMCONV_VERSION: Final = "1.37.0"

#: Label → attribute for every mapped family unless the family overrides it.
COMMON_ATTRIBUTES: Final[Mapping[str, str]] = {
    "provider": "gen_ai.provider.name",
    "model": "gen_ai.request.model",
    "endpoint": "metricsd.endpoint",
    "key_id": "metricsd.key_id",
    "error_type": "error.type",
}


@dataclass(frozen=True, slots=True)
class Instrument:
    """The OpenTelemetry instrument a family is exported as.

    ``kind``: ``counter`` (monotonic cumulative sum), ``gauge`` or ``histogram`` (explicit
    buckets). ``attributes`` maps the family's label names to attribute names; a label not in it
    keeps its name (self-metrics) or gets a ``metricsd.`` prefix (mapped families).
    ``semconv``: the name is a GenAI semantic-convention instrument. ``mapped``: False for
    metricsd's self-metrics, whose labels keep their names.
    """

    name: str
    kind: str
    unit: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    semconv: bool = False
    mapped: bool = True

    def attribute(self, label: str) -> str:
        """The attribute name of a label (``le`` and ``quantile`` stay: they are not labels of
        a series but of a bucket or quantile)."""
        found = self.attributes.get(label)
        if found is not None:
            return found
        if not self.mapped or label in ("le", "quantile"):
            return label
        return f"metricsd.{label}"


def _inst(name: str, kind: str, unit: str = "", semconv: bool = False, **labels: str) -> Instrument:
    return Instrument(name, kind, unit, {**COMMON_ATTRIBUTES, **labels}, semconv)


_STATUS = "http.response.status_code"

#: Canonical family (base name, as in :class:`Family`) → instrument.
MAPPING: Final[Mapping[str, Instrument]] = {
    # Requests (SPEC §3.1).
    "llm_requests": _inst("metricsd.llm.requests", "counter", "{request}", status=_STATUS),
    "llm_request_duration_seconds": _inst(
        "gen_ai.client.operation.duration", "histogram", "s", semconv=True
    ),
    "llm_tokens": _inst("metricsd.llm.tokens", "counter", "{token}", type="gen_ai.token.type"),
    "llm_request_tokens": _inst(
        "gen_ai.client.token.usage", "histogram", "{token}", semconv=True, type="gen_ai.token.type"
    ),
    "llm_request_cost_usd": _inst("metricsd.llm.request.cost_usd", "histogram", "{USD}"),
    "llm_finish_reason": _inst(
        "metricsd.llm.finish_reason",
        "counter",
        "{request}",
        finish_reason="metricsd.finish_reason",
    ),
    "llm_errors": _inst("metricsd.llm.errors", "counter", "{error}", status=_STATUS),
    "llm_queue_depth": _inst("metricsd.llm.queue.depth", "gauge", "{request}"),
    "llm_queue_wait_seconds": _inst("metricsd.llm.queue.wait.duration", "histogram", "s"),
    "llm_cache_lookups": _inst(
        "metricsd.llm.cache.lookups", "counter", "{lookup}", result="metricsd.cache.result"
    ),
    "llm_cache_tokens": _inst(
        "metricsd.llm.cache.tokens", "counter", "{token}", type="metricsd.cache.token.type"
    ),
    # Streaming.
    "llm_time_to_first_token_seconds": _inst(
        "gen_ai.server.time_to_first_token", "histogram", "s", semconv=True
    ),
    "llm_inter_token_latency_seconds": _inst(
        "gen_ai.client.operation.time_per_output_chunk", "histogram", "s", semconv=True
    ),
    "llm_time_per_output_token_seconds": _inst(
        "gen_ai.server.time_per_output_token", "histogram", "s", semconv=True
    ),
    "llm_stream_output_tokens_per_second": _inst(
        "metricsd.llm.stream.output_tokens_per_second", "histogram", "{token}/s"
    ),
    "llm_streams": _inst(
        "metricsd.llm.streams", "counter", "{stream}", status="metricsd.stream.status"
    ),
    "llm_streams_active": _inst("metricsd.llm.streams.active", "gauge", "{stream}"),
    "llm_stream_stalls": _inst("metricsd.llm.stream.stalls", "counter", "{stall}"),
    "llm_stream_backpressure": _inst("metricsd.llm.stream.backpressure", "counter", "{event}"),
    "llm_stream_tokens": _inst("metricsd.llm.stream.tokens", "counter", "{token}"),
    "llm_stream_bytes": _inst("metricsd.llm.stream.size", "counter", "By"),
    # Errors and SLOs.
    "llm_slo_objective": _inst("metricsd.slo.objective", "gauge", "1", slo="metricsd.slo.name"),
    "llm_slo_burn_rate": _inst(
        "metricsd.slo.burn_rate",
        "gauge",
        "1",
        slo="metricsd.slo.name",
        window="metricsd.slo.window",
    ),
    "llm_slo_error_budget_remaining_ratio": _inst(
        "metricsd.slo.error_budget.remaining", "gauge", "1", slo="metricsd.slo.name"
    ),
    "llm_error_patterns": _inst("metricsd.llm.error.patterns", "gauge", "{pattern}"),
    "llm_error_bursts": _inst("metricsd.llm.error.bursts", "counter", "{burst}"),
    # Cost.
    "llm_cost_usd": _inst("metricsd.llm.cost_usd", "counter", "{USD}"),
    "llm_budget_limit_usd": _inst("metricsd.budget.limit_usd", "gauge", "{USD}"),
    "llm_budget_used_usd": _inst("metricsd.budget.used_usd", "gauge", "{USD}"),
    "llm_budget_exceeded": _inst("metricsd.budget.exceeded", "gauge"),
    "llm_unpriced_requests": _inst("metricsd.llm.unpriced_requests", "counter", "{request}"),
}

_KINDS: Final = {"counter": "counter", "gauge": "gauge", "histogram": "histogram"}
_SELF_UNITS: Final = (("_seconds", "s"), ("_bytes", "By"))


def instrument_for(name: str, family_type: str) -> Instrument | None:
    """The instrument of a family, or None when the family has no OpenTelemetry form.

    ``llm_*`` families come from :data:`MAPPING`. metricsd's own ``metricsd_*`` families become
    ``metricsd.<rest>`` (a ``_seconds``/``_bytes`` suffix becomes the unit) with their label
    names unchanged, so their Prometheus translation is their canonical name. The seed-compatible
    and Sloth families, summaries and the process collector have none: they exist for
    dashboards that query those exact Prometheus names.
    """
    found = MAPPING.get(name)
    if found is not None:
        return found if _KINDS.get(family_type) == found.kind else None
    kind = _KINDS.get(family_type)
    if kind is None or not name.startswith("metricsd_"):
        return None
    rest, unit = name[len("metricsd_") :], ""
    for suffix, suffix_unit in _SELF_UNITS:
        if rest.endswith(suffix) and len(rest) > len(suffix):
            rest, unit = rest[: -len(suffix)], suffix_unit
            break
    return Instrument(f"metricsd.{rest}", kind, unit, {}, mapped=False)


# --- the Prometheus translation ---------------------------------------------------------------

_UNIT_WORDS: Final = {
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "min": "minutes",
    "h": "hours",
    "d": "days",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "%": "percent",
}
_PER_WORDS: Final = {"s": "second", "min": "minute", "h": "hour", "d": "day"}
_BAD_NAME: Final = re.compile(r"[^a-zA-Z0-9_:]+")
_BAD_LABEL: Final = re.compile(r"[^a-zA-Z0-9_]+")


def _unit_word(unit: str) -> str:
    return "" if unit.startswith("{") else _UNIT_WORDS.get(unit, unit)


def unit_suffix(unit: str, kind: str) -> str:
    """The name suffix a unit adds (without the leading ``_``); ``""`` for none."""
    if not unit:
        return ""
    if unit == "1":
        return "ratio" if kind == "gauge" else ""
    main, slash, per = unit.partition("/")
    words = [_unit_word(main)] if main else []
    if slash and per:
        words.append("per_" + _PER_WORDS.get(per, _unit_word(per)))
    return _BAD_LABEL.sub("_", "_".join(w for w in words if w)).strip("_")


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus base name of an OpenTelemetry instrument (counters: without ``_total``,
    which the renderer appends to every counter sample)."""
    base = _BAD_NAME.sub("_", name).strip("_")
    if kind == "counter" and base.endswith("_total"):
        base = base[: -len("_total")]
    suffix = unit_suffix(unit, kind)
    if suffix and not base.endswith("_" + suffix):
        base = f"{base}_{suffix}"
    if base[:1].isdigit():
        base = "_" + base
    return base


def prometheus_label(attribute: str) -> str:
    """An attribute name as a Prometheus label name (``gen_ai.request.model`` →
    ``gen_ai_request_model``)."""
    label = _BAD_LABEL.sub("_", attribute)
    return "key_" + label if label[:1].isdigit() else label


def parse_labels(rendered: str) -> list[tuple[str, str]]:
    """``{a="x",b="y"}`` (as :func:`~metricsd.export.prometheus.render_labels` writes it) →
    ``[(a, x), (b, y)]`` with the values unescaped."""
    return [(k, _unescape(v)) for k, v in _split_labels(rendered)]


def _split_labels(rendered: str) -> list[tuple[str, str]]:
    """Label names and their still-escaped values."""
    out: list[tuple[str, str]] = []
    if not rendered:
        return out
    i, end = 1, len(rendered) - 1  # inside the braces
    while i < end:
        eq = rendered.index("=", i)
        name = rendered[i:eq]
        j = eq + 2  # past '="'
        start = j
        while rendered[j] != '"':
            j += 2 if rendered[j] == "\\" else 1
        out.append((name, rendered[start:j]))
        i = j + 2  # past '",' (or '"}' at the end)
    return out


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append("\n" if nxt == "n" else nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def attribute_pairs(instrument: Instrument, rendered: str) -> list[tuple[str, str]]:
    """The (attribute name, value) pairs of one sample's rendered labels (``le`` and
    ``quantile`` are kept as they are: they are not attributes)."""
    return [(instrument.attribute(k), v) for k, v in parse_labels(rendered)]


class _Relabel:
    """Rewrites rendered label strings for one instrument; memoised (series repeat each tick)."""

    MAX_CACHED = 100_000

    def __init__(self, instrument: Instrument) -> None:
        self.instrument = instrument
        self.cache: dict[str, str] = {}

    def __call__(self, rendered: str) -> str:
        if "\\" not in rendered:
            # Without escapes, '",' only ever ends a value, so a trailing ``le``/``quantile``
            # pair splits off exactly: the series part is rewritten once (cached), and the
            # bucket strings, 16 per series and new each tick, are not cached at all.
            cut = rendered.rfind('",')
            if cut != -1 and rendered.startswith(('le="', 'quantile="'), cut + 2):
                head = self(rendered[: cut + 1] + "}")
                return head[:-1] + rendered[cut + 1 :]
        found = self.cache.get(rendered)
        if found is not None:
            return found
        pairs = _split_labels(rendered)
        label = self.instrument.attribute
        body = ",".join(f'{prometheus_label(label(k))}="{v}"' for k, v in pairs)
        out = "{" + body + "}" if pairs else ""
        if len(self.cache) >= self.MAX_CACHED:
            self.cache.clear()
        self.cache[rendered] = out
        return out


_RELABELS: dict[str, _Relabel] = {}


def _relabel(family_name: str, instrument: Instrument) -> _Relabel:
    found = _RELABELS.get(family_name)
    if found is None or found.instrument is not instrument:
        found = _RELABELS[family_name] = _Relabel(instrument)
    return found


def translate_families(families: Iterable[Family]) -> list[Family]:
    """``prometheus.naming = "otel"``: each mapped family under the Prometheus translation of its
    OpenTelemetry name and attribute names; the others (seed-compatible, Sloth, process) as
    they are. Values and label values are unchanged."""
    out: list[Family] = []
    for fam in families:
        instrument = instrument_for(fam.name, fam.type)
        if instrument is None or not instrument.mapped:
            out.append(fam)  # self-metrics: their translation is their canonical name
            continue
        relabel = _relabel(fam.name, instrument)
        out.append(
            Family(
                prometheus_name(instrument.name, instrument.unit, instrument.kind),
                fam.type,
                fam.help,
                [(suffix, relabel(labels), value) for suffix, labels, value in fam.all_samples()],
            )
        )
    return out
