"""Optional active health checks (`routing.health_checks.interval_s` > 0): every interval, each chat
deployment gets a one-token request from this replica. A failure counts like a failed attempt (it may
open the breaker before any client request meets the outage); for a deployment whose breaker is open
and cooled down, the check is the half-open probe, so it comes back without risking a client request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from services.router.core import Route
from services.router.dispatch import Dispatcher
from shared.routing_config import HealthCheckConfig
from shared.tasks import cancel_and_wait

log = logging.getLogger("gatehouse.router.probes")


class HealthChecker:
    def __init__(self, dispatcher: Dispatcher, routes: Mapping[str, Route], config: HealthCheckConfig) -> None:
        self._dispatcher = dispatcher
        self._config = config
        # one route per deployment (a deployment serving several models is checked once)
        self._targets: dict[str, Route] = {}
        for route in routes.values():
            if route.model.kind != "chat":
                continue
            for dep in route.deployments:
                self._targets.setdefault(dep.id, route)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._config.interval_s > 0 and self._targets:
            self._task = asyncio.create_task(self._loop(), name="routing-health-checks")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.interval_s)
            checks = [
                self._dispatcher.check(route, dep_id, self._config.timeout_s) for dep_id, route in self._targets.items()
            ]
            results = await asyncio.gather(*checks, return_exceptions=True)
            for dep_id, result in zip(self._targets, results, strict=True):
                if isinstance(result, BaseException):
                    log.warning("health check of %s failed unexpectedly: %r", dep_id, result)
