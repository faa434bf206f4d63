"""List prices at ingest speed: genai-prices' own algorithm, with the per-model work done once.

`genai_prices.calc_price` costs ~100 µs per call (it re-resolves and re-validates the model's price units and
decomposes the usage through a generic registry every time), which alone would cap accounting near 10,000
events/s. The price itself is simple: each priced unit's leaf count (its usage minus that of its priced
descendants, e.g. input tokens minus cache reads when cache reads have their own price) times its rate, the
rate of a tiered price chosen by the total input tokens. `Plan` resolves the units of one model price once;
`total` is then a few Decimal operations. Whatever the plan cannot reproduce exactly (a negative leaf, which
genai-prices rejects) returns None and the caller falls back to `calc_price`. tests/unit/test_listprice.py
checks the two agree on every model in the installed genai-prices snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider, TieredPrices, calc_unit_price
from genai_prices.units import _get_registry  # the unit registry calc_price itself uses

from shared.pricing import when

_ZERO = Decimal(0)

# the usage gatehouse records, by genai-prices usage key; every other usage key is zero
USAGE_KEYS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
    "web_searches",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Unit:
    usage_key: str
    per: int
    price: Decimal | TieredPrices
    descendants: tuple[str, ...]  # usage keys of the priced units below this one
    # price / per where that quotient is exact (a plain price, `per` a power of ten): count * rate is then
    # exactly what calc_unit_price computes as price * count / per
    rate: Decimal | None = None


def _exact_rate(price: Decimal | TieredPrices, per: int) -> Decimal | None:
    if isinstance(price, TieredPrices) or per <= 0 or str(per).rstrip("0") != "1":
        return None
    return price.scaleb(-(len(str(per)) - 1))


@dataclass(frozen=True, slots=True)
class Plan:
    """The priced units of one model price, ordered so each unit's descendants come before it."""

    units: tuple[_Unit, ...]
    tiered: bool

    @classmethod
    def of(cls, price: ModelPrice) -> Plan:
        registry = _get_registry()
        priced = []
        for key, value in price.__dict__.items():
            if key.startswith("_") or value is None:
                continue
            priced.append((registry.unit_for_price_key(key), value))
        priced.sort(key=lambda u: (-len(u[0].dimensions), u[0].usage_key))
        units = []
        for unit, value in priced:
            below = tuple(
                other.usage_key
                for other, _ in priced
                if other is not unit and unit.dimensions.items() <= other.dimensions.items()
            )
            units.append(_Unit(unit.usage_key, unit.per, value, below, _exact_rate(value, unit.per)))
        return cls(tuple(units), any(isinstance(u.price, TieredPrices) for u in units))

    def total(self, usage: dict[str, int]) -> Decimal | None:
        """The price of `usage` (counts by usage key); None where genai-prices would refuse the usage."""
        leaves: dict[str, int] = {}
        total = _ZERO
        total_input = usage.get("input_tokens", 0) if self.tiered else 0
        for unit in self.units:
            key = unit.usage_key
            leaf = 1 if key == "requests" else usage.get(key, 0)
            for below in unit.descendants:  # a loop, not sum() over a generator: this runs for every event
                leaf -= leaves[below]
            if leaf < 0:
                return None
            leaves[key] = leaf
            if not leaf:
                continue
            if unit.rate is not None:
                total += unit.rate * leaf
            else:
                total += calc_unit_price(unit.price, leaf, total_input, unit.per)
        return total


class ListPrices:
    """Model lookups and price plans, cached for the life of the process (the snapshot does not change)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str | None], tuple[Provider, ModelInfo] | None] = {}
        self._plans: dict[int, tuple[ModelPrice, Plan]] = {}
        # models with one price for all times (most of them): their plan, by the model's identity
        self._fixed: dict[int, tuple[ModelInfo, Plan]] = {}

    def model(self, model_ref: str, provider_id: str | None) -> tuple[Provider, ModelInfo] | None:
        key = (model_ref, provider_id)
        if key not in self._models:
            if len(self._models) > 4096:
                self._models.clear()
            try:
                found = data_snapshot.get_snapshot().find_provider_model(model_ref, None, provider_id, None)
            except LookupError:
                found = None
            self._models[key] = found
        return self._models[key]

    def plan_at(self, model: ModelInfo, unix: float) -> Plan:
        """The plan of `model` at `unix` seconds; without building a datetime when its price never changes."""
        fixed = self._fixed.get(id(model))
        if fixed is not None and fixed[0] is model:
            return fixed[1]
        if not isinstance(model.prices, ModelPrice):  # prices that change over time: resolved per request
            return self.plan(model, when(unix))
        if len(self._fixed) > 4096:
            self._fixed.clear()
        plan = Plan.of(model.prices)
        self._fixed[id(model)] = (model, plan)  # the model is kept, so its id is not reused meanwhile
        return plan

    def plan(self, model: ModelInfo, at: datetime) -> Plan:
        price = model.get_prices(at)
        cached = self._plans.get(id(price))
        if cached is not None and cached[0] is price:
            return cached[1]
        if len(self._plans) > 4096:  # prices resolved per call (variants) are new objects each time
            self._plans.clear()
        plan = Plan.of(price)
        self._plans[id(price)] = (price, plan)  # the price is kept, so its id is not reused meanwhile
        return plan
