"""Analytics SQL against embedded chDB through the accounting answer path: every known way to reach files, the
network, settings or other tables is refused on ClickHouse's own parse; analysts' queries still run; results are
bounded in rows, bytes, time and memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.accounting import migrations
from services.accounting.analytics import QueryLimits, open_embedded_reader
from services.accounting.app import answer
from services.accounting.core import REQUESTS, guard_row, request_row
from services.accounting.sink import ClickHouseSink
from shared.schemas.admin import SqlQuery, SqlResult
from shared.schemas.chat import Attempt, Caller, GuardFinding, Usage
from shared.schemas.events import GuardEvent
from shared.subjects import Subjects, encode
from tests.integration.accounting_support import make_event

pytestmark = pytest.mark.timeout(120)

SQL = Subjects("analytics").accounting_sql
CANARY = "gatehouse-canary-provider-key"  # a provider key in the accounting process's environment
OUT = Path(f"/tmp/gatehouse-outfile-{os.getpid()}.txt")  # where the attacks would write


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A chDB store with the schema and three requests (attempts, guard findings, a verdict)."""
    path = tmp_path_factory.mktemp("analytics") / "clickhouse"
    schema = migrations.load()
    sink = ClickHouseSink(f"chdb://{path}")
    events = [
        make_event(
            "r1",
            attempts=[
                Attempt(provider="openai", deployment="openai/a", status=429, latency_ms=12.5, error_code="rate"),
                Attempt(provider="backup", deployment="backup/b", status=200, latency_ms=30.0),
            ],
            guard_findings=[GuardFinding(scanner="pii", rule="email", action="redact", start=3, end=20)],
            tags={"feature": "search"},
        ),
        make_event("r2", requested_model="gpt-4o", caller=Caller(key_id="k2", team="t2"), status=500),
        make_event("r3", usage=Usage(input_tokens=1, output_tokens=2)),
    ]
    verdict = GuardEvent(event_id="g1", request_id="r1", policy="default", action="block", at=events[0].received_at)

    async def seed() -> None:
        await sink.migrate(schema)
        await sink.insert_new({REQUESTS: [request_row(e) for e in events], "guard_verdicts": [guard_row(verdict)]})
        await sink.close()

    asyncio.run(seed())
    yield path


@pytest.fixture(scope="module")
def sink(data: Path) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(f"chdb://{data}", readable=migrations.tables(migrations.load()))
    yield sink
    asyncio.run(sink.close())


async def ask(sink: ClickHouseSink, sql: str, max_rows: int = 10_000, max_reply_bytes: int = 1_000_000) -> SqlResult:
    return await answer(sink, SQL, encode(SqlQuery(sql=sql, max_rows=max_rows)), max_reply_bytes=max_reply_bytes)


def outfile(template: str) -> str:
    return template.replace("{out}", str(OUT))


# each reaches a file, the network, a setting or another table (or writes a file) unless refused
ATTACKS = [
    # files and the process environment (the reproduced hole: provider keys in /proc/self/environ)
    ("SELECT file('/proc/self/environ')", "function file() is not allowed"),
    ("SELECT `file`('/proc/self/environ')", "function file() is not allowed"),
    ("SELECT * FROM file('/etc/passwd')", "table function file() reads files"),
    ("SELECT * FROM file('/proc/self/environ', 'LineAsString')", "table function file() reads files"),
    ("SELECT * FROM filesystem('/')", "table function filesystem() reads files"),
    ("SELECT filesystemAvailable()", "filesystemAvailable() is not allowed"),
    ("SELECT arrayMap(x -> file(x), ['/etc/hostname'])", "function file() is not allowed"),
    ("SELECT COLUMNS('p') APPLY file FROM (SELECT '/etc/hostname' AS p)", "function file() is not allowed"),
    ("SELECT * FROM numbers(1) WHERE file('/etc/hostname') != ''", "function file() is not allowed"),
    # the network, other servers, other databases, code
    ("SELECT * FROM url('http://169.254.169.254/latest/meta-data/', 'LineAsString')", "url() reaches storage"),
    ("SELECT * FROM s3('http://127.0.0.1:9/bucket/key', 'LineAsString')", "s3() reaches storage"),
    ("SELECT * FROM remote('127.0.0.1', system.users)", "remote() queries other servers"),
    ("SELECT * FROM remoteSecure('127.0.0.1', default.requests)", "remoteSecure() queries other servers"),
    ("SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')", "mysql() connects to another database"),
    ("SELECT * FROM executable('id', 'TSV', 'x String')", "executable() runs code"),
    ("SELECT * FROM Python(x)", "Python() runs code"),
    ("SELECT * FROM merge('system', '^users$')", "merge() reads other tables"),
    ("SELECT * FROM dictionary('d')", "dictionary() reads other tables"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "dictGet() is not allowed"),
    ("SELECT joinGet('system.x', 'a', 1)", "joinGet() is not allowed"),
    ("SELECT hasColumnInTable('system', 'users', 'name')", "hasColumnInTable() is not allowed"),
    ("SELECT getSetting('readonly')", "getSetting() is not allowed"),
    ("SELECT hostName()", "hostName() is not allowed"),
    ("SELECT aiGenerate('hello')", "aiGenerate() is not allowed"),
    # INTO OUTFILE, hidden from a text scanner by every comment and quote trick
    ("SELECT 1 INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 1 // '\nINTO OUTFILE '{out}' -- '", "INTO OUTFILE"),  # the reproduced hole
    ("SELECT 1 -- '\nINTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 1 # '\nINTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 1 /* ' */ INTO /* x */ OUTFILE '{out}' /* ' */", "INTO OUTFILE"),
    ("SELECT 'it''s' INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 'a\\'' INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 'line1\nline2 -- ' INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 1 AS \"a'\" INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT 1 AS `b'` INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT $$'$$ INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("SELECT \u2018x\u2019 INTO OUTFILE '{out}'", "INTO OUTFILE"),  # unicode quotes: string quotes to ClickHouse
    ("select 1 into\toutfile '{out}' TRUNCATE", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE '{out}' AND STDOUT", "INTO OUTFILE"),
    ("SELECT 1 INTO OUTFILE '{out}' COMPRESSION 'gzip'", "INTO OUTFILE"),
    ("SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("WITH x AS (SELECT 1) SELECT * FROM x INTO OUTFILE '{out}'", "INTO OUTFILE"),
    ("INSERT INTO FUNCTION file('{out}') SELECT 1", "INSERT statements are not allowed"),
    # settings
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS clause is not allowed"),
    ("SELECT count() FROM requests SETTINGS max_execution_time = 0, max_result_rows = 0", "SETTINGS clause"),
    ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", "SETTINGS clause is not allowed"),
    ("SELECT 1 FORMAT JSON SETTINGS readonly = 0", "not allowed"),
    ("SET readonly = 0", "SET statements are not allowed"),
    ("SELECT 1 FORMAT JSON", "FORMAT clause is not allowed"),
    # system tables (credentials, other users' queries, settings) and other databases
    ("SELECT * FROM system.users", "system tables are not readable"),
    ("SELECT * FROM system.settings", "system tables are not readable"),
    ("SELECT query FROM system.query_log", "system tables are not readable"),
    ("SELECT query FROM system.processes", "system tables are not readable"),
    ("SELECT * FROM system.tables", "system tables are not readable"),
    ("SELECT * FROM `system`.`users`", "system tables are not readable"),
    ("SELECT * FROM `system.users`", "not a gatehouse table"),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", "system tables are not readable"),
    ("SELECT * FROM information_schema.columns", "system tables are not readable"),
    ("SELECT * FROM other_db.requests", "not a gatehouse table"),
    ("USE system", "USE statements are not allowed"),
    ("SHOW TABLES FROM system", "only a plain SHOW TABLES"),
    ("SHOW DATABASES", "only a plain SHOW TABLES"),
    ("SHOW USERS", "SHOW USERS statements are not allowed"),
    ("SHOW GRANTS", "SHOW GRANTS statements are not allowed"),
    ("SHOW PROCESSLIST", "SHOW PROCESSLIST statements are not allowed"),
    ("SHOW CREATE TABLE system.users", "SHOW CREATE statements are not allowed"),
    ("DESCRIBE TABLE system.users", "gatehouse tables only"),
    ("DESCRIBE TABLE file('/etc/passwd')", "gatehouse tables only"),
    ("EXISTS TABLE system.users", "EXISTS statements are not allowed"),
    ("EXPLAIN SELECT * FROM file('/etc/passwd')", "EXPLAIN statements are not allowed"),
    # … also when the forbidden part hides in a subquery, a CTE, a JOIN, a UNION or IN
    ("SELECT count() FROM requests WHERE key_id IN (SELECT name FROM system.users)", "system tables"),
    ("SELECT count() FROM requests WHERE key_id IN system.users", "system tables"),
    ("WITH s AS (SELECT * FROM system.settings) SELECT * FROM s", "system tables"),
    ("SELECT * FROM requests AS r INNER JOIN system.processes AS p ON 1 = 1", "system tables"),
    ("SELECT 1 UNION ALL SELECT file('/etc/passwd')", "function file() is not allowed"),
    ("SELECT (SELECT file('/etc/hostname'))", "function file() is not allowed"),
    ("SELECT * FROM requests ARRAY JOIN (SELECT groupArray(name) FROM system.users) AS n", "system tables"),
    ("SELECT * FROM (SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString'))", "url() reaches storage"),
    # more than one statement, however hidden
    ("SELECT 1; DROP TABLE requests", "only one statement per query"),
    ("SELECT 1 // '\n; DROP TABLE requests; SELECT 1 -- '", "only one statement per query"),
    ("DROP TABLE requests", "DROP statements are not allowed"),
    ("ALTER TABLE requests DELETE WHERE 1", "ALTER statements are not allowed"),
    ("INSERT INTO requests (event_id) VALUES ('x')", "INSERT statements are not allowed"),
    ("SELECT {p:String}", "query parameters"),
]


@pytest.mark.parametrize(("sql", "reason"), ATTACKS)
async def test_attacks_are_refused_with_a_reason(
    sink: ClickHouseSink, sql: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    OUT.unlink(missing_ok=True)
    result = await ask(sink, outfile(sql))
    assert result.error.startswith("query refused: ") and reason in result.error, result.error
    assert result.rows == [] and CANARY not in result.error
    assert not OUT.exists()


async def test_a_write_hidden_behind_a_comment_trick_does_not_run(sink: ClickHouseSink) -> None:
    trick = "SELECT 1 // '\n; CREATE TABLE pwned (x UInt8) ENGINE = Memory; SELECT 1 -- '"
    assert (await ask(sink, trick)).error.startswith("query refused: only one statement")
    tables = await ask(sink, "SHOW TABLES")
    assert tables.error == "" and ["requests"] in tables.rows and ["pwned"] not in tables.rows


def test_the_embedded_reader_connection_itself_cannot_write_or_read_files(data: Path) -> None:
    """The second lock: chDB's readonly=1 on the reader's session, for whatever got past the policy."""
    client = open_embedded_reader(f"chdb://{data}", QueryLimits())
    try:
        for statement in ("CREATE TABLE pwned (x UInt8) ENGINE = Memory", "SET readonly = 0"):
            with pytest.raises(Exception, match=r"(?i)readonly"):
                client.command(statement)
        for query in ("SELECT * FROM file('/etc/hostname', 'LineAsString')", "SELECT 1 SETTINGS readonly = 0"):
            with pytest.raises(Exception, match=r"(?i)readonly"):
                client.query(query)
        assert client.query("SELECT count() FROM requests").result_rows == [(3,)]
        # the session is the reader's own: the writer on the same path still writes, and the reader sees it
        writer = ClickHouseSink(f"chdb://{data}")

        async def write(*statements: str) -> None:
            for statement in statements:
                await writer.command(statement)

        try:
            asyncio.run(
                write("CREATE TABLE writer_check (x UInt8) ENGINE = Memory", "INSERT INTO writer_check VALUES (7)")
            )
            assert client.query("SELECT sum(x) FROM writer_check").result_rows == [(7,)]
            asyncio.run(write("DROP TABLE writer_check"))
        finally:
            asyncio.run(writer.close())
    finally:
        client.close()


# what analysts ask, with the answer the seeded data gives
ANALYST_QUERIES = [
    ("SELECT requested_model, count() AS n FROM requests GROUP BY requested_model ORDER BY requested_model",
     [["gpt-4o", 1], ["mock-1", 2]]),
    ("SELECT status >= 400 AS failed, count() FROM requests GROUP BY failed ORDER BY failed", [[0, 2], [1, 1]]),
    ("SELECT sum(requests), sum(errors) FROM requests_per_minute", [[3, 1]]),
    ("SELECT team, sum(requests), sum(output_tokens) FROM requests_per_hour GROUP BY team ORDER BY team",
     [["t1", 2, 9], ["t2", 1, 7]]),
    ("SELECT a.provider, a.status, count() FROM requests ARRAY JOIN attempts AS a GROUP BY 1, 2 ORDER BY 1",
     [["backup", 200, 1], ["openai", 429, 1]]),
    ("SELECT request_id, f.rule, f.action FROM requests ARRAY JOIN guard_findings AS f", [["r1", "email", "redact"]]),
    ("WITH failed AS (SELECT * FROM requests WHERE status >= 400) SELECT count(), any(request_id) FROM failed",
     [[1, "r2"]]),
    ("SELECT request_id, row_number() OVER (PARTITION BY requested_model ORDER BY request_id) AS rn "
     "FROM requests ORDER BY request_id", [["r1", 1], ["r2", 1], ["r3", 2]]),
    ("SELECT count() FROM requests WHERE received_at > now() - INTERVAL 1 DAY", [[3]]),
    ("SELECT sum(number), max(number) FROM numbers(10)", [[45, 9]]),
    ("SELECT r.request_id, g.action FROM requests AS r INNER JOIN guard_verdicts AS g ON r.request_id = g.request_id",
     [["r1", "block"]]),
    ("SELECT count() FROM requests WHERE request_id IN (SELECT request_id FROM guard_verdicts)", [[1]]),
    ("SELECT count() FROM default.requests", [[3]]),
    ("SELECT tags['feature'] FROM requests WHERE mapContains(tags, 'feature')", [["search"]]),
    ("SELECT x FROM (SELECT 'a' AS x UNION ALL SELECT 'b') ORDER BY x", [["a"], ["b"]]),
    ("SELECT * FROM (VALUES (1, 'a'), (2, 'b')) AS t(x, y) ORDER BY x", [[1, "a"], [2, "b"]]),
    ("SELECT count() FROM schema_migrations WHERE version >= 1", [[len(migrations.load(migrations.MIGRATIONS_DIR))]]),
    # what looks dangerous as text but is a string or a comment to ClickHouse runs as the harmless thing it is
    ("SELECT 'file(''/etc/passwd'') INTO OUTFILE ''x'' SETTINGS readonly=0' AS note",
     [["file('/etc/passwd') INTO OUTFILE 'x' SETTINGS readonly=0"]]),
    ("SELECT 1 -- INTO OUTFILE '/tmp/x'", [[1]]),
    ("SELECT 1 AS file /* ; DROP TABLE requests */;", [[1]]),
]  # fmt: skip


@pytest.mark.parametrize(("sql", "rows"), ANALYST_QUERIES)
async def test_analyst_queries_run(sink: ClickHouseSink, sql: str, rows: list[list[object]]) -> None:
    result = await ask(sink, sql)
    assert result.error == "" and result.rows == rows and not result.truncated


async def test_schema_discovery_works(sink: ClickHouseSink) -> None:
    tables = await ask(sink, "SHOW TABLES")
    assert ["requests"] in tables.rows and ["guard_verdicts"] in tables.rows
    described = await ask(sink, "desc requests")
    assert described.columns[:2] == ["name", "type"] and ["event_id", "String"] in [r[:2] for r in described.rows]


async def test_syntax_errors_and_unknown_columns_are_clear_messages(sink: ClickHouseSink) -> None:
    unclosed = await ask(sink, "SELECT 'unterminated FROM requests")
    assert unclosed.error.startswith("query refused: ") and "not closed" in unclosed.error
    assert "In scope" not in unclosed.error and "formatQuerySingleLine" not in unclosed.error
    assert (await ask(sink, "SELEC 1")).error.startswith("query refused: Syntax error")
    unknown = await ask(sink, "SELECT nope FROM requests")
    assert unknown.error.startswith("query failed: ") and "nope" in unknown.error


async def test_a_huge_result_is_cut_to_max_rows_and_says_so(sink: ClickHouseSink) -> None:
    result = await ask(sink, "SELECT number FROM numbers(1e15)", max_rows=1000)
    assert result.error == "" and len(result.rows) == 1000 and result.truncated
    assert result.rows[-1] == [999]


async def test_a_reply_larger_than_the_bus_allows_is_cut_cleanly(sink: ClickHouseSink) -> None:
    result = await ask(sink, "SELECT repeat('x', 1000) FROM numbers(5000)", max_reply_bytes=100_000)
    assert result.error == "" and result.truncated and 0 < len(result.rows) < 100
    assert len(encode(result)) <= 100_000


@pytest.fixture(scope="module")
def tight(data: Path, sink: ClickHouseSink) -> Iterator[ClickHouseSink]:
    """A second reader on the same chDB store with small limits."""
    limits = QueryLimits(timeout_s=0.5, max_rows=100, max_result_bytes=1 << 20, max_memory_bytes=64 << 20)
    tight = ClickHouseSink(f"chdb://{data}", limits=limits, readable=migrations.tables(migrations.load()))
    yield tight
    asyncio.run(tight.close())


async def test_the_service_row_cap_wins_over_what_a_query_asks(tight: ClickHouseSink) -> None:
    result = await ask(tight, "SELECT number FROM numbers(1e15)", max_rows=1_000_000)
    assert result.error == "" and len(result.rows) == 100 and result.truncated


async def test_a_query_running_too_long_is_stopped(tight: ClickHouseSink) -> None:
    result = await ask(tight, "SELECT count() FROM numbers(1e15) WHERE cityHash64(number) = 0")
    assert result.error.startswith("query failed: ") and "Timeout exceeded" in result.error


async def test_a_query_using_too_much_memory_is_stopped(tight: ClickHouseSink) -> None:
    result = await ask(tight, "SELECT length(groupArray(number)) FROM numbers(1e8)")
    assert result.error.startswith("query failed: ") and "limit" in result.error.lower()
