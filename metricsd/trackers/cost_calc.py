"""The cost of each row of a batch group (one model), in integer pUSD, with numpy.

SPEC §4.6's rule order, per row: ``cost_usd`` given → it; a fine-tuned ``ft:`` model → its
base's fine-tuning prices; an ``images`` field → the per-image price; an audio model → characters;
a text model → full-price input, cached input, cache writes and output at the model's prices;
anything else → unpriced (cost 0, counted), never a guessed price. ``batch: true`` then takes
the batch discount off table prices (a given ``cost_usd`` is what was billed: it is kept).

Products are computed in int64 when a bound (the batch's largest count × the largest price ×
the row count) proves that no row and no sum can overflow; otherwise in Python integers (numpy
object arrays), which are exact at any size. Either way each row's cost is an exact integer and
every total is the exact sum of those integers.

Columns that are zero for the whole batch (no cached tokens, no batch flag, …) arrive as None and
cost nothing: the common request (a text model, no ``cost_usd``) is a handful of array
operations per group, whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from metricsd.pricing import PriceTable, Resolved, to_pico

__all__ = ["GroupCost", "Quantities", "given_costs", "price_rows"]

Ints = npt.NDArray[Any]  # int64, or object (Python ints) when int64 could overflow
Mask = npt.NDArray[np.bool_]
_SAFE: Final = 1 << 62
_FAST_USD: Final = 1000.0  # below this a float USD times 1e12, rounded, is its decimal exactly


@dataclass(slots=True)
class Quantities:
    """One group's billable columns (length n). None: zero (or absent) for every row."""

    input: Ints
    output: Ints
    cached: Ints | None = None
    cache_write: Ints | None = None
    characters: Ints | None = None
    cost_usd: npt.NDArray[np.float64] | None = None
    batch: Mask | None = None
    images: Any = None
    peak: int = 0  # the largest count in any column of the whole batch


@dataclass(slots=True)
class GroupCost:
    """Per-row costs, and what the totals and the suggestions need.

    ``priced`` / ``tokens`` are row masks; None means every row.
    """

    cost: Ints
    priced: Mask | None
    tokens: Mask | None  # rows priced from a token table (text or fine-tuning)
    has_tokens: bool
    full: Ints  # input tokens at the full input price (after the cached split and clamp)
    cached: Ints | None
    cache_write: Ints | None
    list_cost: Ints  # token rows' cost before the batch discount (0 on other rows)
    unpriced: int = 0
    clamped: int = 0
    cached_tokens: int = 0
    cache_regular: int = 0
    cache_cost: int = 0
    write_premium: int = 0
    batch_requests: int = 0
    batch_regular: int = 0
    batch_billed: int = 0


def given_costs(values: npt.NDArray[np.float64]) -> Ints:
    """Clients' ``cost_usd`` floats → pUSD (the decimal they wrote, to the nearest pUSD)."""
    if values.size == 0 or (values.max() < _FAST_USD and values.max() * values.size < 4e6):
        return np.rint(values * 1e12).astype(np.int64)
    return np.array([to_pico(float(v)) for v in values], dtype=object)


def _and(a: Mask | None, b: Mask | None) -> Mask | None:
    if a is None:
        return b
    return a if b is None else a & b


def _split(q: Quantities, includes_cached: bool) -> tuple[Ints, Ints | None, Ints | None, int]:
    """(full-price input, cached, cache writes, rows clamped) under the provider's convention."""
    cached, write = q.cached, q.cache_write
    if not includes_cached or (cached is None and write is None):
        return q.input, cached, write, 0
    clamped = np.zeros(len(q.input), dtype=bool)
    full = q.input
    if cached is not None:
        clamped |= cached > full
        cached = np.minimum(cached, full)
        full = full - cached
    if write is not None:
        clamped |= write > full
        write = np.minimum(write, full)
        full = full - write
    return full, cached, write, int(np.count_nonzero(clamped))


def price_rows(
    q: Quantities, res: Resolved | None, includes_cached: bool, table: PriceTable, model: str
) -> GroupCost:
    n = len(q.input)
    given: Mask | None = None
    if q.cost_usd is not None:
        found = ~np.isnan(q.cost_usd)
        given = found if found.any() else None
    rest = None if given is None else ~given
    full, cached, write, clamped = _split(q, includes_cached)
    zero = np.zeros(n, dtype=np.int64)
    priced = given if given is not None else np.zeros(n, dtype=bool)
    out = GroupCost(zero.copy(), priced, None, False, full, cached, write, zero, clamped=clamped)
    if given is not None and q.cost_usd is not None:
        given_cost = given_costs(q.cost_usd[given])
        out.cost = out.cost.astype(given_cost.dtype)
        out.cost[given] = given_cost
    images: Mask | None = None
    if q.images is not None:
        if isinstance(q.images, list):
            images = _and(np.array([i is not None for i in q.images], dtype=bool), rest)
        else:
            images = rest if rest is not None else np.ones(n, dtype=bool)
        if images is not None and not images.any():
            images = None
    kind = res.kind if res is not None else None
    if kind in ("text", "fine_tuning") and res is not None and res.tokens is not None:
        rows = rest if kind == "fine_tuning" or images is None else _and(rest, ~images)
        _tokens(out, q, res, rows, table, n)
    elif kind == "audio" and res is not None and q.characters is not None:
        rows = rest if images is None else _and(rest, ~images)
        chars = q.characters
        if q.peak * max(res.per_character, 1) * max(n, 1) >= _SAFE:
            chars = chars.astype(object)
        _assign(out, rows, chars * res.per_character)
    elif kind == "audio":
        _assign(out, rest if images is None else _and(rest, ~images), zero)
    if images is not None and kind != "fine_tuning":
        _images(out, q.images, images, table, model)
    if out.priced is not None and not out.priced.all():
        billable = (q.input > 0) | (q.output > 0)
        for col in (q.cached, q.cache_write, q.characters):
            if col is not None:
                billable |= col > 0
        if images is not None:
            billable |= images
        out.unpriced = int(np.count_nonzero(billable & ~out.priced))
    return out


def _assign(out: GroupCost, rows: Mask | None, values: Ints) -> None:
    """Set the cost of ``rows`` (None: all) and mark them priced."""
    if rows is None:
        out.cost = values
        out.priced = None
        return
    if values.dtype == object and out.cost.dtype != object:
        out.cost = out.cost.astype(object)
    out.cost[rows] = values[rows]
    out.priced = None if out.priced is None else out.priced | rows


def _tokens(
    out: GroupCost,
    q: Quantities,
    res: Resolved,
    rows: Mask | None,
    table: PriceTable,
    n: int,
) -> None:
    p = res.tokens
    assert p is not None
    p_cached = p.input if p.cached is None else p.cached
    p_write = p.input if p.cache_write is None else p.cache_write
    factor = table.batch_factor
    top = max(p.input, p.output, p_cached, p_write) * 4 * 2 * max(factor.numerator, 1)
    full, cached, write, output = out.full, out.cached, out.cache_write, q.output
    if q.peak * top * max(n, 1) >= _SAFE:
        full, output = full.astype(object), output.astype(object)
        cached = None if cached is None else cached.astype(object)
        write = None if write is None else write.astype(object)
    costs = full * p.input + output * p.output
    if cached is not None:
        costs += cached * p_cached
    if write is not None:
        costs += write * p_write
    out.tokens, out.has_tokens = rows, rows is None or bool(rows.any())
    out.list_cost = costs if rows is None else np.where(rows, costs, 0)
    discounted = _and(rows, q.batch) if q.batch is not None else None
    if factor != 1 and discounted is not None and discounted.any():
        num, den = factor.numerator, factor.denominator
        regular = costs[discounted]
        billed = (regular * (2 * num) + den) // (2 * den)  # half a pUSD rounds up
        out.batch_requests = int(np.count_nonzero(discounted))
        out.batch_regular = int(regular.sum())
        out.batch_billed = int(billed.sum())
        costs = costs.copy()
        costs[discounted] = billed
    _assign(out, rows, costs)
    if out.cached is not None:
        cached_sum = int((out.cached if rows is None else out.cached[rows]).sum())
        out.cached_tokens = cached_sum
        if p.cached is not None:
            out.cache_regular = cached_sum * p.input
            out.cache_cost = cached_sum * p.cached
    if out.cache_write is not None and p.cache_write is not None:
        written = int((out.cache_write if rows is None else out.cache_write[rows]).sum())
        out.write_premium = written * (p.cache_write - p.input)


def _images(out: GroupCost, images: Any, rows: Mask, table: PriceTable, model: str) -> None:
    """Per-image prices: a Python loop over image rows only (a rare, low-rate path)."""
    values = np.zeros(len(rows), dtype=object)
    found = np.zeros(len(rows), dtype=bool)
    for i in np.flatnonzero(rows).tolist():
        spec = images[i] if isinstance(images, list) else images
        price = table.image_price(model, spec["size"], spec["quality"])
        if price is not None:
            values[i] = price * spec["n"]
            found[i] = True
    if found.any():
        _assign(out, found, values)
