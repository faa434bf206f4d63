"""The analytics read path on the reader connection: ClickHouse parses, sqlpolicy judges, the canonical text runs.

Three steps, all on ClickHouse's own parser and all on the reader connection (see `ClickHouseSink`):
1. `formatQuerySingleLine` and `parseQueryToJSON` of the user's text, passed as a bound String parameter:
   nothing of it is executed, and a second statement, an open quote or comment is a syntax error here.
2. `sqlpolicy.refusal` on that JSON.
3. the canonical text (what was judged, not what was typed) runs with the limits.

Blocking calls: the sink runs them on its worker thread.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.client import Client

from services.accounting import sqlpolicy

_PARSE = "SELECT formatQuerySingleLine({sql:String}) AS canonical, parseQueryToJSON(canonical), currentDatabase()"
_CANONICAL = "SELECT formatQuerySingleLine({sql:String}), currentDatabase()"
_SYNTAX_ERROR, _BAD_ARGUMENTS, _UNKNOWN_FUNCTION = 62, 36, 46
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


class QueryRefused(Exception):
    """A query that does not run: its text says why, for the user."""


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """What one analytics query may use: wall-clock time, result rows and bytes, memory."""

    timeout_s: float = 20.0
    max_rows: int = 100_000
    max_result_bytes: int = 128 * 2**20
    max_memory_bytes: int = 2**30

    def settings(self, max_rows: int) -> dict[str, object]:
        """ClickHouse settings enforcing these limits; a result longer than `max_rows` is cut, not an error."""
        return {
            "max_execution_time": self.timeout_s,
            "max_result_rows": max_rows,
            "max_result_bytes": self.max_result_bytes,
            "result_overflow_mode": "break",
            "max_memory_usage": self.max_memory_bytes,
        }


@dataclass(frozen=True, slots=True)
class Answer:
    columns: list[str]
    rows: list[list[object]]
    truncated: bool  # the result had more rows than were asked for


def open_embedded_reader(dsn: str, limits: QueryLimits) -> Client:
    """A chDB connection of its own on the same data path, made read-only for good.

    chDB has no users; its session settings are per connection. The limits are set first and `readonly = 1`
    last, after which this connection can neither write nor change a setting nor use a table function,
    whatever SQL it is sent (scalar `file()` and INTO OUTFILE are the policy's part).
    """
    client = clickhouse_connect.get_client(dsn=dsn)
    try:
        # one row more than the cap, so that a cut result is seen as cut
        for name, value in limits.settings(limits.max_rows + 1).items():
            client.command(f"SET {name} = {_literal(value)}")
        client.command("SET readonly = 1")
    except Exception:
        client.close()
        raise
    return client


def run(
    client: Client,
    sql: str,
    max_rows: int,
    *,
    tables: frozenset[str],
    settings: Mapping[str, object],
) -> Answer:
    """Parse, judge and run one analytics query; QueryRefused if the policy or the parser says no."""
    canonical = checked(client, sql, tables)
    result = client.query(canonical, settings=dict(settings))
    rows = result.result_rows
    return Answer(
        columns=list(result.column_names),
        rows=[[plain(v) for v in row] for row in rows[:max_rows]],
        truncated=len(rows) > max_rows,
    )


def checked(client: Client, sql: str, tables: frozenset[str]) -> str:
    """The canonical text of `sql` if the policy allows it, else QueryRefused with the reason."""
    try:
        [(canonical, ast_json, database)] = client.query(_PARSE, parameters={"sql": sql}).result_rows
    except Exception as exc:
        if getattr(exc, "code", None) != _BAD_ARGUMENTS or "JSON serialization" not in str(exc):
            raise QueryRefused(parse_failure(exc)) from exc
        # a statement parseQueryToJSON cannot render (DESCRIBE, EXISTS, SHOW CREATE, INSERT … VALUES, …)
        [(canonical, database)] = client.query(_CANONICAL, parameters={"sql": sql}).result_rows
        catalog = sqlpolicy.Catalog(str(database), tables)
        why = sqlpolicy.unparsable_refusal(str(canonical), catalog)
        if why:
            raise QueryRefused(why) from exc
        return str(canonical)
    try:
        ast = msgspec.json.decode(ast_json)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise QueryRefused("the query is nested too deeply to check") from exc
    why = sqlpolicy.refusal(ast, sqlpolicy.Catalog(str(database), tables))
    if why:
        raise QueryRefused(why)
    return str(canonical)


def fit(answer: Answer, max_bytes: int) -> Answer:
    """The answer cut to the rows whose msgpack encoding fits in `max_bytes` (a reply on the bus is bounded)."""
    budget = max_bytes - len(msgspec.msgpack.encode(answer.columns)) - 64  # 64: the reply's own framing
    used = 0
    for count, row in enumerate(answer.rows):
        used += len(msgspec.msgpack.encode(row))
        if used > budget:
            return Answer(columns=answer.columns, rows=answer.rows[:count], truncated=True)
    return answer


def parse_failure(exc: Exception) -> str:
    """ClickHouse's complaint about the user's text, without our wrapper query or the exception boilerplate."""
    code = getattr(exc, "code", None)
    text = " ".join(str(exc).split())
    if "Multi-statements are not allowed" in text:
        return "only one statement per query"
    if code == _UNKNOWN_FUNCTION and "parseQueryToJSON" in text:
        return "this ClickHouse cannot parse queries for checking (parseQueryToJSON needs ClickHouse 26.8 or later)"
    text = text.split(": In scope SELECT formatQuerySingleLine(", 1)[0]
    text = re.sub(r"^(Code: \d+\. )?(DB::Exception: )?", "", text).strip()
    if code == _SYNTAX_ERROR and "syntax error" not in text.lower():
        text = f"syntax error: {text}"
    return text[:500] or "the query could not be parsed"


def plain(value: object) -> object:
    """A ClickHouse value as msgpack-safe data: str/int/float/bool/None, lists and maps of them; else a string."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)  # Int128/256 do not fit msgpack
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)  # Decimal (exactly), UUID, IP addresses, …


def _literal(value: object) -> str:
    """A setting value of ours (numbers and plain words) as a SQL literal."""
    return f"'{value}'" if isinstance(value, str) else str(value)
