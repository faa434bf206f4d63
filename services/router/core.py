"""Pure routing decisions: model name → ordered deployments (resolved targets), and when to fail over."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.router.providers.base import Target
from services.router.providers.mock import SCHEME as MOCK_SCHEME
from services.router.providers.mock import MockBehaviour
from shared.config import DeploymentConfig, GatehouseConfig, ModelConfig, ProviderConfig
from shared.errors import GatewayError, InvalidRequestError, NotFoundError

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


@dataclass(frozen=True, slots=True)
class Route:
    model: ModelConfig
    deployments: tuple[Deployment, ...]


def _deployment(dep: DeploymentConfig, provider: ProviderConfig, environ: Mapping[str, str]) -> Deployment:
    key_env = dep.api_key_env or provider.api_key_env
    if provider.kind == "mock":
        api_base = f"{MOCK_SCHEME}://{dep.provider}"  # the in-process mock server, per provider account
    else:
        api_base = dep.api_base or provider.api_base or DEFAULT_API_BASE.get(provider.kind, "")
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
    )


def build_routes(config: GatehouseConfig, environ: Mapping[str, str]) -> dict[str, Route]:
    """Every client-facing model name and alias → its route, with provider keys read from `environ`."""
    routes: dict[str, Route] = {}
    for model in config.models:
        route = Route(
            model=model,
            deployments=tuple(_deployment(dep, config.providers[dep.provider], environ) for dep in model.deployments),
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


def should_fail_over(error: GatewayError) -> bool:
    """Try the next deployment after retryable errors (429, 5xx, timeouts) and auth failures of one account."""
    return error.retryable or error.status in (401, 403)


def mock_behaviours(config: GatehouseConfig) -> dict[str, MockBehaviour]:
    """The simulated latency of every mock provider account, by provider name."""
    return {
        name: MockBehaviour(latency_ms=p.mock_latency_ms, chunk_delay_ms=p.mock_chunk_delay_ms)
        for name, p in config.providers.items()
        if p.kind == "mock"
    }
