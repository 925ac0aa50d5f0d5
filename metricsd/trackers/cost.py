"""The cost tracker (SPEC §4.6): what every request and usage record costs, budgets, suggestions.

Consumes ``request`` events (including the request outcomes of finished streams, derived by the
streaming tracker) and ``usage`` events. Each batch is grouped by (model, endpoint, key_id,
provider); a group's rows are priced together with numpy (:mod:`cost_calc`), in exact integer
pUSD, and its totals are added to:

- the Prometheus series (model, endpoint, key_id) and the per-model cost histogram;
- the totals of every key and of all keys (:class:`cost_state.Totals`), which feed the JSON
  views, the 24 h / 7 d windows, the projection and the budgets' calendar periods.

Budgets are checked after every batch for the keys it touched; a level crossed for the first time
in a period appends a ``budget_alert`` to :attr:`CostTracker.alerts` (the WebSocket hub drains
it) and calls every function in :attr:`CostTracker.alert_sinks` (the webhook sender). Nothing
here reads a clock: ``now`` (monotonic) and ``wall`` (Unix) are arguments.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from metricsd.budgets import (
    Budget,
    BudgetError,
    alerts_due,
    apply_update,
    local_day,
    parse_update,
    period_bounds,
    status,
    used_since,
)
from metricsd.config import Config
from metricsd.export.prometheus import Family
from metricsd.persist import capture, restore_into
from metricsd.pricing import load_pricing, to_pico
from metricsd.protocol import Batch
from metricsd.series import OVERFLOW, SeriesRegistry
from metricsd.trackers.base import Providers, group_rows, label_values, take
from metricsd.trackers.cost_calc import GroupCost, Quantities, price_rows
from metricsd.trackers.cost_state import PicoBuckets, Totals, exact_sum
from metricsd.trackers.cost_suggest import PER_TICK, refresh

__all__ = ["ALL_KEYS", "CostTracker"]

ALL_KEYS: Final = "*"
Alert = dict[str, Any]


class CostTracker:
    """See the module docstring."""

    name = "cost"
    event_types = frozenset({"request", "usage"})
    live_category = "cost"

    def __init__(self, config: Config, start: float, wall_start: float) -> None:
        self.config = config
        cost = config.cost
        self.pricing = load_pricing(cost)
        self.tz = ZoneInfo(cost.timezone)
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        bounds = np.array([to_pico(b) for b in config.prometheus.cost_buckets], dtype=np.int64)
        self.series: SeriesRegistry[list[int]] = SeriesRegistry("cost", lambda _k: [0], cap, ttl)
        self.hist: SeriesRegistry[PicoBuckets] = SeriesRegistry(
            "cost_hist", lambda _k: PicoBuckets(bounds), cap, ttl
        )
        self.all = Totals(cap)
        self.keys: dict[str, Totals] = {}
        self.keys_overflowed = 0
        self.unpriced: dict[str, int] = {}
        self.clamped = 0
        self.cache_savings: dict[str, list[int]] = {}  # model → [tokens, regular, cost, premium]
        self.batch_savings = [0, 0, 0]  # requests, regular, billed
        self.budgets: dict[str, Budget] = {}
        self._configure_budgets(cost.budgets)
        self.alerts: deque[Alert] = deque(maxlen=cost.alerts_size)
        self.alerts_sent: dict[str, int] = {"threshold": 0, "exceeded": 0}
        self.alert_sinks: list[Callable[[Alert], None]] = []
        self.on_budget_change: Callable[[], None] | None = None
        self.suggestions: dict[tuple[str, str], dict[str, Any]] = {}
        self.suggested_at: float | None = None
        self._last_suggest = start
        self.dirty: set[str] = set()
        self._pending: list[str] = []
        self.providers = Providers(config.providers.prefixes)
        self.start = start
        self.wall_offset = wall_start - start

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, now: float, wall: float) -> None:
        """Price and record a batch (nothing derived)."""
        self.wall_offset = wall - now
        is_request = batch.type == "request"
        inputs = _counts(batch, "input_tokens" if is_request else "prompt_tokens")
        outputs = _counts(batch, "output_tokens" if is_request else "completion_tokens")
        cached = _counts(batch, "cached_tokens")
        writes = _counts(batch, "cache_write_tokens") if is_request else None
        chars = None if is_request else _counts(batch, "characters")
        zeros = np.zeros(batch.n, dtype=np.int64)
        inputs = zeros if inputs is None else inputs
        outputs = zeros if outputs is None else outputs
        present = [c for c in (inputs, outputs, cached, writes, chars) if c is not None and c.size]
        peak = max((int(c.max()) for c in present), default=0)
        given = None if batch.get("cost_usd") is None else batch.column("cost_usd")
        flags = _flags(batch, "batch")
        streamed = _flags(batch, "streaming") if is_request else None
        if not is_request:
            sync: Any = np.zeros(batch.n, dtype=bool)  # usage records: interactivity unknown
        elif streamed is None and flags is None:
            sync = None  # every row
        else:
            sync = ~(_or(streamed, flags))
        images = None if is_request else batch.get("images")
        models = label_values(batch, "model")
        labels = [
            models,
            label_values(batch, "endpoint"),
            label_values(batch, "key_id"),
            self._providers_of(batch, models),
        ]
        hour, day = int(now // 3600), local_day(wall, self.tz)
        touched: set[str] = set()
        for (model, endpoint, key, provider), rows in group_rows(batch, labels):
            q = Quantities(
                take(inputs, rows),
                take(outputs, rows),
                take(cached, rows),
                take(writes, rows),
                take(chars, rows),
                take(given, rows),
                take(flags, rows),
                take(images, rows),
                peak,
            )
            res = self.pricing.resolve(model)
            includes = self.pricing.input_includes_cached(provider)
            g = price_rows(q, res, includes, self.pricing, model)
            key = self._record(model, endpoint, key, g, q, take(sync, rows), now, hour, day)
            touched.add(key)
        self._check_budgets(touched, wall)

    def _record(
        self,
        model: str,
        endpoint: str,
        key: str,
        g: GroupCost,
        q: Quantities,
        sync: Any,
        now: float,
        hour: int,
        day: int,
    ) -> str:
        count = len(q.input)
        total = int(g.cost.sum())  # int64 only where the bound proved it cannot overflow
        fits = q.peak * count < _INT64  # int64 sums of the counts cannot wrap
        tokens = [
            0 if c is None else (int(c.sum()) if fits else exact_sum(c))
            for c in (q.input, q.output, q.cached, q.cache_write)
        ]
        self.series.get((model, endpoint, key), now, count)[0] += total
        priced = g.cost if g.priced is None else g.cost[g.priced]
        if priced.size:
            self.hist.get((model,), now, count).record(priced, total)
        self.all.add(model, endpoint, total, count, tokens, hour, day)
        key, state = self._key(key)
        state.add(model, endpoint, total, count, tokens, hour, day)
        if g.unpriced:
            name = model if model in self.unpriced or len(self.unpriced) < 1000 else OVERFLOW
            self.unpriced[name] = self.unpriced.get(name, 0) + g.unpriced
        self.clamped += g.clamped
        if g.cached_tokens or g.write_premium:
            saved = self.cache_savings
            name = (
                model if model in saved or len(saved) < self.config.limits.max_series else OVERFLOW
            )
            entry = saved.setdefault(name, [0, 0, 0, 0])
            parts = (g.cached_tokens, g.cache_regular, g.cache_cost, g.write_premium)
            for i, v in enumerate(parts):
                entry[i] += v
        if g.batch_requests:
            for i, v in enumerate((g.batch_requests, g.batch_regular, g.batch_billed)):
                self.batch_savings[i] += v
        if g.has_tokens:
            self._usage(state, model, g, q, sync, now)
        self.dirty.add(key)
        return key

    def _usage(
        self, state: Totals, model: str, g: GroupCost, q: Quantities, sync: Any, now: float
    ) -> None:
        """Day sums of the token mix for the suggestions: one small matrix product per group."""
        ring = state.usage_ring(model)
        if ring is None:
            return
        n = len(q.input)
        tokens = np.ones(n) if g.tokens is None else g.tokens.astype(np.float64)
        long = tokens * (q.input >= self.config.cost.long_prompt_tokens)
        masks = np.vstack([tokens, long, tokens if sync is None else tokens * sync])
        zero = np.zeros(n)
        columns = [
            g.cost,
            g.list_cost,
            g.full,
            zero if g.cached is None else g.cached,
            zero if g.cache_write is None else g.cache_write,
            q.output,
        ]
        sums = masks @ np.column_stack(columns).astype(np.float64)
        counts = masks.sum(axis=1)
        ring.add(
            now,
            [
                counts[0],
                *sums[0].tolist(),
                counts[1],
                sums[1, 2],
                sums[1, 3],
                counts[2],
                sums[2, 0],
            ],
        )

    def _key(self, key: str) -> tuple[str, Totals]:
        """The key's totals; keys beyond ``cost.max_keys`` share the ``__overflow__`` entry."""
        state = self.keys.get(key)
        if state is None:
            if len(self.keys) >= self.config.cost.max_keys:
                self.keys_overflowed += 1
                key = OVERFLOW
                state = self.keys.get(key)
            if state is None:
                state = self.keys[key] = Totals(64)
        return key, state

    def provider_for(self, model: str) -> str:
        return self.providers.of_model(model)

    def _providers_of(self, batch: Batch, models: str | list[str]) -> str | list[str]:
        given = batch.get("provider") if batch.type == "request" else None
        return self.providers.column(given, models, batch.n)

    # --- budgets --------------------------------------------------------------------------

    def _totals_for(self, key_id: str) -> Totals | None:
        return self.all if key_id == ALL_KEYS else self.keys.get(key_id)

    def _used(self, budget: Budget, wall: float) -> tuple[int, float, float | None]:
        first_day, start, resets = period_bounds(budget.period, wall, self.tz)
        totals = self._totals_for(budget.key_id)
        used = used_since(totals.days, totals.total, first_day) if totals is not None else 0
        return used, start, resets

    def _check_budgets(self, touched: set[str], wall: float) -> None:
        if not self.budgets:
            return
        for key_id in [*touched, ALL_KEYS] if touched else []:
            budget = self.budgets.get(key_id)
            if budget is not None:
                used, start, _resets = self._used(budget, wall)
                for alert in alerts_due(budget, used, start, wall):
                    self._emit(alert)

    def _emit(self, alert: Alert) -> None:
        self.alerts.append(alert)
        self.alerts_sent[alert["level"]] += 1
        for sink in self.alert_sinks:
            sink(alert)

    def budget_status(self, key_id: str, wall: float) -> dict[str, Any] | None:
        """The status of SPEC §2 at ``wall`` (periods evaluated now), or None without a budget."""
        budget = self.budgets.get(key_id)
        if budget is None:
            return None
        used, start, resets = self._used(budget, wall)
        return status(budget, used, start, resets)

    def put_budget(self, key_id: str, body: Any, wall: float) -> dict[str, Any]:
        """Create or update a budget from a request body; raises BudgetError on bad input."""
        existing = self.budgets.get(key_id)
        fields = parse_update(body, creating=existing is None)
        if existing is None and len(self.budgets) >= self.config.cost.max_budgets:
            raise BudgetError(f"too many budgets (cost.max_budgets = {len(self.budgets)})")
        self.budgets[key_id] = apply_update(key_id, existing, fields)
        self._check_budgets({key_id}, wall)
        result = self.budget_status(key_id, wall)
        assert result is not None
        self._budgets_changed()
        return result

    def delete_budget(self, key_id: str) -> bool:
        removed = self.budgets.pop(key_id, None) is not None
        if removed:
            self._budgets_changed()
        return removed

    def _budgets_changed(self) -> None:
        """SPEC §7: budget changes are saved at once (the daemon sets the hook)."""
        if self.on_budget_change is not None:
            self.on_budget_change()

    # --- housekeeping and views -----------------------------------------------------------

    def expire(self, now: float) -> None:
        self.series.expire(now)
        self.hist.expire(now)
        pending = self._pending
        if not pending and now - self._last_suggest >= self.config.cost.suggestion_interval:
            self._last_suggest = now
            pending.extend(sorted(self.dirty | {k for k, _t in self.suggestions}))
            self.dirty.clear()
        if pending:
            batch = pending[:PER_TICK]
            del pending[:PER_TICK]
            refresh(self, batch, now)

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        return self.series.overflowed + self.hist.overflowed + self.keys_overflowed

    def families(self, now: float) -> list[Family]:
        from metricsd.trackers.cost_export import cost_families

        return cost_families(self, now)

    # --- state and reload -----------------------------------------------------------------

    #: Data attributes saved by ``state()`` (SPEC §7), budgets and their alert state included.
    PERSIST = (
        "start",
        "wall_offset",
        "series",
        "hist",
        "all",
        "keys",
        "keys_overflowed",
        "unpriced",
        "clamped",
        "cache_savings",
        "batch_savings",
        "budgets",
        "alerts_sent",
        "suggestions",
        "suggested_at",
        "_last_suggest",
    )

    def state(self) -> dict[str, Any]:
        return capture(self, self.PERSIST)

    def restore(self, state: dict[str, Any]) -> None:
        restore_into(self, state)
        # Budgets written in the config file win over saved ones for the same key (their spend
        # and alert state are kept); budgets set over HTTP come back as they were.
        self._configure_budgets(self.config.cost.budgets)

    def reload(self, config: Config) -> None:
        """SIGHUP: prices, timezone and configured budgets from the new config."""
        self.config = config
        self.pricing = load_pricing(config.cost)
        self.tz = ZoneInfo(config.cost.timezone)
        self._configure_budgets(config.cost.budgets)

    def _configure_budgets(self, budgets: Any) -> None:
        for b in budgets:
            self.budgets[b.key] = apply_update(b.key, self.budgets.get(b.key), _fields(b))

    def live(self, now: float, models: frozenset[str]) -> dict[str, Any]:
        """The stream's ``cost`` category; a model filter narrows ``by_model`` (the totals
        and the hourly rate are not kept per model)."""
        from metricsd.trackers.cost_export import stream_view

        view = stream_view(self, now)
        if models:
            view["by_model"] = {m: v for m, v in view["by_model"].items() if m in models}
        return view


def _fields(b: Any) -> dict[str, Any]:
    """A ``[[cost.budgets]]`` entry (already validated by the config) → budget fields."""
    return parse_update(
        {
            "limit_usd": b.limit_usd,
            "period": b.period,
            "limit_type": b.limit_type,
            "alert_threshold": b.alert_threshold,
        },
        creating=True,
    )


_INT64: Final = 1 << 63


def _counts(batch: Batch, name: str) -> Any:
    """An integer column, or None when it is zero for the whole batch (the common case)."""
    value = batch.get(name)
    if value is None or (isinstance(value, (int, float)) and value == 0):
        return None
    return batch.column(name, np.int64)


def _flags(batch: Batch, name: str) -> Any:
    """A boolean column, or None when it is false for the whole batch."""
    value = batch.get(name)
    if value is None or value is False:
        return None
    return batch.column(name, bool)


def _or(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a | b
