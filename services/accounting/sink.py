"""The accounting service's only I/O with ClickHouse (clickhouse-connect: embedded chDB or a server).

Two connections: the writer (migrations, inserts) and the reader (analytics, see `analytics`), which is a
read-only identity: on a server the `gatehouse_reader` user of `query_dsn` (deploy/clickhouse/users.d), in
embedded chDB a connection of its own whose session is `readonly = 1`.

chDB has no async client and one process per data path, so every chDB call runs on one worker thread:
inserts never block the event loop, and queries never race an insert. A server reader has its own thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, DataError

from services.accounting import analytics, migrations, reprice
from services.accounting.analytics import Answer, QueryLimits
from services.accounting.core import COLUMNS, sql_string_list
from shared.pricing import Rates
from shared.schemas.admin import RepriceRequest, RepriceResult

log = logging.getLogger("gatehouse.accounting.sink")
T = TypeVar("T")


def normalise_dsn(dsn: str) -> str:
    """chDB paths are made absolute (and created), so every process names the same directory whatever its cwd."""
    if not dsn.startswith("chdb://"):
        return dsn
    path = dsn[len("chdb://") :]
    if not path:
        return dsn
    absolute = Path(path).expanduser().resolve()
    absolute.mkdir(parents=True, exist_ok=True)
    return f"chdb://{absolute}"


_JSON = msgspec.json.Encoder()
_SYNC = {"mutations_sync": 2}
LOOKUP_CHUNK = 2000  # event ids per lookup query
# no merge of the inserted block by key: the rows are unique by event id already (checked above) and the rollups'
# materialized views group them themselves, so that sort is pure cost (about a third of an insert's CPU)
_INSERT = {"optimize_on_insert": 0}
# ClickHouse's answers to rows it cannot read (a value of the wrong type or out of range): the same rows fail
# the same way on every retry, unlike a server that is down
PARSE_ERRORS = frozenset({6, 26, 27, 38, 41, 53, 69, 70, 72, 117, 131, 321})
_CODE = re.compile(r"Code: (\d+)\.")


def _error_code(exc: Exception) -> int | None:
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    match = _CODE.search(str(exc))
    return int(match.group(1)) if match else None


def json_rows(rows: Sequence[list[object]]) -> bytes:
    """Rows as JSONCompactEachRow: a JSON array per row, in column order, times as unix seconds (which
    DateTime64 columns read with their fraction).

    One encode of the whole list, its outer brackets cut off: the rows come out separated by commas, which
    ClickHouse's JSONCompactEachRow reader accepts between rows as it does newlines (one C call instead of
    one per row).
    """
    if not rows:
        return b""
    return _JSON.encode(rows)[1:-1]


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class ClickHouseSink:
    def __init__(
        self,
        dsn: str,
        *,
        query_dsn: str | None = None,
        limits: QueryLimits | None = None,
        readable: frozenset[str] = frozenset(),
    ) -> None:
        """`readable`: the tables analytics queries may read; `query_dsn`: the reader identity on a server."""
        self.dsn = normalise_dsn(dsn)
        self.embedded = self.dsn.startswith("chdb://")
        if query_dsn is not None and (self.embedded or not query_dsn.startswith(("http://", "https://"))):
            raise ValueError("query_dsn is an http(s):// DSN of a ClickHouse server, for a server clickhouse_dsn")
        self.query_dsn = query_dsn
        self._limits = limits or QueryLimits()
        self.readable = readable
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._query_pool = (
            self._pool if self.embedded else ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-query")
        )
        self._client: Client | None = None
        self._reader: Client | None = None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _connect(self) -> Client:
        # lazily, so a ClickHouse that is down at startup is retried instead of failing the process
        if self._client is None:
            self._client = clickhouse_connect.get_client(dsn=self.dsn)
        return self._client

    # ---- schema ------------------------------------------------------------------------------
    def _migrate(self, schema: list[migrations.Migration]) -> list[str]:
        client = self._connect()
        client.command(migrations.LEDGER_DDL)
        applied = {int(r[0]) for r in client.query(migrations.APPLIED_SQL).result_rows}
        done = []
        for m in migrations.pending(schema, applied):
            for statement in m.statements:
                client.command(statement)
            client.insert("schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
            done.append(m.label)
        return done

    async def migrate(self, schema: list[migrations.Migration]) -> list[str]:
        """Apply the migrations of `schema` not applied yet, in version order; returns the ones applied now."""
        return await self._run(self._migrate, schema)

    async def command(self, sql: str) -> None:
        """Run one statement as is (schema changes; not for analytics, which go through `query`)."""

        def _command() -> None:
            self._connect().command(sql)

        await self._run(_command)

    # ---- inserts -----------------------------------------------------------------------------
    def _insert_new(
        self, batches: Mapping[str, Sequence[list[object]]], verify: Collection[str] | None
    ) -> dict[str, int]:
        client = self._connect()
        inserted: dict[str, int] = {}
        for table, rows in batches.items():
            if not rows:
                continue
            # an event redelivered after a crash between insert and ack, or republished after the duplicate
            # window, is already stored: skip it, so it is never visible twice (even without FINAL) and never
            # counted twice by the materialized rollups
            ids = list({str(r[0]) for r in rows if verify is None or str(r[0]) in verify})
            seen: set[str] = set()
            for start in range(0, len(ids), LOOKUP_CHUNK):  # a query's text is bounded (max_query_size, 256 KiB)
                chunk = sql_string_list(ids[start : start + LOOKUP_CHUNK])
                query = f"SELECT event_id FROM {table} WHERE event_id IN ({chunk})"  # noqa: S608
                seen.update(str(r[0]) for r in client.query(query).result_rows)
            fresh = []
            for row in rows:
                key = str(row[0])
                if key not in seen:
                    seen.add(key)
                    fresh.append(row)
            if fresh:
                # as JSON rows, encoded by msgspec and parsed by ClickHouse: about a third of the cost of
                # clickhouse-connect's own (Python) column serialisation
                try:
                    client.raw_insert(
                        table,
                        list(COLUMNS[table]),
                        insert_block=json_rows(fresh),
                        fmt="JSONCompactEachRow",
                        settings=_INSERT,
                    )
                except DatabaseError as exc:
                    if _error_code(exc) in PARSE_ERRORS:  # this data, on every retry: let the caller isolate it
                        raise DataError(str(exc)) from exc
                    raise
            inserted[table] = len(fresh)
        return inserted

    async def insert_new(
        self, batches: Mapping[str, Sequence[list[object]]], verify: Collection[str] | None = None
    ) -> dict[str, int]:
        """Insert the rows whose event id (column 0) is not stored yet, table by table; rows inserted per table.

        `verify`: the event ids that may be stored already (the consumer knows which: `may_be_stored`); the
        others are not looked up. None: look every one up. Within a batch an id is stored once either way.
        Idempotent: retrying a batch after any failure stores each event once.
        """
        return await self._run(self._insert_new, batches, verify)

    # ---- re-pricing ----------------------------------------------------------------------------
    def _reprice(self, request: RepriceRequest, rates: Mapping[str, Rates], kinds: Mapping[str, str]) -> RepriceResult:
        client = self._connect()
        rows = changed = 0
        before = after = 0.0
        versions: Counter[str] = Counter()
        for since, until in reprice.windows(request.since, request.until):
            found = client.query(reprice.rows_sql(request, since, until)).result_rows
            rows += len(found)
            changes = [c for row in found if (c := reprice.change_of(row, rates, kinds)) is not None]
            changed += len(changes)
            before += sum(c.before or 0.0 for c in changes)
            after += sum(c.after or 0.0 for c in changes)
            versions.update(c.version for c in changes)
            if request.dry_run:
                continue
            for start in range(0, len(changes), reprice.CHUNK):
                # mutations_sync: the rows read the new price when this returns
                client.command(reprice.update_sql(changes[start : start + reprice.CHUNK]), settings=_SYNC)
        if not request.dry_run:
            # always, not only after changes: a run that died between the rows and the rollups is healed by the next
            for rollup in reprice.ROLLUPS:
                want = client.query(reprice.rows_side_sql(rollup, request.since, request.until)).result_rows
                have = client.query(reprice.rollup_side_sql(rollup, request.since, request.until)).result_rows
                columns, fixes = reprice.corrections(rollup, want, have)
                if fixes:
                    client.insert(rollup.table, fixes, column_names=columns)
        return RepriceResult(
            rows=rows,
            changed=changed,
            cost_before_usd=before,
            cost_after_usd=after,
            versions=dict(versions),
            dry_run=request.dry_run,
        )

    async def reprice(
        self, request: RepriceRequest, rates: Mapping[str, Rates], kinds: Mapping[str, str]
    ) -> RepriceResult:
        """Price the stored usage of a time range again (see `reprice`); on the writer's thread, between inserts."""
        return await self._run(self._reprice, request, rates, kinds)

    async def insert_json(self, table: str, columns: Sequence[str], body: bytes) -> None:
        """Insert rows given as a JSON array of objects (JSONEachRow), parsed by ClickHouse itself: no row
        passes through the driver's per-value encoding (the spans table, services/accounting/spans.py)."""

        def _insert() -> None:
            self._connect().raw_insert(table, list(columns), insert_block=body, fmt="JSONEachRow")

        await self._run(_insert)

    # ---- analytics ---------------------------------------------------------------------------
    def _connect_reader(self) -> Client:
        if self._reader is None:
            if self.embedded:
                self._reader = analytics.open_embedded_reader(self.dsn, self._limits)
            else:
                self._reader = clickhouse_connect.get_client(dsn=self.query_dsn or self.dsn)
        return self._reader

    def query_settings(self, max_rows: int) -> dict[str, object]:
        """Per-query settings: none for chDB (its reader session holds them), the limits for a server."""
        if self.embedded:
            return {}
        limits = self._limits.settings(max_rows + 1)  # one more than asked, so a cut result is seen as cut
        if self.query_dsn:
            return limits  # gatehouse_reader's profile is read-only and bounds these by constraints
        # no reader identity configured: the write identity, read-only for this query
        return {"readonly": 2, **limits}

    def _query(self, sql: str, max_rows: int) -> Answer:
        limit = max(1, min(max_rows, self._limits.max_rows))
        return analytics.run(
            self._connect_reader(), sql, limit, tables=self.readable, settings=self.query_settings(limit)
        )

    async def query(self, sql: str, max_rows: int) -> Answer:
        """Check and run one analytics query on the reader connection; analytics.QueryRefused if not allowed."""
        return await asyncio.get_running_loop().run_in_executor(self._query_pool, self._query, sql, max_rows)

    async def close(self) -> None:
        if self._query_pool is not self._pool:
            await asyncio.to_thread(self._query_pool.shutdown, wait=True)  # a query in flight ends first

        def _close() -> None:
            for client in (self._reader, self._client):
                if client is not None:
                    client.close()
            self._client = self._reader = None

        try:
            await self._run(_close)
        finally:
            self._pool.shutdown(wait=True)
