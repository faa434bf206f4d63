"""The replies of the accounting service's request/reply subjects (never an exception: errors are data).

`answer` runs an analytics query (free SQL from the admin, or a fixed query built for the admin API) through
the gate; the others build their query from fixed parts first (`usage`, `explorer`) or re-price (`reprice`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

import msgspec

from services.accounting import analytics, explorer
from services.accounting.analytics import QueryRefused
from services.accounting.core import AUDIT_LOG, audit_row
from services.accounting.explorer import BadExplorerQuery
from services.accounting.sink import ClickHouseSink
from shared.pricing import Rates
from shared.schemas.admin import (
    RepriceRequest,
    RepriceResult,
    RequestLookup,
    RequestsQuery,
    RequestStory,
    SqlQuery,
    SqlResult,
)
from shared.schemas.events import AuditEvent
from shared.subjects import Service

log = logging.getLogger("gatehouse.accounting")


async def requests_answer(
    sink: ClickHouseSink,
    sql: Service[SqlQuery, SqlResult],
    subject: Service[RequestsQuery, SqlResult],
    body: bytes,
    max_reply_bytes: int,
) -> SqlResult:
    """The request explorer's list."""
    try:
        text = explorer.requests_sql(subject.decode(body))
    except (BadExplorerQuery, msgspec.MsgspecError) as exc:
        return SqlResult(error=f"bad request query: {exc}")
    return await answer(
        sink, sql, sql.encode(SqlQuery(sql=text, max_rows=explorer.MAX_LIST)), max_reply_bytes=max_reply_bytes
    )


async def story_answer(
    sink: ClickHouseSink, subject: Service[RequestLookup, RequestStory], body: bytes, max_reply_bytes: int
) -> RequestStory:
    try:
        return await request_story(sink, subject.decode(body), max_reply_bytes)
    except (BadExplorerQuery, msgspec.MsgspecError) as exc:
        return RequestStory(error=f"bad request lookup: {exc}")
    except Exception as exc:
        return RequestStory(error=f"lookup failed: {' '.join(str(exc).split())[:500]}")


async def reprice_answer(
    sink: ClickHouseSink,
    subject: Service[RepriceRequest, RepriceResult],
    body: bytes,
    rates: Mapping[str, Rates],
    kinds: Mapping[str, str],
) -> RepriceResult:
    """Re-price a time range (see `reprice`), and audit a run that changed something."""
    try:
        request = subject.decode(body)
    except msgspec.MsgspecError as exc:
        return RepriceResult(error=f"bad reprice request: {exc}")
    if request.until <= request.since:
        return RepriceResult(error="the period ends before it starts")
    try:
        result = await sink.reprice(request, rates, kinds)
    except Exception as exc:
        log.exception("re-pricing failed")
        return RepriceResult(error=f"re-pricing failed: {' '.join(str(exc).split())[:500]}")
    log.info(
        "re-priced %d of %d requests%s: $%.6f -> $%.6f",
        result.changed,
        result.rows,
        " (dry run)" if request.dry_run else "",
        result.cost_before_usd,
        result.cost_after_usd,
    )
    if not request.dry_run and result.changed:
        await sink.insert_new({AUDIT_LOG: [audit_row(reprice_audit(request, result))]})
    return result


def reprice_audit(request: RepriceRequest, result: RepriceResult) -> AuditEvent:
    """The audit record of a re-pricing run: what was asked, what changed."""
    return AuditEvent(
        event_id=uuid.uuid4().hex,
        at=time.time(),
        actor="admin",
        action="requests.reprice",
        target_kind="requests",
        target_id=f"{request.since:.3f}..{request.until:.3f}",
        before=msgspec.json.encode(request).decode(),
        after=msgspec.json.encode(result).decode(),
    )


async def request_story(sink: ClickHouseSink, lookup: RequestLookup, max_reply_bytes: int) -> RequestStory:
    """One request's record, the guard's verdicts, its logged content and its trace spans (where a spans table
    exists); a team admin's lookup finds its own team's requests only."""
    found = await _rows(sink, explorer.request_sql(lookup.request_id))
    if not found or (lookup.team and found[0].get("team") != lookup.team):
        return RequestStory(found=False)
    record = found[0]
    verdicts = await _rows(sink, explorer.verdicts_sql(lookup.request_id))
    content = await _rows(sink, explorer.content_sql(lookup.request_id))
    spans: list[dict[str, object]] = []
    trace = str(record.get("trace_id") or "")
    if trace and "spans" in sink.readable:
        spans = await _rows(sink, explorer.spans_sql(trace), quiet=True)
    story = RequestStory(found=True, request=record, verdicts=verdicts, content=content, spans=spans)
    if len(msgspec.msgpack.encode(story)) > max_reply_bytes:  # long logged texts: the record first
        story = msgspec.structs.replace(story, content=[], spans=spans[:50], error="content left out: too large")
    return story


async def _rows(sink: ClickHouseSink, text: str, *, quiet: bool = False) -> list[dict[str, object]]:
    try:
        result = await sink.query(text, 1000)
    except Exception:
        if quiet:
            return []
        raise
    return [dict(zip(result.columns, row, strict=True)) for row in result.rows]


async def answer(
    sink: ClickHouseSink, subject: Service[SqlQuery, SqlResult], body: bytes, *, max_reply_bytes: int = 1_000_000
) -> SqlResult:
    """The reply to one analytics query message: rows, or an error string; never an exception."""
    try:
        query = subject.decode(body)
    except Exception:
        return SqlResult(error="malformed query message (expected a msgpack SqlQuery)")
    try:
        result = analytics.fit(await sink.query(query.sql, query.max_rows), max_reply_bytes)
    except QueryRefused as exc:
        return SqlResult(error=f"query refused: {exc}")
    except Exception as exc:
        text = " ".join(str(exc).split())
        return SqlResult(error=f"query failed: {text[:500] if text else type(exc).__name__}")
    return SqlResult(columns=result.columns, rows=result.rows, truncated=result.truncated)
