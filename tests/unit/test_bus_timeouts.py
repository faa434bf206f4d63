"""JetStream publishes wait for the ack as long as the service's `nats_timeout_s` says, not a constant."""

from __future__ import annotations

from typing import Any, cast

from nats.js import JetStreamContext

from shared.bus import MSG_ID, publish_event_retrying
from shared.schemas.events import GuardEvent


class _RecordingJetStream:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def publish(self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]) -> None:
        self.calls.append({"subject": subject, "timeout": timeout, "headers": headers})


async def test_the_publish_timeout_is_the_one_passed_down() -> None:
    js = _RecordingJetStream()
    event = GuardEvent(event_id="e1", request_id="r1", policy="p", action="flag", direction="input", at=0.0)
    error = await publish_event_retrying(
        lambda: cast(JetStreamContext, js), "gh.events.guard", event, "e1", (0.0,), timeout_s=2.5
    )
    assert error is None
    assert js.calls == [{"subject": "gh.events.guard", "timeout": 2.5, "headers": {MSG_ID: "e1"}}]
