"""`deployment_down` webhooks from router replicas, against a real nats-server: told by per-replica breakers as
well as shared ones, from the breaker's structured cause, and once per deployment and window however many
replicas open the same breaker."""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import pytest
from nats.aio.client import Client

from services.accounting.webhooks import WebhookDispatcher
from services.router.down_notices import WINDOW_S, DownNotices, notice_id
from services.router.health import HealthBoard
from services.router.shared_health import SharedHealth
from shared.bus import MSG_ID
from shared.config import WebhookConfig
from shared.routing_config import RoutingConfig
from shared.schemas.routing import DeploymentHealth
from shared.subjects import Subject, Subjects
from shared.webhook_signing import SIGNATURE_HEADER, verify

pytestmark = pytest.mark.timeout(60)
DEPLOYMENT = "openai/gpt-4o:eu"


def routing(shared: bool) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {"breaker": {"shared": shared, "consecutive_failures": 2, "cooldown_s": 5, "min_requests": 100}}
    )


def window_start() -> float:
    """The start of the current notice window, so that openings a few seconds after it share it."""
    return (time.time() // WINDOW_S) * WINDOW_S


def open_breaker(board: HealthBoard, now: float) -> None:
    board.failure(DEPLOYMENT, now, "HTTP 500")
    board.failure(DEPLOYMENT, now + 0.1, "HTTP 500")


async def stored(nc: Client, subjects: Subjects) -> list[tuple[str, dict[str, object]]]:
    """(Nats-Msg-Id, event) of every deployment_down notice in the hooks stream."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.hooks_stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(subjects.hooks_stream, seq)
        if msg.subject == subjects.hooks_deployment.name:
            event = msgspec.to_builtins(subjects.hooks_deployment.decode(msg.data or b""))
            out.append(((msg.headers or {}).get(MSG_ID, ""), event))
    return out


ONCALL = WebhookConfig(name="oncall", url="https://hooks.example/down", events=["deployment_down"])


async def deliver(
    nc: Client,
    subjects: Subjects,
    expected: int,
    hook: WebhookConfig = ONCALL,
    environ: dict[str, str] | None = None,
    requests: list[httpx.Request] | None = None,
) -> list[dict[str, object]]:
    """Run the accounting side's webhook dispatcher until `expected` deliveries reached the receiver (each request
    also appended to `requests`)."""
    received: list[dict[str, object]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        received.append(msgspec.json.decode(request.content))
        if requests is not None:
            requests.append(request)
        return httpx.Response(200)

    transport = httpx.MockTransport(receive)
    dispatcher = WebhookDispatcher(nc.jetstream(), subjects, [hook], environ=environ or {}, transport=transport)
    task = asyncio.create_task(dispatcher.run())
    try:
        deadline = time.monotonic() + 30
        while dispatcher.delivered < expected:
            assert time.monotonic() < deadline, f"{dispatcher.delivered} of {expected} deliveries"
            await asyncio.sleep(0.02)
    finally:
        dispatcher.stop()
        await asyncio.wait_for(task, 20)
    return received


async def test_per_replica_breakers_tell_an_outage_once_per_window_whichever_replicas_open(
    nc: Client, subjects: Subjects
) -> None:
    """Three replicas without shared breakers each open theirs on their own failures, seconds apart: one notice.
    A breaker opened again by a failed probe is the same outage; after a recovery, an outage in a later window is
    told again."""
    notices = DownNotices(nc.jetstream(), subjects.hooks_deployment)
    boards = [HealthBoard(routing(shared=False), f"replica-{i}", notify=notices.publish) for i in range(3)]
    t0 = window_start() + 1
    for i, board in enumerate(boards):
        open_breaker(board, t0 + 15 * i)
    boards[0].claim(DEPLOYMENT, t0 + 40, 30)
    boards[0].failure(DEPLOYMENT, t0 + 41, "HTTP 502")  # the probe failed: still down, not told again
    boards[0].claim(DEPLOYMENT, t0 + 50, 30)
    boards[0].success(DEPLOYMENT, t0 + 50.5, 10.0, None)  # back up
    boards[0].rate_limited(DEPLOYMENT, t0 + 52, 3.0, "HTTP 429")  # a cooldown is not an outage
    assert boards[0].availability(DEPLOYMENT, t0 + WINDOW_S + 5) == "yes"  # the cooldown is over
    open_breaker(boards[0], t0 + WINDOW_S + 5)  # down again, next window
    await notices.stop()

    found = await stored(nc, subjects)
    assert [event["cause"] for _, event in found] == ["consecutive_failures", "consecutive_failures"]
    assert [event["by"] for _, event in found] == ["replica-0", "replica-0"]
    assert len({msg_id for msg_id, _ in found}) == 2
    received = await deliver(nc, subjects, expected=2)
    assert [body["type"] for body in received] == ["deployment_down", "deployment_down"]
    assert {body["data"]["deployment"] for body in received} == {DEPLOYMENT}  # type: ignore[index]


async def test_shared_breakers_opened_by_two_replicas_before_either_hears_of_it_are_told_once(
    nc: Client, subjects: Subjects
) -> None:
    """Two replicas open the shared breaker of the same deployment 1.5 s apart, before the KV watch tells either
    of the other's: the same window, one notice (one id per second sent two before)."""
    js = nc.jetstream()
    notices = DownNotices(js, subjects.hooks_deployment)
    boards = [HealthBoard(routing(shared=True), f"replica-{i}", notify=notices.publish) for i in range(2)]
    shared = [SharedHealth(js, subjects.routing_bucket, board) for board in boards]
    for health in shared:
        health.start()
    try:
        t0 = window_start() + 1
        open_breaker(boards[0], t0)
        open_breaker(boards[1], t0 + 1.5)
    finally:
        for health in shared:
            await health.stop()
        await notices.stop()
    found = await stored(nc, subjects)
    assert len(found) == 1
    msg_id, event = found[0]
    assert event["cause"] == "consecutive_failures" and event["deployment"] == DEPLOYMENT
    assert msg_id.startswith("down.") and str(int((t0 + 0.1) // WINDOW_S)) in msg_id
    assert len(await deliver(nc, subjects, expected=1)) == 1


async def test_a_webhook_whose_signatures_leave_v1_out_is_sent_v2_alone(nc: Client, subjects: Subjects) -> None:
    """The operator's switch once receivers check v2=: the delivery is signed, verifies, and carries no v1= (which
    would hold under any webhook-id)."""
    notices = DownNotices(nc.jetstream(), subjects.hooks_deployment)
    open_breaker(HealthBoard(routing(shared=False), "replica-0", notify=notices.publish), time.time())
    await notices.stop()
    hook = ONCALL.model_copy(update={"secret_env": "ONCALL_SECRET", "signatures": ("v2",)})
    requests: list[httpx.Request] = []
    await deliver(nc, subjects, 1, hook=hook, environ={"ONCALL_SECRET": "s3cret"}, requests=requests)
    sent = requests[0]
    assert verify("s3cret", sent.headers, sent.content)
    assert [part[:3] for part in sent.headers[SIGNATURE_HEADER].split()] == ["v2="]


async def test_a_repeat_notice_is_acknowledged_as_a_duplicate(nc: Client, subjects: Subjects) -> None:
    notices = DownNotices(nc.jetstream(), subjects.hooks_deployment)
    boards = [HealthBoard(routing(shared=False), f"replica-{i}") for i in range(2)]
    t0 = window_start() + 1
    opened = []
    for i, board in enumerate(boards):
        board.notify = opened.append
        open_breaker(board, t0 + i)
    assert len(opened) == 2 and notice_id(opened[0]) == notice_id(opened[1])
    assert [await notices.notify(h) for h in opened] == [True, False]


async def test_stop_cancels_a_notice_still_being_published_once_its_wait_is_over(
    nc: Client, subjects: Subjects
) -> None:
    """A notice whose publish is not answered when `stop`'s wait ends is cancelled, and `stop` returns once it has
    ended: it once returned with the publish still running on a connection about to close."""
    # outside every stream, with a listener that never answers: the publish waits for an ack that will not come
    silent = Subject(f"{subjects.prefix}.silent.down", DeploymentHealth)
    arrived = asyncio.Event()

    async def swallow(_msg: object) -> None:
        arrived.set()

    sub = await nc.subscribe(silent.name, cb=swallow)
    notices = DownNotices(nc.jetstream(), silent)
    open_breaker(HealthBoard(routing(shared=False), "replica-0", notify=notices.publish), time.time())
    publishing = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "DownNotices.notify"]
    assert len(publishing) == 1
    await asyncio.wait_for(arrived.wait(), 10)  # in flight: sent, not answered
    await notices.stop(timeout_s=0.05)
    assert publishing[0].done()
    await sub.unsubscribe()


async def test_a_shared_health_watch_stopped_while_it_starts_always_ends(nc: Client, subjects: Subjects) -> None:
    """Stopping a replica's watch at any point of its start (bucket lookup, consumer creation, first entries)
    ends it: on Python 3.11 nats-py's requests can swallow a cancellation that lands with their answer, which
    once left `stop()` waiting for ever (a stuck router shutdown). 120 stops at 0 to 39 loop turns in."""
    js = nc.jetstream()
    board = HealthBoard(routing(shared=True), "replica-0")
    for turns in range(120):
        health = SharedHealth(js, subjects.routing_bucket, board)
        health.start()
        for _ in range(turns % 40):
            await asyncio.sleep(0)
        await asyncio.wait_for(health.stop(), 10)
