"""The accounting service's only I/O with ClickHouse (clickhouse-connect: chDB embedded or a server).

chDB has no async client and one process per data path, so every call runs on one worker thread:
inserts never block the event loop and queries never race an insert on the same client.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from services.accounting import migrations
from services.accounting.core import sql_literal_list

log = logging.getLogger("gatehouse.accounting.sink")
T = TypeVar("T")


def _plain(value: object) -> object:
    """A ClickHouse value as plain JSON-like data (arrays → lists, maps → dicts, dates → ISO strings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return str(value)


def normalise_dsn(dsn: str) -> str:
    """chDB paths are made absolute, so every process names the same directory whatever its cwd."""
    if dsn.startswith("chdb://"):
        path = dsn[len("chdb://") :]
        if path and not path.startswith("/"):
            absolute = Path(path).resolve()
            absolute.mkdir(parents=True, exist_ok=True)
            return f"chdb://{absolute}"
        if path:
            Path(path).mkdir(parents=True, exist_ok=True)
    return dsn


class ClickHouseSink:
    def __init__(self, dsn: str) -> None:
        self.dsn = normalise_dsn(dsn)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._client: Client | None = None

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _connect(self) -> Client:
        if self._client is None:
            self._client = clickhouse_connect.get_client(dsn=self.dsn)
        return self._client

    # ---- schema ------------------------------------------------------------------------------
    def _migrate(self) -> list[str]:
        client = self._connect()
        client.command(migrations.LEDGER_DDL)
        applied = {int(r[0]) for r in client.query("SELECT version FROM schema_migrations").result_rows}
        done = []
        for m in migrations.pending(migrations.load(), applied):
            for statement in m.statements:
                client.command(statement)
            client.insert("schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
            done.append(f"{m.version:04d}_{m.name}")
        return done

    async def migrate(self) -> list[str]:
        """Apply pending migrations in order; returns the ones applied now."""
        return await self._run(self._migrate)

    # ---- inserts -----------------------------------------------------------------------------
    def _insert_new(self, table: str, columns: Sequence[str], rows: list[list[object]], redelivered: bool) -> int:
        """Insert the rows whose event_id (column 0) is not stored yet; returns how many were inserted.

        Only a batch holding redelivered events (a previous insert may have succeeded without its ack)
        pays for the look-up of existing ids; first deliveries cannot be stored already.
        """
        client = self._connect()
        existing: set[str] = set()
        if redelivered:
            ids = [str(r[0]) for r in rows]
            existing = {
                r[0]
                for r in client.query(
                    f"SELECT event_id FROM {table} WHERE event_id IN ({sql_literal_list(ids)})"  # noqa: S608
                ).result_rows
            }
        seen: set[str] = set()
        fresh = []
        for row in rows:
            key = str(row[0])
            if key in existing or key in seen:
                continue
            seen.add(key)
            fresh.append(row)
        if fresh:
            client.insert(table, fresh, column_names=list(columns))
        return len(fresh)

    async def insert_new(
        self, table: str, columns: Sequence[str], rows: list[list[object]], *, redelivered: bool = True
    ) -> int:
        if not rows:
            return 0
        return await self._run(self._insert_new, table, columns, rows, redelivered)

    # ---- analytics ---------------------------------------------------------------------------
    def _query(self, sql: str, max_rows: int) -> tuple[list[str], list[list[object]]]:
        settings = {"readonly": 2} if not self.dsn.startswith("chdb://") else {}
        result = self._connect().query(sql, settings=settings)
        rows = [[_plain(v) for v in row] for row in result.result_rows[:max_rows]]
        return list(result.column_names), rows

    async def query(self, sql: str, max_rows: int) -> tuple[list[str], list[list[object]]]:
        return await self._run(self._query, sql, max_rows)

    async def close(self) -> None:
        def _close() -> None:
            if self._client is not None:
                self._client.close()
                self._client = None

        await self._run(_close)
        self._pool.shutdown(wait=True)
