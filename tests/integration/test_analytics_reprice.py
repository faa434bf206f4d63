"""Re-pricing stored requests against chDB: the cost of the chosen rows changes exactly as the new price implies,
nothing else changes (other rows, other columns, settled costs, spend_per_hour), the rollups follow the rows, and
running it again is a no-op."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.accounting import migrations
from services.accounting.answers import reprice_answer
from services.accounting.core import REQUESTS, request_row
from services.accounting.sink import ClickHouseSink
from shared.pricing import Rates
from shared.schemas.admin import RepriceRequest
from shared.schemas.chat import Caller, Usage
from shared.subjects import Subjects, encode
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(120)
REPRICE = Subjects("reprice").accounting_reprice
T0 = 1_780_000_000.0  # a fixed past hour boundary region: 2026-05-28
NEW = Rates(input=1.0, output=2.0, name="openai/gpt-4o-mini in 1 out 2 per Mtok")


def _events() -> list[object]:
    out = []
    for i in range(40):
        out.append(
            make_event(
                f"in-{i:02d}",
                requested_model="mini",
                provider="openai",
                provider_kind="openai",
                deployment="openai/gpt-4o-mini",
                provider_model="gpt-4o-mini",
                caller=Caller(key_id=f"k{i % 3}", team="ml" if i % 2 else "search", project="p"),
                usage=Usage(input_tokens=1000 + i * 7, output_tokens=50 + i, cached_tokens=i * 3),
                received_at=T0 + i * 97.0,  # spread over ~an hour, several minutes and two hours
                finished_at=T0 + i * 97.0 + 0.5,
            )
        )
    for i in range(5):  # the same deployment, outside the range
        out.append(
            make_event(
                f"late-{i}",
                provider="openai",
                provider_kind="openai",
                deployment="openai/gpt-4o-mini",
                provider_model="gpt-4o-mini",
                usage=Usage(input_tokens=500, output_tokens=500),
                received_at=T0 + 86_400 * 3 + i,
                finished_at=T0 + 86_400 * 3 + i + 1,
            )
        )
    for i in range(5):  # another model in the range, its price unchanged
        out.append(
            make_event(
                f"other-{i}",
                requested_model="claude",
                provider="anthropic",
                provider_kind="anthropic",
                deployment="anthropic/claude-sonnet-4-5",
                provider_model="claude-sonnet-4-5",
                usage=Usage(input_tokens=2000, output_tokens=300),
                received_at=T0 + 600 + i,
                finished_at=T0 + 601 + i,
            )
        )
    out.append(make_event("no-usage", usage=None, provider_kind="openai", received_at=T0 + 5, finished_at=T0 + 6))
    return out


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{tmp_path / 'ch'}", readable=migrations.tables(migrations.load()))
    await sink.migrate(migrations.load())
    events = _events()
    await sink.insert_new({REQUESTS: [request_row(e, e.provider_kind) for e in events]})  # type: ignore[attr-defined]
    yield sink
    await sink.close()


async def rows(sink: ClickHouseSink, sql: str) -> list[list[object]]:
    result = await sink.query(sql, 100_000)
    return result.rows


ALL_BUT_PRICE = "SELECT * EXCEPT (cost_usd, price_version) FROM requests ORDER BY event_id"
WHOLE = "SELECT * FROM requests ORDER BY event_id"


def _ask(since: float, until: float, **kw: object) -> bytes:
    return REPRICE.encode(RepriceRequest(since=since, until=until, **kw))  # type: ignore[arg-type]


async def test_repricing_changes_exactly_the_range_and_is_idempotent(sink: ClickHouseSink) -> None:
    before = {r[0]: r for r in await rows(sink, WHOLE)}
    rest_before = await rows(sink, ALL_BUT_PRICE)
    spend_before = await rows(sink, "SELECT * FROM spend_per_hour ORDER BY ALL")
    rates = {"openai/gpt-4o-mini": NEW}
    until = T0 + 86_400

    dry = await reprice_answer(sink, REPRICE, _ask(T0, until, dry_run=True), rates, {})
    assert dry.error == "" and dry.dry_run and dry.changed == 40
    assert {r[0]: r for r in await rows(sink, WHOLE)} == before  # a dry run writes nothing

    result = await reprice_answer(sink, REPRICE, _ask(T0, until), rates, {})
    assert result.error == ""
    assert result.rows == 45 and result.changed == 40  # the other model's rows priced the same; no-usage row skipped
    assert result.versions == {"config: openai/gpt-4o-mini in 1 out 2 per Mtok": 40}

    after = {r[0]: r for r in await rows(sink, WHOLE)}
    priced = await rows(
        sink,
        "SELECT event_id, input_tokens, output_tokens, cost_usd, price_version, "
        "settled_cost_usd FROM requests WHERE event_id LIKE 'in-%' ORDER BY event_id",
    )
    assert len(priced) == 40
    for event_id, i, o, cost, version, settled in priced:
        assert cost == (int(i) * 1.0 + int(o) * 2.0) / 1_000_000, event_id  # type: ignore[call-overload]
        assert version == "config: openai/gpt-4o-mini in 1 out 2 per Mtok"
        assert settled is not None and settled != cost  # budgets were settled at the list price and stay so
    # nothing else moved: other rows whole, other columns of these rows (settled cost included)
    for key, row in before.items():
        if not str(key).startswith("in-"):
            assert after[key] == row, key
    assert await rows(sink, ALL_BUT_PRICE) == rest_before
    assert await rows(sink, "SELECT * FROM spend_per_hour ORDER BY ALL") == spend_before

    # the rollups follow the rows, bucket by bucket
    for table, bucket, expr in (
        ("requests_per_minute", "minute", "toStartOfMinute(received_at)"),
        ("requests_per_hour", "hour", "toStartOfHour(received_at)"),
    ):
        rolled = await rows(
            sink,
            f"SELECT {bucket}, team, round(sum(cost_usd), 9), sum(requests) FROM {table} "
            f"GROUP BY {bucket}, team ORDER BY ALL",
        )
        direct = await rows(
            sink,
            f"SELECT {expr} AS b, team, round(sum(ifNull(cost_usd, 0)), 9), count() "
            "FROM requests GROUP BY b, team ORDER BY ALL",
        )
        assert rolled == direct, table
    unpriced = await rows(sink, "SELECT sum(unpriced) FROM requests_per_hour")
    assert unpriced == await rows(sink, "SELECT countIf(cost_usd IS NULL) FROM requests")

    # again: nothing to do, nothing written (the rollups get no correction rows either)
    counts = await rows(
        sink, "SELECT (SELECT count() FROM requests_per_minute), (SELECT count() FROM requests_per_hour)"
    )
    again = await reprice_answer(sink, REPRICE, _ask(T0, until), rates, {})
    assert again.error == "" and again.changed == 0 and again.rows == 45
    assert {r[0]: r for r in await rows(sink, WHOLE)} == after
    assert (
        await rows(sink, "SELECT (SELECT count() FROM requests_per_minute), (SELECT count() FROM requests_per_hour)")
        == counts
    )
    audit = await rows(sink, "SELECT action, actor FROM audit_log")
    assert audit == [["requests.reprice", "admin"]]  # one run changed something


async def test_repricing_back_to_list_prices_restores_the_original_costs(sink: ClickHouseSink) -> None:
    original = await rows(sink, WHOLE)
    until = T0 + 86_400
    assert (await reprice_answer(sink, REPRICE, _ask(T0, until), {"openai/gpt-4o-mini": NEW}, {})).changed == 40
    back = await reprice_answer(sink, REPRICE, _ask(T0, until), {}, {})  # the override removed from the config
    assert back.changed == 40 and len(back.versions) == 1 and next(iter(back.versions)).startswith("genai-prices")
    assert await rows(sink, WHOLE) == original


async def test_filters_narrow_the_rows_and_a_bad_range_is_refused(sink: ClickHouseSink) -> None:
    rates = {"openai/gpt-4o-mini": NEW, "anthropic/claude-sonnet-4-5": Rates(input=3, output=15, name="c")}
    only = await reprice_answer(sink, REPRICE, _ask(T0, T0 + 86_400, models=["claude"]), rates, {})
    assert only.rows == 5 and only.changed == 5
    assert (await rows(sink, "SELECT count() FROM requests WHERE price_version LIKE 'config: openai%'")) == [[0]]
    bad = await reprice_answer(sink, REPRICE, _ask(T0 + 10, T0), rates, {})
    assert "ends before it starts" in bad.error
    assert (await reprice_answer(sink, REPRICE, encode({"since": "x"}), rates, {})).error.startswith("bad reprice")


def test_the_fixture_times_are_in_the_past() -> None:
    assert T0 < time.time()
