"""The analytics read path's pure parts: limits as settings, replies cut to size, parser complaints made readable."""

from __future__ import annotations

import msgspec
import pytest

from services.accounting.analytics import Answer, QueryLimits, fit, parse_failure
from services.accounting.sink import ClickHouseSink


class FakeClickHouseError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def test_limits_become_clickhouse_settings_and_overflow_cuts_instead_of_failing() -> None:
    limits = QueryLimits(timeout_s=5, max_rows=1000, max_result_bytes=1 << 20, max_memory_bytes=1 << 28)
    assert limits.settings(11) == {
        "max_execution_time": 5,
        "max_result_rows": 11,
        "max_result_bytes": 1 << 20,
        "result_overflow_mode": "break",
        "max_memory_usage": 1 << 28,
    }


def test_a_server_reader_gets_the_limits_per_query_and_the_write_identity_also_readonly() -> None:
    limits = QueryLimits(max_rows=50)
    reader = ClickHouseSink("http://w:pw@ch:8123/gatehouse", query_dsn="http://r:pw@ch:8123/gatehouse", limits=limits)
    assert "readonly" not in reader.query_settings(10)  # gatehouse_reader's profile pins it (readonly=1)
    assert reader.query_settings(10)["max_result_rows"] == 11  # one more than asked: a cut result shows as cut
    writer = ClickHouseSink("http://w:pw@ch:8123/gatehouse", limits=limits)
    assert next(iter(writer.query_settings(10))) == "readonly" and writer.query_settings(10)["readonly"] == 2


@pytest.mark.parametrize(
    ("dsn", "query_dsn"),
    [("chdb:///tmp/x", "http://r@ch:8123/db"), ("http://w@ch:8123/db", "chdb:///tmp/x")],
)
def test_a_reader_dsn_is_a_server_next_to_a_server(dsn: str, query_dsn: str) -> None:
    with pytest.raises(ValueError, match="query_dsn"):
        ClickHouseSink(dsn, query_dsn=query_dsn)


def test_a_reply_is_cut_to_the_rows_that_fit() -> None:
    rows: list[list[object]] = [[i, "x" * 100] for i in range(1000)]
    whole = Answer(columns=["i", "s"], rows=rows, truncated=False)
    assert fit(whole, 10**7) is whole
    cut = fit(whole, 10_000)
    assert cut.truncated and 0 < len(cut.rows) < 100 and cut.rows == rows[: len(cut.rows)]
    assert len(msgspec.msgpack.encode(cut.rows)) <= 10_000
    assert fit(Answer(columns=["i"], rows=[], truncated=True), 100).truncated


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        (
            "Code: 62. DB::Exception: Syntax error (Multi-statements are not allowed): failed at position 9 (end of "
            "query): ; DROP TABLE requests. : In scope SELECT formatQuerySingleLine('SELECT 1; DROP TABLE requests') "
            "AS canonical. (SYNTAX_ERROR)",
            62,
            "only one statement per query",
        ),
        (
            "Code: 62. DB::Exception: Syntax error: failed at position 8 ('abc):\n'abc. Expected one of: …: In scope "
            "SELECT formatQuerySingleLine('SELECT \\'abc') AS canonical, parseQueryToJSON(canonical). (SYNTAX_ERROR)",
            62,
            "Syntax error: failed at position 8 ('abc): 'abc. Expected one of: …",
        ),
        (
            "Code: 62. DB::Exception: Multiline comment is not closed: failed at position 10 (/* x): /* x. : In scope "
            "SELECT formatQuerySingleLine('SELECT 1 /* x')",
            62,
            "syntax error: Multiline comment is not closed: failed at position 10 (/* x): /* x.",
        ),
        (
            "Code: 46. DB::Exception: Unknown function parseQueryToJSON: In scope SELECT …. (UNKNOWN_FUNCTION)",
            46,
            "parseQueryToJSON needs ClickHouse 26.8 or later",
        ),
    ],
)
def test_parser_complaints_are_about_the_users_text(message: str, code: int, expected: str) -> None:
    failure = parse_failure(FakeClickHouseError(message, code))
    assert expected in failure
    assert "In scope" not in failure and "DB::Exception" not in failure
