"""The bus as a trust boundary: nats-server with the config `gatehouse up` generates refuses connections
without a role's NKey, refuses each role what its stage does not need (and the message reaches nobody),
and lets every path of the pipeline through.

"Reaches nobody" is shown without sleeping: a server handles one connection's commands in order, so once
the publisher's flush returns the server has routed (or refused) its message, and once the subscriber's
flush returns anything routed to it before has arrived. (nats-py writes a flush's PING straight to the
socket, ahead of commands still in its buffer; the second PING of `settle` goes after them.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig

from gatehouse.credentials import RoleKey, ensure_credentials, new_seed
from gatehouse.natsconf import render_config
from gatehouse.natsserver import NatsServer, start_nats
from shared.bus import ensure_events_stream
from shared.natsconn import NatsLink, connect, server_max_payload
from shared.permissions import ROLES, Role
from shared.subjects import Subjects
from tests.integration.nats_refusals import Watched, settle

pytestmark = pytest.mark.timeout(60)
SUBJECTS = Subjects("authz")
STREAM = SUBJECTS.events_stream
BODY_LIMIT = 4 * 1024 * 1024


@dataclass
class Secured:
    server: NatsServer
    keys: dict[Role, RoleKey]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    tmp: Path = tmp_path_factory.mktemp("natsauth")
    keys = ensure_credentials(tmp / "creds")
    conf = tmp / "nats.conf"
    conf.write_text(
        render_config(SUBJECTS, {r: k.public_key for r, k in keys.items()}, max_payload=server_max_payload(BODY_LIMIT))
    )
    server = start_nats(tmp / "js", log_file=tmp / "nats.log", config_file=conf)
    yield Secured(server, keys)
    server.stop()


@dataclass(kw_only=True)
class Conn(Watched):
    """A connection as one role that remembers what the server refused it."""

    role: Role


@pytest.fixture
async def conns(secured: Secured) -> AsyncIterator[dict[Role, Conn]]:
    out: dict[Role, Conn] = {}
    for role in ROLES:
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            secured.server.url,
            nkeys_seed=str(secured.keys[role].seed_file),
            inbox_prefix=SUBJECTS.role_inbox(role),
            error_cb=on_error,
            allow_reconnect=False,
        )
        out[role] = Conn(nc=nc, errors=errors, role=role)
    yield out
    for conn in out.values():
        await conn.nc.close()


# ---- authentication ---------------------------------------------------------------------------------------


async def test_a_connection_without_credentials_is_refused(secured: Secured) -> None:
    with pytest.raises(NatsError, match=r"(?i)authorization violation"):
        await connect(NatsLink((secured.server.url,), "admin", SUBJECTS.prefix))


async def test_a_connection_with_an_unknown_key_is_refused(secured: Secured, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(new_seed())
    stranger.chmod(0o600)
    with pytest.raises(NatsError, match=r"(?i)authorization violation"):
        await connect(NatsLink((secured.server.url,), "admin", SUBJECTS.prefix, str(stranger)))


async def test_each_role_connects_with_its_own_key_and_the_generated_max_payload(secured: Secured) -> None:
    for role in ROLES:
        nc = await connect(NatsLink((secured.server.url,), role, SUBJECTS.prefix, str(secured.keys[role].seed_file)))
        try:
            assert nc.is_connected
            assert nc.max_payload == server_max_payload(BODY_LIMIT)
        finally:
            await nc.close()


# ---- publish ----------------------------------------------------------------------------------------------

# (who may not publish, subject, who listens there (queue group), who may publish there: the control)
FORBIDDEN_PUBLISH: list[tuple[Role, str, Role, str, Role]] = [
    ("ingress", SUBJECTS.router_chat.name, "router", "router", "guard"),  # skip the guard
    ("router", SUBJECTS.router_chat.name, "router", "router", "guard"),
    ("accounting", SUBJECTS.router_chat.name, "router", "router", "guard"),
    ("admin", SUBJECTS.router_chat.name, "router", "router", "guard"),
    ("router", SUBJECTS.guard_chat.name, "guard", "guard", "ingress"),
    ("accounting", SUBJECTS.guard_chat.name, "guard", "guard", "ingress"),
    ("ingress", SUBJECTS.accounting_sql.name, "accounting", "accounting", "admin"),
    ("guard", SUBJECTS.accounting_sql.name, "accounting", "accounting", "admin"),
    ("router", SUBJECTS.accounting_sql.name, "accounting", "accounting", "admin"),
    ("ingress", SUBJECTS.guard_scan.name, "guard", "guard", "admin"),
    ("router", SUBJECTS.guard_scan.name, "guard", "guard", "admin"),
    ("accounting", SUBJECTS.guard_scan.name, "guard", "guard", "admin"),
    ("accounting", f"{SUBJECTS.inbox('x')}.r1", "ingress", "", "router"),  # forge a reply
    ("ingress", f"{SUBJECTS.inbox('x')}.r1", "ingress", "", "guard"),
    ("ingress", f"{SUBJECTS.guard_output('x')}.r1", "guard", "", "router"),
    ("guard", SUBJECTS.ping("router"), "router", "router", "ingress"),
    # MCP: only the guard hands tool calls to the mcp stage (ingress may not skip the guard's scans)
    ("ingress", SUBJECTS.mcp_call.name, "mcp", "mcp", "guard"),
    ("router", SUBJECTS.mcp_call.name, "mcp", "mcp", "guard"),
    ("batch", SUBJECTS.mcp_call.name, "mcp", "mcp", "guard"),
    ("admin", SUBJECTS.mcp_call.name, "mcp", "mcp", "guard"),
    ("mcp", SUBJECTS.mcp_call.name, "mcp", "mcp", "guard"),
    # the mcp stage reaches no other stage: not the router, the guard, the event stream or an ingress inbox
    ("mcp", SUBJECTS.router_chat.name, "router", "router", "guard"),
    ("mcp", SUBJECTS.guard_chat.name, "guard", "guard", "ingress"),
    ("mcp", SUBJECTS.guard_mcp.name, "guard", "guard", "ingress"),
    ("mcp", f"{SUBJECTS.inbox('x')}.r1", "ingress", "", "router"),
    ("router", SUBJECTS.guard_mcp.name, "guard", "guard", "ingress"),
    # the scan of a call's arguments before its approval: ingress's to ask, the guard's to answer
    ("mcp", SUBJECTS.guard_mcp_scan.name, "guard", "guard", "ingress"),
    ("router", SUBJECTS.guard_mcp_scan.name, "guard", "guard", "ingress"),
    # only the mcp stage says a server's lists changed
    ("guard", SUBJECTS.mcp_changed.name, "ingress", "", "mcp"),
    ("router", SUBJECTS.mcp_changed.name, "ingress", "", "mcp"),
]


def _listen_subject(subject: str) -> str:
    """What the listener subscribes to: the wildcard of an inbox or relay, else the subject itself."""
    for wildcard in (SUBJECTS.inbox_wildcard, SUBJECTS.guard_output_wildcard):
        if subject.startswith(wildcard[:-1]):
            return wildcard
    return subject


@pytest.mark.parametrize(("rogue", "subject", "listener", "queue", "control"), FORBIDDEN_PUBLISH)
async def test_a_role_cannot_publish_where_its_stage_does_not(
    conns: dict[Role, Conn], rogue: Role, subject: str, listener: Role, queue: str, control: Role
) -> None:
    sub = await conns[listener].nc.subscribe(_listen_subject(subject), queue=queue)
    assert await conns[listener].violations() == []

    await conns[rogue].nc.publish(subject, b"forged", reply=f"{SUBJECTS.inbox('x')}.r2")
    refused = await conns[rogue].violations()
    assert refused and f'publish to "{subject.lower()}"' in refused[0], conns[rogue].role
    await settle(conns[listener].nc)
    assert sub.delivered == 0, "the refused message reached the subscriber"

    await conns[control].nc.publish(subject, b"allowed")  # the same subject works for the role that needs it
    assert await conns[control].violations() == []
    await settle(conns[listener].nc)
    assert sub.delivered == 1
    assert (await sub.next_msg(timeout=5)).data == b"allowed"


# ---- subscribe --------------------------------------------------------------------------------------------

# (who may not subscribe, subject, queue group, who publishes there: the traffic it must not see)
FORBIDDEN_SUBSCRIBE: list[tuple[Role, str, str, Role | None]] = [
    ("router", SUBJECTS.guard_chat.name, "guard", "ingress"),  # read prompts before the guard
    ("ingress", SUBJECTS.guard_chat.name, "", "ingress"),
    ("guard", SUBJECTS.router_chat.name, "router", "guard"),  # join the router queue group
    ("accounting", SUBJECTS.router_chat.name, "router", "guard"),
    ("router", SUBJECTS.router_chat.name, "", "guard"),  # a copy of every request, outside the group
    ("router", SUBJECTS.router_chat.name, "spy", "guard"),  # another queue group
    ("guard", SUBJECTS.guard_chat.name, "", "ingress"),
    ("guard", SUBJECTS.inbox_wildcard, "", "router"),  # read every answer
    ("router", SUBJECTS.inbox_wildcard, "", "router"),
    ("accounting", SUBJECTS.inbox_wildcard, "", "router"),
    ("admin", SUBJECTS.inbox_wildcard, "", "router"),
    ("ingress", SUBJECTS.events_wildcard, "", "ingress"),  # read the event stream's traffic
    ("guard", SUBJECTS.events_wildcard, "", "ingress"),
    ("router", SUBJECTS.events_wildcard, "", "ingress"),
    ("admin", SUBJECTS.events_wildcard, "", "ingress"),
    ("ingress", SUBJECTS.accounting_sql.name, "accounting", "admin"),  # answer queries as accounting
    ("guard", SUBJECTS.guard_scan.name, "", "admin"),
    ("router", f"{SUBJECTS.role_inbox('ingress')}.>", "", None),  # another role's replies
    ("guard", f"{SUBJECTS.role_inbox('accounting')}.>", "", None),
    ("ingress", "_INBOX.>", "", None),
    ("ingress", SUBJECTS.mcp_call.name, "mcp", "guard"),  # answer tool calls as the mcp stage
    ("router", SUBJECTS.mcp_call.name, "", "guard"),  # read scanned tool calls
    ("mcp", SUBJECTS.guard_mcp.name, "guard", "ingress"),  # read tool calls before the guard's scan
    ("mcp", SUBJECTS.guard_mcp_scan.name, "guard", "ingress"),  # read arguments before the guard's scan
    ("router", SUBJECTS.guard_mcp_scan.name, "guard", "ingress"),
    ("guard", SUBJECTS.guard_mcp_scan.name, "", "ingress"),  # a copy of every scan, outside the queue group
    ("mcp", SUBJECTS.guard_chat.name, "guard", "ingress"),
    ("mcp", SUBJECTS.inbox_wildcard, "", "router"),
    ("mcp", SUBJECTS.events_wildcard, "", "ingress"),
    ("ingress", ">", "", None),
]


@pytest.mark.parametrize(("rogue", "subject", "queue", "publisher"), FORBIDDEN_SUBSCRIBE)
async def test_a_role_cannot_subscribe_where_its_stage_does_not(
    conns: dict[Role, Conn], rogue: Role, subject: str, queue: str, publisher: Role | None
) -> None:
    spy = await conns[rogue].nc.subscribe(subject, queue=queue)
    refused = await conns[rogue].violations()
    assert refused and f'subscription to "{subject.lower()}"' in refused[0], conns[rogue].role
    if publisher is None:
        return
    target = f"{subject[:-1]}r3" if subject.endswith(">") else subject
    if subject == SUBJECTS.events_wildcard:
        target = SUBJECTS.events_request.name
    await conns[publisher].nc.publish(target, b"secret")
    assert await conns[publisher].violations() == []
    await settle(conns[rogue].nc)
    assert spy.delivered == 0, "the refused subscription received a message"


# ---- JetStream --------------------------------------------------------------------------------------------


async def _stream_messages(admin: Conn) -> int:
    info = await admin.nc.jetstream().stream_info(STREAM)
    return int(info.state.messages)


async def test_events_are_written_by_their_stage_only_and_streams_managed_by_admin_only(
    conns: dict[Role, Conn],
) -> None:
    ingress, guard, admin = conns["ingress"], conns["guard"], conns["admin"]
    await ensure_events_stream(ingress.nc.jetstream(), SUBJECTS)  # the services create the stream at startup
    await ensure_events_stream(guard.nc.jetstream(), SUBJECTS)
    # stage events are stored: each role's JetStream acks come back on its own inbox
    await ingress.nc.jetstream().publish(SUBJECTS.events_request.name, b"request-event", timeout=5)
    await guard.nc.jetstream().publish(SUBJECTS.events_guard.name, b"guard-event", timeout=5)
    stored = await _stream_messages(admin)
    assert stored >= 2

    forged = [
        ("router", SUBJECTS.events_request.name),
        ("accounting", SUBJECTS.events_request.name),
        ("guard", SUBJECTS.events_request.name),
        ("ingress", SUBJECTS.events_guard.name),
        ("admin", SUBJECTS.events_request.name),
    ]
    api = "$JS.API"
    destructive = [
        f"{api}.STREAM.PURGE.{STREAM}",
        f"{api}.STREAM.DELETE.{STREAM}",
        f"{api}.STREAM.UPDATE.{STREAM}",
        f"{api}.STREAM.MSG.DELETE.{STREAM}",
        f"{api}.CONSUMER.DELETE.{STREAM}.accounting",
        f"{api}.CONSUMER.CREATE.{STREAM}.rogue",  # consuming the events is accounting's
        f"{api}.CONSUMER.CREATE.{STREAM}.rogue.{SUBJECTS.events_wildcard}",
        f"{api}.CONSUMER.DURABLE.CREATE.{STREAM}.rogue",
    ]
    attempts = forged + [(role, subject) for role in ("ingress", "guard", "router") for subject in destructive]
    attempts += [("accounting", subject) for subject in destructive[:5]]
    for role, subject in attempts:
        conn = conns[role]
        await conn.nc.publish(subject, json.dumps({"config": {"durable_name": "rogue"}}).encode(), reply="x.y")
        refused = await conn.violations()
        assert any(f'publish to "{subject.lower()}"' in e for e in refused), (role, subject)
    assert await _stream_messages(admin) == stored  # nothing forged, nothing purged
    consumers = [c.name for c in await admin.nc.jetstream().consumers_info(STREAM)]
    assert "rogue" not in consumers

    await admin.nc.jetstream().purge_stream(STREAM)  # the control: admin may
    assert await _stream_messages(admin) == 0


async def test_accounting_consumes_the_events_through_its_durable_consumer(conns: dict[Role, Conn]) -> None:
    ingress, accounting = conns["ingress"], conns["accounting"]
    await ensure_events_stream(accounting.nc.jetstream(), SUBJECTS)
    await ingress.nc.jetstream().publish(SUBJECTS.events_request.name, b"to-store", headers={"Nats-Msg-Id": "e1"})
    js = accounting.nc.jetstream()
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name="acct", ack_policy=AckPolicy.EXPLICIT, filter_subject=SUBJECTS.events_wildcard),
    )
    psub = await js.pull_subscribe_bind(durable="acct", stream=STREAM)
    msgs = await psub.fetch(10, timeout=5)
    assert b"to-store" in [m.data for m in msgs]
    for m in msgs:
        await m.ack_sync(timeout=5)
    assert await accounting.violations() == []


# ---- the allowed paths ------------------------------------------------------------------------------------


async def test_the_request_path_and_every_request_reply_work(conns: dict[Role, Conn]) -> None:
    ingress, guard, router, admin = conns["ingress"], conns["guard"], conns["router"], conns["admin"]
    subs: list[Subscription] = []

    async def guard_forwards(msg: Msg) -> None:  # through the guard's output relay, as a policy may ask
        assert msg.reply
        relay = f"{SUBJECTS.guard_output('g1')}.{msg.reply.rsplit('.', 1)[-1]}"
        replies[relay] = msg.reply
        await guard.nc.publish(SUBJECTS.router_chat.name, msg.data, reply=relay)

    replies: dict[str, str] = {}

    async def guard_relays(msg: Msg) -> None:
        await guard.nc.publish(replies[msg.subject], msg.data + b" (relayed)")

    async def router_answers(msg: Msg) -> None:
        assert msg.reply
        await router.nc.publish(msg.reply, msg.data + b" answered")

    async def answer(nc: Client, msg: Msg, text: bytes) -> None:
        await nc.publish(msg.reply, text)  # a single reply to the asker's own inbox (allow_responses)

    subs.append(await guard.nc.subscribe(SUBJECTS.guard_chat.name, queue="guard", cb=guard_forwards))
    subs.append(await guard.nc.subscribe(f"{SUBJECTS.guard_output('g1')}.*", cb=guard_relays))
    subs.append(await router.nc.subscribe(SUBJECTS.router_chat.name, queue="router", cb=router_answers))
    responders: list[tuple[Role, str, str]] = [
        ("guard", SUBJECTS.ping("guard"), "guard"),
        ("router", SUBJECTS.ping("router"), "router"),
        ("guard", SUBJECTS.guard_scan.name, "guard"),
        ("accounting", SUBJECTS.accounting_sql.name, "accounting"),
    ]
    for role, subject, queue in responders:
        nc = conns[role].nc

        async def cb(msg: Msg, nc: Client = nc, role: str = role) -> None:
            await answer(nc, msg, f"{role} ok".encode())

        subs.append(await nc.subscribe(subject, queue=queue, cb=cb))
    for conn in conns.values():
        assert await conn.violations() == []

    inbox = await ingress.nc.subscribe(SUBJECTS.inbox_wildcard)
    await ingress.nc.publish(SUBJECTS.guard_chat.name, b"prompt", reply=f"{SUBJECTS.inbox('i1')}.r9")
    reply = await inbox.next_msg(timeout=5)
    assert (reply.subject, reply.data) == (f"{SUBJECTS.inbox('i1')}.r9", b"prompt answered (relayed)")

    assert (await ingress.nc.request(SUBJECTS.ping("guard"), b"", timeout=5)).data == b"guard ok"
    assert (await ingress.nc.request(SUBJECTS.ping("router"), b"", timeout=5)).data == b"router ok"
    assert (await admin.nc.request(SUBJECTS.guard_scan.name, b"text", timeout=5)).data == b"guard ok"
    assert (await admin.nc.request(SUBJECTS.accounting_sql.name, b"q", timeout=5)).data == b"accounting ok"
    for conn in conns.values():
        assert await conn.violations() == [], conn.role


async def test_ingress_asks_one_mcp_replica_on_its_own_catalog_subject(conns: dict[Role, Conn]) -> None:
    """The pages of a large list come from the replica whose summary named them (services/ingress/mcp/catalog.py):
    the mcp role answers on its own subject in its queue group, ingress asks there, and no other role may listen."""
    own = SUBJECTS.mcp_catalog_at("mcp-host-1234")

    async def answer(msg: Msg) -> None:
        await msg.respond(b"page")

    await conns["mcp"].nc.subscribe(own.name, queue=own.queue, cb=answer)
    await conns["mcp"].nc.flush()
    reply = await conns["ingress"].nc.request(own.name, b"query", timeout=5)
    assert reply.data == b"page"
    assert await conns["mcp"].violations() == [] and await conns["ingress"].violations() == []
    await conns["guard"].nc.subscribe(own.name, queue=own.queue)
    refused = await conns["guard"].violations()
    assert refused and f'subscription to "{own.name.lower()}"' in refused[0]
