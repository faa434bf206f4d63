"""Router settings: the common GATEHOUSE_* ones plus GATEHOUSE_ROUTER_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    router_max_concurrency: int = 1024
    router_max_connections: int = 512
