"""Ask the accounting service an analytics question over NATS."""

from __future__ import annotations

import nats

from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects, encode


async def run_sql(nats_url: str, prefix: str, query: str, timeout: float = 30.0) -> SqlResult:
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        msg = await nc.request(subjects.accounting_sql.name, encode(SqlQuery(sql=query)), timeout=timeout)
    finally:
        await nc.close()
    return subjects.sql_result.decode(msg.data)
