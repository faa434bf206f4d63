"""Router settings: the common GATEHOUSE_* ones plus GATEHOUSE_ROUTER_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    router_max_concurrency: int = 1024
    router_max_connections: int = 512
    # while serving a request, tell ingress every this many seconds that it is still in hand
    router_heartbeat_s: float = 5.0
