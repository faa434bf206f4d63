"""Control-plane messages: analytics queries answered by accounting."""

from __future__ import annotations

import msgspec


class SqlQuery(msgspec.Struct, frozen=True, kw_only=True):
    sql: str
    max_rows: int = 10_000


class SqlResult(msgspec.Struct, frozen=True, kw_only=True):
    columns: list[str] = []
    rows: list[list[str | int | float | bool | None]] = []
    error: str = ""
