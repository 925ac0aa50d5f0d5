"""Custom metrics from ``metric`` events (SPEC §1.3), exported as-is.

``counter`` values add up (exported as ``<name>_total``; a name that already ends in ``_total``
is not suffixed again), ``gauge`` keeps the latest value,
``histogram`` observations go into exact buckets (``prometheus.custom_buckets``). A name keeps
the kind it first arrived with; a later event with another kind, or a name that a built-in
family already uses (``llm_requests``, ``metricsd_…``), is refused and counted. Label sets
across all names are capped by ``limits.max_series`` like every tracker.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from metricsd.config import Config
from metricsd.export.prometheus import Family, render_labels
from metricsd.hist import Buckets
from metricsd.persist import capture, restore_into
from metricsd.protocol import Batch
from metricsd.series import SeriesRegistry

__all__ = ["CustomTracker"]

#: Prefixes of metricsd's own families: a custom metric may not take their place.
RESERVED_PREFIXES = ("metricsd_", "process_", "slo:")
HELP = "Custom metric from metric events."


class CustomTracker:
    """See the module docstring."""

    name = "custom"
    event_types = frozenset({"metric"})

    def __init__(self, config: Config) -> None:
        self.config = config
        self.kinds: dict[str, str] = {}
        self.values: SeriesRegistry[list[Any]] = SeriesRegistry(
            "custom", _new_value, config.limits.max_series, config.limits.series_ttl
        )
        self.refused: Counter[str] = Counter()
        self.reserved: frozenset[str] = frozenset()  # built-in family names, set by the daemon

    def apply(self, batch: Batch, now: float, wall: float) -> None:
        names = batch.values("name")
        kinds = batch.values("kind")
        values = batch.column("value").tolist()
        labels = batch.values("labels")
        bounds = self.config.prometheus.custom_buckets
        for name, kind, value, pairs in zip(names, kinds, values, labels, strict=True):
            if kind == "counter" and name.endswith("_total") and len(name) > 6:
                name = name[:-6]  # exported as <name>_total, never <name>_total_total
            if name.startswith(RESERVED_PREFIXES) or name.removesuffix("_total") in self.reserved:
                self.refused["reserved_name"] += 1
                continue
            # A gauge or histogram "x_total" and a counter "x" would both expose x_total.
            if kind == "counter":
                clash = name + "_total" in self.kinds
            else:
                clash = name.endswith("_total") and self.kinds.get(name[:-6]) == "counter"
            if clash or self.kinds.setdefault(name, kind) != kind:
                self.refused["kind_conflict"] += 1
                continue
            key = (name, render_labels(tuple(sorted((pairs or {}).items()))))
            slot = self.values.get(key, now)
            if kind == "counter":
                slot[0] = (slot[0] or 0.0) + value
            elif kind == "gauge":
                slot[0] = value
            else:
                if slot[0] is None:
                    slot[0] = Buckets(bounds)
                slot[0].record_array(np.array([value]))

    def expire(self, now: float) -> None:
        self.values.expire(now)

    def series_count(self) -> int:
        return len(self.values)

    def series_overflow(self) -> int:
        return self.values.overflowed

    def families(self, now: float) -> list[Family]:
        out: dict[str, Family] = {}
        bounds = self.config.prometheus.custom_buckets
        for (name, pairs), slot in sorted(self.values.items()):
            if slot[0] is None or name.startswith("__"):
                continue  # the overflow series has no kind: its events are counted, not shown
            kind = self.kinds.get(name, "gauge")
            family = out.get(name)
            if family is None:
                family = out[name] = Family(name, kind, HELP)
            if kind == "counter":
                family.counter(slot[0], pairs)
            elif kind == "gauge":
                family.add(slot[0], pairs)
            else:
                family.histogram(pairs, bounds, slot[0].cumulative(), slot[0].sum)
        refused = Family(
            "metricsd_custom_refused", "counter", "Custom metric events refused, by reason."
        )
        for reason in ("reserved_name", "kind_conflict"):
            refused.counter(self.refused[reason], (("reason", reason),))
        return [*out.values(), refused]

    PERSIST = ("kinds", "values", "refused")

    def state(self) -> dict[str, Any]:
        return capture(self, self.PERSIST)

    def restore(self, state: dict[str, Any]) -> None:
        restore_into(self, state)


def _new_value(_key: tuple[str, ...]) -> list[Any]:
    return [None]
