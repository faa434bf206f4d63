"""Pure routing decisions: model name → ordered deployments (resolved targets), and when to fail over."""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from services.router.limits import ResponseLimits
from services.router.providers import bedrock, vertex
from services.router.providers.base import Target
from services.router.providers.mock import SCHEME as MOCK_SCHEME
from services.router.providers.mock import MockBehaviour
from shared.config import ConfigError, DeploymentConfig, GatehouseConfig, ModelConfig, ProviderConfig
from shared.errors import (
    AuthenticationError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamAuthError,
)
from shared.pricing import MTOK, Tokens, cost
from shared.routing_config import RoutingConfig

# the most of an error message kept: for clients (provider messages pass through) and for attempt records
CLIENT_MESSAGE_CHARS = 1000
ATTEMPT_MESSAGE_CHARS = 300

DEFAULT_API_BASE: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
    "mistral": "https://api.mistral.ai",
    "cohere": "https://api.cohere.com",
}


@dataclass(frozen=True, slots=True)
class Deployment:
    """One deployment ready to call: its translator target and its timeouts."""

    id: str
    target: Target
    timeout_s: float
    connect_timeout_s: float
    provider_config: ProviderConfig
    api_key_env: str | None = None
    limits: ResponseLimits = field(default_factory=ResponseLimits)
    weight: int = 1
    ttft_timeout_s: float = 60.0  # a stream's first token
    # USD per input and per output token (the cost strategy); None: no price known
    rates: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How one model's requests are routed: the model's own `routing:` over the top-level one."""

    strategy: str = "priority"
    max_attempts: int = 3
    explore: float = 0.05
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    max_retry_wait_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Route:
    model: ModelConfig
    deployments: tuple[Deployment, ...]
    policy: RoutePolicy = field(default_factory=RoutePolicy)

    @property
    def attempt_budget(self) -> int:
        """Attempts a request may make: the configured budget, never fewer than one per deployment."""
        return max(self.policy.max_attempts, len(self.deployments))


def _rates(dep: DeploymentConfig, kind: str) -> tuple[float, float] | None:
    """USD per input and output token, with the price source accounting uses (the config's, else genai-prices)."""
    if dep.price is not None:
        return dep.price.input_per_mtok / MTOK, dep.price.output_per_mtok / MTOK
    if kind == "mock":
        return 0.0, 0.0
    only_input = cost(Tokens(input=MTOK), dep.model, kind, 0.0).cost_usd
    both = cost(Tokens(input=MTOK, output=MTOK), dep.model, kind, 0.0).cost_usd
    if only_input is None or both is None:
        return None
    return only_input / MTOK, max(both - only_input, 0.0) / MTOK


def _deployment(
    dep: DeploymentConfig,
    provider: ProviderConfig,
    environ: Mapping[str, str],
    routing: RoutingConfig | None = None,
    model_ttft_s: float | None = None,
) -> Deployment:
    key_env = dep.api_key_env or provider.api_key_env
    if provider.kind == "mock":
        api_base = f"{MOCK_SCHEME}://{dep.provider}"  # the in-process mock server, per provider account
    else:
        api_base = dep.api_base or provider.api_base or DEFAULT_API_BASE.get(provider.kind, "")
        if provider.kind == "bedrock" and not api_base:
            api_base = bedrock.api_base(provider.region)
        if provider.kind == "vertex":
            try:
                api_base = vertex.api_base(provider.project, provider.region, api_base or None)
            except ConfigError as exc:
                raise ConfigError(f"provider {dep.provider!r}: {exc}") from exc
    target = Target(
        provider=dep.provider,
        kind=provider.kind,
        model=dep.model,
        api_base=api_base,
        api_key=environ.get(key_env) if key_env else None,
        api_version=dep.api_version or provider.api_version,
        region=provider.region,
        headers={**provider.headers, **dep.headers},
        params=dict(dep.params),
    )
    return Deployment(
        id=dep.id,
        target=target,
        timeout_s=dep.timeout_s or provider.timeout_s,
        connect_timeout_s=provider.connect_timeout_s,
        provider_config=provider,
        api_key_env=key_env,
        limits=ResponseLimits.of(provider),
        weight=dep.weight,
        ttft_timeout_s=(
            dep.ttft_timeout_s or provider.ttft_timeout_s or model_ttft_s or (routing or RoutingConfig()).ttft_timeout_s
        ),
        rates=_rates(dep, provider.kind),
    )


def _policy(model: ModelConfig, routing: RoutingConfig) -> RoutePolicy:
    own = model.routing
    return RoutePolicy(
        strategy=own.strategy or routing.strategy,
        max_attempts=own.max_attempts or routing.max_attempts,
        explore=own.explore if own.explore is not None else routing.explore,
        backoff_base_s=routing.backoff_base_s,
        backoff_max_s=routing.backoff_max_s,
        max_retry_wait_s=routing.max_retry_wait_s,
    )


def build_routes(config: GatehouseConfig, environ: Mapping[str, str]) -> dict[str, Route]:
    """Every client-facing model name and alias → its route, with provider keys read from `environ`.

    A key variable that a model needs and `environ` lacks is a ConfigError (providers marked `optional`
    excepted): better a router that does not start than one that fails every request.
    """
    missing = config.missing_provider_keys(environ)
    if missing:
        raise ConfigError("; ".join(message for _, message in missing))
    routes: dict[str, Route] = {}
    for model in config.models:
        route = Route(
            model=model,
            deployments=tuple(
                _deployment(dep, config.providers[dep.provider], environ, config.routing, model.routing.ttft_timeout_s)
                for dep in model.deployments
            ),
            policy=_policy(model, config.routing),
        )
        for name in (model.name, *model.aliases):
            routes[name] = route
    return routes


def resolve(routes: Mapping[str, Route], model: str, api: str) -> Route:
    route = routes.get(model)
    if route is None:
        raise NotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    wanted = "embeddings" if api == "embeddings" else "chat"
    if route.model.kind != wanted:
        raise InvalidRequestError(
            f"The model `{model}` is a {route.model.kind} model and cannot serve {api} requests.", param="model"
        )
    return route


def require_translators(config: GatehouseConfig, kinds: Collection[str]) -> None:
    """Every provider kind a model deploys to has a translator (`kinds`) or is the built-in mock."""
    for name, provider in config.providers.items():
        used = any(dep.provider == name for model in config.models for dep in model.deployments)
        if used and provider.kind != "mock" and provider.kind not in kinds:
            raise ConfigError(f"provider {name!r}: kind {provider.kind!r} has no translator in this router")


def attempt_error(error: GatewayError, target: Target) -> GatewayError:
    """An error from one provider attempt as the client may see it and the attempt record may keep it.

    The provider's 401/403 (its verdict on the gateway's key, not on the client) becomes a retryable
    UpstreamAuthError naming only the provider; its own words move to `detail`. Messages are bounded,
    and a provider that echoes the deployment's key gets it masked (it would reach the client or ClickHouse).
    """
    if isinstance(error, AuthenticationError | PermissionDeniedError):
        converted = UpstreamAuthError(
            f"The gateway's credentials for provider {target.provider!r} were rejected.",
            detail=_masked(f"{error.info().code}: {error.message}", target.api_key)[:ATTEMPT_MESSAGE_CHARS],
        )
        converted.__cause__ = error
        return converted
    message = _masked(error.message, target.api_key)
    if len(message) > CLIENT_MESSAGE_CHARS:
        message = message[: CLIENT_MESSAGE_CHARS - 1] + "…"
    if message == error.message:
        return error
    bounded = copy.copy(error)
    bounded.message = message
    return bounded


def _masked(text: str, key: str | None) -> str:
    return text.replace(key, "[provider key]") if key and len(key) >= 8 and key in text else text


def attempt_message(error: GatewayError) -> str:
    """What the attempt record keeps about a failed attempt: the operator-only detail, else the message."""
    return (error.detail or error.message)[:ATTEMPT_MESSAGE_CHARS]


def should_fail_over(error: GatewayError) -> bool:
    """Try the next deployment after retryable errors: 429, 5xx, timeouts, and keys a provider rejected."""
    return error.retryable


def mock_behaviours(config: GatehouseConfig) -> dict[str, MockBehaviour]:
    """The simulated latency of every mock provider account, by provider name."""
    return {
        name: MockBehaviour(latency_ms=p.mock_latency_ms, chunk_delay_ms=p.mock_chunk_delay_ms)
        for name, p in config.providers.items()
        if p.kind == "mock"
    }
