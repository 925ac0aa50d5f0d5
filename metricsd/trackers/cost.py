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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

import numpy as np

from metricsd.batch import Batch
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
from metricsd.persist import Reader
from metricsd.pricing import PriceTable, load_pricing, to_pico
from metricsd.series import OVERFLOW, SeriesTable
from metricsd.trackers.base import Ctx, add_rows
from metricsd.trackers.cost_calc import GroupCost, Quantities, price_rows
from metricsd.trackers.cost_state import Totals, exact_sum
from metricsd.trackers.cost_suggest import PER_TICK, refresh

if TYPE_CHECKING:
    from metricsd.fleet import Ledger

__all__ = ["ALL_KEYS", "CostTracker"]

ALL_KEYS: Final = "*"
Alert = dict[str, Any]


class CostTracker:
    """See the module docstring."""

    name = "cost"
    event_types = frozenset({"request", "usage"})
    live_category = "cost"

    def __init__(
        self, config: Config, start: float, wall_start: float, pricing: PriceTable | None = None
    ) -> None:
        self.config = config
        cost = config.cost
        self.pricing = load_pricing(cost) if pricing is None else pricing
        self.tz = ZoneInfo(cost.timezone)
        cap, ttl = config.limits.max_series, config.limits.series_ttl
        self.bounds = np.array([to_pico(b) for b in config.prometheus.cost_buckets], dtype=np.int64)
        self.series = SeriesTable("cost", 3, cap, ttl)
        self.series.add_array("total")
        self.hist = SeriesTable("cost_hist", 1, cap, ttl)
        self.hist.add_array("b", (len(self.bounds) + 1,))
        self.hist.add_array("s")
        self.all = Totals(cap)
        self.keys: dict[str, Totals] = {}
        self.keys_overflowed = 0
        self.unpriced: dict[str, int] = {}
        self.clamped = 0
        self.cache_savings: dict[str, list[int]] = {}  # model → [tokens, regular, cost, premium]
        self.batch_savings = [0, 0, 0]  # requests, regular, billed
        self.budgets: dict[str, Budget] = {}
        #: Fleet budgets (``cost.budget_store``): budgets count every daemon's spend.
        self.fleet: Ledger | None = None
        self._configure_budgets(cost.budgets)
        self.alerts: deque[Alert] = deque(maxlen=cost.alerts_size)
        self.alerts_sent: dict[str, int] = {"threshold": 0, "exceeded": 0}
        self.on_budget_change: Callable[[], None] | None = None
        self.suggestions: dict[tuple[str, str], dict[str, Any]] = {}
        self.suggested_at: float | None = None
        self._last_suggest = start
        #: Keys that spent since their suggestions were last evaluated.
        self.suggest_due: set[str] = set()
        self._pending: list[str] = []
        self.start = start
        self.wall_offset = wall_start - start
        #: Keys whose totals changed since the last freeze, and the frozen copies kept.
        self._changed: set[str] = set()
        self._frozen_keys: dict[str, Totals] = {}
        self.dirty = True

    # --- writes ---------------------------------------------------------------------------

    def apply(self, batch: Batch, ctx: Ctx) -> None:
        """Price and record a batch (nothing derived), and check the budgets it touched."""
        touched = self.apply_additive(batch, ctx)
        if touched:
            self._check_budgets(touched, ctx.wall)

    def apply_ordered(self, batch: Batch, ctx: Ctx) -> None:
        """Nothing of a batch depends on its order here (``--workers``: :meth:`absorb` adds
        up what the workers priced, and checks the budgets)."""

    def apply_additive(self, batch: Batch, ctx: Ctx) -> set[str]:
        """Price and record a batch; returns the keys it touched."""
        if batch.n == 0:
            return set()
        now, wall = ctx.now, ctx.wall
        self.wall_offset = wall - now
        self.dirty = True
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
        groups = batch.groups(("model", "endpoint", "key_id", "provider"))
        hour, day = int(now // 3600), local_day(wall, self.tz)
        touched: set[str] = set()
        parts: list[Any] = [None] if groups.codes is None else groups.parts(batch.n)
        for (model, endpoint, key, provider), rows in zip(groups.keys, parts, strict=True):
            q = Quantities(
                _take(inputs, rows),
                _take(outputs, rows),
                _take(cached, rows),
                _take(writes, rows),
                _take(chars, rows),
                _take(given, rows),
                _take(flags, rows),
                _take(images, rows),
                peak,
            )
            res = self.pricing.resolve(model)
            includes = self.pricing.input_includes_cached(provider)
            g = price_rows(q, res, includes, self.pricing, model)
            key = self._record(model, endpoint, key, g, q, _take(sync, rows), ctx, hour, day)
            touched.add(key)
        return touched

    def absorb(self, state: Any, ctx: Ctx) -> None:
        """Add a worker's :meth:`state` of :meth:`apply_additive` (``--workers``): totals by
        key, model and endpoint, time buckets, histograms, then the budgets of the keys it
        touched are checked as :meth:`apply` checks them. The worker's budgets, alerts and
        suggestions (it keeps none of its own) are not used."""
        r = Reader("cost delta")
        m = r.map(state)
        now, version = ctx.now, ctx.version
        self.wall_offset = ctx.wall - now
        self.series.absorb(m.get("series"), r, now, version)
        self.hist.absorb(m.get("hist"), r, now, version)
        cap = self.config.limits.max_series
        self.all.merge(Totals.restore(m.get("all"), r, "all", cap))
        keys = r.map(m.get("keys"), "keys")
        if len(keys) > self.config.cost.max_keys + 1:
            raise r.fail("more keys than cost.max_keys", "keys")
        touched: set[str] = set()
        for raw, value in keys.items():
            key, totals = self._key(r.str(raw, "keys"))
            totals.merge(Totals.restore(value, r, f"keys.{raw}", 64))
            touched.add(key)
        self.keys_overflowed += r.int(m.get("keys_overflowed"), "keys_overflowed", 0)
        for model, count in r.counts(m.get("unpriced"), "unpriced", 1001).items():
            self._unpriced(model, count)
        self.clamped += r.int(m.get("clamped"), "clamped", 0)
        savings = r.map(m.get("cache_savings"), "cache_savings")
        for model, values in savings.items():
            items = [r.int(v, "cache_savings") for v in r.list(values, "cache_savings", 4)]
            if len(items) != 4:
                raise r.fail("not four amounts", "cache_savings")
            self._savings(model, items)
        batch = r.list(m.get("batch_savings"), "batch_savings", 3)
        if len(batch) != 3:
            raise r.fail("not three amounts", "batch_savings")
        for i, v in enumerate(batch):
            self.batch_savings[i] += r.int(v, "batch_savings", 0)
        self.suggest_due |= touched
        self._changed |= touched
        self.dirty = True
        self._check_budgets(touched, ctx.wall)

    def _record(
        self,
        model: str,
        endpoint: str,
        key: str,
        g: GroupCost,
        q: Quantities,
        sync: Any,
        ctx: Ctx,
        hour: int,
        day: int,
    ) -> str:
        now = ctx.now
        count = len(q.input)
        total = int(g.cost.sum())  # int64 only where the bound proved it cannot overflow
        fits = q.peak * count < _INT64  # int64 sums of the counts cannot wrap
        tokens = [
            0 if c is None else (int(c.sum()) if fits else exact_sum(c))
            for c in (q.input, q.output, q.cached, q.cache_write)
        ]
        key = key or "unknown"
        sid = self.series.ids([(model, endpoint, key)], [count], now, ctx.version)
        arrays = self.series.arrays
        arrays["total"] = add_rows(arrays["total"], sid, np.array([total], dtype=object))
        priced = g.cost if g.priced is None else g.cost[g.priced]
        if priced.size:
            self._hist(model, priced, total, count, ctx)
        self.all.add(model, endpoint, total, count, tokens, hour, day)
        key, state = self._key(key)
        state.add(model, endpoint, total, count, tokens, hour, day)
        if g.unpriced:
            self._unpriced(model, g.unpriced)
        self.clamped += g.clamped
        if g.cached_tokens or g.write_premium:
            self._savings(model, (g.cached_tokens, g.cache_regular, g.cache_cost, g.write_premium))
        if g.batch_requests:
            for i, v in enumerate((g.batch_requests, g.batch_regular, g.batch_billed)):
                self.batch_savings[i] += v
        if g.has_tokens:
            self._usage(state, model, g, q, sync, now)
        self.suggest_due.add(key)
        self._changed.add(key)
        return key

    def _unpriced(self, model: str, count: int) -> None:
        """Requests of a model with no price (at most 1 000 models, then ``__overflow__``)."""
        name = model if model in self.unpriced or len(self.unpriced) < 1000 else OVERFLOW
        self.unpriced[name] = self.unpriced.get(name, 0) + count

    def _savings(self, model: str, parts: Sequence[int]) -> None:
        """Add [cached tokens, their regular cost, their cost, write premium] of a model."""
        saved = self.cache_savings
        name = model if model in saved or len(saved) < self.config.limits.max_series else OVERFLOW
        entry = saved.setdefault(name, [0, 0, 0, 0])
        for i, v in enumerate(parts):
            entry[i] += v

    def _hist(self, model: str, priced: Any, total: int, count: int, ctx: Ctx) -> None:
        """The per-model cost histogram (pUSD values; beyond int64: past every bound)."""
        hid = self.hist.ids([(model,)], [count], ctx.now, ctx.version)
        arrays = self.hist.arrays
        width = len(self.bounds) + 1
        counts = np.zeros(width, dtype=np.int64)
        if priced.dtype == object:
            big = np.array([v >= _INT64 for v in priced], dtype=bool)
            counts[-1] += int(np.count_nonzero(big))
            priced = priced[~big].astype(np.int64)
        counts += np.bincount(np.searchsorted(self.bounds, priced, side="left"), minlength=width)
        arrays["b"] = add_rows(arrays["b"], hid, counts.reshape(1, -1))
        arrays["s"] = add_rows(arrays["s"], hid, np.array([total], dtype=object))

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

    # --- budgets --------------------------------------------------------------------------

    def _totals_for(self, key_id: str) -> Totals | None:
        return self.all if key_id == ALL_KEYS else self.keys.get(key_id)

    def _used(self, budget: Budget, wall: float) -> tuple[int, float, float | None]:
        local, first_day, start, resets = self._local_used(budget, wall)
        if self.fleet is not None:
            return self.fleet.adjust(budget, local, first_day), start, resets
        return local, start, resets

    def _local_used(
        self, budget: Budget, wall: float
    ) -> tuple[int, int | None, float, float | None]:
        first_day, start, resets = period_bounds(budget.period, wall, self.tz)
        totals = self._totals_for(budget.key_id)
        used = used_since(totals.days, totals.total, first_day) if totals is not None else 0
        return used, first_day, start, resets

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

    def budget_status(self, key_id: str, wall: float) -> dict[str, Any] | None:
        """The status of SPEC §2 at ``wall`` (periods evaluated now), or None without a budget."""
        budget = self.budgets.get(key_id)
        if budget is None:
            return None
        if self.fleet is None:
            used, start, resets = self._used(budget, wall)
            return status(budget, used, start, resets)
        local, first_day, start, resets = self._local_used(budget, wall)
        out = status(budget, self.fleet.adjust(budget, local, first_day), start, resets)
        out.update(self.fleet.fields(wall, local))
        return out

    def put_budget(self, key_id: str, body: Any, wall: float) -> dict[str, Any]:
        """Create or update a budget from a request body; raises BudgetError on bad input."""
        existing = self.budgets.get(key_id)
        fields = parse_update(body, creating=existing is None)
        if existing is None and len(self.budgets) >= self.config.cost.max_budgets:
            raise BudgetError(f"too many budgets (cost.max_budgets = {len(self.budgets)})")
        self.budgets[key_id] = apply_update(key_id, existing, fields)
        if self.fleet is not None:
            self.fleet.local_change(key_id, self.budgets[key_id])
        self._check_budgets({key_id}, wall)
        result = self.budget_status(key_id, wall)
        assert result is not None
        self._budgets_changed()
        return result

    def delete_budget(self, key_id: str) -> bool:
        removed = self.budgets.pop(key_id, None) is not None
        if removed:
            if self.fleet is not None:
                self.fleet.local_change(key_id, None)
            self._budgets_changed()
        return removed

    def _budgets_changed(self) -> None:
        """SPEC §8: a budget change schedules a save (the daemon sets the hook)."""
        self.dirty = True
        if self.on_budget_change is not None:
            self.on_budget_change()

    # --- housekeeping and views -----------------------------------------------------------

    def expire(self, ctx: Ctx) -> None:
        now = ctx.now
        if self.fleet is not None:
            self.fleet.tick(self, ctx.wall, self._changed)
        for table in (self.series, self.hist):
            if table.expire(now):
                self.dirty = True
        pending = self._pending
        if not pending and now - self._last_suggest >= self.config.cost.suggestion_interval:
            self._last_suggest = now
            pending.extend(sorted(self.suggest_due | {k for k, _t in self.suggestions}))
            self.suggest_due.clear()
        if pending:
            batch = pending[:PER_TICK]
            del pending[:PER_TICK]
            refresh(self, batch, now)
            self.dirty = True

    def series_count(self) -> int:
        return len(self.series)

    def series_overflow(self) -> int:
        return self.series.overflowed + self.hist.overflowed + self.keys_overflowed

    def freeze(self, now: float) -> Any:
        """The tracker's data as a snapshot sees it: totals copied only for keys that moved."""
        from metricsd.trackers.cost_view import CostView

        frozen = self._frozen_keys
        for key in self._changed:
            state = self.keys.get(key)
            if state is not None:
                frozen[key] = state.copy()
        for key in [k for k in frozen if k not in self.keys]:
            del frozen[key]
        self._changed.clear()
        return CostView.of(self, dict(frozen))

    # --- state and reload -----------------------------------------------------------------

    def state(self, now: float) -> dict[str, Any]:
        """SPEC §7: totals, budgets and their alert state, suggestions (plain values)."""
        return {
            "start": self.start,
            "wall_offset": self.wall_offset,
            "series": self.series.state()[0],
            "hist": self.hist.state()[0],
            "all": self.all.state(),
            "keys": {k: t.state() for k, t in self.keys.items()},
            "keys_overflowed": self.keys_overflowed,
            "unpriced": dict(self.unpriced),
            "clamped": self.clamped,
            "cache_savings": {m: list(v) for m, v in self.cache_savings.items()},
            "batch_savings": list(self.batch_savings),
            "budgets": [_budget_state(b) for b in self.budgets.values()],
            "alerts_sent": dict(self.alerts_sent),
            "suggestions": [[k, t, dict(v)] for (k, t), v in self.suggestions.items()],
            "suggested_at": self.suggested_at,
            "last_suggest": self._last_suggest,
        }

    def restore(self, state: Any, now: float) -> None:
        r = Reader("cost")
        m = r.map(state)
        self.start = r.float(m.get("start"), "start")
        self.wall_offset = r.float(m.get("wall_offset"), "wall_offset")
        self.series.restore(m.get("series"), r, now)
        self.hist.restore(m.get("hist"), r, now)
        cap = self.config.limits.max_series
        self.all = Totals.restore(m.get("all"), r, "all", cap)
        keys = r.map(m.get("keys"), "keys")
        if len(keys) > self.config.cost.max_keys + 1:
            raise r.fail("more keys than cost.max_keys", "keys")
        self.keys = {
            r.str(k, "keys"): Totals.restore(v, r, f"keys.{k}", 64) for k, v in keys.items()
        }
        self.keys_overflowed = r.int(m.get("keys_overflowed"), "keys_overflowed", 0)
        self.unpriced = r.counts(m.get("unpriced"), "unpriced", 1001)
        self.clamped = r.int(m.get("clamped"), "clamped", 0)
        savings = r.map(m.get("cache_savings"), "cache_savings")
        self.cache_savings = {}
        for model, values in savings.items():
            items = r.list(values, f"cache_savings.{model}", 4)
            if len(items) != 4:
                raise r.fail("not four amounts", "cache_savings")
            self.cache_savings[r.str(model, "cache_savings")] = [
                r.int(v, "cache_savings") for v in items
            ]
        batch = r.list(m.get("batch_savings"), "batch_savings", 3)
        if len(batch) != 3:
            raise r.fail("not three amounts", "batch_savings")
        self.batch_savings = [r.int(v, "batch_savings", 0) for v in batch]
        self.budgets = {}
        for raw in r.list(m.get("budgets"), "budgets", self.config.cost.max_budgets + 1000):
            budget = _budget_load(raw, r)
            self.budgets[budget.key_id] = budget
        self.alerts_sent = {"threshold": 0, "exceeded": 0}
        self.alerts_sent.update(r.counts(m.get("alerts_sent"), "alerts_sent", 2))
        self.suggestions = {}
        for raw in r.list(m.get("suggestions"), "suggestions", 1 << 20):
            item = r.list(raw, "suggestions[]", 3)
            if len(item) != 3:
                raise r.fail("not (key, type, suggestion)", "suggestions")
            body = r.map(item[2], "suggestions[]")
            _check_json(body, r, "suggestions[]")
            self.suggestions[(r.str(item[0], "key"), r.str(item[1], "type"))] = body
        self.suggested_at = r.opt_float(m.get("suggested_at"), "suggested_at")
        self._last_suggest = r.float(m.get("last_suggest"), "last_suggest")
        self._changed = set(self.keys)
        self.dirty = True
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
            if self.fleet is not None:
                self.fleet.local_change(b.key, self.budgets[b.key])


def _budget_state(b: Budget) -> dict[str, Any]:
    return {
        "key_id": b.key_id,
        "limit": b.limit,
        "period": b.period,
        "limit_type": b.limit_type,
        "threshold": str(b.threshold),
        "alert_period": b.alert_period,
        "alerted": sorted(b.alerted),
    }


def _budget_load(raw: Any, r: Any) -> Budget:
    from decimal import Decimal, InvalidOperation

    from metricsd.budgets import LIMIT_TYPES, PERIODS

    m = r.map(raw, "budgets[]")
    period = r.str(m.get("period"), "period")
    limit_type = r.str(m.get("limit_type"), "limit_type")
    if period not in PERIODS or limit_type not in LIMIT_TYPES:
        raise r.fail("an unknown period or limit type", "budgets")
    try:
        threshold = Decimal(r.str(m.get("threshold"), "threshold", 64))
    except InvalidOperation:
        raise r.fail("threshold is not a number", "budgets") from None
    if not threshold.is_finite() or not 0 <= threshold <= 1:
        raise r.fail("threshold out of range", "budgets")
    alerted = {r.str(v, "alerted") for v in r.list(m.get("alerted"), "alerted", 2)}
    if not alerted <= {"threshold", "exceeded"}:
        raise r.fail("an unknown alert level", "budgets")
    return Budget(
        r.str(m.get("key_id"), "key_id", 64),
        r.int(m.get("limit"), "limit", 0),
        period,
        limit_type,
        threshold,
        r.opt_float(m.get("alert_period"), "alert_period"),
        alerted,
    )


def _check_json(value: Any, r: Any, path: str, depth: int = 0) -> None:
    """A suggestion is plain JSON: maps, lists, strings, numbers, booleans, null."""
    if depth > 8:
        raise r.fail("nested too deep", path)
    if isinstance(value, dict):
        for k, v in value.items():
            r.str(k, path)
            _check_json(v, r, path, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, r, path, depth + 1)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise r.fail("not plain JSON", path)


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


def _take(column: Any, rows: Any) -> Any:
    """Rows of a column (array or list), or the scalar itself for a constant."""
    if rows is None or column is None:
        return column
    if isinstance(column, np.ndarray):
        return column[rows]
    if isinstance(column, list):
        return [column[i] for i in rows.tolist()]
    if hasattr(column, "codes"):
        return [column.values[c] for c in column.codes[rows].tolist()]
    return column


def _or(a: Any, b: Any) -> Any:
    if a is None:
        return b
    return a if b is None else a | b
