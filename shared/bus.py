"""Bus helpers every service uses: header names, the JetStream event stream, publishing events exactly once."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from shared.subjects import Subjects, encode

log = logging.getLogger(__name__)

# NATS headers that travel through every hop
REQUEST_ID = "Gh-Request-Id"
TRACEPARENT = "traceparent"
MSG_ID = "Nats-Msg-Id"

# JetStream publish: how long to wait for the server's ack before retrying
PUBLISH_TIMEOUT_S = 5.0


def events_stream_config(subjects: Subjects, *, max_age_s: float = 7 * 24 * 3600) -> StreamConfig:
    """Events are kept until consumed (work-queue), on disk, deduplicated on Nats-Msg-Id for 10 minutes."""
    return StreamConfig(
        name=subjects.events_stream,
        subjects=[subjects.events_wildcard],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=max_age_s,
        duplicate_window=600.0,
    )


async def ensure_events_stream(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the event stream if missing (idempotent; every service may call it at startup)."""
    config = events_stream_config(subjects)
    try:
        await js.add_stream(config)
    except BadRequestError:
        # exists with another config (e.g. a different max_age): keep the operator's version
        log.info("event stream %s exists with a different config; leaving it", config.name)


async def publish_event(js: JetStreamContext, subject: str, event: object, event_id: str) -> None:
    """Publish an event to JetStream with Nats-Msg-Id, so a retried publish is stored once."""
    await js.publish(subject, encode(event), timeout=PUBLISH_TIMEOUT_S, headers={MSG_ID: event_id})
