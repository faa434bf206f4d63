"""Routing at the edges of the pipeline: what a client may ask (strategy, deadline), which keys may, the admin
view merged from router replicas, a saturated router's 503, and a cancel that overtakes its request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from services.ingress.fleet import merge
from services.ingress.routing import client_deadline, route_choice
from services.router.app import RouterHandlers
from shared.bus import QueueWorker
from shared.config import KeyConfig, hash_key
from shared.directory import Directory
from shared.errors import InvalidRequestError, PermissionDeniedError
from shared.governance import Limits, Team, VirtualKey
from shared.schemas.chat import Caller, ChatRequest, Outcome, Result
from shared.schemas.routing import DeploymentView, RouterStatus
from shared.subjects import Subjects
from tests.unit.providers.roundtrip import canonical


def test_the_strategy_comes_from_the_header_or_the_body_field_which_is_never_sent_on() -> None:
    chat = canonical({"messages": [{"role": "user", "content": "x"}], "gatehouse_route": "latency"})
    assert "gatehouse_route" in chat.extra
    chosen, cleaned = route_choice({}, chat, allowed=True)
    assert chosen == "latency" and cleaned is not None and "gatehouse_route" not in cleaned.extra
    assert route_choice({"x-gatehouse-route": "cost"}, chat, allowed=True)[0] == "cost"  # the header wins
    assert route_choice({}, canonical({"messages": [{"role": "user", "content": "x"}]}), allowed=False)[0] == ""
    with pytest.raises(PermissionDeniedError):
        route_choice({"x-gatehouse-route": "cost"}, None, allowed=False)
    with pytest.raises(InvalidRequestError):
        route_choice({"x-gatehouse-route": "fastest"}, None, allowed=True)


def test_the_clients_deadline_only_shortens_the_servers() -> None:
    assert client_deadline({}, 1000.0, 600.0) == 1600.0
    assert client_deadline({"x-gatehouse-timeout": "2.5"}, 1000.0, 600.0) == 1002.5
    assert client_deadline({"x-stainless-timeout": "20"}, 1000.0, 600.0) == 1020.0
    assert client_deadline({"x-gatehouse-timeout": "9999"}, 1000.0, 600.0) == 1600.0
    assert client_deadline({"x-gatehouse-timeout": "soon"}, 1000.0, 600.0) == 1600.0


def test_route_override_needs_a_level_that_allows_it_and_none_that_forbids_it() -> None:
    static = Directory.with_static({hash_key("a"): KeyConfig(id="a", sha256=hash_key("a"), route_override=True)})
    assert static.entitlement(static.static["a"]).route_override
    d = Directory()
    d.put(Team(id="t", limits=Limits(route_override=True)))
    key = VirtualKey(id="k", team="t", sha256="0" * 64)
    d.put(key)
    assert d.entitlement(key).route_override
    denied = VirtualKey(id="k2", team="t", sha256="1" * 64, limits=Limits(route_override=False))
    d.put(denied)
    assert not d.entitlement(denied).route_override
    plain = Directory()
    plain.put(key)
    assert not plain.entitlement(key).route_override  # nobody said yes


def test_the_admin_view_merges_router_replicas() -> None:
    a = RouterStatus(replica="a", at=0, inflight=2, deployments=[
        DeploymentView(deployment="d", provider="p", models=["m"], state="healthy", ewma_latency_ms=100,
                       attempts=10, error_rate=0.1, inflight=2)])  # fmt: skip
    b = RouterStatus(replica="b", at=0, inflight=1, deployments=[
        DeploymentView(deployment="d", provider="p", models=["m2"], state="open", until=50, reason="5 in a row",
                       ewma_latency_ms=200, attempts=30, error_rate=0.5, inflight=1)])  # fmt: skip
    fleet = merge([a, b])
    row = fleet.deployments[0]
    assert fleet.replicas == ["a", "b"] and fleet.inflight == 3
    assert (row.state, row.until, row.reason) == ("open", 50, "5 in a row")
    assert row.ewma_latency_ms == pytest.approx(175) and row.error_rate == pytest.approx(16 / 40)
    assert row.models == ["m", "m2"] and row.inflight == 3 and row.replicas == {"a": "healthy", "b": "open"}


@dataclass
class FakeMsg:
    data: bytes = b""
    reply: str = "inbox.1"
    subject: str = "x"
    headers: dict[str, str] | None = None


@dataclass
class FakeConnection:
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.sent.append((subject, data))


@dataclass
class FakeBroker:
    connection: FakeConnection = field(default_factory=FakeConnection)


async def test_a_saturated_worker_answers_at_once_instead_of_queueing() -> None:
    release = asyncio.Event()
    full: list[FakeMsg] = []

    async def handler(_: Any) -> None:
        await release.wait()

    async def on_full(msg: Any) -> None:
        full.append(msg)

    worker = QueueWorker("s", "q", handler, 1, on_full=on_full)
    await worker._on_msg(FakeMsg())  # type: ignore[arg-type]
    await worker._on_msg(FakeMsg())  # type: ignore[arg-type]
    assert len(full) == 1 and worker.in_flight == 1
    release.set()
    await worker.stop()
    subjects = Subjects("t")
    broker = FakeBroker()
    handlers = RouterHandlers(broker, SimpleNamespace(replica="router-7"), subjects, 5.0)  # type: ignore[arg-type]
    await handlers.on_full(FakeMsg())  # type: ignore[arg-type]
    reply = subjects.replies.decode(broker.connection.sent[0][1])
    assert isinstance(reply, Result) and reply.error is not None
    assert (reply.error.status, reply.error.retry_after) == (503, 1.0)
    assert reply.outcome.replica == "router-7"  # the record says which replica was full


async def test_a_cancel_that_overtakes_its_request_stops_it_before_dispatch() -> None:
    subjects = Subjects("t")
    broker = FakeBroker()

    class NoDispatch:
        replica = "router-0"

        async def serve(self, *_: object) -> None:
            raise AssertionError("dispatched a request whose client had left")

    handlers = RouterHandlers(broker, NoDispatch(), subjects, 5.0)  # type: ignore[arg-type]
    from shared.schemas.chat import Cancel

    await handlers.on_cancel(FakeMsg(data=subjects.router_cancel.encode(Cancel(request_id="r1"))))  # type: ignore[arg-type]
    req = ChatRequest(request_id="r1", api="chat", model="m", caller=Caller(key_id="k"))
    await handlers.on_request(FakeMsg(data=subjects.router_chat.encode(req)))  # type: ignore[arg-type]
    reply = subjects.replies.decode(broker.connection.sent[-1][1])
    assert isinstance(reply, Result) and reply.error is not None and reply.error.status == 499
    assert "r1" not in handlers.early


def test_a_budget_reserves_the_dearest_deployment_a_fallback_may_answer_with() -> None:
    from shared.config import parse_config
    from shared.route_pricing import pricing_index

    cfg = parse_config(
        """
providers: {p: {kind: mock}}
models:
  - name: cheap
    deployments: [{provider: p, model: a, price: {input_per_mtok: 1, output_per_mtok: 1}}]
    fallbacks: [dear]
  - name: dear
    deployments: [{provider: p, model: b, price: {input_per_mtok: 10, output_per_mtok: 30}}]
"""
    )
    assert pricing_index(cfg)["cheap"].worst_case(1_000_000, 1_000_000) == pytest.approx(40.0)


async def test_a_cancel_withdraws_a_batch_item_waiting_at_the_gate_but_not_one_at_its_provider() -> None:
    from services.router.priority import PriorityGate
    from shared.schemas.chat import Cancel

    subjects = Subjects("t")
    broker = FakeBroker()
    release = asyncio.Event()
    served: list[str] = []

    class Holding:
        replica = "router-0"

        async def serve(self, req: ChatRequest, send: Any) -> None:
            served.append(req.request_id)
            await release.wait()
            await send(Result(outcome=Outcome(replica="router-0"), body=b"{}"))

    gate = PriorityGate(idle=1, busy=1, yield_s=0.05)  # one batch item at a time
    handlers = RouterHandlers(broker, Holding(), subjects, 60.0, gate=gate)  # type: ignore[arg-type]

    def item(request_id: str) -> FakeMsg:
        req = ChatRequest(request_id=request_id, api="chat", model="m", caller=Caller(key_id="k"), batch=True)
        return FakeMsg(data=subjects.router_chat.encode(req), reply=f"binbox.{request_id}")

    running = asyncio.create_task(handlers.on_batch(item("first")))  # type: ignore[arg-type]
    waiting = asyncio.create_task(handlers.on_batch(item("second")))  # type: ignore[arg-type]
    while not (served == ["first"] and gate.waiting == 1):
        await asyncio.sleep(0.005)
    for request_id in ("first", "second"):
        await handlers.on_cancel(FakeMsg(data=subjects.router_cancel.encode(Cancel(request_id=request_id))))  # type: ignore[arg-type]
    await asyncio.wait_for(waiting, 5)
    withdrawn = [subjects.replies.decode(d) for s, d in broker.connection.sent if s == "binbox.second"]
    assert len(withdrawn) == 1 and isinstance(withdrawn[0], Result)
    assert withdrawn[0].error is not None and withdrawn[0].error.status == 499
    release.set()
    await asyncio.wait_for(running, 5)  # the item at its provider was not cancelled: it answered
    answered = [subjects.replies.decode(d) for s, d in broker.connection.sent if s == "binbox.first"]
    assert [type(r) for r in answered] == [Result] and answered[0].error is None  # type: ignore[union-attr]
    assert served == ["first"]
    # the gate still works after withdrawals (a withdrawn item is told, never cancelled inside the gate's wait)
    gate.interactive_started()  # busy: items queue at the gate again
    release.clear()
    held = [asyncio.create_task(handlers.on_batch(item(f"w{i}"))) for i in range(5)]  # type: ignore[arg-type]
    while not (len(served) == 2 and gate.waiting == 4):
        await asyncio.sleep(0.005)
    for i in range(1, 5):
        await handlers.on_cancel(FakeMsg(data=subjects.router_cancel.encode(Cancel(request_id=f"w{i}"))))  # type: ignore[arg-type]
    gate.interactive_finished()
    release.set()
    await asyncio.wait_for(asyncio.gather(*held), 5)
    await asyncio.wait_for(handlers.on_batch(item("after")), 5)  # type: ignore[arg-type]
    assert served == ["first", "w0", "after"]
