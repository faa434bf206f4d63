"""The read-only gate in front of analytics SQL."""

from __future__ import annotations

import pytest

from services.accounting.readonly import check_read_only, code_only


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  with x as (select 1) select * from x",
        "SHOW TABLES",
        "DESCRIBE requests",
        "desc requests",
        "EXPLAIN SELECT 1",
        "EXISTS TABLE requests",
        "(SELECT 1) UNION ALL (SELECT 2)",
        "SELECT 1; -- trailing comment",
        "SELECT 'a;b', \"c;d\", `e;f` FROM requests",
        "SELECT 'it''s; fine', 'esc\\'; aped'",
        "-- leading comment\nSELECT 1",
        "/* block */ SELECT 1 /* ; */",
        "SELECT 'into outfile' AS text",
    ],
)
def test_read_only_queries_pass(sql: str) -> None:
    assert check_read_only(sql) is None


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DROP TABLE requests", "read-only"),
        ("drop table requests", "read-only"),
        ("INSERT INTO requests VALUES (1)", "read-only"),
        ("ALTER TABLE requests DELETE WHERE 1", "read-only"),
        ("/* SELECT */ TRUNCATE TABLE requests", "read-only"),
        ("-- SELECT\nDROP TABLE requests", "read-only"),
        ("SELECT 1; DROP TABLE requests", "one statement"),
        ("SELECT ';' ; DROP TABLE requests", "one statement"),
        ("SELECT 1 # comment\n; DROP TABLE requests", "one statement"),
        ("SELECT 1 INTO OUTFILE '/tmp/x'", "OUTFILE"),
        ("select 1 into\n outfile '/tmp/x'", "OUTFILE"),
        ("SELECT 'unterminated", "unterminated"),
        ("SELECT 1 /* open", "unterminated"),
        ("", "empty"),
        ("  ;  ", "empty"),
        ("SYSTEM SHUTDOWN", "read-only"),
        ("SET readonly = 0", "read-only"),
        ("OPTIMIZE TABLE requests FINAL", "read-only"),
    ],
)
def test_writes_and_multiple_statements_are_refused(sql: str, reason: str) -> None:
    refused = check_read_only(sql)
    assert refused is not None and reason in refused


def test_code_only_blanks_literals_and_drops_comments() -> None:
    assert code_only("SELECT 'x;y' -- c\n, 1 /* d */") == "SELECT ''  \n, 1  "
    assert code_only("SELECT 'open") is None
