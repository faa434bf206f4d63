"""Every NATS subject gatehouse uses, each bound to its schema; no other module spells a subject.

A deployment (or a test) picks a prefix, so several gatehouse instances can share one NATS server.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

import msgspec

from shared.schemas.admin import ScanRequest, ScanResult, SqlQuery, SqlResult
from shared.schemas.chat import ChatRequest, Reply
from shared.schemas.events import GuardEvent, RequestEvent

T = TypeVar("T")


class Subject(Generic[T]):
    """A subject name with the schema of what travels on it (msgpack-encoded)."""

    __slots__ = ("_decoder", "name", "queue", "schema")

    def __init__(self, name: str, schema: type[T], queue: str = "") -> None:
        self.name = name
        self.schema = schema
        self.queue = queue
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(schema)

    def decode(self, data: bytes) -> T:
        return self._decoder.decode(data)

    @staticmethod
    def encode(msg: object) -> bytes:
        return _ENCODER.encode(msg)

    def __repr__(self) -> str:
        return f"Subject({self.name!r}, {self.schema.__name__})"


_ENCODER = msgspec.msgpack.Encoder()
_REPLY_DECODER: msgspec.msgpack.Decoder[Reply] = msgspec.msgpack.Decoder(Reply)


def encode(msg: object) -> bytes:
    """msgpack encoding shared by every subject."""
    return _ENCODER.encode(msg)


def decode_reply(data: bytes) -> Reply:
    """Decode a router reply (a stream chunk or the final result) arriving on an ingress inbox."""
    return _REPLY_DECODER.decode(data)


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
    def events_request(self) -> Subject[RequestEvent]:
        """ingress → JetStream: the complete record of one request."""
        return Subject(f"{self.prefix}.events.request", RequestEvent)

    @cached_property
    def events_guard(self) -> Subject[GuardEvent]:
        """guard → JetStream: one verdict."""
        return Subject(f"{self.prefix}.events.guard", GuardEvent)

    @cached_property
    def accounting_sql(self) -> Subject[SqlQuery]:
        """anyone → accounting (request/reply, answered with SqlResult): an analytics query."""
        return Subject(f"{self.prefix}.accounting.sql", SqlQuery, queue="accounting")

    @cached_property
    def sql_result(self) -> Subject[SqlResult]:
        """The reply schema of `accounting_sql`."""
        return Subject(f"{self.prefix}.accounting.sql.result", SqlResult)

    @cached_property
    def guard_scan(self) -> Subject[ScanRequest]:
        """anyone → guard (request/reply, answered with ScanResult): scan one text with a policy."""
        return Subject(f"{self.prefix}.guard.scan", ScanRequest, queue="guard")

    @cached_property
    def scan_result(self) -> Subject[ScanResult]:
        """The reply schema of `guard_scan`."""
        return Subject(f"{self.prefix}.guard.scan.result", ScanResult)

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

    @property
    def inbox_wildcard(self) -> str:
        """Every ingress reply inbox (see `inbox`): the router and the guard answer requests here."""
        return f"{self.prefix}.inbox.>"

    @property
    def guard_output_wildcard(self) -> str:
        """Every guard output relay (see `guard_output`): the router answers requests the guard relays."""
        return f"{self.prefix}.guardout.>"

    def role_inbox(self, role: str) -> str:
        """The nats-py inbox prefix of one role's connections (request/reply, JetStream acks and pulls).

        Each role has its own, and NATS lets it subscribe only there, so no role can read another's replies.
        """
        return f"_INBOX.{self.prefix}.{role}"
