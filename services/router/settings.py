"""Router settings: the common GATEHOUSE_* ones plus GATEHOUSE_ROUTER_*."""

from __future__ import annotations

from shared.settings import ServiceSettings


class RouterSettings(ServiceSettings):
    router_max_concurrency: int = 1024
    router_max_connections: int = 512
    # while serving a request, tell ingress every this many seconds that it is still in hand
    router_heartbeat_s: float = 5.0
    # batch items (`<p>.router.batch`, services/router/priority.py): how many run at once while interactive
    # traffic is quiet, how many while it is not, and how long after the last interactive request it is quiet
    router_batch_concurrency: int = 64
    router_batch_busy_concurrency: int = 1
    # batch items started per second while interactive traffic is not quiet (0: no pace, the busy cap only)
    router_batch_busy_rate: float = 50.0
    router_batch_yield_s: float = 0.25
    # batch items held waiting for their turn (more stay in the batch service's queue)
    router_batch_max_waiting: int = 4096
