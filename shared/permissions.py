"""Who may do what on the bus: the NATS permissions of each gatehouse role, generated from `shared/subjects.py`.

Every connection to NATS authenticates as one role. A role may publish and subscribe only where its stage
needs to; NATS refuses everything else (a permissions violation, and the message goes nowhere). A subject
added to `Subjects` gets its permission here, in the function of each role that uses it.

role        publishes                                           subscribes ("subject queue": only that group)
ingress     guard.chat, router.cancel, events.request, pings,    inbox.> (the replies it waits for)
            accounting.usage|requests|request (admin API)
guard       router.chat, inbox.> (blocks, relayed replies),     guard.chat, guard.scan, guard.ping (guard);
            events.guard, events.content                        guardout.> (replies it relays)
router      inbox.>, guardout.> (replies, chunks, heartbeats),  router.chat, router.batch, router.ping (router);
            binbox.> (batch replies), the routing KV bucket     router.cancel, router.status (every replica)
accounting  consumer create/info/next + acks, events stream     accounting.sql|usage|requests|request|reprice
                                                                (accounting); max-deliveries advisory
admin       accounting.sql|reprice, guard.scan, pings, JS API   (its own inbox only)
batch       guard.chat (items), events.request/batch, batch     batch.api, batch.ping (batch); binbox.> (replies)
            streams, jobs KV, files object store, batch.out.>
batch_      batch.items.> (the work queue), batch.api           batch.out.> (result lines)
producer    (the default credential: neither publishes nor     (nor a namespace's: batch.out.ns.>)
            subscribes in a namespace: batch.items.ns.>)
producer    batch.items.ns.<ns>.* (ns: team.<id>, key.<id>),    batch.out.ns.<ns>.> (its namespace's result lines)
 <ns>       batch.api                                           _INBOX.<p>.producer.<ns>.> (its own inbox)
            (one per team or key: `gatehouse batch-producers create`, not a Role; see shared/producers.py)
mcp         mcp.changed (list-changed notices); replies to       mcp.call, mcp.catalog, mcp.catalog.at.*,
            the calls and catalog queries it answers             mcp.ping (mcp)
            (ingress: guard.mcp, guard.mcpscan, mcp.catalog, mcp.catalog.at.*, mcp.ping, events.mcp, the approvals KV;
            subscribes mcp.changed;
            guard: mcp.call; subscribes guard.mcp, guard.mcpscan (guard))
every service above: telemetry.spans and the spans stream's setup (its spans; accounting stores them through
            a durable pull consumer of their own, shared/telemetry.py)

Every role subscribes to its own reply inbox (`Subjects.role_inbox`) and to no other role's. The roles that
answer requests (guard: scans and pings; router: pings; accounting: queries; batch: its API) may publish one
reply to the reply subject of a request they received (`allow_responses`). The services that write events may
create the events stream (creating an existing stream with another config fails; it never changes it); only
admin may update, purge or delete streams and consumers, except that the batch service purges the chunks of
a file it deletes from the files object store. `guard.scan` is an admin tool (bench and operators scanning
text with a policy); no service calls it. Batch items reach the guard from ingress's sibling, the batch
service, which holds no HTTP surface: producers give it items on the work queue (`batch_producer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

from shared.producers import Namespace
from shared.subjects import Subject, Subjects

Role = Literal["ingress", "guard", "router", "accounting", "admin", "batch", "batch_producer", "mcp"]
ROLES: tuple[Role, ...] = ("ingress", "guard", "router", "accounting", "admin", "batch", "batch_producer", "mcp")

JS_API = "$JS.API"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one role may publish and subscribe to; a subscribe entry "subject queue" allows only that queue group."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    # may publish one reply to the reply subject of each request it received (answers to scans, queries, pings)
    allow_responses: bool = False
    # carved out of the allows above (nats-server also withholds a wildcard subscription's messages on these)
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()


def queue_entry(subject: Subject[T]) -> str:
    """A subscribe permission that admits only the subject's queue group (NATS "subject queue" syntax)."""
    return f"{subject.name} {subject.queue}"


def _ping_entry(subjects: Subjects, service: str, queue: str) -> str:
    return f"{subjects.ping(service)} {queue}"


def _events_stream_setup(subjects: Subjects) -> tuple[str, ...]:
    """What a service that writes events calls at startup: create the events stream if missing."""
    stream = subjects.events_stream
    return (f"{JS_API}.INFO", f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}")


def _stream_setup(stream: str) -> tuple[str, ...]:
    """Create a stream if missing, and read its info (creating an existing stream never changes it)."""
    return (f"{JS_API}.STREAM.INFO.{stream}", f"{JS_API}.STREAM.CREATE.{stream}")


def _reader(stream: str) -> tuple[str, ...]:
    """Watch a stream with an ordered (push) consumer, and get its messages directly."""
    return (
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"$JS.FC.{stream}.>",
    )


def _kv(bucket: str) -> tuple[str, ...]:
    """Read, watch and write one KV bucket (creating it if missing)."""
    return (*_stream_setup(f"KV_{bucket}"), *_reader(f"KV_{bucket}"), f"$KV.{bucket}.>")


def _counters(subjects: Subjects) -> tuple[str, ...]:
    """Increment budget, concurrency and quota counters; note reservations (shared/counters.py)."""
    return (
        f"{subjects.prefix}.ctr.>",
        f"{subjects.prefix}.quota.>",
        subjects.reservations_wildcard,
        *_stream_setup(subjects.counters_stream),
        *_stream_setup(subjects.quotas_stream),
        *_stream_setup(subjects.reservations_stream),
    )


def _spans(subjects: Subjects) -> tuple[str, ...]:
    """Publish this process's spans, creating their stream if missing (shared/telemetry.py)."""
    return (subjects.spans.name, *_stream_setup(subjects.spans_stream))


def _kv_reader(bucket: str) -> tuple[str, ...]:
    """Read and watch one KV bucket another role writes (creating it if missing, as its writer would)."""
    return (*_stream_setup(f"KV_{bucket}"), *_reader(f"KV_{bucket}"))


def _files(subjects: Subjects) -> tuple[str, ...]:
    """Write and read the object store of batch files (creating it if missing)."""
    bucket = subjects.files_bucket
    # nats-py finds the stream of an object's chunks by name lookup (STREAM.NAMES lists names only)
    return (*_stream_setup(f"OBJ_{bucket}"), *_reader(f"OBJ_{bucket}"), f"$O.{bucket}.>", f"{JS_API}.STREAM.NAMES")


def ingress(subjects: Subjects) -> Permissions:
    return Permissions(
        publish=(
            subjects.guard_chat.name,
            subjects.router_cancel.name,
            subjects.router_status.name,  # deployment health for the admin API (every router replica answers)
            subjects.events_request.name,
            subjects.events_audit.name,
            subjects.accounting_usage.name,  # usage summaries for the admin API (no free SQL)
            subjects.accounting_requests.name,  # the request explorer of the admin API (fixed queries)
            subjects.accounting_request.name,
            subjects.ping("guard"),
            subjects.ping("router"),
            *_events_stream_setup(subjects),
            *_counters(subjects),
            # agent runs' counters (a stream of their own: its max age is `mcp.run_ttl_s`)
            subjects.runs_wildcard,
            *_stream_setup(subjects.runs_stream),
            *_kv(subjects.directory_bucket),
            *_spans(subjects),
            subjects.batch_api.name,  # the OpenAI Batch API: jobs are the batch service's
            *_files(subjects),  # uploads and downloads of batch files
            # MCP: tool calls to the guard, the catalog from the mcp stage, records, calls waiting for approval
            subjects.guard_mcp.name,
            subjects.guard_mcp_scan.name,  # the arguments of a call that needs an approval, scanned before it
            subjects.mcp_catalog.name,
            subjects.mcp_catalog_replicas,  # the pages of a large list, from the replica whose summary named it
            subjects.events_mcp.name,
            subjects.ping("mcp"),
            *_kv(subjects.mcp_approvals_bucket),
        ),
        subscribe=(subjects.inbox_wildcard, subjects.mcp_changed.name, f"{subjects.role_inbox('ingress')}.>"),
    )


def guard(subjects: Subjects) -> Permissions:
    chat = subjects.guard_chat
    return Permissions(
        publish=(
            subjects.router_chat.name,
            subjects.inbox_wildcard,
            subjects.events_guard.name,
            subjects.events_content.name,  # redacted prompts and responses of callers that log content
            *_events_stream_setup(subjects),
            *_spans(subjects),
            subjects.router_batch.name,  # batch items, to the router's lower-priority subject
            subjects.batch_inbox_wildcard,  # blocks and relayed replies of batch items
            subjects.mcp_call.name,  # scanned tool calls, to the mcp stage
            subjects.hooks_blocked.name,  # blocked requests, for `request_blocked` webhooks
            *_stream_setup(subjects.hooks_stream),
        ),
        subscribe=(
            queue_entry(chat),
            queue_entry(subjects.guard_scan),
            queue_entry(subjects.guard_mcp),
            queue_entry(subjects.guard_mcp_scan),
            _ping_entry(subjects, "guard", chat.queue),
            subjects.guard_output_wildcard,
            f"{subjects.role_inbox('guard')}.>",
        ),
        allow_responses=True,
    )


def router(subjects: Subjects) -> Permissions:
    chat = subjects.router_chat
    return Permissions(
        publish=(
            subjects.inbox_wildcard,
            subjects.guard_output_wildcard,
            subjects.batch_inbox_wildcard,
            # deployment health (open, cooldown, probe) shared by the router replicas; only routers write it
            *_kv(subjects.routing_bucket),
            *_spans(subjects),
            subjects.hooks_deployment.name,  # an opened breaker, for `deployment_down` webhooks
            *_stream_setup(subjects.hooks_stream),
        ),
        subscribe=(
            queue_entry(chat),
            queue_entry(subjects.router_batch),
            subjects.router_cancel.name,  # every replica hears it: only the one serving the request acts
            subjects.router_status.name,  # every replica answers with its own view
            _ping_entry(subjects, "router", chat.queue),
            f"{subjects.role_inbox('router')}.>",
        ),
        allow_responses=True,
    )


def accounting(subjects: Subjects) -> Permissions:
    stream = subjects.events_stream
    consumer = f"{JS_API}.CONSUMER"
    return Permissions(
        publish=(
            *_events_stream_setup(subjects),
            subjects.events_alert.name,
            subjects.events_webhook.name,  # how each webhook delivery ended
            *_spans(subjects),
            *_counters(subjects),
            *_reader(subjects.reservations_stream),
            *_kv(subjects.alerts_bucket),
            # the durable pull consumer (any name: the durable is a setting), its info, its pulls and acks
            f"{consumer}.CREATE.{stream}.>",
            f"{consumer}.DURABLE.CREATE.{stream}.*",
            f"{consumer}.INFO.{stream}.*",
            f"{consumer}.MSG.NEXT.{stream}.*",
            f"$JS.ACK.{stream}.>",
            # the spans' durable pull consumer on their own stream
            f"{consumer}.CREATE.{subjects.spans_stream}.>",
            f"{consumer}.DURABLE.CREATE.{subjects.spans_stream}.*",
            f"{consumer}.INFO.{subjects.spans_stream}.*",
            f"{consumer}.MSG.NEXT.{subjects.spans_stream}.*",
            f"$JS.ACK.{subjects.spans_stream}.>",
            # webhooks and on_event plugins (services/accounting/webhooks.py): the hooks stream, its two durable
            # pull consumers, the events they fan out and the jobs they deliver
            subjects.hooks_alert.name,
            subjects.hooks_request.name,
            subjects.hooks_delivery.name,
            *_stream_setup(subjects.hooks_stream),
            f"{consumer}.CREATE.{subjects.hooks_stream}.>",
            f"{consumer}.DURABLE.CREATE.{subjects.hooks_stream}.*",
            f"{consumer}.INFO.{subjects.hooks_stream}.*",
            f"{consumer}.MSG.NEXT.{subjects.hooks_stream}.*",
            f"$JS.ACK.{subjects.hooks_stream}.>",
        ),
        subscribe=(
            queue_entry(subjects.accounting_sql),
            queue_entry(subjects.accounting_usage),
            queue_entry(subjects.accounting_requests),
            queue_entry(subjects.accounting_request),
            queue_entry(subjects.accounting_reprice),
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*",
            f"{subjects.role_inbox('accounting')}.>",
        ),
        allow_responses=True,
    )


def admin(subjects: Subjects) -> Permissions:
    return Permissions(
        publish=(
            subjects.accounting_sql.name,
            subjects.accounting_reprice.name,  # price stored usage again (writes cost_usd; admin only)
            subjects.guard_scan.name,
            subjects.ping("guard"),
            subjects.ping("router"),
            subjects.ping("batch"),
            subjects.ping("mcp"),
            subjects.mcp_catalog.name,  # `gatehouse mcp list`
            subjects.batch_api.name,  # operators may manage any key's jobs only with that key
            f"{JS_API}.>",  # stream and consumer management, message recovery (`nats stream get`)
        ),
        subscribe=(f"{subjects.role_inbox('admin')}.>",),
    )


def batch(subjects: Subjects) -> Permissions:
    """The batch service: pulls items from the work queue, runs each through the guard like ingress does,
    stores results, keeps job records and files, and answers `batch.api`."""
    items, results = subjects.batch_items_stream, subjects.batch_results_stream
    consumer = f"{JS_API}.CONSUMER"
    files = f"OBJ_{subjects.files_bucket}"
    return Permissions(
        publish=(
            subjects.guard_chat.name,
            subjects.router_cancel.name,  # a cancelled job's items still waiting at the routers' gate
            subjects.events_request.name,
            subjects.events_batch.name,
            *_events_stream_setup(subjects),
            *_counters(subjects),
            *_reader(subjects.reservations_stream),  # a job's reservation: freed by accounting's reaper already?
            *_kv_reader(subjects.directory_bucket),
            *_kv(subjects.batch_jobs_bucket),
            *_kv(subjects.batch_claims_bucket),  # in-flight claims: one copy of an item with the pipeline at a time
            *_files(subjects),
            f"{JS_API}.STREAM.PURGE.{files}",  # deleting a file purges its chunks (the only purge a service makes)
            # the work queue: items of file jobs are enqueued here; one durable pull consumer per job
            subjects.batch_items_wildcard,
            *_stream_setup(items),
            f"{consumer}.CREATE.{items}.>",
            f"{consumer}.DURABLE.CREATE.{items}.*",
            f"{consumer}.INFO.{items}.*",
            f"{consumer}.MSG.NEXT.{items}.*",
            f"$JS.ACK.{items}.>",
            # results, one per item, read back for output files and result pages
            subjects.batch_results_wildcard,
            *_stream_setup(results),
            *_reader(results),
            subjects.batch_out_wildcard,  # result lines to producers that asked for them
            *_spans(subjects),  # each item's span (its trace goes on through the guard and the router)
        ),
        subscribe=(
            queue_entry(subjects.batch_api),
            _ping_entry(subjects, "batch", subjects.batch_api.queue),
            subjects.batch_inbox_wildcard,
            f"{subjects.role_inbox('batch')}.>",
        ),
        allow_responses=True,
    )


def batch_producer(subjects: Subjects) -> Permissions:
    """The default producer credential (`gatehouse up` makes one): publishes items and calls the batch service,
    nothing else, and stays out of every team's and key's namespace (`producer` below)."""
    items, out = subjects.batch_items_wildcard, subjects.batch_out_wildcard
    namespaced = subjects.namespaced_wildcards
    return Permissions(
        publish=(items, subjects.batch_api.name, subjects.ping("batch")),
        subscribe=(out, f"{subjects.role_inbox('batch_producer')}.>"),
        publish_deny=tuple(w for w in namespaced if w.startswith(items[:-1])),
        subscribe_deny=tuple(w for w in namespaced if w.startswith(out[:-1])),
    )


def producer(subjects: Subjects, namespace: Namespace) -> Permissions:
    """A producer credential issued for one team or key (`gatehouse batch-producers create`): items only into its
    namespace's queue subjects, result notices only from its namespace, replies only on its own inbox. The batch
    service runs an item of its namespace only for a job that namespace owns (services/batch/worker.py)."""
    ns = namespace.name
    return Permissions(
        publish=(subjects.batch_items_scoped(ns), subjects.batch_api.name, subjects.ping("batch")),
        subscribe=(subjects.batch_out_scoped(ns), f"{subjects.producer_inbox(ns)}.>"),
    )


def mcp(subjects: Subjects) -> Permissions:
    """The mcp stage: holds the upstream MCP sessions, answers the guard's calls and ingress's catalog queries,
    and tells every ingress replica when a server's lists change. It reaches no other stage."""
    call = subjects.mcp_call
    return Permissions(
        publish=(subjects.mcp_changed.name, *_spans(subjects)),
        subscribe=(
            queue_entry(call),
            queue_entry(subjects.mcp_catalog),
            f"{subjects.mcp_catalog_replicas} {subjects.mcp_catalog.queue}",  # its own: mcp.catalog.at.<replica>
            _ping_entry(subjects, "mcp", call.queue),
            f"{subjects.role_inbox('mcp')}.>",
        ),
        allow_responses=True,
    )


def permissions(role: Role, subjects: Subjects) -> Permissions:
    """The permissions of `role` under the subject tree `subjects`."""
    match role:
        case "ingress":
            return ingress(subjects)
        case "guard":
            return guard(subjects)
        case "router":
            return router(subjects)
        case "accounting":
            return accounting(subjects)
        case "admin":
            return admin(subjects)
        case "batch":
            return batch(subjects)
        case "batch_producer":
            return batch_producer(subjects)
        case "mcp":
            return mcp(subjects)
