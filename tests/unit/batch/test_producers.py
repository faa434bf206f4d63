"""Producer namespaces as data: which subjects a team's or key's credential owns, which jobs a namespace owns,
where a job may send its notices, and the nats-server users a scoped credential becomes."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatehouse.credentials import ensure_producer, producer_keys, public_key, revoke_producer
from gatehouse.natsconf import authorization_block
from services.batch.plan import check_result_subject
from shared.errors import InvalidRequestError
from shared.permissions import batch_producer, producer
from shared.producers import Namespace, may_notify, owner_of
from shared.schemas.chat import Caller
from shared.subjects import Subjects

S = Subjects("gh")
ML = Namespace("team", "ml")
ML_KEY = Caller(key_id="k-ml", team="ml")
DS_KEY = Caller(key_id="k-ds", team="ds")
LONE_KEY = Caller(key_id="k-lone")  # a key of no team


@pytest.mark.parametrize("text", ["team", "team.", "org.ml", "team.a.b", "team.*", "team.>", "key. x", ".ml"])
def test_a_namespace_is_a_team_or_key_and_one_id_token(text: str) -> None:
    with pytest.raises(ValueError, match=r"namespace|id"):
        Namespace.parse(text)
    assert owner_of(text) is None


def test_a_namespace_owns_the_jobs_of_its_team_or_its_key_only() -> None:
    assert Namespace.parse("team.ml") == ML and ML.name == "team.ml"
    assert ML.owns(ML_KEY) and not ML.owns(DS_KEY) and not ML.owns(LONE_KEY)
    assert Namespace("key", "k-lone").owns(LONE_KEY) and not Namespace("key", "k-lone").owns(ML_KEY)
    assert not Namespace("team", "k-lone").owns(LONE_KEY)  # a team id is not a key id


def test_the_namespace_of_an_items_subject_comes_from_its_tokens() -> None:
    assert S.batch_items("job1").name == "gh.batch.items.job1"
    assert S.batch_items("job1", "team.ml").name == "gh.batch.items.ns.team.ml.job1"
    assert S.batch_items_namespace("gh.batch.items.job1") == ""
    assert S.batch_items_namespace("gh.batch.items.ns") == ""  # a job whose id is `ns`
    assert S.batch_items_namespace("gh.batch.items.ns.team.ml.job1") == "team.ml"
    assert S.batch_items_namespace("gh.batch.items.team.ml.job1") is None  # not under the namespace token
    assert S.batch_items_namespace("gh.batch.items.ns.team.ml") is None
    assert S.batch_items_namespace("gh.batch.out.job1") is None
    assert S.batch_items_of("job1") == ["gh.batch.items.job1", "gh.batch.items.ns.*.*.job1"]


# result subjects a producer could choose before namespaces existed: they name no namespace, as they did not then
OLD_NAMES = ["gh.batch.out.team", "gh.batch.out.team.alpha.x", "gh.batch.out.key.rotation.done", "gh.batch.out.ns"]


def test_a_job_sends_notices_outside_every_namespace_or_into_its_own() -> None:
    assert may_notify(S, "gh.batch.out.enrich", ML_KEY)  # the default credential's subjects, as before
    assert may_notify(S, "gh.batch.out.enrich.v2", ML_KEY)
    for old in OLD_NAMES:
        assert S.batch_out_namespace(old) == "", old
        assert may_notify(S, old, ML_KEY) and may_notify(S, old, DS_KEY) and may_notify(S, old, None), old
    assert may_notify(S, "gh.batch.out.ns.team.ml.enrich", ML_KEY)
    assert may_notify(S, "gh.batch.out.ns.key.k-ml.enrich", ML_KEY)
    assert not may_notify(S, "gh.batch.out.ns.team.ds.enrich", ML_KEY)  # another team's producers trust this
    assert not may_notify(S, "gh.batch.out.ns.key.k-ds.enrich", ML_KEY)
    assert not may_notify(S, "gh.batch.out.ns.team.ml", ML_KEY)  # a namespace, no name
    assert not may_notify(S, "gh.batch.out.ns.org.ml.x", ML_KEY)  # no namespace kind
    assert not may_notify(S, "gh.batch.out.ns.team..x", ML_KEY)
    assert not may_notify(S, "gh.guard.chat", ML_KEY)
    assert not may_notify(S, "gh.batch.out.", ML_KEY)
    for wild in (
        "gh.batch.out.*",
        "gh.batch.out.>",
        "gh.batch.out.x.*.y",
        "gh.batch.out.ns.team.ml.>",
        "gh.batch.out.a b",
    ):
        assert not may_notify(S, wild, ML_KEY), wild
    assert may_notify(S, "gh.batch.out.enrich", None)  # a job whose record is gone: its notices as before
    assert not may_notify(S, "gh.batch.out.ns.team.ml.enrich", None)


def test_a_job_declared_with_another_namespaces_result_subject_is_refused() -> None:
    assert check_result_subject(S, "", ML_KEY) == ""
    assert check_result_subject(S, "gh.batch.out.ns.team.ml.x", ML_KEY) == "gh.batch.out.ns.team.ml.x"
    for old in OLD_NAMES:
        assert check_result_subject(S, old, DS_KEY) == old
    refusals = {
        "gh.batch.out.ns.team.ds.x": "namespace of another team or key",
        "gh.batch.out.ns.key.k-ds.x": "namespace of another team or key",
        "gh.inbox.x": "must be a subject under gh.batch.out.",
        "gh.batch.out.": "must be a subject under gh.batch.out.",
        "gh.batch.out.*": "no wildcards",
        "gh.batch.out.enrich.>": "no wildcards",
        "gh.batch.out.enrich..x": "no empty tokens",
        "gh.batch.out.ns.team.ml": "must be a namespace's result subject (gh.batch.out.ns.<team|key>.<id>.<name>)",
        "gh.batch.out.ns.org.ml.x": "must be a namespace's result subject",
        # longer than NATS' 4 KiB control line: accepted, stored on every result, then every notice failed
        "gh.batch.out." + "x" * 5000: "at most 256 characters",
        "gh.batch.out." + "x" * 244: "at most 256 characters",  # 257 in all
        "gh.batch.out.a\x00b": "printable ASCII",
        "gh.batch.out.a\x7fb": "printable ASCII",
        "gh.batch.out.a\x1bb": "printable ASCII",
        "gh.batch.out.caf\u00e9": "printable ASCII",
        "gh.batch.out.a\u2028b": "printable ASCII",
    }
    for subject, why in refusals.items():
        with pytest.raises(InvalidRequestError) as refused:
            check_result_subject(S, subject, ML_KEY)
        assert refused.value.param == "result_subject" and refused.value.info().status == 400
        assert why in refused.value.message, (subject[:40], refused.value.message)
        assert not may_notify(S, subject, ML_KEY), subject[:40]  # nor may an item name it (checked per item)
    longest = "gh.batch.out." + "x" * 243  # 256 in all
    assert check_result_subject(S, longest, ML_KEY) == longest and may_notify(S, longest, ML_KEY)
    assert check_result_subject(S, "gh.batch.out.a-b_c~!9", ML_KEY) == "gh.batch.out.a-b_c~!9"


def test_a_scoped_producer_may_use_its_namespace_only() -> None:
    perms = producer(S, ML)
    assert set(perms.publish) == {"gh.batch.items.ns.team.ml.*", "gh.batch.api", "gh.batch.ping"}
    assert set(perms.subscribe) == {"gh.batch.out.ns.team.ml.>", "_INBOX.gh.producer.team.ml.>"}
    assert not perms.allow_responses
    default = batch_producer(S)
    # the default credential keeps its subjects (docs, `gatehouse up`) but is refused every namespace
    assert "gh.batch.items.>" in default.publish and "gh.batch.out.>" in default.subscribe
    assert set(default.publish_deny) == {"gh.batch.items.ns.>"}
    assert set(default.subscribe_deny) == {"gh.batch.out.ns.>"}
    assert not S.producer_inbox("team.ml").startswith(S.role_inbox("batch_producer"))


def test_the_config_carries_one_user_per_issued_producer(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    made, created = ensure_producer(creds, ML)
    again, created_again = ensure_producer(creds, ML)
    assert created and not created_again and again == made
    assert made.seed_file == creds / "producers" / "team.ml.nk"
    assert made.seed_file.stat().st_mode & 0o777 == 0o600
    (creds / "producers" / "notes.nk").write_text("not a namespace")  # ignored, not fatal
    keys = producer_keys(creds)
    assert list(keys) == [ML]
    block = authorization_block(S, {}, {ns: k.public_key for ns, k in keys.items()})
    assert f'nkey: "{made.public_key}"' in block
    assert '"gh.batch.items.ns.team.ml.*"' in block and '"gh.batch.out.ns.team.ml.>"' in block
    assert revoke_producer(creds, ML) and not revoke_producer(creds, ML)
    assert producer_keys(creds) == {}


def test_the_cli_issues_lists_and_revokes_one_credential_per_namespace(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gatehouse.cli import app

    runner, data = CliRunner(), ["--data-dir", str(tmp_path)]
    made = runner.invoke(app, ["batch-producers", "create", "--team", "ml", *data])
    assert made.exit_code == 0, made.output
    seed = tmp_path / "creds" / "producers" / "team.ml.nk"
    assert f'seed_file="{seed}", namespace="team.ml"' in made.output  # one line: copied whole
    assert seed.read_bytes() not in made.output.encode()  # the secret itself is never printed
    first = seed.read_bytes()
    again = runner.invoke(app, ["batch-producers", "create", "--team", "ml", *data])
    assert "already issued" in again.output and seed.read_bytes() == first  # kept, not replaced
    for wrong in (["--team", "ml", "--key", "k"], [], ["--team", "a.b"], ["--key", "*"]):
        refused = runner.invoke(app, ["batch-producers", "create", *wrong, *data])
        assert refused.exit_code == 2, wrong
    listed = runner.invoke(app, ["batch-producers", "list", *data])
    assert listed.output.split() == ["team.ml", public_key(seed)]
    assert runner.invoke(app, ["batch-producers", "revoke", "--team", "ml", *data]).exit_code == 0
    assert not seed.exists()
    assert runner.invoke(app, ["batch-producers", "revoke", "--team", "ml", *data]).exit_code == 1


def test_an_item_refused_for_its_namespace_is_counted_as_such() -> None:
    from services.batch.worker import WRONG_NAMESPACE, rejection

    assert rejection(f"{WRONG_NAMESPACE}: not its job's") == "wrong_namespace"
    assert rejection("item id of 0 characters (1 to 512)") == "invalid_item_id"
    assert rejection("neither the job's item token nor its API key") == "unauthenticated"
