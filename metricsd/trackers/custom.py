"""Custom metrics from ``metric`` events (SPEC §1.3), exported as-is.

``counter`` values add up (exported as ``<name>_total``; a name that already ends in ``_total``
is not suffixed again), ``gauge`` keeps the latest value, ``histogram`` observations go into
exact buckets (``prometheus.custom_buckets``). A name keeps the kind it first arrived with; a
later event with another kind, or a name that a built-in family already uses (``llm_requests``,
``metricsd_…``), is refused and counted. Names and label sets are both bounded by
``limits.max_series`` (SPEC §8): a name beyond the cap is refused (``too_many_names``), a label
set beyond it folds into ``__overflow__``; names and series idle for ``limits.series_ttl`` are
dropped, so their strings are freed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.batch import Batch
from metricsd.config import Config
from metricsd.export.prometheus import Family, histogram_samples, render_labels
from metricsd.series import SeriesTable, TableView
from metricsd.trackers.base import Ctx

__all__ = ["CustomTracker", "CustomView"]

#: Prefixes of metricsd's own families: a custom metric may not take their place.
RESERVED_PREFIXES: Final = ("metricsd_", "process_", "slo:")
HELP: Final = "Custom metric from metric events."
KINDS: Final = ("counter", "gauge", "histogram")
REASONS: Final = ("reserved_name", "kind_conflict", "too_many_names")


class CustomTracker:
    """See the module docstring."""

    name = "custom"
    event_types = frozenset({"metric"})

    def __init__(self, config: Config) -> None:
        self.config = config
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        self.kinds = SeriesTable("custom_names", 1, cap, ttl)
        self.kinds.add_array("kind", (), np.int8, -1)
        self.values = SeriesTable("custom", 2, cap, ttl)
        self.values.add_array("value", (), np.float64, 0.0)
        self.values.add_array("b", (len(config.prometheus.custom_buckets) + 1,))
        self.values.add_array("s", (), np.float64, 0.0)
        self.refused: Counter[str] = Counter()
        self.reserved: frozenset[str] = frozenset()  # built-in family names, set by the daemon
        self._bounds = np.asarray(config.prometheus.custom_buckets, dtype=np.float64)
        self.dirty = True

    def apply(self, batch: Batch, ctx: Ctx) -> None:
        if batch.n == 0:
            return
        self.dirty = True
        now, version = ctx.now, ctx.version
        names = batch.values("name")
        kinds = batch.values("kind")
        values = batch.column("value").tolist()
        labels = batch.values("labels")
        table, arrays = self.values, self.values.arrays
        for name, kind, value, pairs in zip(names, kinds, values, labels, strict=True):
            if kind == "counter" and name.endswith("_total") and len(name) > 6:
                name = name[:-6]  # exported as <name>_total, never <name>_total_total
            if name.startswith(RESERVED_PREFIXES) or name.removesuffix("_total") in self.reserved:
                self.refused["reserved_name"] += 1
                continue
            # A gauge or histogram "x_total" and a counter "x" would both expose x_total.
            if kind == "counter":
                clash = self._known(name + "_total") is not None
            else:
                clash = name.endswith("_total") and self._known(name[:-6]) == "counter"
            if clash:
                self.refused["kind_conflict"] += 1
                continue
            known = self._kind(name, kind, ctx)
            if known is None:
                continue
            key = (name, render_labels(tuple(sorted((pairs or {}).items()))))
            sid = table.id(key, now, version)
            arrays = table.arrays
            if kind == "counter":
                arrays["value"][sid] += value
            elif kind == "gauge":
                arrays["value"][sid] = value
            else:
                slot = int(np.searchsorted(self._bounds, value, side="left"))
                arrays["b"][sid, slot] += 1
                arrays["s"][sid] += value

    def _known(self, name: str) -> str | None:
        """The kind a name was first seen with (None: not seen, or expired)."""
        sid = self.kinds.get((name,))
        return None if sid is None else KINDS[int(self.kinds.arrays["kind"][sid])]

    def _kind(self, name: str, kind: str, ctx: Ctx) -> str | None:
        """The name's kind, fixed by its first event; None when the event is refused."""
        table = self.kinds
        sid = table.get((name,))
        if sid is None:
            if len(table) >= table.max_series:
                self.refused["too_many_names"] += 1
                return None
            sid = table.id((name,), ctx.now, ctx.version)
            table.arrays["kind"][sid] = KINDS.index(kind)
            return kind
        table.last_seen[sid] = ctx.now
        known = KINDS[int(table.arrays["kind"][sid])]
        if known != kind:
            self.refused["kind_conflict"] += 1
            return None
        return known

    def expire(self, ctx: Ctx) -> None:
        if self.values.expire(ctx.now) or self.kinds.expire(ctx.now):
            self.dirty = True

    def series_count(self) -> int:
        return len(self.values)

    def series_overflow(self) -> int:
        return self.values.overflowed

    def state(self, now: float) -> dict[str, Any]:
        return {
            "kinds": self.kinds.state()[0],
            "values": self.values.state()[0],
            "refused": dict(self.refused),
        }

    def restore(self, state: Any, now: float) -> None:
        from metricsd.persist import Reader

        r = Reader("custom")
        m = r.map(state)
        self.kinds.restore(m.get("kinds"), r, now)
        kinds = self.kinds.arrays["kind"]
        if np.any((kinds < -1) | (kinds >= len(KINDS))):
            raise r.fail("an unknown metric kind", "kinds")
        self.values.restore(m.get("values"), r, now)
        self.refused = Counter(r.counts(m.get("refused"), "refused", len(REASONS)))
        self.dirty = True

    def freeze(self, now: float) -> CustomView:
        kinds = {k[0]: KINDS[int(self.kinds.arrays["kind"][i])] for k, i in self.kinds.items()}
        return CustomView(
            self.config,
            self.values.view(),
            {k: v.copy() for k, v in self.values.arrays.items()},
            kinds,
            dict(self.refused),
        )


@dataclass(frozen=True, slots=True)
class CustomView:
    config: Config
    values: TableView
    arrays: dict[str, npt.NDArray[Any]]
    kinds: dict[str, str]
    refused: dict[str, int]

    def families(self, now: float) -> list[Family]:
        out: dict[str, Family] = {}
        bounds = self.config.prometheus.custom_buckets
        a = self.arrays
        for (name, pairs), sid in self.values.items():
            kind = self.kinds.get(name)
            if kind is None or name.startswith("__"):
                continue  # the overflow series has no kind: its events are counted, not shown
            family = out.get(name)
            if family is None:
                family = out[name] = Family(name, kind, HELP)
            if kind == "counter":
                family.counter(float(a["value"][sid]), pairs)
            elif kind == "gauge":
                family.add(float(a["value"][sid]), pairs)
            else:
                cumulative = np.cumsum(a["b"][sid]).tolist()
                family.samples.extend(
                    histogram_samples(pairs, bounds, cumulative, float(a["s"][sid]))
                )
        refused = Family(
            "metricsd_custom_refused", "counter", "Custom metric events refused, by reason."
        )
        for reason in REASONS:
            refused.counter(self.refused.get(reason, 0), (("reason", reason),))
        return [*(out[k] for k in sorted(out)), refused]
