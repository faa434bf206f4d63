"""The `gatehouse` command: `up` runs the stack, `sql` queries the request record, `hash-key` for config,
`nats-config` / `nats-keys` for running NATS yourself (compose, Kubernetes); the admin commands (keys, teams,
…) and the analytics ones (`usage`, `requests`, `request`, `reprice`) register from their own modules."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gatehouse.childenv import SERVICES

if TYPE_CHECKING:
    from shared.config import GatehouseConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="gatehouse: an event-driven LLM gateway.")
console = Console()
err = Console(stderr=True)

REPO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "gatehouse.yaml"


def _config_path(config: Path | None) -> Path:
    if config is not None:
        return config.resolve()
    local = Path("deploy/gatehouse.yaml")
    return (local if local.exists() else REPO_CONFIG).resolve()


def _parse_replicas(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = part.partition("=")
        if name not in SERVICES or not count.isdigit() or int(count) < 1:
            raise typer.BadParameter(f"bad replica spec {part!r}; use e.g. router=2,guard=2")
        out[name] = int(count)
    return out


def _refuse_unloadable_plugins(cfg: GatehouseConfig) -> None:
    """A plugin or webhook format that cannot be imported would stop its service at every start: say so now."""
    from shared.plugins import unloadable

    if problems := unloadable(cfg.plugins, [w.format for w in cfg.webhooks if w.format != "json"]):
        err.print("\n".join(problems), style="red", markup=False)
        raise typer.Exit(2)


@app.command()
def up(
    config: Annotated[Path | None, typer.Option(help="config file (default deploy/gatehouse.yaml)")] = None,
    data_dir: Annotated[Path, typer.Option(help="where NATS and ClickHouse keep data, and logs")] = Path(".gatehouse"),
    host: Annotated[str | None, typer.Option(help="ingress host (default from config)")] = None,
    port: Annotated[int | None, typer.Option(help="ingress port (default from config)")] = None,
    nats_port: Annotated[int, typer.Option(help="NATS port (0 or taken: a free one)")] = 4222,
    replicas: Annotated[str, typer.Option(help="replicas per service, e.g. router=2,guard=2")] = "",
    prefix: Annotated[str, typer.Option(help="NATS subject prefix")] = "gh",
    metrics_port: Annotated[
        int, typer.Option(help="first Prometheus port of guard, router, accounting (one per process; 0: none)")
    ] = 9464,
) -> None:
    """Start nats-server, embedded ClickHouse and all five services; Ctrl-C stops everything."""
    from gatehouse.launcher import Stack
    from shared.config import ConfigError, load_config

    cfg_path = _config_path(config)
    try:
        # the router inherits this environment: a provider key a model needs is checked here, before anything starts
        cfg = load_config(cfg_path, environ=os.environ)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    _refuse_unloadable_plugins(cfg)
    from services.ingress.exposure import dev_key_exposure

    refused = dev_key_exposure(cfg, host or cfg.server.host)
    if refused and os.environ.get("GATEHOUSE_INGRESS_ALLOW_DEV_KEY", "").lower() not in ("1", "true", "yes", "on"):
        err.print(refused, style="red", markup=False)  # ingress would refuse to start the same way
        raise typer.Exit(2)
    stack = Stack(
        config=cfg_path,
        data_dir=data_dir.resolve(),
        host=host or cfg.server.host,
        port=port if port is not None else cfg.server.port,
        prefix=prefix,
        nats_port=nats_port,
        replicas=_parse_replicas(replicas),
        metrics_port=metrics_port,
    )
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    console.print(f"gatehouse: starting with config {cfg_path}")
    stack.start()
    try:
        if not stack.wait_ready():
            err.print(f"[red]gatehouse did not become ready; logs in {stack.data_dir / 'logs'}[/red]")
            for child in stack.dead():
                err.print(f"  {child.name} exited ({child.log_path})")
            raise typer.Exit(1)
        assert stack.nats is not None
        console.print(f"[green]gatehouse is up[/green]  OpenAI-compatible API: {stack.ingress_url}/v1")
        if len(stack.ingress_urls) > 1:
            console.print(f"  ingress replicas: {', '.join(stack.ingress_urls)}")
        console.print(f"  NATS: {stack.nats.url} (one NKey per role in {stack.data_dir / 'creds'})")
        console.print(f"  data and logs: {stack.data_dir}")
        console.print(f"  services: {', '.join(c.name for c in stack.children)}")
        scraped = [f"{c.name} {c.metrics_url}" for c in stack.children if c.metrics_url]
        if scraped:
            console.print(f"  metrics (Prometheus): {', '.join(scraped)}")
        console.print(
            f"  try: curl {stack.ingress_url}/v1/chat/completions -H 'Authorization: Bearer sk-gatehouse-dev' "
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"mock-1","messages":[{"role":"user","content":"hi"}]}\''
        )
        console.print(
            '  analytics: gatehouse sql "SELECT requested_model, count() FROM requests GROUP BY requested_model"'
            "   (Ctrl-C stops)"
        )
        while not stopping:
            for note in stack.supervise_once():
                err.print(f"[yellow]{note}[/yellow]")
            time.sleep(0.5)
    finally:
        console.print("gatehouse: stopping…")
        stack.stop()
        console.print("gatehouse: stopped")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="a read-only ClickHouse query, e.g. SELECT count() FROM requests")],
    data_dir: Annotated[Path, typer.Option(help="the data dir of the running stack")] = Path(".gatehouse"),
    nats_url: Annotated[str | None, typer.Option(help="NATS URL (default: from the running stack)")] = None,
    prefix: Annotated[str | None, typer.Option(help="NATS subject prefix")] = None,
    nkey_seed_file: Annotated[
        Path | None,
        typer.Option(
            envvar="GATEHOUSE_ADMIN_NKEY_SEED_FILE",
            help="the admin NKey seed file (default: the running stack's, under the data dir)",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json | tsv")] = "table",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the answer")] = 30.0,
) -> None:
    """Run an analytics query against the request record (answered by the accounting service)."""
    from gatehouse.launcher import read_state
    from gatehouse.query import run_sql

    data = data_dir.resolve()
    if nats_url is None or prefix is None:
        try:
            state = read_state(data)
        except FileNotFoundError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from exc
        nats_url = nats_url or state["nats_url"]
        prefix = prefix or state["subject_prefix"]
        if nkey_seed_file is None and state.get("admin_seed_file"):
            nkey_seed_file = Path(state["admin_seed_file"])
    if nkey_seed_file is None and (data / "creds" / "admin.nk").exists():
        nkey_seed_file = data / "creds" / "admin.nk"
    try:
        result = asyncio.run(run_sql(nats_url, prefix, query, timeout, str(nkey_seed_file or "")))
    except Exception as exc:
        err.print(f"[red]query failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    if result.error:
        err.print(f"[red]{result.error}[/red]")
        raise typer.Exit(1)
    if fmt == "json":
        console.print_json(json.dumps([dict(zip(result.columns, row, strict=True)) for row in result.rows]))
    elif fmt == "tsv":
        sys.stdout.write("\t".join(result.columns) + "\n")
        for row in result.rows:
            sys.stdout.write("\t".join("" if v is None else str(v) for v in row) + "\n")
    else:
        table = Table(*result.columns)
        for row in result.rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
    if result.truncated:
        err.print(f"[yellow]the result was cut after {len(result.rows)} rows (row or reply size limit)[/yellow]")


@app.command("hash-key")
def hash_key(
    key: Annotated[str | None, typer.Argument(help="the key; read from stdin if left out (keeps it out of ps)")] = None,
) -> None:
    """Print the SHA-256 of an API key, for the `keys[].sha256` field of the config."""
    if key is None:
        key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        err.print("[red]no key given (pass it as an argument or on stdin)[/red]")
        raise typer.Exit(2)
    console.print(hashlib.sha256(key.encode()).hexdigest())


@app.command("nats-keys")
def nats_keys(
    creds_dir: Annotated[Path, typer.Argument(help="where the seed files go (created 0700; seeds 0600)")],
) -> None:
    """Make (or keep) one NKey seed per role in CREDS_DIR; print the public keys as GATEHOUSE_NKEY_<ROLE>=U…"""
    from gatehouse.credentials import ensure_credentials

    for role, key in ensure_credentials(creds_dir).items():
        sys.stdout.write(f"GATEHOUSE_NKEY_{role.upper()}={key.public_key}\n")


@app.command("nats-config")
def nats_config(
    prefix: Annotated[str, typer.Option(help="NATS subject prefix")] = "gh",
    config: Annotated[Path | None, typer.Option(help="config: max_payload from server.max_body_bytes")] = None,
    creds_dir: Annotated[
        Path | None,
        typer.Option(
            help="embed the public keys of the seeds here (made if missing) and of the batch producers issued there; "
            "default: $GATEHOUSE_NKEY_<ROLE>"
        ),
    ] = None,
) -> None:
    """Print the nats-server config of the roles (users, permissions, max_payload) to include in your own."""
    from gatehouse.credentials import ensure_credentials, producer_keys
    from gatehouse.natsconf import authorization_block, render_config
    from shared.config import ConfigError, load_config
    from shared.natsconn import server_max_payload
    from shared.permissions import ROLES
    from shared.producers import Namespace
    from shared.subjects import Subjects

    producers: dict[Namespace, str] = {}
    if creds_dir is not None:
        keys = {role: key.public_key for role, key in ensure_credentials(creds_dir).items()}
        producers = {ns: key.public_key for ns, key in producer_keys(creds_dir).items()}
    else:
        keys = {role: f"$GATEHOUSE_NKEY_{role.upper()}" for role in ROLES}
    subjects = Subjects(prefix)
    if config is None:
        sys.stdout.write(authorization_block(subjects, keys, producers))
        return
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    max_payload = server_max_payload(cfg.server.max_body_bytes)
    sys.stdout.write(render_config(subjects, keys, max_payload=max_payload, producers=producers))


from gatehouse import admin_cli, analytics_cli  # noqa: E402  (the admin commands register below the core ones)

app.add_typer(admin_cli.keys_app, name="keys")
app.add_typer(admin_cli.teams_app, name="teams")
app.add_typer(admin_cli.projects_app, name="projects")
app.add_typer(admin_cli.users_app, name="users")
app.add_typer(admin_cli.orgs_app, name="orgs")
app.command("usage")(analytics_cli.usage)
app.command("requests")(analytics_cli.requests)
app.command("request")(analytics_cli.request)
app.command("reprice")(analytics_cli.reprice)
app.command("status")(admin_cli.status)

from gatehouse.batch_cli import batch_app  # noqa: E402
from gatehouse.producers_cli import producers_app  # noqa: E402

app.add_typer(batch_app, name="batch")
app.add_typer(producers_app, name="batch-producers")

from gatehouse.mcp_cli import mcp_app  # noqa: E402

app.add_typer(mcp_app, name="mcp")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
