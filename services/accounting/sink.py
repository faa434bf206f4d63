"""The accounting service's only I/O with ClickHouse (clickhouse-connect: embedded chDB or a server).

chDB has no async client and one process per data path, so every call runs on one worker thread:
inserts never block the event loop, and queries never race an insert on the same client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.accounting import migrations
from services.accounting.core import COLUMNS, sql_string_list

log = logging.getLogger("gatehouse.accounting.sink")
T = TypeVar("T")

_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1


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
        query_timeout_s: float = 20.0,
        query_max_rows: int = 100_000,
    ) -> None:
        self.dsn = normalise_dsn(dsn)
        self.embedded = self.dsn.startswith("chdb://")
        self._query_timeout_s = query_timeout_s
        self._query_max_rows = query_max_rows
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

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
    def _insert_new(self, batches: Mapping[str, Sequence[list[object]]]) -> dict[str, int]:
        client = self._connect()
        inserted: dict[str, int] = {}
        for table, rows in batches.items():
            if not rows:
                continue
            # an event redelivered after a crash between insert and ack, or republished under a new
            # Nats-Msg-Id, is already stored: skip it, so it is never visible twice (even without FINAL)
            # and never counted twice by the materialized rollups
            ids = list({str(r[0]) for r in rows})
            query = f"SELECT event_id FROM {table} WHERE event_id IN ({sql_string_list(ids)})"  # noqa: S608
            seen = {str(r[0]) for r in client.query(query).result_rows}
            fresh = []
            for row in rows:
                key = str(row[0])
                if key not in seen:
                    seen.add(key)
                    fresh.append(row)
            if fresh:
                client.insert(table, fresh, column_names=list(COLUMNS[table]))
            inserted[table] = len(fresh)
        return inserted

    async def insert_new(self, batches: Mapping[str, Sequence[list[object]]]) -> dict[str, int]:
        """Insert the rows whose event id (column 0) is not stored yet, table by table; rows inserted per table.

        Idempotent: retrying a batch after any failure stores each event once.
        """
        return await self._run(self._insert_new, batches)

    # ---- analytics ---------------------------------------------------------------------------
    def _query(self, sql: str, max_rows: int) -> tuple[list[str], list[list[object]]]:
        limit = max(1, min(max_rows, self._query_max_rows))
        settings: dict[str, object] = {
            # chDB reads local files through table functions unless readonly=1; a server confines
            # those to user_files, and readonly=2 lets the client send its own session settings
            "readonly": 1 if self.embedded else 2,
            "max_execution_time": self._query_timeout_s,
            "max_result_rows": limit,
            "result_overflow_mode": "break",
        }
        result = self._connect().query(sql, settings=settings)
        rows = [[plain(v) for v in row] for row in result.result_rows[:limit]]
        return list(result.column_names), rows

    async def query(self, sql: str, max_rows: int) -> tuple[list[str], list[list[object]]]:
        """Run an analytics query read-only (the caller has checked it); columns and at most max_rows rows."""
        return await self._run(self._query, sql, max_rows)

    async def close(self) -> None:
        def _close() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        try:
            await self._run(_close)
        finally:
            self._pool.shutdown(wait=True)
