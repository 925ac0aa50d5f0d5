"""The cost of each row of a batch group (one model), in integer pUSD, with numpy.

SPEC §4.6's rule order, per row: ``cost_usd`` given → it; a fine-tuned ``ft:`` model → its
base's fine-tuning prices; an ``images`` field → the per-image price; an audio model → characters;
a text model → full-price input, cached input, cache writes and output at the model's prices;
anything else → unpriced (cost 0, counted), never a guessed price. ``batch: true`` then takes
the batch discount off table prices (a given ``cost_usd`` is what was billed: it is kept).

Products are computed in int64 when a bound on the largest row times the row count proves they
cannot overflow; otherwise in Python integers (numpy object arrays), which are exact at any
size. Either way the per-row costs are exact integers and every total is their exact sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.pricing import PriceTable, Resolved, to_pico

__all__ = ["GroupCost", "Quantities", "price_rows"]

Ints = npt.NDArray[Any]  # int64, or object (Python ints) when int64 could overflow
_SAFE: Final = 1 << 62
_FAST_USD: Final = 1000.0  # below this a float USD times 1e12, rounded, is its decimal exactly


@dataclass(slots=True)
class Quantities:
    """One group's billable columns (length n each); ``images`` None, a dict, or a list."""

    input: Ints
    output: Ints
    cached: Ints
    cache_write: Ints
    characters: Ints
    cost_usd: npt.NDArray[np.float64]
    batch: npt.NDArray[np.bool_]
    images: Any = None


@dataclass(slots=True)
class GroupCost:
    """Per-row costs and what the group's totals need."""

    cost: Ints
    priced: npt.NDArray[np.bool_]  # rows with a cost (given, or from the table)
    tokens: npt.NDArray[np.bool_]  # rows priced from a token table (text or fine-tuning)
    full: Ints  # input tokens at the full input price (after the cached split and clamp)
    cached: Ints
    cache_write: Ints
    list_cost: Ints  # token rows' cost before the batch discount
    unpriced: int = 0
    clamped: int = 0
    cached_tokens: int = 0
    cache_regular: int = 0
    cache_cost: int = 0
    write_premium: int = 0
    batch_requests: int = 0
    batch_regular: int = 0
    batch_billed: int = 0


def _peak(*columns: Ints) -> int:
    return sum(int(c.max()) if c.size else 0 for c in columns)


def _exact(columns: list[Ints], prices: int, n: int) -> list[Ints]:
    """The columns as int64 if ``Σ max × prices × n`` fits, else as Python-int object arrays."""
    if _peak(*columns) * max(prices, 1) * max(n, 1) < _SAFE:
        return columns
    return [c.astype(object) for c in columns]


def given_costs(values: npt.NDArray[np.float64]) -> Ints:
    """Clients' ``cost_usd`` floats → pUSD (the decimal they wrote, to the nearest pUSD)."""
    if values.size == 0 or (values.max() < _FAST_USD and values.max() * values.size < 4e6):
        return np.rint(values * 1e12).astype(np.int64)
    return np.array([to_pico(float(v)) for v in values], dtype=object)


def _image_rows(images: Any, n: int) -> npt.NDArray[np.bool_]:
    if isinstance(images, list):
        return np.array([i is not None for i in images], dtype=bool)
    return np.full(n, images is not None, dtype=bool)


def price_rows(
    q: Quantities, res: Resolved | None, includes_cached: bool, table: PriceTable, model: str
) -> GroupCost:
    n = len(q.input)
    given = ~np.isnan(q.cost_usd)
    rest = ~given
    if includes_cached:
        cached = np.minimum(q.cached, q.input)
        write = np.minimum(q.cache_write, q.input - cached)
        clamped = int(np.count_nonzero((q.cached > q.input) | (q.cache_write > q.input - cached)))
        full = q.input - cached - write
    else:
        full, cached, write, clamped = q.input, q.cached, q.cache_write, 0
    image_rows = _image_rows(q.images, n) & rest if q.images is not None else None
    kind = res.kind if res is not None else None
    token_rows = np.zeros(n, dtype=bool)
    cost: Ints = np.zeros(n, dtype=np.int64)
    list_cost: Ints = cost
    priced = given.copy()
    if given.any():
        given_cost = given_costs(q.cost_usd[given])
        if given_cost.dtype == object:
            cost = cost.astype(object)
        cost[given] = given_cost
    out = GroupCost(cost, priced, token_rows, full, cached, write, list_cost, clamped=clamped)
    if kind in ("text", "fine_tuning") and res is not None and res.tokens is not None:
        token_rows = rest if kind == "fine_tuning" or image_rows is None else rest & ~image_rows
        _tokens(out, q, res, token_rows, table, n)
    elif kind == "audio" and res is not None:
        rows = rest if image_rows is None else rest & ~image_rows
        [chars] = _exact([q.characters], res.per_character, n)
        _set(out, rows, chars * res.per_character)
    if image_rows is not None and kind != "fine_tuning" and image_rows.any():
        _images(out, q.images, image_rows, table, model)
    billable = (q.input > 0) | (q.output > 0) | (q.cached > 0) | (q.cache_write > 0)
    billable |= q.characters > 0
    if image_rows is not None:
        billable |= image_rows
    out.unpriced = int(np.count_nonzero(billable & ~out.priced))
    return out


def _set(out: GroupCost, rows: npt.NDArray[np.bool_], values: Ints) -> None:
    if values.dtype == object and out.cost.dtype != object:
        out.cost = out.cost.astype(object)
    out.cost[rows] = values[rows]
    out.priced |= rows


def _tokens(
    out: GroupCost,
    q: Quantities,
    res: Resolved,
    rows: npt.NDArray[np.bool_],
    table: PriceTable,
    n: int,
) -> None:
    p = res.tokens
    assert p is not None
    p_cached = p.input if p.cached is None else p.cached
    p_write = p.input if p.cache_write is None else p.cache_write
    factor = table.batch_factor
    top = max(p.input, p.output, p_cached, p_write) * 2 * max(factor.numerator, 1)
    full, cached, write, output = _exact([out.full, out.cached, out.cache_write, q.output], top, n)
    costs = full * p.input + cached * p_cached + write * p_write + output * p.output
    out.tokens = rows
    out.list_cost = np.where(rows, costs, 0)
    if factor != 1:
        discounted = rows & q.batch
        if discounted.any():
            num, den = factor.numerator, factor.denominator
            regular = costs[discounted]
            billed = (regular * (2 * num) + den) // (2 * den)  # half a pUSD rounds up
            out.batch_requests = int(np.count_nonzero(discounted))
            out.batch_regular = int(regular.sum())
            out.batch_billed = int(billed.sum())
            costs = costs.copy()
            costs[discounted] = billed
    _set(out, rows, costs)
    cached_sum = int(out.cached[rows].sum())
    out.cached_tokens = cached_sum
    if p.cached is not None:
        out.cache_regular = cached_sum * p.input
        out.cache_cost = cached_sum * p.cached
    if p.cache_write is not None:
        out.write_premium = int(out.cache_write[rows].sum()) * (p.cache_write - p.input)


def _images(
    out: GroupCost, images: Any, rows: npt.NDArray[np.bool_], table: PriceTable, model: str
) -> None:
    """Per-image prices: a Python loop, over image rows only (a rare, low-rate path)."""
    idx = np.flatnonzero(rows).tolist()
    values = np.zeros(len(rows), dtype=object)
    found = np.zeros(len(rows), dtype=bool)
    for i in idx:
        spec = images[i] if isinstance(images, list) else images
        price = table.image_price(model, spec["size"], spec["quality"])
        if price is not None:
            values[i] = price * spec["n"]
            found[i] = True
    if found.any():
        _set(out, found, values)
