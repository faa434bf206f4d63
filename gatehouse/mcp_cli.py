"""`gatehouse mcp …`: the upstream MCP servers of a running stack, from the mcp stage over NATS (admin role)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gatehouse.query import admin_endpoint
from shared.natsconn import NatsLink, connect
from shared.schemas.mcp import Catalog, CatalogQuery
from shared.subjects import Subjects

mcp_app = typer.Typer(no_args_is_help=True, help="MCP servers behind gatehouse.")
console = Console()
err = Console(stderr=True)


async def fetch_catalog(nats_url: str, prefix: str, seed_file: str, timeout: float = 10.0) -> Catalog:
    subjects = Subjects(prefix)
    nc = await connect(NatsLink((nats_url,), "admin", prefix, seed_file))
    try:
        subject = subjects.mcp_catalog
        msg = await nc.request(subject.name, subject.encode(CatalogQuery()), timeout=timeout)
    finally:
        await nc.close()
    return subjects.mcp_catalog.decode_reply(msg.data)


@mcp_app.command("list")
def list_servers(
    data_dir: Annotated[Path, typer.Option(help="the data dir of the running stack")] = Path(".gatehouse"),
    nats_url: Annotated[str | None, typer.Option(help="NATS URL (default: from the running stack)")] = None,
    prefix: Annotated[str | None, typer.Option(help="NATS subject prefix")] = None,
    nkey_seed_file: Annotated[
        Path | None, typer.Option(envvar="GATEHOUSE_ADMIN_NKEY_SEED_FILE", help="the admin NKey seed file")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Every upstream MCP server: transport, health, restarts, and how many tools, resources and prompts."""
    url, pfx, seed = admin_endpoint(data_dir, nats_url, prefix, nkey_seed_file)
    try:
        catalog = asyncio.run(fetch_catalog(url, pfx, seed))
    except Exception as exc:
        err.print(f"[red]no mcp stage answered: {type(exc).__name__}[/red]")
        raise typer.Exit(1) from exc
    if catalog.error:
        err.print(f"[red]the mcp stage could not answer: {catalog.error}[/red]")
        raise typer.Exit(1)
    rows = [
        {
            "server": s.name,
            "transport": s.transport,
            "health": "up" if s.healthy else f"down ({s.error})",
            "restarts": s.restarts,
            "tools": s.counts.get("tools", 0),
            "resources": s.counts.get("resources", 0) + s.counts.get("resource_templates", 0),
            "prompts": s.counts.get("prompts", 0),
        }
        for s in catalog.servers
    ]
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table("server", "transport", "health", "restarts", "tools", "resources", "prompts")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    if not rows:
        err.print("[yellow]no MCP servers are configured (the config's `mcp.servers`)[/yellow]")
