"""The roles' permissions as data: every subject has its publisher and subscriber, each hop has exactly
one role allowed to feed it, and the deploy files carry the same permissions as the code."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gatehouse.natsconf import authorization_block, render_config
from shared.natsconn import (
    SERVER_PAYLOAD_CAP,
    BusPayloadTooSmallError,
    check_max_payload,
    required_max_payload,
    server_max_payload,
)
from shared.permissions import ROLES, permissions
from shared.subjects import Subject, Subjects

REPO = Path(__file__).resolve().parents[2]
S = Subjects("gh")
MIB = 1024 * 1024
# subjects that only name the schema of a reply; replies travel on the asker's inbox
REPLY_SCHEMAS = {"sql_result", "scan_result"}


def _subjects() -> dict[str, Subject[object]]:
    return {
        name: getattr(S, name)
        for name in dir(Subjects)
        if not name.startswith("_") and isinstance(getattr(S, name), Subject) and name not in REPLY_SCHEMAS
    }


def _publishers(subject: str) -> set[str]:
    return {role for role in ROLES if subject in permissions(role, S).publish}


def _subscribers(entry: str) -> set[str]:
    return {role for role in ROLES if entry in permissions(role, S).subscribe}


def test_every_subject_has_a_permission_to_publish_and_one_to_receive_it() -> None:
    subjects = _subjects()
    assert {"guard_chat", "router_chat", "events_request", "events_guard", "accounting_sql", "guard_scan"} <= set(
        subjects
    )
    for name, subject in subjects.items():
        assert _publishers(subject.name), f"nobody may publish {name}: add it to a role in shared/permissions.py"
        if subject.name.startswith((f"{S.prefix}.events.", f"{S.prefix}.telemetry.", f"{S.prefix}.hooks.")):
            continue  # stored by JetStream, consumed through accounting's durable consumers
        entry = f"{subject.name} {subject.queue}" if subject.queue else subject.name
        assert _subscribers(entry), f"nobody may receive {name}"
        if subject.queue:
            assert not _subscribers(subject.name), f"{name} may be read outside its queue group"


def test_each_hop_is_fed_by_one_role_only() -> None:
    assert _publishers(S.guard_chat.name) == {"ingress", "batch"}  # HTTP requests, and batch items
    assert _publishers(S.router_chat.name) == {"guard"}
    assert _publishers(S.events_request.name) == {"ingress", "batch"}  # one record per request, per batch item
    assert _publishers(S.events_guard.name) == {"guard"}
    assert _publishers(S.accounting_sql.name) == {"admin"}
    assert _publishers(S.guard_scan.name) == {"admin"}
    assert _publishers(S.inbox_wildcard) == {"guard", "router"}
    assert _publishers(S.guard_output_wildcard) == {"router"}
    assert _subscribers(S.inbox_wildcard) == {"ingress"}
    assert _subscribers(S.guard_output_wildcard) == {"guard"}
    # batch items: only the guard feeds the router's batch lane, only the batch service reads batch inboxes
    assert _publishers(S.router_batch.name) == {"guard"}
    assert _publishers(S.batch_inbox_wildcard) == {"guard", "router"}
    assert _subscribers(S.batch_inbox_wildcard) == {"batch"}
    assert _publishers(S.batch_items_wildcard) == {"batch", "batch_producer"}
    assert _publishers(S.events_batch.name) == {"batch"}
    assert _subscribers(S.batch_out_wildcard) == {"batch_producer"}
    # the hooks stream: each event it fans out to webhooks has one producer
    assert _publishers(S.hooks_blocked.name) == {"guard"}
    assert _publishers(S.hooks_deployment.name) == {"router"}
    assert _publishers(S.hooks_alert.name) == {"accounting"}
    assert _publishers(S.hooks_delivery.name) == {"accounting"}
    assert _publishers(S.events_webhook.name) == {"accounting"}
    producer = permissions("batch_producer", S)
    assert not any(p.startswith("$JS") for p in producer.publish)  # no stream API: items and calls only


def test_each_role_reads_replies_on_its_own_inbox_only_and_only_admin_manages_streams() -> None:
    for role in ROLES:
        perms = permissions(role, S)
        inboxes = [e for e in perms.subscribe if e.startswith("_INBOX")]
        assert inboxes == [f"_INBOX.gh.{role}.>"]
        js = [p for p in perms.publish if p.startswith("$JS.API")]
        if role == "admin":
            assert js == ["$JS.API.>"]
        else:
            assert "$JS.API.>" not in js
            purges = [p for p in js if ".PURGE." in p]
            # the batch service deletes files from the files object store (its chunks): the one purge a role makes
            assert purges == ([f"$JS.API.STREAM.PURGE.OBJ_{S.files_bucket}"] if role == "batch" else [])
            assert not any(op in p for p in js for op in (".DELETE.", ".UPDATE."))
            # consumers: accounting's on the event and reservation streams; ingress watches its KV bucket;
            # the batch service's on its work queue, results, job records and files
            watched = (".KV_", ".OBJ_")
            assert role in ("accounting", "batch") or all(
                ".CONSUMER." not in p or any(w in p for w in watched) for p in js
            )


def test_max_payload_follows_the_body_limit() -> None:
    assert server_max_payload(4 * MIB) == 9 * MIB
    assert server_max_payload(40 * MIB) == SERVER_PAYLOAD_CAP
    assert server_max_payload(4 * MIB) >= required_max_payload(4 * MIB)
    check_max_payload(9 * MIB, 4 * MIB)
    with pytest.raises(BusPayloadTooSmallError, match=r"server\.max_body_bytes"):
        check_max_payload(1 * MIB, 4 * MIB)  # nats-server's default below the shipped 4 MiB body limit
    with pytest.raises(BusPayloadTooSmallError):
        check_max_payload(SERVER_PAYLOAD_CAP, 64 * MIB)  # a body limit no NATS server can carry
    assert "max_payload: 9437184\n" in render_config(S, {"admin": "UKEY"}, max_payload=server_max_payload(4 * MIB))


def test_the_deploy_files_carry_the_generated_permissions() -> None:
    refs = {role: f"$GATEHOUSE_NKEY_{role.upper()}" for role in ROLES}
    generated = authorization_block(S, refs)
    shipped = (REPO / "deploy" / "nats" / "gatehouse-auth.conf").read_text()
    body = "".join(line for line in shipped.splitlines(True) if not line.startswith("#"))
    assert body == generated, "regenerate deploy/nats/gatehouse-auth.conf with `gatehouse nats-config --prefix gh`"
    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "gatehouse.yaml").read_text()))
    auth_map = next(d for d in docs if d["metadata"]["name"] == "gatehouse-nats-auth")
    assert auth_map["data"]["gatehouse-auth.conf"] == shipped
    cluster = (REPO / "deploy" / "nats" / "nats-cluster.conf").read_text()
    assert "include ./gatehouse-auth.conf" in cluster
    assert f"max_payload: {server_max_payload(4 * MIB)}" in cluster


def test_deploy_manifests_give_each_service_its_own_seed_and_provider_keys_to_the_router_only() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "docker-compose.yml").read_text())
    for role in ("ingress", "guard", "router", "accounting", "batch"):
        service = compose["services"][role]
        assert service["secrets"] == [f"nats-{role}"]
        env = service["environment"]
        seed = env.get("GATEHOUSE_NATS_NKEY_SEED_FILE") or env.get("GATEHOUSE_ACCOUNTING_NATS_NKEY_SEED_FILE")
        assert seed == f"/run/secrets/nats-{role}"
        assert ("OPENAI_API_KEY" in env) == (role == "router")
    assert compose["services"]["ingress"]["environment"]["GATEHOUSE_INGRESS_HOST"] == "0.0.0.0"
    assert "nats-admin" not in compose["secrets"]
    for name in ("nats-0", "nats-1", "nats-2"):
        assert set(compose["services"][name]["environment"]) >= {f"GATEHOUSE_NKEY_{r.upper()}" for r in ROLES}

    docs = list(yaml.safe_load_all((REPO / "deploy" / "k8s" / "gatehouse.yaml").read_text()))
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        role = doc["metadata"]["labels"]["service"]
        pod = doc["spec"]["template"]["spec"]
        secret = next(v["secret"] for v in pod["volumes"] if v["name"] == "nats-seed")
        assert secret["items"] == [{"key": f"{role}.nk", "path": f"{role}.nk"}]
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert ("OPENAI_API_KEY" in env) == (role == "router")
