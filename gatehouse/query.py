"""Ask the accounting service an analytics question over NATS, as the admin role."""

from __future__ import annotations

from shared.natsconn import NatsLink, connect
from shared.schemas.admin import SqlQuery, SqlResult
from shared.subjects import Subjects


async def run_sql(nats_url: str, prefix: str, query: str, timeout: float = 30.0, seed_file: str = "") -> SqlResult:
    """`seed_file`: the admin NKey seed (only admin may ask); empty on an unauthenticated dev server."""
    subjects = Subjects(prefix)
    nc = await connect(NatsLink((nats_url,), "admin", prefix, seed_file))
    try:
        sql = subjects.accounting_sql
        msg = await nc.request(sql.name, sql.encode(SqlQuery(sql=query)), timeout=timeout)
    finally:
        await nc.close()
    return subjects.accounting_sql.decode_reply(msg.data)
