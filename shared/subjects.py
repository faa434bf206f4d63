"""Every NATS subject gatehouse uses, each bound to its schema; no other module spells a subject.

A deployment (or a test) picks a prefix, so several gatehouse instances can share one NATS server.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

import msgspec

from shared.schemas.admin import ScanRequest, ScanResult, SqlQuery, SqlResult
from shared.schemas.chat import Cancel, ChatRequest, Reply
from shared.schemas.events import GuardEvent, RequestEvent

T = TypeVar("T")
R = TypeVar("R")

_ENCODER = msgspec.msgpack.Encoder()


class Subject(Generic[T]):
    """A subject name bound to the schema of what travels on it (msgpack), both ways typed."""

    __slots__ = ("_decoder", "name", "queue", "schema")

    def __init__(self, name: str, schema: type[T], queue: str = "") -> None:
        self.name = name
        self.schema = schema
        self.queue = queue
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(schema)

    def encode(self, msg: T) -> bytes:
        return _ENCODER.encode(msg)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    def __repr__(self) -> str:
        return f"Subject({self.name!r}, {getattr(self.schema, '__name__', self.schema)})"


class Service(Subject[T], Generic[T, R]):
    """A request/reply subject: requests of schema T, each answered (to its reply inbox) with an R."""

    __slots__ = ("_reply_decoder", "reply_schema")

    def __init__(self, name: str, schema: type[T], reply: type[R], queue: str = "") -> None:
        super().__init__(name, schema, queue)
        self.reply_schema = reply
        self._reply_decoder: msgspec.msgpack.Decoder[R] = msgspec.msgpack.Decoder(reply)

    def encode_reply(self, msg: R) -> bytes:
        return _ENCODER.encode(msg)

    def decode_reply(self, data: bytes) -> R:
        return self._reply_decoder.decode(data)


def encode(msg: object) -> bytes:
    """msgpack encoding shared by every subject (for tests and tools that build raw messages)."""
    return _ENCODER.encode(msg)


@dataclass(frozen=True)
class Subjects:
    """The subject tree under one prefix (default ``gh``)."""

    prefix: str = "gh"

    @cached_property
    def guard_chat(self) -> Subject[ChatRequest]:
        """ingress → guard: a request to scan, then forward to the router (reply_to is the ingress inbox)."""
        return Subject(f"{self.prefix}.guard.chat", ChatRequest, queue="guard")

    @cached_property
    def router_chat(self) -> Subject[ChatRequest]:
        """guard → router: a request to dispatch; the router answers the carried reply_to."""
        return Subject(f"{self.prefix}.router.chat", ChatRequest, queue="router")

    @cached_property
    def router_cancel(self) -> Subject[Cancel]:
        """ingress → every router replica (no queue group): the client went away, stop the request."""
        return Subject(f"{self.prefix}.router.cancel", Cancel)

    @cached_property
    def replies(self) -> Subject[Reply]:
        """router/guard → an ingress inbox (`inbox(...)`) or a guard's output relay (`guard_output(...)`):
        stream chunks, body parts, heartbeats, the guard's verdict, and the final Result."""
        return Subject(f"{self.prefix}.inbox.>", Reply)  # type: ignore[arg-type]  # a union, not a class

    @cached_property
    def events_request(self) -> Subject[RequestEvent]:
        """ingress → JetStream: the complete record of one request."""
        return Subject(f"{self.prefix}.events.request", RequestEvent)

    @cached_property
    def events_guard(self) -> Subject[GuardEvent]:
        """guard → JetStream: one verdict."""
        return Subject(f"{self.prefix}.events.guard", GuardEvent)

    @cached_property
    def accounting_sql(self) -> Service[SqlQuery, SqlResult]:
        """admin → accounting (request/reply): an analytics query, answered with SqlResult."""
        return Service(f"{self.prefix}.accounting.sql", SqlQuery, SqlResult, queue="accounting")

    @cached_property
    def guard_scan(self) -> Service[ScanRequest, ScanResult]:
        """admin → guard (request/reply): scan one text with a policy, answered with ScanResult."""
        return Service(f"{self.prefix}.guard.scan", ScanRequest, ScanResult, queue="guard")

    def ping(self, service: str) -> str:
        """`<p>.<service>.ping` (request/reply, empty body): answered by any replica that is serving."""
        return f"{self.prefix}.{service}.ping"

    def guard_output(self, instance: str) -> str:
        """Wildcard reply subject of one guard process that scans responses on their way back."""
        return f"{self.prefix}.guardout.{instance}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    @property
    def events_stream(self) -> str:
        """JetStream stream holding every event until accounting has stored it."""
        return f"{self.prefix.upper().replace('.', '_').replace('-', '_')}_EVENTS"

    def inbox(self, instance: str) -> str:
        """Wildcard reply subject of one ingress process; a request's inbox is ``<this>.<request_id>``."""
        return f"{self.prefix}.inbox.{instance}"
