"""`deployment_down` notices: a breaker that opened on a healthy deployment is told to the hooks stream
(`<p>.hooks.event.deployment_down`, for webhooks), once per deployment and window however many replicas opened it.

Every replica tells what its own breaker did, shared breakers (`routing.breaker.shared`) or not. With shared
breakers the replicas that learn an opening from the KV watch stay silent, but two may open together before the
watch delivers; with per-replica breakers each replica opens on its own failures, seconds apart. Either way the
notices carry the same `Nats-Msg-Id` (deployment + the `WINDOW_S` window of the opening) and the hooks stream,
which drops a repeated id within its duplicate window (10 minutes, `shared.bus`), keeps the first: one webhook.
The id is the window's, not the replica's, so no replica has to ask another; the price is that two openings
either side of a window's boundary are told twice, and an outage that ends and starts again within one window
is told once.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from services.router.breaker import went_down
from services.router.shared_health import health_key
from shared.bus import MSG_ID
from shared.schemas.routing import DeploymentHealth
from shared.subjects import Subject
from shared.tasks import cancel_all_and_wait

log = logging.getLogger("gatehouse.router.health")

# one notice per deployment and window: long enough to cover replicas whose own breakers open a few cooldowns
# apart, well inside the hooks stream's 600 s duplicate window (which is what drops the repeats)
WINDOW_S = 60.0
PUBLISH_TIMEOUT_S = 2.0


def notice_id(health: DeploymentHealth) -> str:
    """The `Nats-Msg-Id` of the notice: the same for every replica opening the deployment's breaker in a window."""
    return f"down.{health_key(health.deployment)}.{int(health.at // WINDOW_S)}"


class DownNotices:
    def __init__(self, js: JetStreamContext, subject: Subject[DeploymentHealth]) -> None:
        self._js = js
        self._subject = subject
        self._writes: set[asyncio.Task[bool]] = set()

    def publish(self, health: DeploymentHealth) -> None:
        """Tell a transition in the background if it starts an outage (the request that caused it does not wait)."""
        if not went_down(health):
            return
        task = asyncio.create_task(self.notify(health))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def notify(self, health: DeploymentHealth) -> bool:
        """Publish the notice; True if the stream kept it, False if it was a repeat (or could not be told)."""
        try:
            ack = await self._js.publish(
                self._subject.name,
                self._subject.encode(health),
                timeout=PUBLISH_TIMEOUT_S,
                headers={MSG_ID: notice_id(health)},
            )
        except Exception as exc:
            # a webhook is a courtesy: the breaker has opened whatever happens here
            log.warning("could not tell that %s is down (%s)", health.deployment, type(exc).__name__)
            return False
        return not ack.duplicate

    async def stop(self, timeout_s: float = PUBLISH_TIMEOUT_S * 2) -> None:
        """Let the notices being published finish for up to `timeout_s`, then cancel what is left (a publish must
        not outlive the connection it runs on) and return once every one has ended."""
        if not self._writes:
            return
        _, left = await asyncio.wait(set(self._writes), timeout=timeout_s)
        if left:
            log.warning("stopping: %d deployment_down notice(s) still unanswered, cancelled", len(left))
            await cancel_all_and_wait(left)
