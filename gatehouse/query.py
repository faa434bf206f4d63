"""Ask the accounting service over NATS, as the admin role: analytics queries and re-pricing."""

from __future__ import annotations

from pathlib import Path

import typer

from shared.natsconn import NatsLink, connect
from shared.schemas.admin import RepriceRequest, RepriceResult, SqlQuery, SqlResult
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


async def run_reprice(
    nats_url: str, prefix: str, request: RepriceRequest, timeout: float = 600.0, seed_file: str = ""
) -> RepriceResult:
    subjects = Subjects(prefix)
    nc = await connect(NatsLink((nats_url,), "admin", prefix, seed_file))
    try:
        subject = subjects.accounting_reprice
        msg = await nc.request(subject.name, subject.encode(request), timeout=timeout)
    finally:
        await nc.close()
    return subjects.accounting_reprice.decode_reply(msg.data)


def admin_endpoint(
    data_dir: Path, nats_url: str | None, prefix: str | None, seed_file: Path | None
) -> tuple[str, str, str]:
    """(NATS URL, subject prefix, admin seed file) from the options, else from the running stack's state."""
    from gatehouse.launcher import read_state

    data = data_dir.resolve()
    if nats_url is None or prefix is None:
        try:
            state = read_state(data)
        except FileNotFoundError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from exc
        nats_url = nats_url or state["nats_url"]
        prefix = prefix or state["subject_prefix"]
        if seed_file is None and state.get("admin_seed_file"):
            seed_file = Path(state["admin_seed_file"])
    if seed_file is None and (data / "creds" / "admin.nk").exists():
        seed_file = data / "creds" / "admin.nk"
    return nats_url, prefix, str(seed_file or "")
