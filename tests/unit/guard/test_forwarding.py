"""What the guard's request handler publishes: the verdict to the ingress inbox, and the request to the
router in the bytes it arrived in unless the guard rewrote it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import msgspec
from faststream.nats import NatsBroker
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.guard.app import GuardHandlers
from services.guard.core import Guard
from shared.event_publisher import EventPublisher
from shared.schemas.chat import Caller, ChatRequest, Verdict
from shared.schemas.openai import chat_from_builtins
from shared.spool import SpoolConfig
from shared.subjects import Subjects
from tests.unit.guard.chat_requests import REDACT_EMAIL

CONFIG = REDACT_EMAIL
SUBJECTS = Subjects("t")
INBOX = "t.inbox.i1.r1"


class Connection:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: object = None) -> None:
        self.published.append((subject, payload, reply))


class Broker:
    def __init__(self) -> None:
        self.connection = Connection()


def arriving(content: str, **added: object) -> bytes:
    """A request as ingress publishes it; `added`: fields a newer ingress might send."""
    req = ChatRequest(
        request_id="r1",
        api="chat",
        model="m",
        chat=chat_from_builtins({"model": "m", "messages": [{"role": "user", "content": content}]}),
        caller=Caller(key_id="k", policy="redact"),
    )
    return msgspec.msgpack.encode({**msgspec.to_builtins(req), **added})


async def handle(data: bytes, tmp_path: Path) -> list[tuple[str, bytes, str]]:
    """What the handler publishes for one arriving request (it only uses the connection's publish)."""
    broker = Broker()
    events = EventPublisher(SpoolConfig(root=tmp_path))
    handlers = GuardHandlers(cast(NatsBroker, broker), Guard(CONFIG), SUBJECTS, events)
    msg = Msg(cast(Client, None), subject=SUBJECTS.guard_chat.name, reply=INBOX, data=data)
    await handlers.on_request(msg)
    return broker.connection.published


async def test_a_request_the_guard_leaves_alone_goes_on_in_the_bytes_it_came_in(tmp_path: Path) -> None:
    data = arriving("hi", added_later={"x": 1})
    verdict, forwarded = await handle(data, tmp_path)
    assert verdict[0] == INBOX and isinstance(SUBJECTS.replies.decode(verdict[1]), Verdict)
    # unchanged, and a field this guard does not know still reaches the router
    assert forwarded == (SUBJECTS.router_chat.name, data, INBOX)


async def test_a_redacted_request_is_encoded_again(tmp_path: Path) -> None:
    data = arriving("mail a@example.com")
    _, (subject, payload, reply) = await handle(data, tmp_path)
    assert subject == SUBJECTS.router_chat.name and reply == INBOX and payload != data
    forwarded = SUBJECTS.router_chat.decode(payload)
    assert forwarded.chat is not None and forwarded.chat.messages[0].content == "mail <EMAIL_1>"
