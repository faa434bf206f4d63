"""`gatehouse batch-producers create|list|revoke`: NATS credentials for batch producers, each scoped to one team or
virtual key, so that one team's pipelines can neither read another's results nor queue items into its jobs.

A credential is an NKey seed file under the stack's credentials (`<data dir>/creds/producers/team.ml.nk`, or
`--creds-dir` for a deployment). A running `gatehouse up` sees it within a second and reloads nats-server;
elsewhere, `gatehouse nats-config --creds-dir …` embeds the producers' public keys in the config it prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gatehouse.credentials import ensure_producer, producer_keys, revoke_producer
from shared.producers import Namespace
from shared.subjects import Subjects

producers_app = typer.Typer(help="Batch producer credentials scoped to one team or key.", no_args_is_help=True)
console = Console(highlight=False, markup=False, soft_wrap=True)  # paths and keys are copied whole
err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option(help="the data dir of the stack (its credentials are under creds/)")]
CredsDir = Annotated[Path | None, typer.Option(help="the credentials dir instead (e.g. deploy/secrets)")]
Team = Annotated[str | None, typer.Option(help="the team the producer submits for")]
Key = Annotated[str | None, typer.Option("--key", help="the virtual key id the producer submits for (not its secret)")]


def _creds(data_dir: Path, creds_dir: Path | None) -> Path:
    return creds_dir if creds_dir is not None else data_dir / "creds"


def _namespace(team: str | None, key: str | None) -> Namespace:
    if (team is None) == (key is None):
        err.print("[red]give exactly one of --team or --key[/red]")
        raise typer.Exit(2)
    try:
        return Namespace("team", team) if team is not None else Namespace("key", key or "")
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc


@producers_app.command()
def create(
    team: Team = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    creds_dir: CredsDir = None,
    prefix: Annotated[str, typer.Option(help="NATS subject prefix")] = "gh",
) -> None:
    """Issue (or show) the producer credential of one team or key; its items and results stay in its namespace."""
    namespace = _namespace(team, key)
    made, created = ensure_producer(_creds(data_dir, creds_dir), namespace)
    subjects = Subjects(prefix)
    ns = namespace.name
    console.print(f"{'issued' if created else 'already issued'}: batch producer of {ns}")
    console.print(f"  seed file (secret, 0600): {made.seed_file}")
    console.print(f"  public key: {made.public_key}")
    console.print(f"  publishes items to {subjects.batch_items('<job_id>', ns).name}")
    console.print(
        f"  reads result notices on {subjects.batch_out_scoped(ns)}; replies on {subjects.producer_inbox(ns)}.>"
    )
    console.print(
        f'  python: BatchClient.connect(url, seed_file="{made.seed_file}", namespace="{ns}", prefix="{prefix}")'
    )


@producers_app.command("list")
def list_(data_dir: DataDir = Path(".gatehouse"), creds_dir: CredsDir = None) -> None:
    """The producer credentials issued (namespace and public key)."""
    for namespace, found in producer_keys(_creds(data_dir, creds_dir)).items():
        console.print(f"{namespace.name}\t{found.public_key}")


@producers_app.command()
def revoke(
    team: Team = None, key: Key = None, data_dir: DataDir = Path(".gatehouse"), creds_dir: CredsDir = None
) -> None:
    """Delete the producer credential of one team or key (a running stack's nats-server forgets it on reload)."""
    namespace = _namespace(team, key)
    if not revoke_producer(_creds(data_dir, creds_dir), namespace):
        err.print(f"[red]no producer credential of {namespace.name}[/red]")
        raise typer.Exit(1)
    console.print(f"revoked: batch producer of {namespace.name}")
