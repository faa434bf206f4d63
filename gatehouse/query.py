"""Ask the accounting service an analytics question over NATS."""

from __future__ import annotations

import nats

from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects


async def run_sql(nats_url: str, prefix: str, query: str, timeout: float = 30.0) -> SqlResult:
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        sql = subjects.accounting_sql
        msg = await nc.request(sql.name, sql.encode(SqlQuery(sql=query)), timeout=timeout)
    finally:
        await nc.close()
    return subjects.accounting_sql.decode_reply(msg.data)
