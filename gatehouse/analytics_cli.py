"""`gatehouse usage | requests | request | reprice`: spend reports, the request explorer and re-pricing.

`usage`, `requests` and `request` go through the admin API (as the admin, or as a team admin who sees its own
team only); `reprice` writes costs and asks the accounting service over NATS as the admin role, like
`gatehouse sql`. Periods are `--since 7d` (back from now), `--from/--until` (dates or times, UTC unless they
say), or `--period today|yesterday|this-week|last-week|this-month|last-month`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.bar import Bar
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gatehouse.admin_cli import Admin, DataDir, Key, Url, duration
from shared.periods import parse_instant

console = Console()
err = Console(stderr=True)

PERIODS = ("today", "yesterday", "this-week", "last-week", "this-month", "last-month")
CHART_METRICS = ("cost_usd", "requests", "input_tokens", "output_tokens", "errors")
Format = Annotated[str, typer.Option("--format", help="table | json | csv")]


# ---- periods ---------------------------------------------------------------------------------------
def period(name: str, now: datetime) -> tuple[datetime, datetime]:
    """A named calendar period (UTC) → [start, end)."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = day - timedelta(days=day.weekday())
    first = day.replace(day=1)
    if name == "today":
        return day, day + timedelta(days=1)
    if name == "yesterday":
        return day - timedelta(days=1), day
    if name == "this-week":
        return monday, monday + timedelta(days=7)
    if name == "last-week":
        return monday - timedelta(days=7), monday
    if name == "this-month":
        return first, (first + timedelta(days=32)).replace(day=1)
    if name == "last-month":
        return (first - timedelta(days=1)).replace(day=1), first
    raise typer.BadParameter(f"unknown period {name!r} (one of: {', '.join(PERIODS)})")


def moment(text: str) -> float:
    """`2026-11-01`, `2026-11-01T12:00`, `2026-11-01 12:00+02:00` or unix seconds → unix seconds (UTC default)."""
    try:
        return parse_instant(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not a date or time: {text!r} (e.g. 2026-11-01 or 2026-11-01T12:00)") from exc


def time_range(
    since: str | None, start: str | None, until: str | None, name: str | None, default: str
) -> tuple[float, float]:
    """The [from, until) of the options; `until` 0 means now."""
    if name:
        if since or start or until:
            raise typer.BadParameter("--period stands alone (no --since, --from or --until with it)")
        begin, end = period(name, datetime.now(UTC))
        return begin.timestamp(), end.timestamp()
    if since and start:
        raise typer.BadParameter("give --since (a duration back from now) or --from (a date), not both")
    begin_s = moment(start) if start else time.time() - duration(since or default)
    end_s = moment(until) if until else 0.0
    if end_s and end_s <= begin_s:
        raise typer.BadParameter("the period ends before it starts")
    return begin_s, end_s


# ---- output ----------------------------------------------------------------------------------------
def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def emit(columns: list[str], rows: list[list[object]], fmt: str, title: str = "") -> None:
    """Rows as a table, JSON (a list of objects) or CSV."""
    if fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], indent=2) + "\n")
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in r] for r in rows])
        sys.stdout.write(out.getvalue())
    elif fmt == "table":
        table = Table(*columns, title=title or None)
        for row in rows:
            table.add_row(*(_cell(v) for v in row))
        console.print(table)
    else:
        raise typer.BadParameter(f"unknown format {fmt!r} (table, json or csv)")


def chart(columns: list[str], rows: list[list[object]], metric: str, labels: list[str], width: int = 40) -> Table:
    """A horizontal bar chart of `metric` per row (rich bars), labelled by the grouping columns."""
    at = columns.index(metric)
    values = [float(r[at] or 0) for r in rows]  # type: ignore[arg-type]
    top = max(values, default=0.0) or 1.0
    table = Table(show_header=False, box=None, padding=(0, 1), title=f"{metric} by {', '.join(labels) or 'total'}")
    table.add_column(justify="right", no_wrap=True)
    table.add_column(width=width)
    table.add_column(justify="right", no_wrap=True)
    index = [columns.index(name) for name in labels]
    for row, value in zip(rows, values, strict=True):
        label = " · ".join(_cell(row[i]) for i in index) or "total"
        shown = f"${value:,.4f}" if metric == "cost_usd" else f"{value:,.0f}"
        table.add_row(label, Bar(size=top, begin=0, end=value, width=width, color="cyan"), shown)
    return table


# ---- usage ------------------------------------------------------------------------------------------
def usage(
    by: Annotated[
        str,
        typer.Option(
            help="group by, comma list: team, project, key_id, user, org, model (requested), provider, "
            "provider_model, deployment, hour, day, week, month"
        ),
    ] = "team",
    team: Annotated[str | None, typer.Option()] = None,
    project: Annotated[str | None, typer.Option()] = None,
    key_id: Annotated[str | None, typer.Option("--key-id")] = None,
    model: Annotated[str | None, typer.Option(help="requested model")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    since: Annotated[str | None, typer.Option(help="how far back, e.g. 24h, 7d, 30d (default 30d)")] = None,
    start: Annotated[str | None, typer.Option("--from", help="from a date or time, e.g. 2026-11-01")] = None,
    until: Annotated[str | None, typer.Option(help="until a date or time (default: now)")] = None,
    period_: Annotated[str | None, typer.Option("--period", help=", ".join(PERIODS))] = None,
    chart_: Annotated[str, typer.Option("--chart", help=f"bar chart of: {', '.join(CHART_METRICS)}, or none")] = (
        "cost_usd"
    ),
    limit: Annotated[int, typer.Option(help="at most this many groups")] = 1000,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Format = "table",
) -> None:
    """Spend, tokens, requests and tool calls over a period, grouped (from the request and MCP call records)."""
    begin, end = time_range(since, start, until, period_, "30d")
    groups = [g.strip() for g in by.split(",") if g.strip()]
    params = {"group_by": ",".join(groups), "since": str(begin), "limit": str(limit)}
    if end:
        params["until"] = str(end)
    filters = (("team", team), ("project", project), ("key_id", key_id), ("requested_model", model))
    for name, value in (*filters, ("provider", provider)):
        if value:
            params[name] = value
    data = Admin(url, key, data_dir).call("GET", "/usage", params=params)
    assert isinstance(data, dict)
    columns, rows = list(data["columns"]), list(data["rows"])
    if fmt != "table":
        emit(columns, rows, fmt)
        return
    span = f"{_when(begin)} → {_when(end) if end else 'now'}"
    emit(columns, rows, fmt, title=f"usage {span}")
    if chart_ != "none" and rows:
        if chart_ not in CHART_METRICS:
            raise typer.BadParameter(f"--chart: one of {', '.join(CHART_METRICS)} or none")
        console.print(chart(columns, rows, chart_, groups))
    total = sum(float(r[columns.index("cost_usd")] or 0) for r in rows)
    line = f"total: ${total:,.4f} over {sum(int(r[columns.index('requests')]) for r in rows):,} requests"
    if "tool_calls" in columns:
        line += f" and {sum(int(r[columns.index('tool_calls')]) for r in rows):,} tool calls"
    console.print(line)


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---- the request explorer ---------------------------------------------------------------------------
def requests(
    team: Annotated[str | None, typer.Option()] = None,
    project: Annotated[str | None, typer.Option()] = None,
    key_id: Annotated[str | None, typer.Option("--key-id")] = None,
    model: Annotated[str | None, typer.Option(help="requested model")] = None,
    provider: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="503, 5xx, 4xx, error or ok")] = None,
    guard: Annotated[str | None, typer.Option(help="the guard's action: block, redact, flag, allow")] = None,
    error_type: Annotated[str | None, typer.Option("--error-type")] = None,
    since: Annotated[str | None, typer.Option(help="how far back, e.g. 15m, 1h, 2d (default 1h)")] = None,
    start: Annotated[str | None, typer.Option("--from", help="from a date or time")] = None,
    until: Annotated[str | None, typer.Option(help="until a date or time")] = None,
    limit: Annotated[int, typer.Option(help="at most this many (newest first)")] = 50,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Format = "table",
) -> None:
    """The newest requests matching the filters, e.g. `gatehouse requests --team ml --status 5xx --since 1h`."""
    begin, end = time_range(since, start, until, None, "1h")
    params = {"since": str(begin), "limit": str(limit)}
    if end:
        params["until"] = str(end)
    for name, value in (
        ("team", team),
        ("project", project),
        ("key_id", key_id),
        ("requested_model", model),
        ("provider", provider),
        ("status", status),
        ("guard_action", guard),
        ("error_type", error_type),
    ):
        if value:
            params[name] = value
    data = Admin(url, key, data_dir).call("GET", "/requests", params=params)
    assert isinstance(data, dict)
    emit(list(data["columns"]), list(data["rows"]), fmt, title=f"requests since {_when(begin)}")
    if fmt == "table" and not data["rows"]:
        err.print("no requests match")


def request(
    request_id: Annotated[str, typer.Argument(help="the request id (the x-request-id header of its answer)")],
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Annotated[str, typer.Option("--format", help="text | json")] = "text",
) -> None:
    """One request's full story: who, what, attempts, guard findings and verdicts, cost, logged content, spans."""
    story = Admin(url, key, data_dir).call("GET", f"/requests/{request_id}")
    assert isinstance(story, dict)
    if fmt == "json":
        sys.stdout.write(json.dumps(story, indent=2) + "\n")
        return
    console.print(render_story(story))


def _nested(record: dict[str, object], prefix: str, names: tuple[str, ...]) -> list[list[object]]:
    """Rows of a Nested column group (`attempts.provider`, `attempts.status`, …)."""
    columns = [record.get(f"{prefix}.{n}") or [] for n in names]
    count = max((len(c) for c in columns if isinstance(c, list)), default=0)
    return [[c[i] if isinstance(c, list) and i < len(c) else "" for c in columns] for i in range(count)]


def render_story(story: dict[str, object]) -> Group:
    r = story.get("request")
    assert isinstance(r, dict)
    status = int(r.get("status") or 0)
    colour = "green" if status < 400 else ("yellow" if status < 500 else "red")
    head = Text.assemble(
        (f"{r.get('request_id')}  ", "bold"),
        (f"{status}", f"bold {colour}"),
        f"  {r.get('api')} {r.get('requested_model')} → {r.get('provider') or '-'} {r.get('provider_model') or ''}",
    )
    facts = Table(show_header=False, box=None, padding=(0, 2))
    facts.add_column(style="dim")
    facts.add_column()
    for label, value in (
        ("who", f"org {r.get('org') or '-'} · team {r.get('team') or '-'} · project {r.get('project') or '-'} · "
                f"user {r.get('user') or '-'} · key {r.get('key_id')}"),
        ("when", f"{r.get('received_at')} → {r.get('finished_at')}  ({r.get('latency_ms'):.1f} ms, "
                 f"first byte {r.get('ttft_ms'):.1f} ms, upstream {r.get('upstream_ms'):.1f} ms)"),
        ("trace", f"{r.get('trace_id') or '-'}" + (f" · batch {r.get('batch_id')}" if r.get("batch_id") else "")),
        ("tokens", f"in {r.get('input_tokens')} (cached {r.get('cached_tokens')}, cache writes "
                   f"{r.get('cache_write_tokens')}) · out {r.get('output_tokens')} (reasoning "
                   f"{r.get('reasoning_tokens')})" + (" · estimated" if r.get("usage_estimated") else "")),
        ("cost", f"${_cell(r.get('cost_usd')) or '?'} ({r.get('price_version')}) · reserved "
                 f"${_cell(r.get('reserved_cost_usd')) or '-'} · settled ${_cell(r.get('settled_cost_usd')) or '-'}"),
        ("guard", f"{r.get('guard_action') or '-'} (policy {r.get('guard_policy') or '-'})"),
        ("error", f"{r.get('error_type')} {r.get('error_code')}: {r.get('error_message')}" if r.get("error_type")
                  else "-"),
        ("stream", f"{r.get('stream')} · finish {r.get('finish_reason') or '-'} · tags {_cell(r.get('tags'))}"),
    ):  # fmt: skip
        facts.add_row(label, value)
    parts: list[object] = [Panel(Group(head, facts), title="request", expand=False)]
    attempts = _nested(r, "attempts", ("provider", "deployment", "status", "latency_ms", "error_code", "error_message"))
    if attempts:
        table = Table("#", "provider", "deployment", "status", "ms", "error", "message", title="attempts")
        for i, a in enumerate(attempts, 1):
            table.add_row(str(i), *(_cell(v) for v in a))
        parts.append(table)
    names = ("direction", "scanner", "rule", "action", "severity", "start", "end")
    findings = _nested(r, "guard_findings", names)
    if findings:
        table = Table(*names, title="guard findings")
        for f in findings:
            table.add_row(*(_cell(v) for v in f))
        parts.append(table)
    verdicts = story.get("verdicts") or []
    if isinstance(verdicts, list) and verdicts:
        table = Table("at", "direction", "policy", "action", "rules", "µs", title="guard verdicts")
        for v in verdicts:
            rules = ", ".join(f"{s}.{n}" for s, n in zip(v.get("findings.scanner") or [], v.get("findings.rule") or [],
                                                            strict=False))  # fmt: skip
            table.add_row(*(_cell(x) for x in (v.get("at"), v.get("direction"), v.get("policy"), v.get("action"))),
                          rules, _cell(v.get("scan_us")))  # fmt: skip
        parts.append(table)
    content = story.get("content") or []
    for c in content if isinstance(content, list) else []:
        lines = [
            Text.assemble((f"{loc}: ", "dim"), str(text))
            for loc, text in zip(c.get("texts.location") or [], c.get("texts.text") or [], strict=False)
        ]
        title = (f"{c.get('direction')} (redacted by {c.get('policy')}, {c.get('redactions')} redactions, "
                 f"kept {c.get('retention_days')} days{', cut' if c.get('truncated') else ''})")  # fmt: skip
        parts.append(Panel(Group(*lines) if lines else Text("(nothing stored)", style="dim"), title=title))
    spans = story.get("spans") or []
    if isinstance(spans, list) and spans:
        columns = [k for k in spans[0] if k not in ("attributes", "trace_id")]
        table = Table(*columns, title="trace spans")
        for span in spans:
            table.add_row(*(_cell(span.get(k)) for k in columns))
        parts.append(table)
    return Group(*parts)  # type: ignore[arg-type]


# ---- re-pricing -------------------------------------------------------------------------------------
def reprice(
    start: Annotated[str, typer.Option("--from", help="from a date or time, e.g. 2026-11-01")],
    until: Annotated[str, typer.Option("--to", help="until a date or time (exclusive)")],
    model: Annotated[list[str] | None, typer.Option(help="only this requested model (repeatable)")] = None,
    deployment: Annotated[list[str] | None, typer.Option(help="only this deployment id (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what would change, change nothing")] = False,
    data_dir: DataDir = Path(".gatehouse"),
    nats_url: Annotated[str | None, typer.Option(help="NATS URL (default: from the running stack)")] = None,
    prefix: Annotated[str | None, typer.Option(help="NATS subject prefix")] = None,
    nkey_seed_file: Annotated[
        Path | None, typer.Option(envvar="GATEHOUSE_ADMIN_NKEY_SEED_FILE", help="the admin NKey seed file")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the accounting service")] = 600.0,
    fmt: Annotated[str, typer.Option("--format", help="text | json")] = "text",
) -> None:
    """Price the stored usage of [--from, --to) again with the prices in force now (the config's
    `deployments[].price` / `models[].price`, else genai-prices); each row keeps its price version. Budgets
    already settled are not settled again. Running it twice changes nothing the second time."""
    from gatehouse.query import admin_endpoint, run_reprice
    from shared.schemas.admin import RepriceRequest

    begin, end = moment(start), moment(until)
    if end <= begin:
        raise typer.BadParameter("--to must be after --from")
    url, subject_prefix, seed = admin_endpoint(data_dir, nats_url, prefix, nkey_seed_file)
    ask = RepriceRequest(since=begin, until=end, models=model or [], deployments=deployment or [], dry_run=dry_run)
    try:
        result = asyncio.run(run_reprice(url, subject_prefix, ask, timeout, seed))
    except Exception as exc:
        err.print(f"[red]reprice failed: {exc}[/red]")
        raise typer.Exit(1) from exc
    if result.error:
        err.print(f"[red]{result.error}[/red]")
        raise typer.Exit(1)
    if fmt == "json":
        import msgspec

        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return
    verb = "would change" if dry_run else "changed"
    console.print(
        f"{result.rows:,} priced requests from {_when(begin)} to {_when(end)}: {verb} {result.changed:,} "
        f"(${result.cost_before_usd:,.6f} → ${result.cost_after_usd:,.6f})"
    )
    for version, count in sorted(result.versions.items()):
        console.print(f"  {count:,} now at {version}")
