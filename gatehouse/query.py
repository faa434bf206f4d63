"""Ask the accounting service an analytics question over NATS, as the admin role."""

from __future__ import annotations

from shared.natsconn import NatsLink, connect
from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects, encode


async def run_sql(nats_url: str, prefix: str, query: str, timeout: float = 30.0, seed_file: str = "") -> SqlResult:
    """`seed_file`: the admin NKey seed (only admin may ask); empty on an unauthenticated dev server."""
    subjects = Subjects(prefix)
    nc = await connect(NatsLink((nats_url,), "admin", prefix, seed_file))
    try:
        msg = await nc.request(subjects.accounting_sql.name, encode(SqlQuery(sql=query)), timeout=timeout)
    finally:
        await nc.close()
    return subjects.sql_result.decode(msg.data)
