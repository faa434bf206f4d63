"""`gatehouse keys|teams|projects|users|orgs`: the admin API from the command line (usage: `analytics_cli`).

Talks HTTP to a running ingress (`--url`, default: the running stack's), as the admin (the
GATEHOUSE_ADMIN_KEY environment variable, else the key `gatehouse up` generated under its data dir) or
as a team admin (`--key`). Limits are written the way people say them: `--budget 50/month`,
`--budget 500/month:soft`, `--budget 20/day:clamp`, `--rpm 600`, `--tpm 200k`, `--models 'gpt-4o*,mock-1'`.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from gatehouse.launcher import read_state

console = Console()
err = Console(stderr=True)

keys_app = typer.Typer(help="Virtual keys: create (the secret is shown once), list, show, disable, rotate, delete.")
teams_app = typer.Typer(help="Teams and their limits.")
projects_app = typer.Typer(help="Projects (within a team) and their limits.")
users_app = typer.Typer(help="Users (within a team) and their limits.")
orgs_app = typer.Typer(help="Organizations (budget time zone and org-wide limits).")

DataDir = Annotated[Path, typer.Option(help="the data dir of the running stack")]
Url = Annotated[str | None, typer.Option(help="ingress URL (default: the running stack's)")]
Key = Annotated[str | None, typer.Option("--key", help="admin or team-admin key (default: the admin key)")]
Fmt = Annotated[str, typer.Option("--format", help="table | json")]

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmMbB]?)\s*$")
_PERIODS = {"day": "daily", "daily": "daily", "week": "weekly", "weekly": "weekly", "month": "monthly",
            "monthly": "monthly", "total": "total", "ever": "total"}  # fmt: skip
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([smhdw]?)\s*$")


def count(text: str) -> int:
    """`600`, `200k`, `1.5m` → an integer."""
    match = _SIZE.match(text)
    if not match:
        raise typer.BadParameter(f"not a number: {text!r} (e.g. 600, 200k, 1.5m)")
    scale = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def duration(text: str) -> float:
    """`90s`, `30m`, `1h`, `7d`, `2w` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise typer.BadParameter(f"not a duration: {text!r} (e.g. 1h, 7d)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[match.group(2)]


def budget(text: str) -> dict[str, object]:
    """`50/month`, `500/month:soft`, `20/day:clamp` → a budget record."""
    spec, _, mode = text.partition(":")
    amount, _, period = spec.partition("/")
    if period.strip() not in _PERIODS:
        raise typer.BadParameter(f"budget {text!r}: write <USD>/<day|week|month|total>[:soft|:clamp]")
    try:
        usd = float(amount.strip().lstrip("$"))
    except ValueError as exc:
        raise typer.BadParameter(f"budget {text!r}: {amount!r} is not an amount") from exc
    if mode not in ("", "soft", "clamp", "hard"):
        raise typer.BadParameter(f"budget {text!r}: the mode is soft, clamp or hard")
    out: dict[str, object] = {"amount_usd": usd, "period": _PERIODS[period.strip()], "hard": mode != "soft"}
    if mode == "clamp":
        out["on_exceed"] = "clamp"
    return out


def limits(
    *,
    models: str | None = None,
    policy: str | None = None,
    lock_policy: bool = False,
    rpm: str | None = None,
    tpm: str | None = None,
    concurrency: int | None = None,
    budgets: list[str] | None = None,
    max_tokens: int | None = None,
    tags: list[str] | None = None,
) -> dict[str, object]:
    """The `limits` record for these options (only what was given)."""
    out: dict[str, object] = {}
    if models:
        out["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if policy:
        out["policy"] = policy
    if lock_policy:
        out["lock_policy"] = True
    quotas = {
        k: v
        for k, v in (
            ("rpm", count(rpm) if rpm else None),
            ("tpm", count(tpm) if tpm else None),
            ("max_concurrency", concurrency),
        )
        if v is not None
    }
    if quotas:
        out["quotas"] = quotas
    if budgets:
        out["budgets"] = [budget(b) for b in budgets]
    if max_tokens is not None:
        out["params"] = {"max": {"max_tokens": max_tokens}}
    if tags:
        pairs = [t.partition("=") for t in tags]
        out["tags"] = {k: v for k, _, v in pairs}
    return out


class Admin:
    def __init__(self, url: str | None, key: str | None, data_dir: Path) -> None:
        state: dict[str, str] = {}
        if url is None or key is None:
            try:
                state = read_state(data_dir.resolve())
            except FileNotFoundError as exc:
                if url is None:
                    err.print(f"[red]{exc}; or pass --url[/red]")
                    raise typer.Exit(2) from exc
        self.url = (url or state["ingress_url"]).rstrip("/")
        key = key or os.environ.get("GATEHOUSE_ADMIN_KEY")
        if key is None and state.get("admin_key_file"):
            key = Path(state["admin_key_file"]).read_text().strip()
        if not key:
            err.print("[red]no admin key: set GATEHOUSE_ADMIN_KEY or pass --key[/red]")
            raise typer.Exit(2)
        self._headers = {"authorization": f"Bearer {key}"}

    def call(self, method: str, path: str, body: object = None, params: dict[str, str] | None = None) -> object:
        try:
            resp = httpx.request(
                method, f"{self.url}/admin/v1{path}", json=body, params=params, headers=self._headers, timeout=30
            )
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach {self.url}: {type(exc).__name__}[/red]")
            raise typer.Exit(1) from exc
        data = resp.json() if resp.content else {}
        if resp.status_code >= 400:
            message = data.get("error", {}).get("message", resp.text) if isinstance(data, dict) else resp.text
            err.print(f"[red]{resp.status_code}: {message}[/red]")
            raise typer.Exit(1)
        return data


def show(data: object, fmt: str, columns: tuple[str, ...]) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    rows = data["data"] if isinstance(data, dict) and "data" in data else [data]
    table = Table(*columns)
    for row in rows:
        assert isinstance(row, dict)
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


KEY_COLUMNS = ("id", "team", "project", "user", "name", "role", "display", "disabled", "expires_at", "limits")
ENTITY_COLUMNS = {"team": ("id", "org", "name", "limits"), "project": ("id", "team", "name", "limits"),
                  "user": ("id", "team", "email", "limits"), "org": ("id", "name", "timezone", "limits")}  # fmt: skip


# ---- keys -----------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="the team the key belongs to")],
    project: Annotated[str, typer.Option(help="a project of the team")] = "",
    user: Annotated[str, typer.Option(help="a user of the team (the key's owner)")] = "",
    name: Annotated[str, typer.Option(help="a label")] = "",
    key_id: Annotated[str, typer.Option("--id", help="the key's id (default: generated)")] = "",
    role: Annotated[str, typer.Option(help="api | team_admin")] = "api",
    budget_: Annotated[list[str] | None, typer.Option("--budget", help="e.g. 50/month, 10/day:clamp")] = None,
    rpm: Annotated[str | None, typer.Option(help="requests per minute")] = None,
    tpm: Annotated[str | None, typer.Option(help="tokens per minute, e.g. 200k")] = None,
    concurrency: Annotated[int | None, typer.Option(help="requests in flight")] = None,
    models: Annotated[str | None, typer.Option(help="allowed models, comma list, globs allowed")] = None,
    policy: Annotated[str | None, typer.Option(help="guardrail policy")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="cap on max_tokens")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="k=v tag on every record")] = None,
    expires: Annotated[str | None, typer.Option(help="expiry from now, e.g. 30d")] = None,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    """Create a key; its secret is printed once and never again."""
    body: dict[str, object] = {
        "team": team,
        "project": project,
        "user": user,
        "name": name,
        "role": role,
        "limits": limits(models=models, policy=policy, rpm=rpm, tpm=tpm, concurrency=concurrency,
                         budgets=budget_, max_tokens=max_tokens, tags=tag),
    }  # fmt: skip
    if key_id:
        body["id"] = key_id
    if expires:
        body["expires_in_s"] = duration(expires)
    data = Admin(url, key, data_dir).call("POST", "/keys", body)
    assert isinstance(data, dict)
    if fmt == "json":
        show(data, fmt, KEY_COLUMNS)
        return
    console.print(f"key [bold]{data['id']}[/bold] created in team {data['team']}")
    console.print(f"secret (shown once): [bold green]{data['secret']}[/bold green]")


@keys_app.command("list")
def keys_list(
    team: Annotated[str | None, typer.Option()] = None,
    project: Annotated[str | None, typer.Option()] = None,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    params = {k: v for k, v in (("team", team), ("project", project)) if v}
    show(Admin(url, key, data_dir).call("GET", "/keys", params=params), fmt, KEY_COLUMNS)


@keys_app.command("show")
def keys_show(
    key_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse"), fmt: Fmt = "table"
) -> None:
    show(Admin(url, key, data_dir).call("GET", f"/keys/{key_id}"), fmt, KEY_COLUMNS)


@keys_app.command("disable")
def keys_disable(key_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse")) -> None:
    """Refuse the key at once, on every ingress replica (it can be enabled again)."""
    Admin(url, key, data_dir).call("PATCH", f"/keys/{key_id}", {"disabled": True})
    console.print(f"key {key_id} disabled")


@keys_app.command("enable")
def keys_enable(key_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse")) -> None:
    Admin(url, key, data_dir).call("PATCH", f"/keys/{key_id}", {"disabled": False})
    console.print(f"key {key_id} enabled")


@keys_app.command("rotate")
def keys_rotate(
    key_id: str,
    grace: Annotated[str, typer.Option(help="how long the old secret keeps working, e.g. 1h")] = "1h",
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
) -> None:
    """A new secret (printed once); the old one works for the grace period."""
    data = Admin(url, key, data_dir).call("POST", f"/keys/{key_id}/rotate", {"grace_s": duration(grace)})
    assert isinstance(data, dict)
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(data["previous_until"])))
    console.print(f"key {key_id} rotated; the old secret works until {until}")
    console.print(f"new secret (shown once): [bold green]{data['secret']}[/bold green]")


@keys_app.command("delete")
def keys_delete(key_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse")) -> None:
    Admin(url, key, data_dir).call("DELETE", f"/keys/{key_id}")
    console.print(f"key {key_id} deleted")


# ---- teams, projects, users, orgs -----------------------------------------------------------------
def _entity_commands(app: typer.Typer, kind: str, plural: str, parent: str | None) -> None:
    columns = ENTITY_COLUMNS[kind]

    @app.command("create")
    def create(
        entity_id: Annotated[str, typer.Argument(help="the id of the new record")],
        team: Annotated[str | None, typer.Option(help="the team (projects and users)")] = None,
        org: Annotated[str, typer.Option(help="the org (teams)")] = "default",
        name: Annotated[str, typer.Option()] = "",
        email: Annotated[str, typer.Option(help="users")] = "",
        timezone: Annotated[str, typer.Option(help="orgs: where budget periods begin")] = "UTC",
        budget_: Annotated[list[str] | None, typer.Option("--budget", help="e.g. 500/month")] = None,
        rpm: Annotated[str | None, typer.Option()] = None,
        tpm: Annotated[str | None, typer.Option()] = None,
        concurrency: Annotated[int | None, typer.Option()] = None,
        models: Annotated[str | None, typer.Option(help="allowed models, comma list, globs allowed")] = None,
        policy: Annotated[str | None, typer.Option(help="guardrail policy")] = None,
        lock_policy: Annotated[bool, typer.Option(help="keys below cannot choose another policy")] = False,
        max_tokens: Annotated[int | None, typer.Option()] = None,
        url: Url = None,
        key: Key = None,
        data_dir: DataDir = Path(".gatehouse"),
        fmt: Fmt = "table",
    ) -> None:
        body: dict[str, object] = {
            "id": entity_id,
            "limits": limits(models=models, policy=policy, lock_policy=lock_policy, rpm=rpm, tpm=tpm,
                             concurrency=concurrency, budgets=budget_, max_tokens=max_tokens),
        }  # fmt: skip
        if kind == "team":
            body |= {"org": org, "name": name}
        elif kind == "org":
            body |= {"name": name, "timezone": timezone}
        else:
            if not team:
                raise typer.BadParameter(f"a {kind} belongs to a team: --team")
            body["team"] = team
            body |= {"email": email} if kind == "user" else {"name": name}
        show(Admin(url, key, data_dir).call("POST", f"/{plural}", body), fmt, columns)

    @app.command("list")
    def list_(
        team: Annotated[str | None, typer.Option()] = None,
        url: Url = None,
        key: Key = None,
        data_dir: DataDir = Path(".gatehouse"),
        fmt: Fmt = "table",
    ) -> None:
        show(Admin(url, key, data_dir).call("GET", f"/{plural}", params={"team": team} if team else None), fmt, columns)

    @app.command("show")
    def show_(
        entity_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse"), fmt: Fmt = "table"
    ) -> None:
        show(Admin(url, key, data_dir).call("GET", f"/{plural}/{entity_id}"), fmt, columns)

    @app.command("update")
    def update(
        entity_id: str,
        budget_: Annotated[list[str] | None, typer.Option("--budget")] = None,
        rpm: Annotated[str | None, typer.Option()] = None,
        tpm: Annotated[str | None, typer.Option()] = None,
        concurrency: Annotated[int | None, typer.Option()] = None,
        models: Annotated[str | None, typer.Option()] = None,
        policy: Annotated[str | None, typer.Option()] = None,
        lock_policy: Annotated[bool, typer.Option()] = False,
        max_tokens: Annotated[int | None, typer.Option()] = None,
        url: Url = None,
        key: Key = None,
        data_dir: DataDir = Path(".gatehouse"),
        fmt: Fmt = "table",
    ) -> None:
        """Replace the limits (those not given are cleared)."""
        body = {"limits": limits(models=models, policy=policy, lock_policy=lock_policy, rpm=rpm, tpm=tpm,
                                 concurrency=concurrency, budgets=budget_, max_tokens=max_tokens)}  # fmt: skip
        show(Admin(url, key, data_dir).call("PATCH", f"/{plural}/{entity_id}", body), fmt, columns)

    @app.command("delete")
    def delete(entity_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse")) -> None:
        Admin(url, key, data_dir).call("DELETE", f"/{plural}/{entity_id}")
        console.print(f"{kind} {entity_id} deleted")

    del parent


_entity_commands(teams_app, "team", "teams", None)
_entity_commands(projects_app, "project", "projects", "team")
_entity_commands(users_app, "user", "users", "team")
_entity_commands(orgs_app, "org", "orgs", None)


def _ms(value: object) -> str:
    return f"{value:.0f}" if isinstance(value, int | float) else "-"


def _state(row: dict[str, object], now: float) -> str:
    state = str(row["state"])
    until = row.get("until")
    if state != "healthy" and isinstance(until, int | float) and until > now:
        return f"{state} ({until - now:.0f}s left)"
    return state


def status(
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    """Each deployment's health across the router replicas: healthy, cooling down (until), open; EWMA
    latency and time to first token, error rate, requests in flight."""
    data = Admin(url, key, data_dir).call("GET", "/deployments")
    assert isinstance(data, dict)
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    now = time.time()
    table = Table("deployment", "models", "state", "latency ms", "ttft ms", "errors", "in flight", "reason")
    for row in data["deployments"]:
        rate = row["error_rate"]
        table.add_row(
            str(row["deployment"]),
            ",".join(row["models"]),
            _state(row, now),
            _ms(row["ewma_latency_ms"]),
            _ms(row["ewma_ttft_ms"]),
            f"{rate:.0%} of {row['attempts']}" if row["attempts"] else "-",
            str(row["inflight"]),
            str(row["reason"])[:60],
        )
    console.print(table)
    console.print(f"router replicas: {len(data['replicas'])}  in flight: {data['inflight']}")
