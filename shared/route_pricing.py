"""The worst-case price of a request before it runs (pure): what a budget reserves.

A model may be served by several deployments (failover) and by its fallback models' deployments, so the
worst case is the dearest of them all.
Per-token rates come from the config's negotiated price, else from genai-prices at a large size, so
a tiered price (dearer above some context length) is never underestimated. The rates are looked up
once per deployment; pricing a request is then arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from shared.config import DeploymentConfig, GatehouseConfig, ModelConfig, PriceConfig
from shared.pricing import MTOK, Tokens, context_window, cost

# what a request may answer at most when neither it, the model config nor genai-prices says
DEFAULT_MAX_OUTPUT = 4096
_LARGE = MTOK  # tokens at which list prices are probed (the top tier of tiered prices)


@dataclass(frozen=True, slots=True)
class TokenRates:
    """USD per token; None when no price is known."""

    input: float
    output: float


@lru_cache(maxsize=4096)
def _list_rates(model: str, kind: str) -> TokenRates | None:
    only_input = cost(Tokens(input=_LARGE), model, kind, 0.0).cost_usd
    both = cost(Tokens(input=_LARGE, output=_LARGE), model, kind, 0.0).cost_usd
    if only_input is None or both is None:
        return None
    return TokenRates(input=only_input / _LARGE, output=max(both - only_input, 0.0) / _LARGE)


def deployment_rates(dep: DeploymentConfig, kind: str, model_price: PriceConfig | None = None) -> TokenRates | None:
    """The deployment's negotiated price, else its model's (`models[].price`), else the list price."""
    price = dep.price or model_price
    if price is not None:
        return TokenRates(input=price.input_per_mtok / MTOK, output=price.output_per_mtok / MTOK)
    if kind == "mock":
        return TokenRates(0.0, 0.0)
    return _list_rates(dep.model, kind)


@dataclass(frozen=True, slots=True)
class RoutePricing:
    """The rates of every deployment of one model, and the most output one answer can have."""

    model: str
    rates: tuple[TokenRates | None, ...]
    max_output: int

    @property
    def known(self) -> bool:
        return all(r is not None for r in self.rates)

    def worst_case(self, input_tokens: int, output_tokens: int) -> float:
        """USD: the dearest deployment's price of this many tokens (unknown prices count as zero;
        callers that need a price check `known` first)."""
        return max(
            (r.input * input_tokens + r.output * output_tokens for r in self.rates if r is not None), default=0.0
        )

    def affordable_output(self, input_tokens: int, usd: float, choices: int = 1) -> int:
        """The most output tokens per choice `usd` covers on the dearest deployment, with this input and
        `choices` answers (`n`) writing that much each."""
        left = usd - max((r.input * input_tokens for r in self.rates if r is not None), default=0.0)
        per_token = max((r.output for r in self.rates if r is not None), default=0.0)
        if left <= 0:
            return 0
        if per_token <= 0:
            return self.max_output
        return min(int(left / per_token) // choices, self.max_output)


def _serving(config: GatehouseConfig, model: ModelConfig) -> list[tuple[DeploymentConfig, ModelConfig]]:
    """Every deployment that may answer a request for `model`, with its model: its own, and its fallback
    models' (routing)."""
    index = config.model_index()
    names = [*model.fallbacks, *model.context_window_fallbacks, *model.content_policy_fallbacks]
    fallbacks = [(d, index[n]) for n in names if n in index for d in index[n].deployments]
    return [(d, model) for d in model.deployments] + fallbacks


def route_pricing(config: GatehouseConfig, model: ModelConfig) -> RoutePricing:
    serving = _serving(config, model)
    kinds = [config.providers[d.provider].kind for d, _ in serving]
    rates = tuple(deployment_rates(d, k, m.price) for (d, m), k in zip(serving, kinds, strict=True))
    max_output = model.max_output_tokens
    if max_output is None:
        own = zip(model.deployments, kinds[: len(model.deployments)], strict=True)
        windows = [w for d, k in own if (w := context_window(d.model, k))]
        max_output = max(windows) if windows else DEFAULT_MAX_OUTPUT
    return RoutePricing(model=model.name, rates=rates, max_output=max_output)


def pricing_index(config: GatehouseConfig) -> dict[str, RoutePricing]:
    """Every model name and alias → its pricing, built once at startup."""
    out: dict[str, RoutePricing] = {}
    for model in config.models:
        pricing = route_pricing(config, model)
        for name in (model.name, *model.aliases):
            out[name] = pricing
    return out
