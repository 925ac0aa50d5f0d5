"""The price table (SPEC §4.6): one dated TOML table, merged with the user's, in exact units.

Money is counted in integer **pico-dollars** (1 pUSD = 1e-12 USD) everywhere in metricsd. A
price per 1 M tokens with at most 6 decimal places is a whole number of pUSD per token
(gpt-4o-mini's cached $0.075 / 1 M = 75 000 pUSD per token), so the cost of a request is an
integer product and every total is an exact integer sum of its parts. Prices with more decimals
are refused when the table is loaded instead of being rounded silently. The only rounding left
is the batch discount of an odd amount (half a pUSD, rounded half up) and a client's own
``cost_usd`` float (to the nearest pUSD); see docs/cost-and-budgets.md.

The built-in table is ``metricsd/pricing.toml``. The user's tables (``[cost] pricing_file`` and
``[cost.prices]``, in that order) have the same shape and are merged over it entry by entry: an
entry (one model, one alias, one audio price, ...) replaces the entry of the same name whole;
``replace = true`` in a user table drops the built-in entries first.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from metricsd.config import CostConfig

__all__ = [
    "PICO",
    "PriceTable",
    "PricingError",
    "Resolved",
    "TokenPrice",
    "format_table",
    "load_pricing",
    "to_pico",
    "usd",
    "usd_str",
]

PICO: Final = 10**12  # pUSD per USD
PER_MILLION: Final = 10**6
SECTIONS: Final = (
    "models",
    "aliases",
    "fine_tuning",
    "images",
    "audio",
    "alternatives",
    "input_includes_cached",
)
SCALARS: Final = ("updated", "currency", "batch_discount")
_MAX_RESOLVED: Final = 10_000


class PricingError(ValueError):
    """The price table is invalid; the message names the entry."""


# --- exact money ------------------------------------------------------------------------------


def to_pico(value: Decimal | float | int | str, scale: int = PICO) -> int:
    """USD (a number or decimal text) → pUSD, rounded half to even at the last pUSD.

    A float goes through its shortest decimal form (``repr``), so 0.1 is exactly 1e11 pUSD.
    """
    if isinstance(value, float):
        value = repr(value)
    amount = Decimal(value) * scale
    return int(amount.to_integral_value(ROUND_HALF_EVEN))


def usd(pico: int) -> float:
    """pUSD → a USD float rounded to 1e-9 (the nearest double to that decimal)."""
    nano, rest = divmod(int(pico), 1000)
    if rest > 500 or (rest == 500 and nano % 2):
        nano += 1
    return nano / 1e9


def usd_str(pico: int) -> str:
    """pUSD → the exact decimal USD string: 1 250 000 000 → ``"0.00125"``."""
    pico = int(pico)
    sign = "-" if pico < 0 else ""
    whole, frac = divmod(abs(pico), PICO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:012d}".rstrip("0")


def _amount(value: Any, path: str, scale: int, decimals: int) -> int:
    """A price from the table → whole pUSD per unit; refuses what would need rounding."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PricingError(f"{path}: expected a number, got {value!r}")
    try:
        exact = Decimal(repr(value) if isinstance(value, float) else value)
    except InvalidOperation:
        raise PricingError(f"{path}: expected a number, got {value!r}") from None
    if not exact.is_finite() or exact < 0:
        raise PricingError(f"{path}: must be a finite number ≥ 0, got {value!r}")
    scaled = exact * scale
    if scaled != scaled.to_integral_value():
        raise PricingError(
            f"{path}: {value!r} has more than {decimals} decimal places "
            "(prices are kept exactly, in 1e-12 USD per unit)"
        )
    return int(scaled)


# --- the table --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """pUSD per token. ``cached``/``cache_write`` None: those tokens cost the input price."""

    input: int
    output: int
    cached: int | None = None
    cache_write: int | None = None
    training: int | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """How a model is priced: ``kind`` ∈ text, fine_tuning, audio, images; ``name`` canonical."""

    kind: str
    name: str
    tokens: TokenPrice | None = None
    per_character: int = 0


@dataclass
class PriceTable:
    """The effective table, in pUSD; built by :func:`build_table`."""

    updated: str
    batch_discount: Fraction
    models: dict[str, TokenPrice]
    fine_tuning: dict[str, TokenPrice]
    images: dict[str, dict[tuple[str, str], int]]
    audio: dict[str, int]
    aliases: dict[str, str]
    alternatives: dict[str, str]
    includes_cached: dict[str, bool]
    sources: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)
    _resolved: dict[str, Resolved | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        #: What a batch request pays, as a fraction of the list price.
        self.batch_factor: Fraction = 1 - self.batch_discount

    def canonical(self, model: str) -> str:
        return self.aliases.get(model, model)

    def input_includes_cached(self, provider: str) -> bool:
        found = self.includes_cached.get(provider)
        return self.includes_cached.get("default", True) if found is None else found

    def resolve(self, model: str) -> Resolved | None:
        """The pricing rule for a model name (memoised, bounded); None: not in the table."""
        if model in self._resolved:
            return self._resolved[model]
        found = self._resolve(model)
        if len(self._resolved) >= _MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[model] = found
        return found

    def _resolve(self, model: str) -> Resolved | None:
        if model.startswith("ft:"):
            parts = model.split(":")
            base = parts[1] if len(parts) > 1 else ""
            if base not in self.fine_tuning:
                base = self.canonical(base)
            ft = self.fine_tuning.get(base)
            return Resolved("fine_tuning", base, ft) if ft is not None else None
        name = self.canonical(model)
        for candidate in (model, name):
            if candidate in self.models:
                return Resolved("text", candidate, self.models[candidate])
            if candidate in self.audio:
                return Resolved("audio", candidate, per_character=self.audio[candidate])
            if candidate in self.images:
                return Resolved("images", candidate)
        return None

    def image_price(self, model: str, size: str, quality: str) -> int | None:
        """pUSD per image for (model, size, quality), or None."""
        sizes = self.images.get(model)
        if sizes is None:
            sizes = self.images.get(self.canonical(model))
        return None if sizes is None else sizes.get((size, quality))

    def describe(self) -> dict[str, Any]:
        """The effective table in the TOML shape, prices as exact decimal USD strings."""

        def per_m(p: int | None) -> str | None:
            return None if p is None else usd_str(p * PER_MILLION)

        def tokens(t: TokenPrice) -> dict[str, Any]:
            out = {
                "input": per_m(t.input),
                "output": per_m(t.output),
                "cached": per_m(t.cached),
                "cache_write": per_m(t.cache_write),
                "training": per_m(t.training),
            }
            return {k: v for k, v in out.items() if v is not None}

        return {
            "updated": self.updated,
            "currency": "USD",
            "batch_discount": _fraction_str(self.batch_discount),
            "sources": list(self.sources),
            "input_includes_cached": dict(sorted(self.includes_cached.items())),
            "models": {m: tokens(t) for m, t in sorted(self.models.items())},
            "aliases": dict(sorted(self.aliases.items())),
            "fine_tuning": {m: tokens(t) for m, t in sorted(self.fine_tuning.items())},
            "images": {
                m: {f"{s}/{q}": usd_str(p) for (s, q), p in sorted(sizes.items())}
                for m, sizes in sorted(self.images.items())
            },
            "audio": {m: per_m(p) for m, p in sorted(self.audio.items())},
            "alternatives": dict(sorted(self.alternatives.items())),
        }


def _fraction_str(value: Fraction) -> str:
    return str(Decimal(value.numerator) / Decimal(value.denominator))


def format_table(table: PriceTable) -> str:
    """The effective table as aligned text (``metricsd pricing``)."""
    d = table.describe()
    lines = [
        f"price table updated {d['updated']}; sources: {', '.join(d['sources'])}",
        f"batch discount: {d['batch_discount']}",
        "input tokens include cached tokens: "
        + ", ".join(f"{p}={'yes' if v else 'no'}" for p, v in d["input_includes_cached"].items()),
    ]

    def block(title: str, header: list[str], rows: list[list[str]]) -> None:
        if not rows:
            return
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.extend(["", title])
        for row in [header, *rows]:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

    cols = ["input", "output", "cached", "cache_write"]
    block(
        "text models (USD per 1M tokens)",
        ["model", *cols],
        [[m, *(p.get(c, "-") for c in cols)] for m, p in d["models"].items()],
    )
    block("aliases", ["alias", "model"], [[a, m] for a, m in d["aliases"].items()])
    ft = ["training", "input", "output", "cached"]
    block(
        "fine-tuned models ft:<base>:… (USD per 1M tokens; training is not billed)",
        ["base", *ft],
        [[m, *(p.get(c, "-") for c in ft)] for m, p in d["fine_tuning"].items()],
    )
    block(
        "images (USD per image)",
        ["model", "size/quality", "price"],
        [[m, sq, p] for m, sizes in d["images"].items() for sq, p in sizes.items()],
    )
    block(
        "audio (USD per 1M characters)", ["model", "price"], [[m, p] for m, p in d["audio"].items()]
    )
    block(
        "cheaper alternatives (suggestions)",
        ["model", "alternative"],
        [[m, a] for m, a in d["alternatives"].items()],
    )
    return "\n".join(lines) + "\n"


def _table(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise PricingError(f"{path}: expected a table, got {value!r}")
    return dict(value)


def merge(base: dict[str, Any], layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``layer`` over ``base``: scalars replace, section entries replace whole entries."""
    known = {*SECTIONS, *SCALARS, "replace"}
    for key in layer:
        if key not in known:
            raise PricingError(f"{where}: {key}: unknown key (expected one of {sorted(known)})")
    replace = layer.get("replace", False)
    if not isinstance(replace, bool):
        raise PricingError(f"{where}: replace: expected a boolean")
    out: dict[str, Any] = {} if replace else {k: v for k, v in base.items()}
    for key in SCALARS:
        if key in layer:
            out[key] = layer[key]
    for key in SECTIONS:
        section = dict(out.get(key, {}))
        section.update(_table(layer.get(key, {}), f"{where}: {key}"))
        out[key] = section
    return out


def _tokens(entry: Any, path: str, allowed: tuple[str, ...]) -> TokenPrice:
    data = _table(entry, path)
    for name in data:
        if name not in allowed:
            raise PricingError(f"{path}.{name}: unknown key (expected one of {list(allowed)})")
    for name in ("input", "output"):
        if name not in data:
            raise PricingError(f"{path}: {name} is required")
    prices = {n: _amount(v, f"{path}.{n}", PER_MILLION, 6) for n, v in data.items()}
    return TokenPrice(
        prices["input"],
        prices["output"],
        prices.get("cached"),
        prices.get("cache_write"),
        prices.get("training"),
    )


def _names(section: Any, path: str) -> dict[str, str]:
    out = {}
    for k, v in _table(section, path).items():
        if not isinstance(v, str) or not v:
            raise PricingError(f'{path}."{k}": expected a model name, got {v!r}')
        out[k] = v
    return out


def build_table(raw: dict[str, Any], sources: tuple[str, ...] = ()) -> PriceTable:
    """Validate a merged raw table and convert it to pUSD."""
    updated = raw.get("updated", "")
    if not isinstance(updated, str):
        raise PricingError(f"updated: expected a date string, got {updated!r}")
    if raw.get("currency", "USD") != "USD":
        raise PricingError(f"currency: only USD is supported, got {raw.get('currency')!r}")
    discount = raw.get("batch_discount", 0)
    if isinstance(discount, bool) or not isinstance(discount, (int, float)):
        raise PricingError(f"batch_discount: expected a number, got {discount!r}")
    batch = Fraction(Decimal(repr(discount) if isinstance(discount, float) else discount))
    if not 0 <= batch <= 1:
        raise PricingError(f"batch_discount: must be between 0 and 1, got {discount!r}")
    models = {
        m: _tokens(e, f'models."{m}"', ("input", "output", "cached", "cache_write"))
        for m, e in _table(raw.get("models", {}), "models").items()
    }
    fine = {
        m: _tokens(e, f'fine_tuning."{m}"', ("training", "input", "output", "cached"))
        for m, e in _table(raw.get("fine_tuning", {}), "fine_tuning").items()
    }
    images: dict[str, dict[tuple[str, str], int]] = {}
    for model, sizes in _table(raw.get("images", {}), "images").items():
        images[model] = {}
        for size, qualities in _table(sizes, f'images."{model}"').items():
            where = f'images."{model}"."{size}"'
            for quality, price in _table(qualities, where).items():
                images[model][(size, quality)] = _amount(price, f"{where}.{quality}", PICO, 12)
    audio = {
        m: _amount(p, f'audio."{m}"', PER_MILLION, 6)
        for m, p in _table(raw.get("audio", {}), "audio").items()
    }
    aliases = _names(raw.get("aliases", {}), "aliases")
    alternatives = _names(raw.get("alternatives", {}), "alternatives")
    includes = {}
    for provider, flag in _table(
        raw.get("input_includes_cached", {}), "input_includes_cached"
    ).items():
        if not isinstance(flag, bool):
            raise PricingError(f"input_includes_cached.{provider}: expected a boolean")
        includes[provider] = flag
    return PriceTable(
        updated, batch, models, fine, images, audio, aliases, alternatives, includes, sources, raw
    )


def default_raw() -> dict[str, Any]:
    """The built-in table, as parsed TOML."""
    text = resources.files("metricsd").joinpath("pricing.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def load_pricing(cost: CostConfig | None = None) -> PriceTable:
    """The effective table: built-in < ``cost.pricing_file`` < ``cost.prices``."""
    raw = merge({}, default_raw(), "built-in pricing.toml")
    sources = ["built-in"]
    if cost is not None and cost.pricing_file:
        path = Path(cost.pricing_file)
        try:
            layer = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PricingError(f"cost.pricing_file: {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise PricingError(f"cost.pricing_file: {path}: cannot read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PricingError(f"cost.pricing_file: {path}: invalid TOML: {exc}") from None
        raw = merge(raw, layer, f"cost.pricing_file {path}")
        sources.append(str(path))
    if cost is not None and cost.prices:
        raw = merge(raw, cost.prices, "cost.prices")
        sources.append("cost.prices")
    try:
        return build_table(raw, tuple(sources))
    except PricingError as exc:
        raise PricingError(f"pricing ({' < '.join(sources)}): {exc}") from None
