"""What tokens cost (pure): list prices from genai-prices, or a negotiated rate from the config.

Ingress prices the worst case of a request before dispatch (budget reservations) and accounting prices
what it actually used, with the same function, so a reservation and its settlement agree.
Token counts follow the OpenAI convention gatehouse normalises to: input includes cached input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

import msgspec
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

# provider kinds (config) → provider ids in genai-prices
PRICE_PROVIDER = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "gemini": "google",
    "mistral": "mistral",
    "bedrock": "aws",
    "cohere": "cohere",
    "vertex": "google",
}
MTOK = 1_000_000

try:
    PRICES_VERSION = f"genai-prices {version('genai-prices')}"
except PackageNotFoundError:  # pragma: no cover - the package is a dependency
    PRICES_VERSION = "genai-prices ?"

# DateTime64(3) holds 1900..2299; a clock that far off is a bug upstream, but a price is still found
MAX_UNIX_S = 7_258_118_399.0  # 2199-12-31 23:59:59 UTC


@dataclass(frozen=True, slots=True)
class Rates:
    """A negotiated price in USD per million tokens (cached input and cache writes default to input)."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    name: str = "config"


class Price(msgspec.Struct, frozen=True):  # one per priced event: a Struct is built in a third of a dataclass's time
    cost_usd: float | None  # None: unknown (and why, in `version`)
    version: str


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0  # includes cached input and cache writes
    output: int = 0
    cached: int = 0
    cache_write: int = 0


def clamp_unix(unix: float) -> float:
    """Unix seconds in 1970..2199 (what is stored and priced); NaN and infinities become 1970."""
    if 0.0 <= unix <= MAX_UNIX_S:  # False for NaN
        return unix
    return MAX_UNIX_S if MAX_UNIX_S < unix < math.inf else 0.0


def when(unix: float) -> datetime:
    return datetime.fromtimestamp(clamp_unix(unix), tz=UTC)


def cost(tokens: Tokens, model: str, provider_kind: str, at: float, rates: Rates | None = None) -> Price:
    """The price of `tokens` of `model` at `at` (unix seconds): the config's rates, else the list price."""
    if rates is not None:
        cached = min(max(tokens.cached, 0), max(tokens.input, 0))
        written = min(max(tokens.cache_write, 0), max(tokens.input, 0) - cached)
        plain = max(tokens.input, 0) - cached - written
        total = (
            plain * rates.input
            + cached * (rates.cached_input if rates.cached_input is not None else rates.input)
            + written * (rates.cache_write if rates.cache_write is not None else rates.input)
            + max(tokens.output, 0) * rates.output
        ) / MTOK
        return Price(total, f"config: {rates.name}")
    if provider_kind == "mock":
        return Price(0.0, "mock")
    if tokens.input <= 0 and tokens.output <= 0:
        return Price(0.0, PRICES_VERSION)
    input_tokens = max(tokens.input, 0)
    cached = min(max(tokens.cached, 0), input_tokens)
    try:
        calc = calc_price(
            PriceUsage(
                input_tokens=input_tokens,
                output_tokens=max(tokens.output, 0),
                cache_read_tokens=cached or None,
                cache_write_tokens=min(max(tokens.cache_write, 0), input_tokens - cached) or None,
            ),
            model_ref=model,
            provider_id=PRICE_PROVIDER.get(provider_kind),
            genai_request_timestamp=when(at),
        )
    except LookupError:
        return Price(None, f"{PRICES_VERSION}: unknown model")
    except (ValueError, ArithmeticError) as exc:  # a pricing rule that cannot apply to this usage
        return Price(None, f"{PRICES_VERSION}: {type(exc).__name__}")
    return Price(float(Decimal(calc.total_price)), f"{PRICES_VERSION}: {calc.provider.id}/{calc.model.id}")


@lru_cache(maxsize=1024)
def context_window(model: str, provider_kind: str) -> int | None:
    """The model's context window as genai-prices knows it (None when unknown)."""
    try:
        calc = calc_price(
            PriceUsage(input_tokens=1, output_tokens=1), model_ref=model, provider_id=PRICE_PROVIDER.get(provider_kind)
        )
    except (LookupError, ValueError, ArithmeticError):
        return None
    window = calc.model.context_window
    return int(window) if window else None
