"""JetStream publishes wait for the ack as long as the service's `nats_timeout_s` says, not a constant."""

from __future__ import annotations

from typing import Any

from shared.bus import MSG_ID, publish_event
from shared.event_publisher import EventPublisher
from shared.schemas.events import GuardEvent
from shared.settings import ServiceSettings


class _RecordingJetStream:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def publish(self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]) -> None:
        self.calls.append({"subject": subject, "timeout": timeout, "headers": headers})


async def test_the_publish_timeout_is_the_one_passed_down() -> None:
    js = _RecordingJetStream()
    event = GuardEvent(event_id="e1", request_id="r1", policy="p", action="flag", direction="input", at=0.0)
    await publish_event(js, "gh.events.guard", event, "e1", timeout_s=2.5)  # type: ignore[arg-type]
    assert js.calls == [{"subject": "gh.events.guard", "timeout": 2.5, "headers": {MSG_ID: "e1"}}]


def test_the_event_publisher_takes_its_ack_timeout_from_the_settings(tmp_path: Any) -> None:
    settings = ServiceSettings(nats_timeout_s=3.5, data_dir=str(tmp_path))
    publisher = EventPublisher.from_settings(settings, "ingress")
    assert publisher._timeout == 3.5
