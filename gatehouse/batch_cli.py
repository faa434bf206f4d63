"""`gatehouse batch submit|status|results|cancel|list`: batch jobs through the OpenAI Batch API of a running
ingress, with an API key (`--key`, else GATEHOUSE_API_KEY or OPENAI_API_KEY).

`submit` takes a JSONL file of OpenAI batch lines (`{"custom_id", "method", "url", "body"}`) or of bare
request bodies (`{"messages": [...]}`; their ids become `line-<n>`); `--model` sets every body's model.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gatehouse.launcher import read_state

batch_app = typer.Typer(help="Batch jobs: submit a JSONL file, follow it, fetch its results, cancel it.")
console = Console()
err = Console(stderr=True)

FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
DataDir = Annotated[Path, typer.Option(help="the data dir of the running stack")]
Url = Annotated[str | None, typer.Option(help="ingress URL (default: the running stack's)")]
Key = Annotated[str | None, typer.Option("--key", help="API key (default: $GATEHOUSE_API_KEY or $OPENAI_API_KEY)")]
Fmt = Annotated[str, typer.Option("--format", help="table | json")]


class Api:
    def __init__(self, url: str | None, key: str | None, data_dir: Path) -> None:
        if url is None:
            try:
                url = read_state(data_dir.resolve())["ingress_url"]
            except FileNotFoundError as exc:
                err.print(f"[red]{exc}; or pass --url[/red]")
                raise typer.Exit(2) from exc
        key = key or os.environ.get("GATEHOUSE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if not key:
            err.print("[red]no API key: pass --key or set GATEHOUSE_API_KEY[/red]")
            raise typer.Exit(2)
        self.url = url.rstrip("/")
        self.client = httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=300)

    def call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            resp = self.client.request(method, f"{self.url}/v1{path}", **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            err.print(f"[red]cannot reach {self.url}: {type(exc).__name__}[/red]")
            raise typer.Exit(1) from exc
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text
            err.print(f"[red]{resp.status_code}: {message}[/red]")
            raise typer.Exit(1)
        return resp

    def json(self, method: str, path: str, **kwargs: object) -> dict[str, object]:
        data = self.call(method, path, **kwargs).json()
        assert isinstance(data, dict)
        return data


def openai_lines(text: str, model: str | None, endpoint: str) -> bytes:
    """The file as OpenAI batch lines: bare bodies get an id and the endpoint; `model` sets every body's."""
    out: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            out.append(raw)  # the service reports it, with its line number, in the error file
            continue
        if not isinstance(obj, dict) or "body" not in obj:
            obj = {"custom_id": f"line-{n}", "method": "POST", "url": endpoint, "body": obj}
        if model and isinstance(obj.get("body"), dict):
            obj["body"]["model"] = model
        obj.setdefault("method", "POST")
        obj.setdefault("url", endpoint)
        out.append(json.dumps(obj, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def _gh(job: dict[str, object]) -> dict[str, object]:
    ext = job.get("gatehouse")
    return ext if isinstance(ext, dict) else {}


def _counts(job: dict[str, object]) -> tuple[int, int, int]:
    counts = job.get("request_counts")
    if not isinstance(counts, dict):
        return 0, 0, 0
    return int(counts.get("total", 0)), int(counts.get("completed", 0)), int(counts.get("failed", 0))


def follow(api: Api, job: dict[str, object], poll_s: float = 0.5) -> dict[str, object]:
    """A live progress bar (items done, items/s, ETA, cost so far) until the job ends."""
    total, _, _ = _counts(job)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} items/s"),
        TimeRemainingColumn(),
        TextColumn("${task.fields[cost]}"),
        TextColumn("{task.fields[status]}"),
    )
    started = time.monotonic()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(str(job["id"]), total=total or None, rate="0", cost="0", status=str(job["status"]))
        while True:
            total, completed, failed = _counts(job)
            done = completed + failed
            rate = done / max(time.monotonic() - started, 1e-6)
            progress.update(
                task,
                total=total or None,
                completed=done,
                rate=f"{rate:.0f}",
                cost=f"{float(str(_gh(job).get('cost_usd', 0.0))):.4f}",
                status=f"{job['status']} ({failed} failed)",
            )
            if job["status"] in FINAL:
                return job
            time.sleep(poll_s)
            job = api.json("GET", f"/batches/{job['id']}")


def show_job(job: dict[str, object], fmt: str) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(job, indent=2) + "\n")
        return
    total, completed, failed = _counts(job)
    table = Table("field", "value")
    for name in ("id", "status", "endpoint", "input_file_id", "output_file_id", "error_file_id"):
        table.add_row(name, str(job.get(name) or ""))
    table.add_row("items", f"{completed} completed, {failed} failed of {total}")
    gh = _gh(job)
    table.add_row("cost so far", f"${float(str(gh.get('cost_usd', 0.0))):.6f} (reserved ${gh.get('reserved_usd', 0)})")
    for name in ("created_at", "expires_at", "completed_at", "cancelled_at", "expired_at"):
        value = job.get(name)
        if isinstance(value, int):
            table.add_row(name, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value)))
    console.print(table)


@batch_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL: OpenAI batch lines, or bare request bodies")],
    model: Annotated[str | None, typer.Option(help="the model of every request")] = None,
    endpoint: Annotated[str, typer.Option(help="/v1/chat/completions or /v1/embeddings")] = "/v1/chat/completions",
    window: Annotated[str, typer.Option("--window", help="completion window, e.g. 24h")] = "24h",
    partial: Annotated[bool, typer.Option(help="run the part the key's budget covers if not all of it")] = False,
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar until it ends")] = False,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    """Upload FILE and start a batch job (priced and reserved up front; refused if the budget cannot cover it)."""
    api = Api(url, key, data_dir)
    body = openai_lines(file.read_text(encoding="utf-8"), model, endpoint)
    uploaded = api.json("POST", "/files", files={"file": (file.name, body)}, data={"purpose": "batch"})
    headers = {"x-gatehouse-batch-partial": "true"} if partial else {}
    job = api.json(
        "POST",
        "/batches",
        json={"input_file_id": uploaded["id"], "endpoint": endpoint, "completion_window": window},
        headers=headers,
    )
    err.print(f"batch {job['id']} created ({_counts(job)[0]} items, ${_gh(job).get('reserved_usd', 0)} reserved)")
    if wait:
        job = follow(api, job)
    show_job(job, fmt)
    if wait and job["status"] != "completed":
        raise typer.Exit(1)


@batch_app.command("status")
def status(
    batch_id: str,
    wait: Annotated[bool, typer.Option(help="follow it until it ends")] = False,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    api = Api(url, key, data_dir)
    job = api.json("GET", f"/batches/{batch_id}")
    if wait:
        job = follow(api, job)
    show_job(job, fmt)


@batch_app.command("results")
def results(
    batch_id: str,
    output: Annotated[Path, typer.Option("-o", "--output", help="where the output lines go")] = Path("-"),
    errors: Annotated[Path | None, typer.Option("-e", "--errors", help="where the error lines go")] = None,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
) -> None:
    """Download the output file (successful requests) and, with -e, the error file of a finished job."""
    api = Api(url, key, data_dir)
    job = api.json("GET", f"/batches/{batch_id}")
    if job["status"] not in FINAL:
        err.print(f"[yellow]batch {batch_id} is {job['status']}: its files are written when it ends[/yellow]")
        raise typer.Exit(1)
    for file_id, target in ((job.get("output_file_id"), output), (job.get("error_file_id"), errors)):
        if target is None:
            continue
        data = api.call("GET", f"/files/{file_id}/content").content if file_id else b""
        if str(target) == "-":
            sys.stdout.buffer.write(data)
        else:
            target.write_bytes(data)
            err.print(f"{len(data.splitlines())} lines → {target}")


@batch_app.command("cancel")
def cancel(batch_id: str, url: Url = None, key: Key = None, data_dir: DataDir = Path(".gatehouse")) -> None:
    """Stop dispatching the job's items (within a second); results so far are kept."""
    job = Api(url, key, data_dir).json("POST", f"/batches/{batch_id}/cancel")
    console.print(f"batch {batch_id} {job['status']}")


@batch_app.command("list")
def list_(
    limit: Annotated[int, typer.Option(help="how many")] = 20,
    url: Url = None,
    key: Key = None,
    data_dir: DataDir = Path(".gatehouse"),
    fmt: Fmt = "table",
) -> None:
    data = Api(url, key, data_dir).json("GET", "/batches", params={"limit": limit})
    jobs = data.get("data")
    assert isinstance(jobs, list)
    if fmt == "json":
        sys.stdout.write(json.dumps(jobs, indent=2) + "\n")
        return
    table = Table("id", "status", "items", "completed", "failed", "cost", "created")
    for job in jobs:
        total, completed, failed = _counts(job)
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(job.get("created_at", 0))))
        cost = f"${float(str(_gh(job).get('cost_usd', 0.0))):.4f}"
        table.add_row(str(job["id"]), str(job["status"]), str(total), str(completed), str(failed), cost, created)
    console.print(table)
