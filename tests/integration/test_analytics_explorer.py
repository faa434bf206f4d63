"""The request explorer, usage summaries and the content log against chDB, through the accounting answer path
(the same gate as every analytics query)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.accounting import migrations
from services.accounting.answers import answer, requests_answer, story_answer
from services.accounting.core import GUARD_VERDICTS, REQUEST_CONTENT, REQUESTS, content_row, guard_row, request_row
from services.accounting.sink import ClickHouseSink
from services.accounting.usage import usage_sql
from shared.schemas.admin import RequestLookup, RequestsQuery, SqlQuery, UsageQuery
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import ContentEvent, ContentText, GuardEvent
from shared.subjects import Subjects
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(120)
S = Subjects("explore")
NOW = time.time()


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path / 'ch'}", readable=migrations.tables(migrations.load()))
    await sink.migrate(migrations.load())
    ml = Caller(key_id="k-ml", team="ml", project="search")
    events = [
        make_event("ok-1", caller=ml, received_at=NOW - 60, trace_id="t-ok"),
        make_event(
            "fail-1",
            caller=ml,
            status=502,
            received_at=NOW - 30,
            trace_id="t-fail",
            attempts=[
                Attempt(provider="openai", deployment="openai/a", status=503, latency_ms=20, error_code="overloaded"),
                Attempt(provider="backup", deployment="backup/b", status=502, latency_ms=30, error_code="bad"),
            ],
            guard_action="redact",
            guard_findings=[GuardFinding(scanner="pii", rule="email", action="redact", start=5, end=25)],
        ),
        make_event("old-fail", caller=ml, status=500, received_at=NOW - 7200),
        make_event("other-team", caller=Caller(key_id="k2", team="web"), status=503, received_at=NOW - 10),
        make_event("gpt", requested_model="gpt-4o", provider="openai", usage=Usage(input_tokens=9, output_tokens=1)),
    ]
    verdict = GuardEvent(
        event_id="v1", request_id="fail-1", policy="pii", action="redact", at=NOW - 30,
        findings=[GuardFinding(scanner="pii", rule="email", action="redact", start=5, end=25)],
    )  # fmt: skip
    content = [
        ContentEvent(
            event_id="fail-1.input", request_id="fail-1", at=NOW - 30, caller=Caller(key_id="k-ml", team="ml",
            log_content_days=30), direction="input", policy="pii", texts=[ContentText(location="messages[0].content",
            text="mail <EMAIL_1> please")], redactions=1, retention_days=30,
        ),
        # kept one day, stored ten days ago: ClickHouse's TTL drops it
        ContentEvent(event_id="gone.input", request_id="gone", at=NOW - 10 * 86_400, caller=ml, retention_days=1,
                     texts=[ContentText(location="messages[0].content", text="old")]),
    ]  # fmt: skip
    await sink.insert_new(
        {
            REQUESTS: [request_row(e) for e in events],
            GUARD_VERDICTS: [guard_row(verdict)],
            REQUEST_CONTENT: [content_row(c) for c in content],
        }
    )
    yield sink
    await sink.close()


async def listing(sink: ClickHouseSink, **kw: object) -> list[str]:
    subject = S.accounting_requests
    result = await requests_answer(sink, S.accounting_sql, subject, subject.encode(RequestsQuery(**kw)), 1_000_000)  # type: ignore[arg-type]
    assert result.error == "", result.error
    at = result.columns.index("request_id")
    return [str(r[at]) for r in result.rows]


async def test_requests_are_listed_newest_first_by_team_status_and_time(sink: ClickHouseSink) -> None:
    assert await listing(sink, filters={"team": "ml"}, status="5xx", since=NOW - 3600) == ["fail-1"]
    assert await listing(sink, filters={"team": "ml"}, status="error") == ["fail-1", "old-fail"]
    assert await listing(sink, status="503") == ["other-team"]
    assert await listing(sink, filters={"team": "ml"}, status="ok", since=NOW - 3600) == ["ok-1"]
    assert await listing(sink, filters={"guard_action": "redact"}) == ["fail-1"]
    subject = S.accounting_requests
    bad = await requests_answer(
        sink, S.accounting_sql, subject, subject.encode(RequestsQuery(filters={"1=1) OR (1": "x"})), 1_000_000
    )
    assert "unknown filter" in bad.error
    bad = await requests_answer(sink, S.accounting_sql, subject, subject.encode(RequestsQuery(status="5xx'")), 10**6)
    assert "status" in bad.error


async def test_a_request_story_has_attempts_findings_verdicts_and_content(sink: ClickHouseSink) -> None:
    subject = S.accounting_request
    story = await story_answer(sink, subject, subject.encode(RequestLookup(request_id="fail-1")), 1_000_000)
    assert story.found and story.error == ""
    r = story.request
    assert r["status"] == 502 and r["team"] == "ml" and r["attempts.status"] == [503, 502]
    assert r["attempts.error_code"] == ["overloaded", "bad"] and r["guard_findings.rule"] == ["email"]
    assert [v["action"] for v in story.verdicts] == ["redact"]
    assert story.content[0]["texts.text"] == ["mail <EMAIL_1> please"] and story.content[0]["redactions"] == 1
    assert story.spans == []  # no spans table on this branch: nothing said
    hidden = await story_answer(sink, subject, subject.encode(RequestLookup(request_id="fail-1", team="web")), 10**6)
    assert not hidden.found  # another team's admin does not see it
    missing = await story_answer(sink, subject, subject.encode(RequestLookup(request_id="nope")), 10**6)
    assert not missing.found and missing.error == ""
    bad = await story_answer(sink, subject, subject.encode(RequestLookup(request_id="x' OR '1")), 10**6)
    assert "request id" in bad.error


async def test_spans_show_for_the_requests_trace(sink: ClickHouseSink) -> None:
    await sink.command(
        "INSERT INTO spans (trace_id, span_id, parent_span_id, name, service, start_time, end_time, duration_ms) "
        "VALUES ('t-fail', 's2', 's1', 'router.dispatch', 'router', now64(), now64(), 1), "
        "('t-fail', 's1', '', 'ingress.request', 'ingress', now64() - 1, now64(), 2), "
        "('t-other', 's9', '', 'x', 'ingress', now64(), now64(), 3)"
    )
    subject = S.accounting_request
    story = await story_answer(sink, subject, subject.encode(RequestLookup(request_id="fail-1")), 1_000_000)
    assert [s["name"] for s in story.spans] == ["ingress.request", "router.dispatch"]


async def test_content_past_its_retention_is_gone(sink: ClickHouseSink) -> None:
    rows = (await sink.query("SELECT request_id FROM request_content ORDER BY request_id", 10)).rows
    assert rows == [["fail-1"]]


async def test_usage_by_model_provider_week_and_month(sink: ClickHouseSink) -> None:
    for group in (["model", "provider"], ["week"], ["month", "team"], ["deployment", "provider_kind"]):
        text = usage_sql(UsageQuery(group_by=group, since=NOW - 86_400), time.time() + 1)
        result = await answer(sink, S.accounting_sql, S.accounting_sql.encode(SqlQuery(sql=text)))
        assert result.error == "" and result.rows, (group, result.error)
        assert result.columns[: len(group)] == group
    text = usage_sql(UsageQuery(group_by=["model"], since=NOW - 86_400), time.time() + 1)
    rows = (await answer(sink, S.accounting_sql, S.accounting_sql.encode(SqlQuery(sql=text)))).rows
    assert {r[0] for r in rows} == {"mock-1", "gpt-4o"}
