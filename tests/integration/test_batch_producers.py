"""Batch producers scoped to a team, against nats-server with the config `gatehouse up` generates and the batch
service connected as its role: a team's credential can neither read another team's results and replies nor queue
items into its namespace (the server refuses: a permissions violation, and the message goes nowhere), an item is
attributed to the namespace its subject names and to no team or key it claims inside, and each team's own flow,
like the default producer's, runs end to end.

"Goes nowhere" is shown without sleeping, as in test_nats_auth: once a connection's second flush returns, the
server has handled what it sent, and what was routed to it before has arrived."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from gatehouse.batch import BatchClient, BatchError
from gatehouse.credentials import ProducerKey, RoleKey, ensure_credentials, ensure_producer, revoke_producer
from gatehouse.launcher import Stack
from gatehouse.natsconf import render_config
from gatehouse.natsserver import NatsServer, start_nats
from services.batch.app import BatchService
from services.batch.plan import item_token
from services.batch.settings import BatchSettings
from services.batch.store import CONSUMER_IDLE_S, ItemQueue, consumer_name
from shared.config import hash_key, load_config
from shared.natsconn import NatsLink, connect, server_max_payload
from shared.permissions import Role
from shared.producers import Namespace
from shared.schemas.batch import BatchItem, CreateJob
from shared.subjects import Subjects
from tests.integration.batch_support import Stages
from tests.integration.nats_refusals import Watched, settle

pytestmark = pytest.mark.timeout(120)

S = Subjects("scoped")
ML, DS = Namespace("team", "ml"), Namespace("team", "ds")
ML_SECRET, DS_SECRET, QA_SECRET = "sk-scoped-ml-0001", "sk-scoped-ds-0002", "sk-scoped-qa-0003"
BODY = {"messages": [{"role": "user", "content": "hello"}]}
RAW = json.dumps({"model": "mock-1", **BODY}).encode()


@dataclass
class Bus:
    server: NatsServer
    roles: dict[Role, RoleKey]
    producers: dict[Namespace, ProducerKey]
    config: Path


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    tmp: Path = tmp_path_factory.mktemp("producers")
    roles = ensure_credentials(tmp / "creds")
    producers = {ns: ensure_producer(tmp / "creds", ns)[0] for ns in (ML, DS)}
    conf = tmp / "nats.conf"
    conf.write_text(
        render_config(
            S,
            {r: k.public_key for r, k in roles.items()},
            max_payload=server_max_payload(4 * 1024 * 1024),
            producers={ns: k.public_key for ns, k in producers.items()},
        )
    )
    config = tmp / "gatehouse.yaml"
    config.write_text(
        f"""
server: {{request_timeout_s: 20, first_reply_timeout_s: 2, heartbeat_timeout_s: 1}}
keys:
  - {{id: k-ml, sha256: {hash_key(ML_SECRET)}, team: ml}}
  - {{id: k-ds, sha256: {hash_key(DS_SECRET)}, team: ds}}
  - {{id: k-qa, sha256: {hash_key(QA_SECRET)}, team: qa}}
providers:
  mock: {{kind: mock}}
models:
  - name: mock-1
    deployments: [{{provider: mock, model: mock-1}}]
"""
    )
    server = start_nats(tmp / "js", log_file=tmp / "nats.log", config_file=conf)
    yield Bus(server, roles, producers, config)
    server.stop()


@asynccontextmanager
async def connected(bus: Bus, who: Namespace | Role) -> AsyncIterator[Watched]:
    """Connected as a scoped producer (a namespace) or as a role, each with its own inbox prefix."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    if isinstance(who, Namespace):
        seed, inbox = bus.producers[who].seed_file, S.producer_inbox(who.name)
    else:
        seed, inbox = bus.roles[who].seed_file, S.role_inbox(who)
    nc = await nats.connect(
        bus.server.url, nkeys_seed=str(seed), inbox_prefix=inbox, error_cb=on_error, allow_reconnect=False
    )
    try:
        yield Watched(nc, errors)
    finally:
        await nc.close()


@asynccontextmanager
async def batch_service(bus: Bus, tmp: Path) -> AsyncIterator[Stages]:
    """The batch service as the batch role, and stand-in guard and router stages as the guard role."""
    service_nc = await connect(NatsLink((bus.server.url,), "batch", S.prefix, str(bus.roles["batch"].seed_file)))
    guard_nc = await connect(NatsLink((bus.server.url,), "guard", S.prefix, str(bus.roles["guard"].seed_file)))
    stages = Stages(guard_nc, S)
    await stages.start(as_guard=True)
    settings = BatchSettings(
        subject_prefix=S.prefix,
        config=str(bus.config),
        batch_sweep_every_s=0.2,
        batch_progress_every_s=0.5,
        batch_ack_wait_s=3.0,
        nats_timeout_s=5.0,
    )
    service = BatchService(settings, load_config(bus.config), S)
    await service.start(service_nc, service_nc.jetstream())
    try:
        yield stages
    finally:
        await service.stop()
        await service_nc.close()
        await guard_nc.close()


async def producer(bus: Bus, namespace: Namespace | None) -> BatchClient:
    """A producer as documented: `BatchClient.connect` with its seed file (and its namespace, if scoped)."""
    if namespace is None:
        seed = bus.roles["batch_producer"].seed_file
        return await BatchClient.connect(bus.server.url, seed_file=str(seed), prefix=S.prefix, timeout_s=30)
    seed = bus.producers[namespace].seed_file
    return await BatchClient.connect(
        bus.server.url, seed_file=str(seed), prefix=S.prefix, timeout_s=30, namespace=namespace.name
    )


async def test_a_team_can_neither_read_nor_queue_into_another_teams_namespace(bus: Bus) -> None:
    async with (
        connected(bus, ML) as ml,
        connected(bus, DS) as ds,
        connected(bus, "batch_producer") as default,
        connected(bus, "batch") as service,
    ):
        ds_results = await ds.nc.subscribe(S.batch_out_scoped(DS.name))  # the control: ds reads its own
        assert await ds.violations() == []
        spies = []
        for subject in (
            S.batch_out_scoped(DS.name),
            S.batch_out("nightly", DS.name).name,
            S.batch_out_wildcard,
            f"{S.prefix}.batch.out.ns.team.>",
            f"{S.producer_inbox(DS.name)}.>",  # ds's replies: item tokens, result pages
            f"{S.role_inbox('batch_producer')}.>",
            "_INBOX.>",
            ">",
        ):
            spies.append(await ml.nc.subscribe(subject))
            refused = await ml.violations()
            assert refused and f'subscription to "{subject.lower()}"' in refused[0], subject
        # the default credential keeps its wildcard, but is refused a team's namespace and never sent its traffic
        everything = await default.nc.subscribe(S.batch_out_wildcard)
        assert await default.violations() == []
        spies.append(everything)
        spies.append(await default.nc.subscribe(S.batch_out_scoped(DS.name)))
        refused = await default.violations()
        assert refused and f'subscription to "{S.batch_out_scoped(DS.name).lower()}"' in refused[0]

        await service.nc.publish(S.batch_out("nightly", DS.name).name, b"ds's result line")
        assert await service.violations() == []
        assert (await ds_results.next_msg(timeout=5)).data == b"ds's result line"
        await settle(ml.nc)
        await settle(default.nc)
        assert [s.delivered for s in spies] == [0] * len(spies), "a refused subscription received ds's line"

        items = await ds.nc.subscribe(f"{S.batch_items_wildcard}")  # not a permission ds has
        assert await ds.violations()
        for rogue, subject in (
            (ml, S.batch_items("job-of-ds", DS.name).name),
            (ml, S.batch_items("job-of-ds").name),  # the default credential's subject
            (ml, f"{S.prefix}.batch.items.ns.key.k-ds.job-of-ds"),
            (ml, S.batch_results_wildcard.replace(">", "job-of-ds.x")),
            (default, S.batch_items("job-of-ds", DS.name).name),
        ):
            await rogue.nc.publish(subject, RAW)
            refused = await rogue.violations()
            assert refused and f'publish to "{subject.lower()}"' in refused[0], subject
        await ml.nc.publish(S.batch_items("job-of-ml", ML.name).name, RAW)  # the control: its own namespace
        assert await ml.violations() == []
        await items.unsubscribe()


async def test_each_teams_flow_and_the_default_producers_run_end_to_end(bus: Bus, tmp_path: Path) -> None:
    async with batch_service(bus, tmp_path) as stages, connected(bus, "batch_producer") as snoop:
        everything = await snoop.nc.subscribe(S.batch_out_wildcard)
        ml, ds, default = await producer(bus, ML), await producer(bus, DS), await producer(bus, None)
        try:
            await ml.ready()
            ml_notices, ds_notices = await ml.notices("nightly"), await ds.notices("nightly")
            default_notices = await default.notices("enrich")
            ml_job = await ml.submit(
                [BODY] * 3, key=ML_SECRET, model="mock-1", result_subject=ml.result_subject("nightly")
            )
            ds_job = await ds.submit(
                [BODY] * 2, key=DS_SECRET, model="mock-1", result_subject=ds.result_subject("nightly")
            )
            qa_job = await default.submit(
                [BODY] * 2, key=QA_SECRET, model="mock-1", result_subject=default.result_subject("enrich")
            )
            assert ml.result_subject("nightly") == "scoped.batch.out.ns.team.ml.nightly"
            assert default.result_subject("enrich") == "scoped.batch.out.enrich"  # as documented before
            for client, secret, job, total in (
                (ml, ML_SECRET, ml_job, 3),
                (ds, DS_SECRET, ds_job, 2),
                (default, QA_SECRET, qa_job, 2),
            ):
                done = await client.wait(secret, job.id, poll_s=0.1, timeout_s=60)
                assert done.status == "completed", (job.id, done.status)
                assert (done.request_counts.completed, done.request_counts.failed) == (total, 0)
                assert len([line async for line in client.results(secret, job.id)]) == total
            for notices, job, total in ((ml_notices, ml_job, 3), (ds_notices, ds_job, 2), (default_notices, qa_job, 2)):
                lines = [msgspec.json.decode((await notices.next_msg(timeout=5)).data) for _ in range(total)]
                assert {line["batch_id"] for line in lines} == {job.id}
            for client, notices in ((ml, ml_notices), (ds, ds_notices), (default, default_notices)):
                await settle(client.nc)
                assert notices.pending_msgs == 0, "a notice of another job arrived"
            await settle(snoop.nc)
            # the default credential's `>` saw the default job's notices, none of a team's
            assert everything.delivered == 2
            assert sum(stages.dispatches.values()) == 7
        finally:
            for client in (ml, ds, default):
                await client.close()


async def test_an_item_belongs_to_the_namespace_it_arrived_in_not_to_what_it_claims(bus: Bus, tmp_path: Path) -> None:
    async with batch_service(bus, tmp_path) as stages, connected(bus, ML) as ml_raw:
        ml, ds = await producer(bus, ML), await producer(bus, DS)
        try:
            await ml.ready()
            job = await ml.create(CreateJob(key=ML_SECRET, model="mock-1", items=2, input_tokens=20))
            token = ml.item_tokens[job.id]
            # ds knows ml's job id, even its item token and key (leaked), and claims them inside its items: its
            # credential can publish only into its own namespace, which does not own ml's job
            claims = [
                BatchItem(job_id=job.id, item_id="ds-token", body=msgspec.Raw(RAW), token=token),
                BatchItem(job_id=job.id, item_id="ds-key", body=msgspec.Raw(RAW), key=ML_SECRET),
                BatchItem(job_id=job.id, item_id="0", body=msgspec.Raw(RAW), token=token),  # a real item's id
            ]
            assert await ds.publish(claims) == 3
            # ml's items need no token on its own namespace's subject (its credential is the proof), and what they
            # claim inside does not move them elsewhere
            for item_id, claim in (("0", ""), ("1", DS_SECRET)):
                item = BatchItem(job_id=job.id, item_id=item_id, body=msgspec.Raw(RAW), key=claim)
                subject = S.batch_items(job.id, ML.name)
                await ml_raw.nc.jetstream().publish(subject.name, subject.encode(item), timeout=5)
            assert await ml_raw.violations() == []
            done = await ml.wait(ML_SECRET, job.id, poll_s=0.1, timeout_s=60)
            assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
            assert stages.dispatches[item_token(job.id, "ds-token")] == 0
            assert stages.dispatches[item_token(job.id, "ds-key")] == 0
            assert stages.dispatches[item_token(job.id, "0")] == 1
            lines = [line async for line in ml.results(ML_SECRET, job.id)]
            assert sorted(line.custom_id or "" for line in lines) == ["0", "1"]

            # nor can a team point its own job's notices into another team's namespace
            with pytest.raises(BatchError) as refused:
                await ds.create(
                    CreateJob(
                        key=DS_SECRET, model="mock-1", items=1, input_tokens=10, result_subject=ml.result_subject("x")
                    )
                )
            assert refused.value.info.param == "result_subject"
            # nor at a subject past NATS' 4 KiB control line or with a NUL in it (once a 200: stored on the job,
            # then every notice publish failed)
            for bad in (ds.result_subject("x" * 5000), ds.result_subject("a\x00b")):
                with pytest.raises(BatchError) as refused:
                    await ds.create(
                        CreateJob(key=DS_SECRET, model="mock-1", items=1, input_tokens=10, result_subject=bad)
                    )
                assert (refused.value.info.status, refused.value.info.param) == (400, "result_subject")
        finally:
            await ml.close()
            await ds.close()


async def test_result_subjects_named_before_namespaces_still_reach_the_default_producer(
    bus: Bus, tmp_path: Path
) -> None:
    """`<p>.batch.out.team`, `….team.alpha.x`, `….key.rotation.done` were valid result subjects before namespaces
    (which live under `<p>.batch.out.ns.`): a job may still name them, and the default credential reads them."""
    old_names = [
        f"{S.prefix}.batch.out.team",
        f"{S.prefix}.batch.out.team.alpha.x",
        f"{S.prefix}.batch.out.key.rotation.done",
    ]
    async with batch_service(bus, tmp_path), connected(bus, "batch_producer") as reader:
        default = await producer(bus, None)
        try:
            await default.ready()
            subs = [await reader.nc.subscribe(name) for name in old_names]
            assert await reader.violations() == []
            for name, sub in zip(old_names, subs, strict=True):
                job = await default.submit([BODY], key=QA_SECRET, model="mock-1", result_subject=name)
                done = await default.wait(QA_SECRET, job.id, poll_s=0.1, timeout_s=60)
                assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
                assert msgspec.json.decode((await sub.next_msg(timeout=5)).data)["batch_id"] == job.id, name
        finally:
            await default.close()


async def test_another_team_publishing_first_under_an_items_message_id_does_not_lose_the_item(
    bus: Bus, tmp_path: Path
) -> None:
    """A scoped producer adding items to a job created elsewhere has no item token, so its message id is signed
    with its credential's seed instead; ds publishes first under the bare `<job>/<item>`, on its own namespace's
    subject, and ml's item is not taken for a duplicate of it: the item runs once."""
    async with batch_service(bus, tmp_path) as stages, connected(bus, DS) as evil:
        creator, pipeline = await producer(bus, ML), await producer(bus, ML)
        try:
            await creator.ready()
            job = await creator.create(CreateJob(key=ML_SECRET, model="mock-1", items=1, input_tokens=10))
            assert job.id not in pipeline.item_tokens  # the pipeline did not create the job: no token
            item = BatchItem(job_id=job.id, item_id="0", body=msgspec.Raw(RAW))
            squat = S.batch_items(job.id, DS.name)
            ack = await evil.nc.jetstream().publish(
                squat.name, squat.encode(item), timeout=5, headers={"Nats-Msg-Id": f"{job.id}/0"}
            )
            assert not ack.duplicate and await evil.violations() == []  # ds may publish there, under any id
            assert await pipeline.publish([item]) == 1
            done = await pipeline.wait(ML_SECRET, job.id, poll_s=0.1, timeout_s=20)
            assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
            assert stages.dispatches[item_token(job.id, "0")] == 1
            assert [line.custom_id async for line in pipeline.results(ML_SECRET, job.id)] == ["0"]
        finally:
            await creator.close()
            await pipeline.close()


async def test_an_item_published_again_by_another_process_of_the_credential_runs_once(bus: Bus, tmp_path: Path) -> None:
    """A pipeline that runs again (a new process, nothing remembered) publishes an item the job has a result for:
    it is not run again, and the job counts the item once."""
    async with batch_service(bus, tmp_path) as stages:
        first, restarted = await producer(bus, ML), await producer(bus, ML)
        try:
            await first.ready()
            job = await first.create(CreateJob(key=ML_SECRET, model="mock-1", items=2, input_tokens=20))
            item = BatchItem(job_id=job.id, item_id="0", body=msgspec.Raw(RAW))
            await restarted.publish([item])  # no token: the id signed with the credential's seed

            async def stored() -> bool:
                return len([line async for line in first.results(ML_SECRET, job.id)]) == 1

            assert await _until(stored, timeout=20)
            await first.publish([item])  # the same id: JetStream drops it
            await first.publish([BatchItem(job_id=job.id, item_id="1", body=msgspec.Raw(RAW))])
            done = await first.wait(ML_SECRET, job.id, poll_s=0.1, timeout_s=30)
            assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (2, 2, 0)
            assert stages.dispatches[item_token(job.id, "0")] == 1
            assert sorted([line.custom_id or "" async for line in first.results(ML_SECRET, job.id)]) == ["0", "1"]
        finally:
            await first.close()
            await restarted.close()


async def test_an_items_repeat_is_one_message_and_another_teams_message_cannot_pre_empt_it(bus: Bus) -> None:
    """A repeat of an item is dropped by JetStream (one message), from the same client or from another process
    with the same credential; a message someone else publishes first under the item's bare `<job>/<item>` does not
    take its place. The job is not declared: its items wait."""
    async with connected(bus, "admin") as admin, connected(bus, DS) as evil:
        js = admin.nc.jetstream()
        await ItemQueue(js, S, retention_s=30 * 86400, timeout_s=5).ensure()  # the work queue, as the service makes it

        async def queued(subject: str) -> int:
            info = await js.stream_info(S.batch_items_stream, subjects_filter=subject)
            return (info.state.subjects or {}).get(subject, 0)

        ml, again = await producer(bus, ML), await producer(bus, ML)
        try:
            own = BatchItem(job_id="later-1", item_id="a", body=msgspec.Raw(RAW))
            subject = S.batch_items("later-1", ML.name).name
            assert await ml.publish([own]) == 1 and await ml.publish([own]) == 1
            assert await queued(subject) == 1  # the client's own repeat: dropped as before
            # another process with the same credential (a restarted pipeline, a second pod) gives it the same id
            assert await again.publish([own]) == 1 and await queued(subject) == 1

            squatted = BatchItem(job_id="later-2", item_id="a", body=msgspec.Raw(RAW))
            squat = S.batch_items("later-2", DS.name)
            await evil.nc.jetstream().publish(
                squat.name, squat.encode(squatted), timeout=5, headers={"Nats-Msg-Id": "later-2/a"}
            )
            assert await ml.publish([squatted]) == 1
            assert await queued(S.batch_items("later-2", ML.name).name) == 1  # ml's item is in the queue
        finally:
            await ml.close()
            await again.close()


async def test_a_jobs_consumer_made_before_namespaces_gets_their_items_too(bus: Bus, tmp_path: Path) -> None:
    """A job's durable consumer made by a batch service before namespaces filters only `<p>.batch.items.<job>`;
    binding to it as it is would never deliver the job's items from its namespace. The service updates its
    filters (nats-server ≥ 2.10), and the item runs."""
    async with connected(bus, "admin") as admin:
        js = admin.nc.jetstream()
        await ItemQueue(js, S, retention_s=30 * 86400, timeout_s=5).ensure()
        legacy = ConsumerConfig(
            durable_name=consumer_name("legacy-1"),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=S.batch_items("legacy-1").name,  # as the service made it before namespaces
            ack_wait=3.0,
            max_deliver=-1,
            max_ack_pending=1,
            inactive_threshold=CONSUMER_IDLE_S,
        )
        await js.add_consumer(S.batch_items_stream, legacy)
        async with batch_service(bus, tmp_path) as stages:
            ml = await producer(bus, ML)
            try:
                await ml.ready()
                job = await ml.create(
                    CreateJob(key=ML_SECRET, model="mock-1", items=1, input_tokens=10, job_id="legacy-1")
                )
                await ml.publish([BatchItem(job_id=job.id, item_id="0", body=msgspec.Raw(RAW))])  # its namespace's
                done = await ml.wait(ML_SECRET, job.id, poll_s=0.1, timeout_s=20)
                assert (done.request_counts.completed, done.request_counts.failed) == (1, 0)
                assert stages.dispatches[item_token(job.id, "0")] == 1
            finally:
                await ml.close()
        info = await js.consumer_info(S.batch_items_stream, consumer_name("legacy-1"))
        assert sorted(info.config.filter_subjects or []) == sorted(S.batch_items_of("legacy-1"))


async def _connects(url: str, seed: Path, namespace: Namespace) -> bool:
    async def quiet(exc: Exception) -> None:
        """A refused connection is what some checks expect: not an error to log."""

    nc = Client()
    try:
        await nc.connect(
            url,
            nkeys_seed=str(seed),
            inbox_prefix=S.producer_inbox(namespace.name),
            allow_reconnect=False,
            connect_timeout=2,
            error_cb=quiet,
        )
        return True
    except (NatsError, OSError):  # refused: the error, or the connection closed before it was read
        return False
    finally:
        await nc.close()  # a refused client too: nothing of it is left to be collected later


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def test_a_running_stack_lets_a_credential_in_once_issued_and_out_once_revoked(tmp_path: Path) -> None:
    stack = Stack(config=Path(), data_dir=tmp_path, host="127.0.0.1", port=0, prefix=S.prefix)
    stack.credentials = ensure_credentials(tmp_path / "creds")
    conf = tmp_path / "nats.conf"
    stack._producers = stack._render_nats_config(conf)  # as `start` writes it: no producer issued yet
    stack.nats = start_nats(tmp_path / "js", log_file=tmp_path / "nats.log", config_file=conf)
    try:
        team = Namespace("team", "late")
        key, _ = ensure_producer(tmp_path / "creds", team)
        assert not await _connects(stack.nats.url, key.seed_file, team)
        assert stack._reload_producers() and stack.nats.process.poll() is None  # what `supervise_once` does
        assert stack._reload_producers() == []  # nothing changed since: no second reload
        assert await _until(lambda: _connects(stack.nats.url, key.seed_file, team))
        kept = tmp_path / "kept.nk"  # what the team's pipeline still holds after the revoke
        kept.write_bytes(key.seed_file.read_bytes())
        assert revoke_producer(tmp_path / "creds", team)
        assert stack._reload_producers()
        assert await _until(lambda: _not(_connects(stack.nats.url, kept, team)))
    finally:
        stack.nats.stop()


async def _not(check: Awaitable[bool]) -> bool:
    return not await check
